#!/usr/bin/env python3
"""Slow relay: smtp-sink waits DELAY seconds before answering each DATA command.

`smtp-sink -w DELAY` ("Wait delay seconds before responding to a DATA command", man
smtp-sink) makes every message cost DELAY seconds on its connection, so with C
connections the best possible rate is C / DELAY messages per second. statusmail sends N
recipients (default 1000: about 20 s at the ideal 50 msg/s) with concurrency C (default
50) and rate 0. Baseline in the same run: the aiosmtplib floor (pre-built message, the
same C reused connections) against the same kind of sink.

msg/s is counted over statusmail's whole wall time (start-up, selection and ledger
included). Target (issue 6): >= 90% of C / DELAY.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1000, help="recipients (default 1000)")
    parser.add_argument(
        "--concurrency", "-c", type=int, default=50, help="connections (default 50)"
    )
    parser.add_argument("--delay", type=int, default=1, help="smtp-sink -w seconds (default 1)")
    parser.add_argument("--skip-floor", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    n, conc, delay = args.n, args.concurrency, args.delay
    ideal = conc / delay

    tmp = Path(tempfile.mkdtemp(prefix="sm-bench-slow-"))
    print(
        f"slow relay: N={n} concurrency={conc} smtp-sink -w {delay}  "
        f"({time.strftime('%Y-%m-%d %H:%M')}, {common.machine()})"
    )
    try:
        eml = common.sample_message(tmp / "sample")
        config = common.make_project(tmp / "project", n)
        with common.SmtpSink("-w", str(delay)) as sink:
            common.configure(config, port=sink.port, concurrency=conc, timeout=30)
            sm = common.run_statusmail(
                config, "send", common.ENTRY, "--yes", "--json", timeout=n / ideal * 5 + 60
            )
            sm_sink = common.sink_count(sink)
        if sm.returncode != 0 or sm_sink != n:
            print(
                f"statusmail: exit {sm.returncode}, sink got {sm_sink} of {n}\n{sm.stderr[-2000:]}"
            )
        sm_rate = sm_sink / sm.wall

        fl_rate = 0.0
        if not args.skip_floor:
            with common.SmtpSink("-w", str(delay)) as sink:
                _, fl_time, _ = common.floor_send(sink.port, eml, n, conc)
                fl_sink = common.sink_count(sink)
            fl_rate = fl_sink / fl_time

        table = common.Table(f"slow relay (smtp-sink -w {delay}, {conc} connections)")
        table.add("sender", "messages", "seconds", "msg/s", "of ideal")
        table.add("ideal C / delay", n, f"{n / ideal:.2f}", f"{ideal:.1f}", "100%")
        table.add(
            "statusmail", sm_sink, f"{sm.wall:.2f}", f"{sm_rate:.1f}", f"{sm_rate / ideal:.1%}"
        )
        if fl_rate:
            table.add(
                "floor (aiosmtplib)",
                fl_sink,
                f"{fl_time:.2f}",
                f"{fl_rate:.1f}",
                f"{fl_rate / ideal:.1%}",
            )
        table.print()
        ratios = common.Table("ratios (target)")
        ratios.add("ratio", "value", "target", "verdict")
        ratios.add(
            "statusmail / ideal",
            f"{sm_rate / ideal:.3f}",
            ">= 0.90",
            common.verdict(sm_rate / ideal >= 0.9),
        )
        if fl_rate:
            ratios.add("statusmail / floor", f"{sm_rate / fl_rate:.3f}", "-", "-")
        ratios.print()
        return 0
    finally:
        common.remove_unless_kept(tmp, args.keep)


if __name__ == "__main__":
    sys.exit(main())
