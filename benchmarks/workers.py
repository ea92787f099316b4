#!/usr/bin/env python3
"""Several senders on one entry (issue 12): 1, 2 and 4 `statusmail send` processes on
one entry of N recipients (default 20,000) with the ledger on PostgreSQL, against
Postfix's smtp-sink; the SQLite single-process figure is measured in the same run, as
the baseline.

Each configuration starts from an empty ledger (a fresh PostgreSQL schema, or a fresh
SQLite file). The clock runs from starting the processes to the last one's exit, so the
selection (one sender streams it, the others join) and the start-up are included.
Reported: msg/s (median of the repetitions, min–max), the ratio to the SQLite run, and
whether every recipient was sent once (the ledger's count of sent rows, the sink's
count of messages).

    python benchmarks/workers.py [--recipients 20000] [--repeat 3] [--concurrency 8]
        [--postgres postgresql://127.0.0.1:5432/test]

The machine has 2 cores: beyond two processes the workers share them with each other,
the sink and the server, so the figure says how the claims scale, not what more hosts
would add.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

ENTRY = common.ENTRY


def schema_url(base: str) -> tuple[str, str]:
    schema = f"statusmail_bench_{secrets.token_hex(4)}"
    sep = "&" if "?" in base else "?"
    return schema, f"{base}{sep}options=-csearch_path%3D{schema}"


def admin(base: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql)


def ledger_counts(target: str) -> dict[str, int]:
    from statusmail.ledger import Ledger

    with Ledger(target, readonly=True) as ledger:
        return {k: int(v) for k, v in ledger.counts(ENTRY).items()}


def run(config: Path, ledger: str, processes: int) -> tuple[float, dict[str, int], list[int]]:
    """Start ``processes`` senders at once; (wall seconds, the ledger's counts, exits)."""
    env = {
        **os.environ,
        "STATUSMAIL_UNSUBSCRIBE_SECRET": common.SECRET,
        "STATUSMAIL_LEDGER": ledger,
    }
    argv = common.statusmail_argv("send", ENTRY, "--yes", "--config", str(config))
    start = time.perf_counter()
    children = [
        subprocess.Popen(
            argv,
            env=env,
            cwd=config.parent,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    codes = []
    for child in children:
        _, err = child.communicate(timeout=3600)
        if child.returncode:
            print(err.decode("utf-8", "replace")[-2000:], file=sys.stderr)
        codes.append(child.returncode)
    wall = time.perf_counter() - start
    return wall, ledger_counts(ledger), codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("STATUSMAIL_TEST_POSTGRES", "postgresql://127.0.0.1:5432/test"),
    )
    args = parser.parse_args()

    print(f"# workers: {args.recipients} recipients, concurrency {args.concurrency} each")
    print(f"# {common.machine()}; {common.load()}; revision {common.revision()}")
    root = Path(tempfile.mkdtemp(prefix="statusmail-workers-"))
    config = common.make_project(root / "project", args.recipients)
    rates: dict[str, common.Stats] = {}
    complete: dict[str, bool] = {}
    with common.SmtpSink() as sink:
        common.configure(config, port=sink.port, concurrency=args.concurrency)
        for repetition in range(args.repeat):
            for label, processes in (("sqlite, 1", 1), ("pg, 1", 1), ("pg, 2", 2), ("pg, 4", 4)):
                before = sink.messages()
                if label.startswith("sqlite"):
                    ledger = str(root / f"ledger-{repetition}.db")
                    schema = None
                else:
                    schema, ledger = schema_url(args.postgres)
                    admin(args.postgres, f"CREATE SCHEMA {schema}")
                try:
                    wall, counts, codes = run(config, ledger, processes)
                finally:
                    if schema:
                        admin(args.postgres, f"DROP SCHEMA {schema} CASCADE")
                received = sink.messages() - before
                sent = counts["sent"]
                left = counts.get("pending", 0) + counts.get("failed", 0)
                ok = codes == [0] * processes and left == 0 and received == sent
                complete[label] = complete.get(label, True) and ok
                rates.setdefault(label, common.Stats()).add(sent / wall)
                print(
                    f"  {label:10} rep {repetition + 1}: {sent / wall:7.0f} msg/s"
                    f" ({sent} sent, {received} at the sink, exits {codes})",
                    flush=True,
                )
    baseline = rates["sqlite, 1"].median
    table = common.Table("senders on one entry (msg/s, median (min–max))")
    table.add("ledger, processes", "msg/s", "÷ SQLite", "everyone once")
    for label, stats in rates.items():
        table.add(label, stats.show(), f"{stats.median / baseline:.2f}", complete[label])
    table.print()
    common.remove_unless_kept(root, keep=False)


if __name__ == "__main__":
    main()
