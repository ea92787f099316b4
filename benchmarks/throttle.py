#!/usr/bin/env python3
"""Throttle accuracy: `statusmail send --rate R` for about S seconds, measured at the sink.

smtp-sink cannot timestamp single messages, so the sink here is aiosmtpd (in a thread of
this process, on 127.0.0.1) recording time.monotonic() when each message's DATA ends.
statusmail sends R x S recipients (default 100/s x 30 s = 3000) with concurrency C
(default 8). Reported, from the sink's timestamps:

  achieved rate    (messages - 1) / (last - first): the steady rate, start-up excluded;
  wall rate        messages / statusmail's wall time (start-up included), for reference;
  largest burst    the most messages in any one-second window, sliding (every window
                   that starts at a message) and aligned (whole seconds since the first).

Baseline: the setting itself. Targets (issue 6): achieved within 3% of R; no one-second
window above 110% of R.
"""

from __future__ import annotations

import argparse
import bisect
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


class Recorder:
    def __init__(self) -> None:
        self.times: list[float] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.monotonic()
        with self.lock:
            self.times.append(now)
        return "250 2.0.0 Ok: queued"


def largest_window(times: list[float], width: float = 1.0) -> tuple[int, int]:
    """(sliding, aligned) maximum number of timestamps within any ``width`` window."""
    if not times:
        return 0, 0
    ts = sorted(times)
    sliding = max(bisect.bisect_left(ts, t + width) - i for i, t in enumerate(ts))
    counts: dict[int, int] = {}
    for t in ts:
        k = int((t - ts[0]) // width)
        counts[k] = counts.get(k, 0) + 1
    return sliding, max(counts.values())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=100, help="--rate setting (default 100)")
    parser.add_argument("--seconds", type=float, default=30, help="how long (default 30)")
    parser.add_argument("--concurrency", "-c", type=int, default=8, help="connections (default 8)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    try:
        from aiosmtpd.controller import Controller
    except ImportError:
        sys.exit("aiosmtpd is needed: pip install aiosmtpd (see benchmarks/README.md)")
    rate = args.rate
    n = int(rate * args.seconds)

    tmp = Path(tempfile.mkdtemp(prefix="sm-bench-throttle-"))
    print(
        f"throttle: --rate {rate:g} for {args.seconds:g}s (N={n}) concurrency={args.concurrency}  "
        f"({time.strftime('%Y-%m-%d %H:%M')}, {common.machine()})"
    )
    recorder = Recorder()
    port = common.free_port()
    controller = Controller(
        recorder, hostname="127.0.0.1", port=port, data_size_limit=10_000_000, ready_timeout=10
    )
    controller.start()
    try:
        config = common.make_project(tmp / "project", n)
        common.configure(config, port=port, concurrency=args.concurrency, rate=0)
        sm = common.run_statusmail(
            config,
            "send",
            common.ENTRY,
            "--yes",
            "--json",
            "--rate",
            f"{rate:g}",
            timeout=args.seconds * 3 + 60,
        )
        time.sleep(0.2)
        with recorder.lock:
            times = sorted(recorder.times)
        if sm.returncode != 0 or len(times) != n:
            print(
                f"statusmail: exit {sm.returncode}, sink got {len(times)} of {n}\n"
                f"{sm.stderr[-2000:]}"
            )
        span = times[-1] - times[0] if len(times) > 1 else 0.0
        achieved = (len(times) - 1) / span if span else 0.0
        sliding, aligned = largest_window(times)
        # Per-second profile (aligned), for the eye.
        per_second: dict[int, int] = {}
        for t in times:
            per_second[int(t - times[0])] = per_second.get(int(t - times[0]), 0) + 1

        table = common.Table(
            f"throttle (--rate {rate:g}, {args.concurrency} connections, aiosmtpd sink)"
        )
        table.add("measure", "value", "of setting")
        table.add("messages received", len(times), "")
        table.add("first to last message, s", f"{span:.3f}", "")
        table.add("achieved rate, msg/s", f"{achieved:.2f}", f"{achieved / rate:.1%}")
        table.add(
            "wall rate (start-up incl.), msg/s",
            f"{len(times) / sm.wall:.2f}",
            f"{len(times) / sm.wall / rate:.1%}",
        )
        table.add("largest 1-s window, sliding", sliding, f"{sliding / rate:.1%}")
        table.add("largest 1-s window, aligned", aligned, f"{aligned / rate:.1%}")
        table.print()
        print(
            "\nmessages per aligned second:",
            " ".join(str(per_second[k]) for k in sorted(per_second)),
        )
        ratios = common.Table("ratios (target)")
        ratios.add("ratio", "value", "target", "verdict")
        dev = abs(achieved / rate - 1)
        ratios.add("|achieved / setting - 1|", f"{dev:.2%}", "<= 3%", common.verdict(dev <= 0.03))
        ratios.add(
            "largest window / setting",
            f"{sliding / rate:.2f}",
            "<= 1.10",
            common.verdict(sliding <= 1.10 * rate),
        )
        ratios.print()
        return 0
    finally:
        controller.stop()
        common.remove_unless_kept(tmp, args.keep)


if __name__ == "__main__":
    sys.exit(main())
