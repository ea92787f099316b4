#!/usr/bin/env python3
"""The least statusmail's CPU per message could be, from its own work measured alone.

Whatever the engine around them costs, each message needs two things the raw floor
does not do: building it for its recipient (the variant filled, the unsubscribe and
preferences tokens, the Message-ID, the VERP return path) and recording its outcome in
the ledger. This measures, in one run, on the same generated list as loopback.py:

  floor      benchmarks/floor.py --mode raw, a child, at each concurrency C: the CPU of
             its send loop per message (the same aiosmtplib calls statusmail makes).
  build      MessageFactory.build over the list's mix of recipients, in a tight loop
             in this process (caches warm: the cheapest it gets).
  record     Ledger.record on a fresh SQLite ledger of N pending rows, outcomes in
             transactions of 1 (what one connection allows) and of 8 (what 8 do).

bound(C) = floor(C) + build + record(1 at C=1, 8 at C=8): statusmail with an engine, an
event loop, a selection and a start-up that cost nothing. Its ratio to the floor is the
lowest statusmail could reach on this path; issue 14's target is 1.2.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def build_us(config: Path, n: int) -> float:
    factory, mix = common.factory_and_recipients(config, 840)
    for recipient in mix:  # every variant prepared
        factory.build(recipient, eight_bit=True)
    turn = iter(range(10**12))
    return common.per_call_us(lambda: factory.build(mix[next(turn) % len(mix)], eight_bit=True), n)


def record_us(directory: Path, n: int, group: int) -> float:
    from statusmail.domain import DeliveryStatus, Outcome
    from statusmail.ledger import Ledger
    from statusmail.project.tokens import Keyring, message_id

    keys = Keyring(common.SECRET.encode())
    with Ledger(directory / f"record-{group}.db") as ledger:
        ledger.migrate()
        db = ledger.database.db
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO deliveries (entry_id, address, email, locale, status, selection,"
            " created_at, updated_at) VALUES (?, ?, ?, 'ru', 'pending', 1, 'x', 'x')",
            [
                (common.ENTRY, f"user{i:07d}@example.net", f"user{i:07d}@example.net")
                for i in range(n)
            ],
        )
        db.execute("COMMIT")
        outcomes = [
            Outcome(
                f"user{i:07d}@example.net",
                DeliveryStatus.SENT,
                1,
                250,
                None,
                message_id(keys, common.ENTRY, f"user{i:07d}@example.net", "startmail.example"),
            )
            for i in range(n)
        ]
        groups = [outcomes[i : i + group] for i in range(0, n - n % group, group)]
        turn = iter(groups)
        return (
            common.per_call_us(lambda: ledger.record(common.ENTRY, next(turn)), len(groups)) / group
        )


def floor_us(messages: Path, n: int, conc: int) -> float:
    child, got = common.run_floor(messages, n, conc, "raw")
    if child.returncode != 0 or got != n:
        raise SystemExit(f"floor: exit {child.returncode}, sink got {got} of {n}\n{child.stderr}")
    return float(child.json()["loop_cpu"]) / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20000, help="messages (default 20000)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sm-bench-bound-"))
    print(
        f"bound: N={args.n} reps={args.reps}  "
        f"({time.strftime('%Y-%m-%d %H:%M')}, {common.machine()})\nstart: {common.load()}"
    )
    figures: dict[str, common.Stats] = {}
    try:
        config = common.configure(common.make_project(tmp / "project", args.n))
        built = common.built_messages(config, 84, eight_bit=True)
        messages = common.write_messages(tmp / "messages.pickle", built)
        for rep in range(args.reps):
            print(f"repetition {rep + 1}/{args.reps}: {common.load()}", flush=True)
            for conc in (1, 8):
                figures.setdefault(f"floor C={conc}", common.Stats()).add(
                    floor_us(messages, args.n, conc)
                )
            figures.setdefault("build", common.Stats()).add(build_us(config, args.n))
            for group in (1, 8):
                figures.setdefault(f"record, {group} per transaction", common.Stats()).add(
                    record_us(tmp, args.n, group)
                )
                for path in tmp.glob("record-*"):
                    path.unlink()
        print(f"end: {common.load()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    parts = common.Table("CPU per message, us: median (min–max)")
    parts.add("part", "us")
    for name, stats in figures.items():
        parts.add(name, stats.show("{:.1f}"))
    parts.print()
    table = common.Table("the least statusmail could cost: floor + build + record")
    table.add("C", "floor", "bound", "bound / floor", "target", "verdict")
    build = figures["build"].median
    for conc, group in ((1, 1), (8, 8)):
        floor = figures[f"floor C={conc}"].median
        bound = floor + build + figures[f"record, {group} per transaction"].median
        table.add(
            conc,
            f"{floor:.0f}",
            f"{bound:.0f}",
            f"{bound / floor:.2f}",
            "<= 1.2",
            "reachable" if bound / floor <= 1.2 else "out of reach",
        )
    table.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
