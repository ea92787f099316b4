#!/usr/bin/env python3
"""Start-up: the time to the first message and peak memory at 100k and 1M subscribers,
fresh and on resume.

For each list size (default 100,000 and 1,000,000 generated rows, all selected by
update-2020-04-21), repeated R times (default 3), in turn:

  fresh    an empty ledger; `statusmail send update-2020-04-21 --yes --json` (SMTP,
           concurrency 8, rate 0) to an SMTP sink in this process (aiosmtpd in a
           thread, 127.0.0.1) that notes when the first message's DATA ends. Then the
           run is stopped with SIGTERM, as an operator would (it exits 4 and the rest
           stays pending);
  resume   the same command again on that ledger: all but the few sent are pending, the
           list is selected again.

Reported per run: time to the first message (from starting the process), how long the
run took to exit after SIGTERM, its exit code, peak RSS (VmHWM from /proc, polled until
it exits; see common.peak_rss). Median (min–max) over the repetitions.
Target (issue 14): the first message within 5 s at 1M subscribers, fresh and on resume.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


class FirstMessage:
    """aiosmtpd handler: notes when the first DATA ends (time.monotonic)."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.count = 0
        self.lock = threading.Lock()
        self.arrived = threading.Event()

    def reset(self) -> None:
        with self.lock:
            self.first, self.count = None, 0
            self.arrived.clear()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.count += 1
            if self.first is None:
                self.first = time.monotonic()
                self.arrived.set()
        return "250 2.0.0 Ok: queued"


def one_run(config: Path, sink: FirstMessage, timeout: float) -> dict[str, float | int | None]:
    sink.reset()
    argv = common.statusmail_argv("send", common.ENTRY, "--yes", "--json", "--config", str(config))
    start = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "STATUSMAIL_UNSUBSCRIBE_SECRET": common.SECRET},
        cwd=config.parent,
    )
    peak = 0.0
    while not sink.arrived.wait(0.01) and proc.poll() is None:
        peak = max(peak, common.peak_rss(proc.pid))
        if time.monotonic() - start > timeout:
            break
    first = (sink.first - start) if sink.first is not None else None
    signalled = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    while True:
        peak = max(peak, common.peak_rss(proc.pid))
        pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.005)
    exited = time.monotonic()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "first": first,
        "exit_after_sigterm": exited - signalled,
        "code": proc.returncode,
        "rss": peak,
        "sent": sink.count,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", default="100000,1000000", help="list sizes (default 100000,1000000)"
    )
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument(
        "--timeout", type=float, default=300, help="give up on a first message after (s)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    try:
        from aiosmtpd.controller import Controller
    except ImportError:
        sys.exit("aiosmtpd is needed: pip install aiosmtpd (see benchmarks/README.md)")
    sizes = [int(s) for s in args.sizes.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="sm-bench-startup-"))
    print(
        f"start-up: sizes {sizes}, reps {args.reps}  "
        f"({time.strftime('%Y-%m-%d %H:%M')}, {common.machine()})\nstart: {common.load()}"
    )
    handler = FirstMessage()
    port = common.free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        configs: dict[int, Path] = {}
        for n in sizes:
            csv_path = common.write_subscribers(tmp / f"list-{n}.csv", n)
            config = common.make_project(tmp / f"project-{n}", n, subscribers_csv=csv_path)
            configs[n] = common.configure(config, port=port, concurrency=8)
        results: dict[tuple[int, str], dict[str, common.Stats]] = {}
        for rep in range(args.reps):
            print(f"repetition {rep + 1}/{args.reps}: {common.load()}", flush=True)
            for n in sizes:
                common.fresh_ledger(configs[n])
                for kind in ("fresh", "resume"):
                    run = one_run(configs[n], handler, args.timeout)
                    figures = results.setdefault((n, kind), {})
                    for name in ("first", "exit_after_sigterm", "rss"):
                        value = run[name]
                        if value is not None:
                            figures.setdefault(name, common.Stats()).add(float(value))
                    codes = figures.setdefault("code", common.Stats())
                    codes.add(float(run["code"] or 0))
                    first = run["first"]
                    print(
                        f"  {n:>9,} {kind:6}: first message "
                        + (f"{first:.2f}s" if first is not None else "never")
                        + f", exit {run['code']} {run['exit_after_sigterm']:.2f}s after SIGTERM, "
                        f"{run['rss']:.0f} MB, {run['sent']} sent",
                        flush=True,
                    )
        print(f"end: {common.load()}")

        table = common.Table("start-up: median (min–max)")
        table.add("subscribers", "run", "first message s", "exit after SIGTERM s", "peak RSS MB")
        for (n, kind), figures in results.items():
            table.add(
                f"{n:,}",
                kind,
                figures["first"].show("{:.2f}") if "first" in figures else "never",
                figures["exit_after_sigterm"].show("{:.2f}"),
                figures["rss"].show(),
            )
        table.print()
        verdicts = common.Table("targets")
        verdicts.add("measure", "value (median)", "target", "verdict")
        largest = max(sizes)
        for kind in ("fresh", "resume"):
            figures = results[largest, kind]
            first = figures["first"].median if "first" in figures else float("inf")
            verdicts.add(
                f"first message, {largest:,}, {kind}",
                f"{first:.2f} s",
                "< 5 s",
                common.verdict(first < 5),
            )
        verdicts.print()
        return 0
    finally:
        controller.stop()
        common.remove_unless_kept(tmp, args.keep)


if __name__ == "__main__":
    sys.exit(main())
