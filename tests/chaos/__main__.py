"""``python tests/chaos [options]``: one chaos run; prints the seed, the faults as they
come, and a one-line verdict; exits 1 on a violation (2 on bad options)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent
if str(TESTS) not in sys.path:  # run as a folder: its helpers are the tests' own
    sys.path.insert(0, str(TESTS))

from chaos.run import FAULTS, LEDGERS, POSTGRES_ONLY, Settings, run  # noqa: E402

# What a SQLite run defaults to: one watcher (README: exactly one watcher per SQLite
# ledger, a second refuses), two senders (one holds the entry's run lock, the other is
# refused until it is free), and two processes for each (sending.processes: 2).
SQLITE: dict[str, Any] = {"senders": 2, "watchers": 1, "processes": 2}


def settings(argv: list[str]) -> Settings:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="python tests/chaos", description=__doc__)
    parser.add_argument("--seconds", type=float, default=defaults.seconds)
    parser.add_argument("--seed", type=int, help="default: from the clock (printed)")
    parser.add_argument(
        "--ledger",
        choices=LEDGERS,
        default=defaults.ledger,
        help="postgres: a schema of the run's own on --postgres; sqlite: a file in the run's"
        " temporary folder",
    )
    parser.add_argument(
        "--senders", type=int, help=f"default: {defaults.senders} ({SQLITE['senders']} on SQLite)"
    )
    parser.add_argument(
        "--watchers",
        type=int,
        help=f"default: {defaults.watchers} ({SQLITE['watchers']} on SQLite, at most 1 there)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        help="sending.processes of each send and watch (default: the config's own;"
        f" {SQLITE['processes']} on SQLite)",
    )
    parser.add_argument(
        "--recipients", type=int, help="generated recipients (default: rate × seconds)"
    )
    parser.add_argument("--rate", type=float, default=defaults.rate)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--lease", type=float, default=defaults.lease)
    parser.add_argument(
        "--every", type=float, default=defaults.every, help="mean seconds between faults"
    )
    parser.add_argument(
        "--faults",
        help=f"which, of {','.join(FAULTS)} (default: all; on SQLite those that apply there:"
        f" {','.join(f for f in FAULTS if f not in POSTGRES_ONLY)})",
    )
    parser.add_argument("--unsubscribes", type=int, help="default: one in fifty recipients")
    parser.add_argument("--dkim", action="store_true", help="sign with an RSA and an Ed25519 key")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("STATUSMAIL_TEST_POSTGRES") or defaults.server,
        help="the server (a schema and a role of the run's own are made there, dropped after)",
    )
    args = parser.parse_args(argv)
    sqlite = args.ledger == "sqlite"
    base = dataclasses.replace(defaults, **SQLITE) if sqlite else defaults
    applicable = tuple(f for f in FAULTS if not (sqlite and f in POSTGRES_ONLY))
    faults = applicable if args.faults is None else tuple(f for f in args.faults.split(",") if f)
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown or not faults:
        parser.error(f"--faults: {', '.join(unknown) or 'none'}: not one of {', '.join(FAULTS)}")
    if sqlite and (postgres_only := [f for f in faults if f in POSTGRES_ONLY]):
        parser.error(
            f"--faults {','.join(postgres_only)}: PostgreSQL's faults, not with --ledger sqlite"
            f" (there: {','.join(applicable)})"
        )
    watchers = base.watchers if args.watchers is None else args.watchers
    if sqlite and watchers > 1:
        parser.error("--watchers: at most 1 with --ledger sqlite (a second one refuses: README)")
    return dataclasses.replace(
        base,
        seconds=args.seconds,
        seed=args.seed if args.seed is not None else time.time_ns() % 1_000_000,
        senders=base.senders if args.senders is None else args.senders,
        watchers=watchers,
        processes=base.processes if args.processes is None else args.processes,
        recipients=args.recipients,
        rate=args.rate,
        concurrency=args.concurrency,
        lease=args.lease,
        every=args.every,
        faults=faults,
        unsubscribes=args.unsubscribes,
        server=args.postgres,
        ledger=args.ledger,
        dkim=args.dkim,
    )


def main() -> int:
    chosen = settings(sys.argv[1:])
    start = time.monotonic()

    def log(line: str) -> None:
        print(f"{time.monotonic() - start:7.1f}s {line}", flush=True)

    log(f"seed {chosen.seed}: {chosen}")
    verdict = run(chosen, log)
    for line in verdict.details():
        print(line)
    print(verdict.faults)
    print(verdict.line())
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
