#!/usr/bin/env python3
"""Loopback throughput and CPU per message: statusmail against the floors, Postfix's
smtp-source and mailmerge, on smtp-sink, in interleaved repetitions.

N recipients (default 20,000) of update-2020-04-21, each sender to a fresh smtp-sink on
127.0.0.1, at each concurrency C (default 1 and 8), repeated R times (default 5) in the
order statusmail, raw floor, sendmail floor, smtp-source (then mailmerge once per
repetition), so that a change in the machine's load hits all of them alike:

  statusmail       `statusmail send update-2020-04-21 --yes --json`, a child process,
                   everything included (start-up, selection into the ledger, rendering,
                   the ledger's commits). Its CPU is also read from /proc when it logs
                   "delivering through" (the first streamed batch is in the ledger and
                   the connections are open), which splits start-up from delivery (the
                   rest of the selection streams in a thread meanwhile and counts as
                   delivery).
  raw floor        benchmarks/floor.py --mode raw, a child: the messages statusmail builds
                   for this list (by its own factory, 8bit as smtp-sink offers 8BITMIME,
                   in the list's mix of variants), sent over C reused aiosmtplib sessions
                   with MAIL, RCPT, DATA and the bytes written as they are: the path
                   statusmail uses. Its loop alone is timed (getrusage around it).
  sendmail floor   the same through aiosmtplib's SMTP.sendmail(), whose line-ending and
                   dot-stuffing pass statusmail skips (the floor published before).
  smtp-source      Postfix's C load generator, the same size of message (-F, the median
                   variant), C sessions each reused (-d): the machine's limit.
  mailmerge        (PyPI) one message per row, one connection per message, sequential:
                   --mailmerge-n rows (default 1,000; its rate does not depend on N).

Each figure is the median of the repetitions with (min–max). CPU per message is user +
system time of the sending process divided by the messages the sink counted.
Targets (issue 14): statusmail's CPU per message <= 1.2x the raw floor's at C=1 and C=8;
its throughput >= 0.85x the raw floor's.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

SMTP_SOURCE = "/usr/sbin/smtp-source"
Figures = dict[str, common.Stats]


def mailmerge_inputs(
    root: Path, eml: bytes, subscribers: Path, n: int, port: int, program: str | None = None
) -> list[str]:
    """Template (the .eml with To templated), database (email,name) and server config;
    ``program``: the mailmerge to run (default: found next to this Python or on PATH)."""
    root.mkdir(parents=True, exist_ok=True)
    text = eml.decode("ascii").replace("\r\n", "\n")  # a 7-bit build: smtplib wants ASCII
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
        program or common.tool("mailmerge"),
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


def run_statusmail(
    config: Path, n: int, conc: int, figures: Figures, src: Path | None = None
) -> None:
    """One run; ``src``: a source tree of statusmail to run instead of the installed one."""
    common.fresh_ledger(config)
    env = {"STATUSMAIL_UNSUBSCRIBE_SECRET": common.SECRET}
    if src is not None:
        env["PYTHONPATH"] = str(src / "src")
    with common.SmtpSink() as sink:
        common.configure(config, port=sink.port, concurrency=conc)
        run = common.run_marked(
            common.statusmail_argv(
                "send", common.ENTRY, "--yes", "--json", "--config", str(config)
            ),
            " delivering through ",
            env=env,
            cwd=config.parent,
        )
        got = common.sink_count(sink)
    child = run.child
    if child.returncode != 0 or got != n:
        print(
            f"  statusmail: exit {child.returncode}, sink got {got} of {n}\n{child.stderr[-1500:]}"
        )
    figures["msg/s"].add(got / child.wall)
    figures["CPU us/msg"].add(child.cpu / got * 1e6)
    figures["peak RSS MB"].add(child.peak_rss_mb)
    if run.mark_wall is not None and run.mark_cpu is not None:
        figures["delivery msg/s"].add(got / (child.wall - run.mark_wall))
        figures["delivery CPU us/msg"].add((child.cpu - run.mark_cpu) / got * 1e6)
        figures["before delivery s"].add(run.mark_wall)


def run_floor(messages: Path, n: int, conc: int, mode: str, figures: Figures) -> None:
    child, got = common.run_floor(messages, n, conc, mode)
    if child.returncode != 0 or got != n:
        print(
            f"  floor {mode}: exit {child.returncode}, sink got {got} of {n}\n"
            f"{child.stderr[-1500:]}"
        )
        return
    loop = json.loads(child.stdout.strip().splitlines()[-1])
    figures["msg/s"].add(got / loop["loop_wall"])
    figures["CPU us/msg"].add(loop["loop_cpu"] / got * 1e6)
    figures["process CPU us/msg"].add(child.cpu / got * 1e6)
    figures["peak RSS MB"].add(child.peak_rss_mb)


def run_smtp_source(message: Path, n: int, conc: int, figures: Figures) -> None:
    with common.SmtpSink() as sink:
        child = common.run_child(
            [
                SMTP_SOURCE,
                "-d",
                "-s",
                str(conc),
                "-m",
                str(n),
                "-f",
                "status@startmail.example",
                "-t",
                "user@example.net",
                "-F",
                str(message),
                f"127.0.0.1:{sink.port}",
            ]
        )
        got = common.sink_count(sink)
    if child.returncode != 0 or got != n:
        print(
            f"  smtp-source: exit {child.returncode}, sink got {got} of {n}\n{child.stderr[-500:]}"
        )
    figures["msg/s"].add(got / child.wall)
    figures["CPU us/msg"].add(child.cpu / max(got, 1) * 1e6)
    figures["process CPU us/msg"].add(child.cpu / max(got, 1) * 1e6)


def run_mailmerge(root: Path, eml: bytes, subscribers: Path, n: int, figures: Figures) -> None:
    with common.SmtpSink() as sink:
        argv = mailmerge_inputs(root, eml, subscribers, n, sink.port)
        child = common.run_child(argv, timeout=3600)
        got = common.sink_count(sink)
    if child.returncode != 0 or got != n:
        print(
            f"  mailmerge: exit {child.returncode}, sink got {got} of {n}\n{child.stderr[-1500:]}"
        )
    figures["msg/s"].add(got / child.wall)
    figures["CPU us/msg"].add(child.cpu / max(got, 1) * 1e6)
    figures["process CPU us/msg"].add(child.cpu / max(got, 1) * 1e6)
    figures["peak RSS MB"].add(child.peak_rss_mb)


def median_message(messages: list[common.BuiltMessage]) -> bytes:
    return sorted(messages, key=lambda m: len(m.data))[len(messages) // 2].data


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20000, help="recipients (default 20000)")
    parser.add_argument(
        "--concurrency", "-c", default="1,8", help="connections, comma-separated (default 1,8)"
    )
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions (default 5)")
    parser.add_argument(
        "--mailmerge-n", type=int, default=1000, help="rows mailmerge sends (default 1000)"
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        metavar="DIR",
        help="also run statusmail from this source tree in each repetition, as 'statusmail "
        "(baseline)' (e.g. `git archive COMMIT | tar -x -C DIR`: before and after, same run)",
    )
    parser.add_argument("--skip-mailmerge", action="store_true")
    parser.add_argument("--skip-smtp-source", action="store_true")
    parser.add_argument(
        "--py-spy",
        metavar="OUT",
        help="also record one statusmail run (at the last concurrency) with py-spy into OUT "
        "(.txt: collapsed stacks, else speedscope JSON); a separate run",
    )
    parser.add_argument(
        "--on-cpu",
        action="store_true",
        help="with --py-spy: only samples where a thread runs (CPU), not its waits",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    n = args.n
    levels = [int(c) for c in args.concurrency.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="sm-bench-loopback-"))
    print(
        f"loopback: N={n} concurrency={levels} reps={args.reps}  "
        f"({time.strftime('%Y-%m-%d %H:%M')}, {common.machine()})\nstart: {common.load()}"
    )
    try:
        config = common.configure(common.make_project(tmp / "project", n))
        subscribers = tmp / "project" / "subscribers" / "generated.csv"
        built = common.built_messages(config, 84, eight_bit=True)  # one period of the mix
        messages = common.write_messages(tmp / "messages.pickle", built)
        source_eml = tmp / "source.eml"  # smtp-source appends CRLF to each line
        source_eml.write_bytes(median_message(built).replace(b"\r\n", b"\n"))
        seven = median_message(common.built_messages(config, 84, eight_bit=False))
        sizes = [len(m.data) for m in built]
        print(
            f"messages: {len(built)} in the list's mix, {min(sizes)}–{max(sizes)} bytes, "
            f"mean {sum(sizes) / len(sizes):.0f}; {sum(m.eight_bit for m in built)} of them 8-bit"
        )

        results: dict[tuple[str, int], Figures] = defaultdict(lambda: defaultdict(common.Stats))
        for rep in range(args.reps):
            print(f"repetition {rep + 1}/{args.reps}: {common.load()}", flush=True)
            for conc in levels:
                run_statusmail(config, n, conc, results["statusmail", conc])
                if args.baseline_src:
                    baseline = results["statusmail (baseline)", conc]
                    run_statusmail(config, n, conc, baseline, args.baseline_src.resolve())
                run_floor(messages, n, conc, "raw", results["raw floor", conc])
                run_floor(messages, n, conc, "sendmail", results["sendmail() floor", conc])
                if not args.skip_smtp_source:
                    run_smtp_source(source_eml, n, conc, results["smtp-source", conc])
            if not args.skip_mailmerge:
                run_mailmerge(
                    tmp / "mailmerge", seven, subscribers, args.mailmerge_n, results["mailmerge", 1]
                )
        print(f"end: {common.load()}")

        table = common.Table(
            "loopback, smtp-sink on 127.0.0.1: median (min–max) of the repetitions"
        )
        table.add("sender", "C", "msg/s", "CPU us/msg", "process CPU us/msg", "peak RSS MB")
        for (sender, conc), figures in results.items():
            table.add(
                sender,
                conc if sender != "mailmerge" else "1/msg",
                figures["msg/s"].show(),
                figures["CPU us/msg"].show(),
                figures["process CPU us/msg"].show() if "process CPU us/msg" in figures else "=",
                figures["peak RSS MB"].show() if "peak RSS MB" in figures else "-",
            )
        table.print()
        print(
            "\nCPU us/msg: floors, the send loop alone; statusmail and the rest, the whole "
            "process.\nprocess CPU us/msg: the floors' whole process (start-up included)."
        )
        phases = common.Table("statusmail by phase: median (min–max)")
        phases.add("", "C", "before delivery s", "delivery msg/s", "delivery CPU us/msg")
        for label in ("statusmail", "statusmail (baseline)"):
            for conc in levels:
                if (label, conc) not in results:
                    continue
                figures = results[label, conc]
                phases.add(
                    label,
                    conc,
                    figures["before delivery s"].show("{:.2f}"),
                    figures["delivery msg/s"].show(),
                    figures["delivery CPU us/msg"].show(),
                )
        phases.print()

        ratios = common.Table("ratios of medians (target)")
        ratios.add("ratio", "C", "value", "target", "verdict")
        for conc in levels:
            sm, raw = results["statusmail", conc], results["raw floor", conc]
            cpu_same = sm["delivery CPU us/msg"].median / raw["CPU us/msg"].median
            cpu_whole = sm["CPU us/msg"].median / raw["process CPU us/msg"].median
            speed = sm["msg/s"].median / raw["msg/s"].median
            speed_delivery = sm["delivery msg/s"].median / raw["msg/s"].median
            ratios.add(
                "CPU/msg: statusmail delivery / raw floor loop",
                conc,
                f"{cpu_same:.2f}",
                "<= 1.2",
                common.verdict(cpu_same <= 1.2),
            )
            ratios.add(
                "CPU/msg: statusmail process / raw floor process",
                conc,
                f"{cpu_whole:.2f}",
                "<= 1.2",
                common.verdict(cpu_whole <= 1.2),
            )
            ratios.add(
                "msg/s: statusmail (whole run) / raw floor",
                conc,
                f"{speed:.2f}",
                ">= 0.85",
                common.verdict(speed >= 0.85),
            )
            ratios.add(
                "msg/s: statusmail delivery / raw floor",
                conc,
                f"{speed_delivery:.2f}",
                ">= 0.85",
                common.verdict(speed_delivery >= 0.85),
            )
            if ("statusmail (baseline)", conc) in results:
                base = results["statusmail (baseline)", conc]
                ratios.add(
                    "CPU/msg: statusmail process / baseline process",
                    conc,
                    f"{sm['CPU us/msg'].median / base['CPU us/msg'].median:.2f}",
                    "-",
                    "-",
                )
                ratios.add(
                    "msg/s: statusmail / baseline",
                    conc,
                    f"{sm['msg/s'].median / base['msg/s'].median:.2f}",
                    "-",
                    "-",
                )
            sendmail = results["sendmail() floor", conc]
            ratios.add(
                "msg/s: raw floor / sendmail() floor",
                conc,
                f"{raw['msg/s'].median / sendmail['msg/s'].median:.2f}",
                "-",
                "-",
            )
            if ("smtp-source", conc) in results:
                source = results["smtp-source", conc]
                ratios.add(
                    "msg/s: raw floor / smtp-source",
                    conc,
                    f"{raw['msg/s'].median / source['msg/s'].median:.2f}",
                    "-",
                    "-",
                )
            if ("mailmerge", 1) in results:
                mm = results["mailmerge", 1]
                ratios.add(
                    "msg/s: statusmail / mailmerge",
                    conc,
                    f"{sm['msg/s'].median / mm['msg/s'].median:.1f}",
                    "-",
                    "-",
                )
        ratios.print()

        if args.py_spy:
            out = Path(args.py_spy).resolve()
            common.fresh_ledger(config)
            with common.SmtpSink() as sink:
                common.configure(config, port=sink.port, concurrency=levels[-1])
                prof = common.run_child(
                    common.py_spy_argv(
                        out,
                        *common.statusmail_argv(
                            "send", common.ENTRY, "--yes", "--json", "--config", str(config)
                        ),
                        on_cpu=args.on_cpu,
                    ),
                    env={"STATUSMAIL_UNSUBSCRIBE_SECRET": common.SECRET},
                    cwd=config.parent,
                )
            print(f"\npy-spy profile: {out} (exit {prof.returncode}, {prof.wall:.1f}s)")
        return 0
    finally:
        common.remove_unless_kept(tmp, args.keep)


if __name__ == "__main__":
    sys.exit(main())
