#!/usr/bin/env python3
"""Where statusmail's CPU per message goes while it delivers, by part.

`statusmail send update-2020-04-21 --yes --json` runs in this process (the CLI's own
entry point) against a fresh smtp-sink, N recipients (default 20,000), at each
concurrency C (default 1 and 8), R times (default 3). The CPU of the event loop's
thread (time.thread_time: the selection streams in a thread of its own and is left
out) is counted inside MessageFactory.build and Ledger.record (the group commit's
transactions) by wrapping them, and over the whole of Engine.run; the rest is SMTP
(aiosmtplib: MAIL, RCPT, DATA), the delivery engine (queue, throttle, retries,
outcomes) and the event loop. Compare that rest with the raw floor's CPU per message
in loopback.py: the same SMTP calls and nothing else. The wrappers cost about a
microsecond per call. Also counted: outcomes per ledger transaction.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20000, help="recipients (default 20000)")
    parser.add_argument("--concurrency", "-c", default="1,8", help="connections (default 1,8)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="sending.processes (default 1: only this process's thread is measured)",
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    from statusmail.cli import main as cli
    from statusmail.content.message import MessageFactory
    from statusmail.delivery.engine import Engine
    from statusmail.ledger import Ledger

    spent: dict[str, float] = {}
    counts: dict[str, int] = {}

    def counted(label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*a: Any, **k: Any) -> Any:
            start = time.thread_time()
            try:
                return function(*a, **k)
            finally:
                spent[label] = spent.get(label, 0.0) + time.thread_time() - start

        return wrapper

    MessageFactory.build = counted("build", MessageFactory.build)  # type: ignore[method-assign]
    record = counted("ledger", Ledger.record)

    def counted_record(ledger: Ledger, entry_id: str, outcomes: Any) -> None:
        counts["transactions"] = counts.get("transactions", 0) + 1
        counts["outcomes"] = counts.get("outcomes", 0) + len(outcomes)
        record(ledger, entry_id, outcomes)

    Ledger.record = counted_record  # type: ignore[method-assign]
    run = Engine.run

    async def timed_run(engine: Engine) -> Any:
        # The event loop's thread only: the selection streams in a thread of its own.
        start = time.thread_time()
        try:
            return await run(engine)
        finally:
            spent["delivery"] = spent.get("delivery", 0.0) + time.thread_time() - start

    Engine.run = timed_run  # type: ignore[method-assign,assignment]

    tmp = Path(tempfile.mkdtemp(prefix="sm-bench-attribution-"))
    print(
        f"attribution: N={args.n} concurrency={levels} reps={args.reps}  "
        f"({time.strftime('%Y-%m-%d %H:%M')}, {common.machine()})\nstart: {common.load()}"
    )
    results: dict[tuple[int, str], common.Stats] = {}
    cwd = os.getcwd()
    try:
        config = common.configure(common.make_project(tmp / "project", args.n))
        os.environ["STATUSMAIL_UNSUBSCRIBE_SECRET"] = common.SECRET
        os.chdir(config.parent)
        for rep in range(args.reps):
            print(f"repetition {rep + 1}/{args.reps}: {common.load()}", flush=True)
            for conc in levels:
                common.fresh_ledger(config)
                spent.clear()
                counts.clear()
                with common.SmtpSink() as sink:
                    common.configure(
                        config, port=sink.port, concurrency=conc, processes=args.processes
                    )
                    argv = ["send", common.ENTRY, "--yes", "--json", "--config", str(config)]
                    with (
                        open(os.devnull, "w") as quiet,
                        contextlib.redirect_stdout(quiet),
                        contextlib.suppress(SystemExit),
                    ):
                        cli(argv, standalone_mode=False)
                    sent = common.sink_count(sink)
                if sent != args.n:
                    print(f"  the sink got {sent} of {args.n}")
                per = {k: v / max(sent, 1) * 1e6 for k, v in spent.items()}
                per["rest"] = per["delivery"] - per.get("build", 0) - per.get("ledger", 0)
                per["grouped"] = counts["outcomes"] / max(counts["transactions"], 1)
                for label, value in per.items():
                    results.setdefault((conc, label), common.Stats()).add(value)
        print(f"end: {common.load()}")
    finally:
        os.chdir(cwd)
        shutil.rmtree(tmp, ignore_errors=True)

    table = common.Table("CPU per message while delivering, us: median (min–max)")
    table.add(
        "C",
        "delivery",
        "MessageFactory.build",
        "Ledger.record",
        "SMTP + engine + loop",
        "outcomes per transaction",
    )
    for conc in levels:
        table.add(
            conc,
            *(results[conc, k].show() for k in ("delivery", "build", "ledger", "rest")),
            results[conc, "grouped"].show("{:.1f}"),
        )
    table.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
