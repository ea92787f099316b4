"""``python tests/chaos [options]``: one chaos run; prints the seed, the faults as they
come, and a one-line verdict; exits 1 on a violation (2 on bad options)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
if str(TESTS) not in sys.path:  # run as a folder: its helpers are the tests' own
    sys.path.insert(0, str(TESTS))

from chaos.run import FAULTS, Settings, run  # noqa: E402


def settings(argv: list[str]) -> Settings:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="python tests/chaos", description=__doc__)
    parser.add_argument("--seconds", type=float, default=defaults.seconds)
    parser.add_argument("--seed", type=int, help="default: from the clock (printed)")
    parser.add_argument("--senders", type=int, default=defaults.senders)
    parser.add_argument("--watchers", type=int, default=defaults.watchers)
    parser.add_argument(
        "--recipients", type=int, help="generated recipients (default: rate × seconds)"
    )
    parser.add_argument("--rate", type=float, default=defaults.rate)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--lease", type=float, default=defaults.lease)
    parser.add_argument(
        "--every", type=float, default=defaults.every, help="mean seconds between faults"
    )
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"which, of {','.join(FAULTS)}")
    parser.add_argument("--unsubscribes", type=int, help="default: one in fifty recipients")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("STATUSMAIL_TEST_POSTGRES") or defaults.server,
        help="the server (a schema and a role of the run's own are made there, dropped after)",
    )
    args = parser.parse_args(argv)
    faults = tuple(name for name in args.faults.split(",") if name)
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown or not faults:
        parser.error(f"--faults: {', '.join(unknown) or 'none'}: not one of {', '.join(FAULTS)}")
    return Settings(
        seconds=args.seconds,
        seed=args.seed if args.seed is not None else time.time_ns() % 1_000_000,
        senders=args.senders,
        watchers=args.watchers,
        recipients=args.recipients,
        rate=args.rate,
        concurrency=args.concurrency,
        lease=args.lease,
        every=args.every,
        faults=faults,
        unsubscribes=args.unsubscribes,
        server=args.postgres,
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
