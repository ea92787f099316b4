#!/usr/bin/env python3
"""What `ledger.durability: full` costs (issue 21, item 7): `statusmail send --yes` of N
recipients (default 2,000) with a SQLite ledger at `normal` and at `full`, to Postfix's
smtp-sink on 127.0.0.1 and to the maildir outbox.

The two settings alternate within each repetition (normal first in odd ones, full first
in even ones), each run from an empty ledger and outbox; reported are the medians (and
min–max) of msg/s over the whole run (start-up and selection included, the same for
both). One more run of each setting under `strace -f --seccomp-bpf` counts the syncs
(fsync and fdatasync) of the ledger's write-ahead log, its file and its folder, the
commits written to the log (its commit frames), and the longest stretch of commits, and
of messages (maildir: each message file is synced once), between two syncs of the log:
what a power loss could take back at worst.

    python benchmarks/durability.py [--recipients 2000] [--repeat 5] [--concurrency 8]
        [--transport smtp,maildir] [--keep]

Needs Postfix's smtp-sink (see README) for smtp and strace for the counts.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

ENTRY = common.ENTRY
SETTINGS = ("normal", "full")
# strace -y -xx -T: the call, its file's path and the first bytes written, all in hex,
# and the seconds the call took, on its line or on the line that resumes it.
CALL = re.compile(
    r"^(?P<pid>\d+) +(?P<call>pwrite64|fsync|fdatasync)\(\d+<(?P<path>(?:\\x[0-9a-f]{2})*)>"
    r'(?:, "(?P<data>(?:\\x[0-9a-f]{2})*)"(?:\.\.\.)?, (?P<size>\d+), \d+)?'
)
RESUMED = re.compile(r"^(?P<pid>\d+) +<\.\.\. \w+ resumed>")
TOOK = re.compile(r"<(?P<seconds>\d+\.\d+)>$")
FRAME_HEADER = 24  # a frame of the write-ahead log: page number, then pages after a commit


def choose(config: Path, durability: str) -> None:
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["ledger"] = {"durability": durability}
    config.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


def sent(config: Path) -> int:
    from statusmail.ledger import Ledger

    with Ledger(config.parent / "statusmail.db", readonly=True) as ledger:
        return ledger.counts(ENTRY)["sent"]


def send(config: Path, timeout: float) -> tuple[float, float]:
    """One send from nothing: its msg/s and CPU seconds. Exits unless everyone was sent."""
    common.fresh_ledger(config)
    child = common.run_statusmail(config, "send", ENTRY, "--yes", timeout=timeout)
    if child.returncode != 0:
        sys.exit(f"send exited {child.returncode}: {child.stderr[-2000:]}")
    return sent(config) / child.wall, child.cpu


def sync_latency(folder: Path, n: int = 200) -> float:
    """This disk's fdatasync of one freshly written 4 KB page, median milliseconds: what
    each commit of ``full`` waits for (in the event loop, so every connection waits)."""
    path = folder / "latency.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    waits = common.Stats()
    try:
        for i in range(n):
            os.pwrite(fd, b"x" * 4096, i * 4096)
            start = time.perf_counter()
            os.fdatasync(fd)
            waits.add((time.perf_counter() - start) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    return waits.median


@dataclass
class Counts:
    """The syncs and commits of one traced send."""

    log_syncs: int = 0  # fsync/fdatasync of statusmail.db-wal
    file_syncs: int = 0  # of statusmail.db
    folder_syncs: int = 0  # of the ledger's folder (the log created)
    other_syncs: int = 0  # the outbox's message files and folders
    ledger_sync_seconds: float = 0.0  # spent in the ledger's syncs
    commits: int = 0  # commit frames written to the log
    longest_commits: int = 0  # the most commits between two syncs of the log
    longest_messages: int = 0  # maildir: the most message files synced meanwhile

    @property
    def ledger_syncs(self) -> int:
        return self.log_syncs + self.file_syncs + self.folder_syncs


@dataclass
class Call:
    name: str
    path: str
    data: bytes
    size: int
    seconds: float = 0.0


def calls(trace: str) -> list[Call]:
    """The traced calls in the order they were made, each with the time it took."""
    made: list[Call] = []
    unfinished: dict[str, Call] = {}
    for line in trace.splitlines():
        took = TOOK.search(line)
        found = CALL.match(line)
        if found:
            call = Call(
                found["call"],
                bytes.fromhex(found["path"].replace("\\x", "")).decode(),
                bytes.fromhex((found["data"] or "").replace("\\x", "")),
                int(found["size"] or 0),
            )
            made.append(call)
            if line.endswith("<unfinished ...>"):
                unfinished[found["pid"]] = call
            elif took:
                call.seconds = float(took["seconds"])
        elif (resumed := RESUMED.match(line)) and took and resumed["pid"] in unfinished:
            unfinished.pop(resumed["pid"]).seconds = float(took["seconds"])
    return made


def count(trace: str, ledger: Path) -> Counts:
    counts = Counts()
    log, commits, messages = f"{ledger}-wal", 0, 0
    for call in calls(trace):
        if call.name == "pwrite64":
            if call.path == log and call.size == FRAME_HEADER and call.data[4:8] != bytes(4):
                counts.commits += 1
                commits += 1
            continue
        if call.path in (log, str(ledger), str(ledger.parent)):
            counts.ledger_sync_seconds += call.seconds
        if call.path == log:
            counts.log_syncs += 1
            counts.longest_commits = max(counts.longest_commits, commits)
            counts.longest_messages = max(counts.longest_messages, messages)
            commits = messages = 0
        elif call.path == str(ledger):
            counts.file_syncs += 1
        elif call.path == str(ledger.parent):
            counts.folder_syncs += 1
        else:
            counts.other_syncs += 1
            messages += "/outbox/tmp/" in call.path
    counts.longest_commits = max(counts.longest_commits, commits)
    counts.longest_messages = max(counts.longest_messages, messages)
    return counts


def traced(config: Path, timeout: float) -> Counts:
    strace = shutil.which("strace")
    if strace is None:
        sys.exit("strace not found: apt-get install strace")
    common.fresh_ledger(config)
    trace = config.parent / "strace.txt"
    argv = [strace, "-f", "--seccomp-bpf", "-T", "-y", "-xx", "-s", "8", "-o", str(trace)]
    argv += ["-e", "trace=pwrite64,fsync,fdatasync", "--"]
    argv += common.statusmail_argv("send", ENTRY, "--yes", "--config", str(config))
    child = common.run_child(
        argv,
        env={"STATUSMAIL_UNSUBSCRIBE_SECRET": common.SECRET},
        cwd=config.parent,
        timeout=timeout,
    )
    if child.returncode != 0:
        sys.exit(f"traced send exited {child.returncode}: {child.stderr[-2000:]}")
    counts = count(trace.read_text(encoding="utf-8"), config.parent / "statusmail.db")
    trace.unlink()
    return counts


@dataclass
class Measured:
    rates: dict[str, common.Stats]  # msg/s
    cpu: dict[str, common.Stats]  # seconds
    counts: dict[str, Counts]


def measure(config: Path, transport: str, repeat: int, timeout: float) -> Measured:
    measured = Measured(
        {s: common.Stats() for s in SETTINGS}, {s: common.Stats() for s in SETTINGS}, {}
    )
    for repetition in range(repeat):
        order = SETTINGS if repetition % 2 == 0 else SETTINGS[::-1]
        for setting in order:
            choose(config, setting)
            rate, cpu = send(config, timeout)
            measured.rates[setting].add(rate)
            measured.cpu[setting].add(cpu)
            print(
                f"  {transport:7} {setting:6} rep {repetition + 1}: {rate:6.0f} msg/s, "
                f"{cpu:.2f} s CPU",
                flush=True,
            )
    for setting in SETTINGS:
        choose(config, setting)
        measured.counts[setting] = traced(config, timeout)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--transport", default="smtp,maildir")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    n = args.recipients
    print(f"# durability: {n} recipients, concurrency {args.concurrency}, rate unlimited")
    print(f"# {common.machine()}; {common.load()}")
    root = Path(tempfile.mkdtemp(prefix="statusmail-durability-"))
    config = common.make_project(root / "project", n)
    results: dict[str, Measured] = {}
    try:
        for transport in args.transport.split(","):
            if transport == "smtp":
                with common.SmtpSink() as sink:
                    common.configure(config, port=sink.port, concurrency=args.concurrency)
                    results[transport] = measure(config, transport, args.repeat, args.timeout)
            else:
                common.configure(config, transport="maildir", concurrency=args.concurrency)
                results[transport] = measure(config, transport, args.repeat, args.timeout)
        latency = sync_latency(root)
    finally:
        common.remove_unless_kept(root, args.keep)

    table = common.Table(f"{n} messages, msg/s median (min–max) over {args.repeat} runs")
    table.add(
        "transport",
        "durability",
        "msg/s",
        "÷ normal",
        "CPU s",
        "ledger syncs: log+file+folder",
        "s in them",
        "commits",
        "most commits per log sync",
        "most messages per log sync",
        "other syncs",
    )
    for transport, measured in results.items():
        rates = measured.rates
        for setting in SETTINGS:
            c = measured.counts[setting]
            table.add(
                transport,
                setting,
                rates[setting].show(),
                f"{rates[setting].median / rates['normal'].median:.2f}",
                measured.cpu[setting].show("{:.2f}"),
                f"{c.ledger_syncs}: {c.log_syncs}+{c.file_syncs}+{c.folder_syncs}",
                f"{c.ledger_sync_seconds:.2f}",
                c.commits,
                c.longest_commits,
                c.longest_messages if transport == "maildir" else "-",
                c.other_syncs,
            )
    table.print()
    print(f"\nfdatasync of a 4 KB page on this disk: {latency:.2f} ms (median of 200)")
    print(f"# {common.load()}")


if __name__ == "__main__":
    main()
