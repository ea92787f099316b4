#!/usr/bin/env python3
"""Loopback throughput: statusmail vs the aiosmtplib floor vs mailmerge, on smtp-sink.

N recipients (default 20,000) of update-2020-04-21 are delivered to Postfix's smtp-sink
on 127.0.0.1 by, in the same run:

  statusmail  `statusmail send update-2020-04-21 --yes --json` over C connections,
              everything included (start-up, selection into the ledger, rendering,
              ledger commits, the throttle at rate 0);
  floor       a minimal aiosmtplib loop sending one pre-built statusmail message
              (a dry-run .eml) N times over the same C connections, each reused
              (in-process, timing the send loop only: the strictest floor);
  mailmerge   mailmerge (PyPI) sending the same list to the same kind of sink, with a
              template made from the same .eml (one message per row, sequential,
              one SMTP connection per message: that is how mailmerge works).

Each sender gets a fresh smtp-sink; the sink's own counter is checked against N.
Targets (issue 6): statusmail >= 2x mailmerge and >= 0.8x the floor.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def mailmerge_inputs(root: Path, eml: bytes, subscribers: Path, n: int, port: int) -> list[str]:
    """Template (the .eml with To templated), database (email,name) and server config."""
    root.mkdir(parents=True, exist_ok=True)
    text = eml.decode("ascii").replace("\r\n", "\n")
    head, _, body = text.partition("\n\n")
    kept: list[str] = []
    skip = False
    for line in head.split("\n"):
        if line[:1] in (" ", "\t"):
            if not skip:
                kept.append(line)
            continue
        name = line.split(":", 1)[0].lower()
        skip = name in ("to", "date")  # mailmerge adds Date itself
        if not skip:
            kept.append(line)
    template = (
        'TO: "{{name}}" <{{email}}>\n{% raw %}' + "\n".join(kept) + "\n\n" + body + "{% endraw %}"
    )
    (root / "template.txt").write_text(template, encoding="utf-8")
    with (
        subscribers.open(encoding="utf-8", newline="") as src,
        (root / "db.csv").open("w", encoding="utf-8", newline="") as dst,
    ):
        reader = csv.DictReader(src)
        writer = csv.writer(dst)
        writer.writerow(["email", "name"])
        for i, row in enumerate(reader):
            if i >= n:
                break
            writer.writerow([row["email"], row["name"] or "Subscriber"])
    (root / "server.conf").write_text(
        f"[smtp_server]\nhost = 127.0.0.1\nport = {port}\nratelimit = 0\n", encoding="utf-8"
    )
    return [
        common.tool("mailmerge"),
        "--template",
        str(root / "template.txt"),
        "--database",
        str(root / "db.csv"),
        "--config",
        str(root / "server.conf"),
        "--no-limit",
        "--no-dry-run",
        "--output-format",
        "raw",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20000, help="recipients (default 20000)")
    parser.add_argument("--concurrency", "-c", type=int, default=8, help="connections (default 8)")
    parser.add_argument(
        "--mailmerge-n",
        type=int,
        default=None,
        help="send only this many with mailmerge (its rate is per message; "
        "default: N, the same list)",
    )
    parser.add_argument("--skip-mailmerge", action="store_true")
    parser.add_argument(
        "--py-spy",
        metavar="OUT",
        help="also record the statusmail run with py-spy into OUT "
        "(.txt: collapsed stacks, else speedscope JSON); a separate run",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    n, conc = args.n, args.concurrency

    tmp = Path(tempfile.mkdtemp(prefix="sm-bench-loopback-"))
    print(
        f"loopback: N={n} concurrency={conc}  "
        f"({time.strftime('%Y-%m-%d %H:%M')}, {common.machine()})"
    )
    try:
        eml = common.sample_message(tmp / "sample")
        config = common.configure(common.make_project(tmp / "project", n), concurrency=conc)
        subscribers = tmp / "project" / "subscribers" / "generated.csv"

        # statusmail
        with common.SmtpSink() as sink:
            common.configure(config, port=sink.port, concurrency=conc)
            sm = common.run_statusmail(config, "send", common.ENTRY, "--yes", "--json")
            time.sleep(0.2)
            sm_sink = sink.messages()
        payload = sm.json()
        sm_sent = int(payload.get("sent", 0)) if isinstance(payload.get("sent"), int) else sm_sink
        if sm.returncode != 0 or sm_sink != n:
            print(
                f"statusmail: exit {sm.returncode}, sink got {sm_sink} of {n}\n{sm.stderr[-2000:]}"
            )
        sm_rate = sm_sink / sm.wall

        # floor
        with common.SmtpSink() as sink:
            _, fl_time, fl_cpu = common.floor_send(sink.port, eml, n, conc)
            time.sleep(0.2)
            fl_sink = sink.messages()
        fl_rate = fl_sink / fl_time

        # mailmerge
        mm_rate = mm_n = mm_sink = 0
        mm_wall = 0.0
        if not args.skip_mailmerge:
            mm_n = args.mailmerge_n or n
            with common.SmtpSink() as sink:
                argv = mailmerge_inputs(tmp / "mailmerge", eml, subscribers, mm_n, sink.port)
                mm = common.run_child(argv, timeout=3600)
                time.sleep(0.2)
                mm_sink = sink.messages()
            if mm.returncode != 0 or mm_sink != mm_n:
                print(
                    f"mailmerge: exit {mm.returncode}, sink got {mm_sink} of {mm_n}\n"
                    f"{mm.stderr[-2000:]}"
                )
            mm_wall = mm.wall
            mm_rate = mm_sink / mm.wall

        table = common.Table("loopback throughput (smtp-sink on 127.0.0.1)")
        table.add("sender", "messages", "seconds", "msg/s", "peak RSS MB", "CPU s")
        table.add(
            "statusmail",
            sm_sink,
            f"{sm.wall:.2f}",
            f"{sm_rate:.0f}",
            f"{sm.peak_rss_mb:.0f}",
            f"{sm.cpu:.1f}",
        )
        table.add(
            "floor (aiosmtplib)", fl_sink, f"{fl_time:.2f}", f"{fl_rate:.0f}", "-", f"{fl_cpu:.1f}"
        )
        if mm_n:
            table.add(
                "mailmerge",
                mm_sink,
                f"{mm_wall:.2f}",
                f"{mm_rate:.0f}",
                f"{mm.peak_rss_mb:.0f}",
                f"{mm.cpu:.1f}",
            )
        table.print()
        print(f"\nmessage size: {len(eml)} bytes; statusmail reported sent={sm_sent}")
        ratios = common.Table("ratios (target)")
        ratios.add("ratio", "value", "target", "verdict")
        r_floor = sm_rate / fl_rate if fl_rate else 0
        ratios.add(
            "statusmail / floor", f"{r_floor:.2f}", ">= 0.80", common.verdict(r_floor >= 0.8)
        )
        if mm_rate:
            r_mm = sm_rate / mm_rate
            ratios.add(
                "statusmail / mailmerge", f"{r_mm:.2f}", ">= 2.00", common.verdict(r_mm >= 2)
            )
        ratios.print()

        if args.py_spy:
            out = Path(args.py_spy).resolve()
            fmt = "raw" if out.suffix == ".txt" else "speedscope"
            common.fresh_ledger(config)
            with common.SmtpSink() as sink:
                common.configure(config, port=sink.port, concurrency=conc)
                prof = common.run_child(
                    common.py_spy_argv(
                        out,
                        *common.statusmail_argv(
                            "send", common.ENTRY, "--yes", "--json", "--config", str(config)
                        ),
                    ),
                    env={"STATUSMAIL_UNSUBSCRIBE_SECRET": common.SECRET},
                    cwd=config.parent,
                )
            print(
                f"\npy-spy profile ({fmt}): {out} (exit {prof.returncode}, "
                f"{prof.wall:.1f}s under the profiler)"
            )
        return 0
    finally:
        common.remove_unless_kept(tmp, args.keep)


if __name__ == "__main__":
    sys.exit(main())
