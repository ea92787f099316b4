#!/usr/bin/env python3
"""A million recipients really sent (issue 22): `statusmail send` with DKIM on, to
Postfix's smtp-sink on this machine, and the whole history checked afterwards.

One run of `statusmail send update-2020-04-21 --yes --json` on a generated list of N
recipients (default 1,000,000), with a 2048-bit RSA key (`--dkim off` for none),
`sending.processes` as statusmail sets it unless `--processes` says, C connections per
process (default 8), no rate limit. Printed: the wall time from start to exit, the
time from "delivering through" on, messages a second, the CPU of statusmail's
processes (its helpers and signers included: `os.wait4`), and the check: the
messages smtp-sink counted, the ledger's rows by status and its distinct sent
addresses, which must all be N (everyone once). Target: N = 1,000,000 in under 5
minutes with DKIM on, on two cores.

    python benchmarks/million_send.py [--n 1000000] [--dkim rsa|off] [--processes P] [-c 8]
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import dkim_speed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1_000_000, help="recipients")
    parser.add_argument("--dkim", choices=("rsa", "off"), default="rsa")
    parser.add_argument("--processes", type=int, default=None, help="sending.processes")
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="statusmail-million-send-"))
    try:
        print(
            f"million_send: N={args.n:,} DKIM {args.dkim} C={args.concurrency} "
            f"processes {args.processes or 'unset'}  ({common.machine()}, {common.revision()})"
        )
        started = time.perf_counter()
        config = common.make_project(tmp / "project", args.n)
        dkim_speed.write_keys(config.parent)
        print(f"list written in {time.perf_counter() - started:.0f} s; {common.load()}")
        with common.SmtpSink() as sink:
            common.configure(config, port=sink.port, concurrency=args.concurrency)
            dkim_speed.set_mode(config, args.dkim, args.processes)
            data = yaml.safe_load(config.read_text(encoding="utf-8"))
            data["sending"]["max_attempts"] = 5
            config.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
            run = common.run_marked(
                common.statusmail_argv(
                    "send", "update-2020-04-21", "--yes", "--json", "--config", str(config)
                ),
                "delivering through",
                env={"STATUSMAIL_UNSUBSCRIBE_SECRET": common.SECRET},
                cwd=config.parent,
                timeout=7200,
            )
            counted = common.sink_count(sink)
        child = run.child
        if child.returncode != 0:
            print(child.stderr[-3000:])
            return 1
        with sqlite3.connect(config.parent / "statusmail.db") as db:
            by_status = dict(
                db.execute("SELECT status, COUNT(*) FROM deliveries GROUP BY status").fetchall()
            )
            distinct = db.execute(
                "SELECT COUNT(DISTINCT address) FROM deliveries WHERE status = 'sent'"
            ).fetchone()[0]
        delivering = child.wall - (run.mark_wall or 0.0)
        print(f"end: {common.load()}")
        print()
        print("| measure | value |")
        print("| --- | --- |")
        print(f"| wall, start to exit | {child.wall:.0f} s ({child.wall / 60:.1f} min) |")
        print(f"| from 'delivering through' on | {delivering:.0f} s |")
        print(f"| msg/s, whole run | {args.n / child.wall:,.0f} |")
        print(f"| msg/s, delivering | {args.n / delivering:,.0f} |")
        print(
            f"| CPU, all of statusmail's processes | {child.cpu:.0f} s "
            f"({child.cpu / args.n * 1e6:.0f} µs a message) |"
        )
        print(f"| peak RSS, the first process | {child.peak_rss_mb:.0f} MB |")
        print(f"| smtp-sink counted | {counted:,} |")
        print(f"| ledger by status | {by_status} |")
        print(f"| distinct addresses sent | {distinct:,} |")
        once = counted == args.n == distinct == by_status.get("sent")
        print(f"| everyone once | {'yes' if once else 'NO'} |")
        under = child.wall < 300
        print(f"| under 5 minutes | {'MET' if under else 'MISSED'} |")
        return 0 if once else 1
    finally:
        common.remove_unless_kept(tmp, args.keep)


if __name__ == "__main__":
    sys.exit(main())
