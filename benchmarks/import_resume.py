#!/usr/bin/env python3
"""Issue 21: the lists held in the ledger. At 1,000,000 generated subscribers (all
selected by update-2020-04-21), in turn:

  import      `statusmail import`: every row validated and written to the ledger;
  check       `statusmail check` of the unchanged list, twice (nothing of it is read);
  fresh       `send --yes` on an empty queue: time to the first message at an SMTP sink
              in this process (the list unchanged since its import), then SIGTERM;
  complete    the whole selection made and ended (nothing sent), then every row but the
              last 1,000 of the list marked sent: the resume's first message (the queue
              read where it stands, the list not read again);
  restream    the same queue, but as if the last selection had been cut short (its
              generation bumped): the resume selects again from the import, and the
              pending rows are at its end.

Targets: `check` of the unchanged list < 2 s; the first message of a resume with the
pending rows at the end of the list < 5 s.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from startup import FirstMessage, one_run

LEFT = 1_000  # rows left pending at the end of the list


SELECT_ALL = """
import sys
from pathlib import Path
from statusmail import pipeline
from statusmail.project.config import load_config
config = load_config(Path(sys.argv[1]))
prepared = pipeline.prepare(config, pipeline.load(config, sys.argv[2]))
with pipeline.open_ledger(config, prepared.entry.id) as held:
    yes = pipeline.Request(confirm=lambda *_: True, accept_removals=True)
    pipeline.start(prepared, held, yes)
"""


def select_whole(config: Path, timeout: float) -> float:
    """The entry's whole selection made and ended, nothing sent (what a send answered
    yes at the prompt does before delivering); seconds."""
    argv = [sys.executable, "-c", SELECT_ALL, str(config), common.ENTRY]
    done = common.run_child(
        argv,
        env={"STATUSMAIL_UNSUBSCRIBE_SECRET": common.SECRET},
        cwd=config.parent,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return done.wall


def leave_the_end_pending(config: Path, *, cut_short: bool) -> int:
    db = sqlite3.connect(config.parent / "statusmail.db", timeout=30)
    try:
        with db:
            last = db.execute("SELECT MAX(rowid) FROM deliveries").fetchone()[0]
            db.execute(
                "UPDATE deliveries SET status = 'sent' WHERE status = 'pending' AND rowid <= ?",
                (last - LEFT,),
            )
            if cut_short:
                db.execute(
                    "UPDATE entries SET generation = generation + 1 WHERE entry_id = ?",
                    (common.ENTRY,),
                )
        return int(
            db.execute("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'").fetchone()[0]
        )
    finally:
        db.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="list size (1,000,000)")
    parser.add_argument("--timeout", type=float, default=600, help="give up after (s)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    from aiosmtpd.controller import Controller

    tmp = Path(tempfile.mkdtemp(prefix="sm-bench-import-"))
    print(f"import and resume: {args.rows:,} rows ({common.machine()})\nstart: {common.load()}")
    handler = FirstMessage()
    port = common.free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    figures: dict[str, float | None] = {}
    try:
        config = common.configure(common.make_project(tmp / "project", args.rows), port=port)
        imported = common.run_statusmail(config, "import")
        assert imported.returncode == 0, imported.stderr
        figures["import"] = imported.wall
        rss, said = imported.peak_rss_mb, imported.stdout.strip()
        print(f"  import: {imported.wall:.2f} s ({imported.cpu:.2f} s CPU), {rss:.0f} MB; {said}")
        for n in (1, 2):
            checked = common.run_statusmail(config, "check")
            figures[f"check {n}"] = checked.wall
            wall, cpu = checked.wall, checked.cpu
            print(f"  check, unchanged list ({n}): {wall:.2f} s ({cpu:.2f} s CPU)")
        fresh = one_run(config, handler, args.timeout)
        figures["fresh"] = fresh["first"]
        print(f"  fresh: first message {fresh['first']} s")
        took = select_whole(config, args.timeout)
        print(f"  the whole selection made and ended (nothing sent): {took:.1f} s")
        for kind, cut in (("complete", False), ("restream", True)):
            pending = leave_the_end_pending(config, cut_short=cut)
            run = one_run(config, handler, args.timeout)
            figures[kind] = run["first"]
            print(
                f"  resume ({kind}, {pending:,} pending at the end): first message {run['first']} s"
            )
        print(f"end: {common.load()}")
        table = common.Table("targets")
        table.add("measure", "value", "target", "verdict")
        check = max(figures["check 1"] or 0, figures["check 2"] or 0)
        table.add("check, unchanged list", f"{check:.2f} s", "< 2 s", common.verdict(check < 2))
        for kind in ("fresh", "complete", "restream"):
            first = figures[kind]
            shown = "never" if first is None else f"{first:.2f} s"
            ok = first is not None and first < 5
            table.add(f"first message, {kind}", shown, "< 5 s", common.verdict(ok))
        table.print()
        return 0
    finally:
        controller.stop()
        common.remove_unless_kept(tmp, args.keep)


if __name__ == "__main__":
    sys.exit(main())
