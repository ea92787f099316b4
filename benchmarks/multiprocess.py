#!/usr/bin/env python3
"""Sender processes on one host (issue 22): one ``statusmail send`` with
``sending.processes`` 1 and 2, the ledger in SQLite and in PostgreSQL, N recipients
(default 20,000) at 8 connections per process, unpaced, against an SMTP sink on the same
machine (Postfix's smtp-sink when installed, else ``fastsink.py``).

Every configuration starts from an empty ledger (a fresh SQLite file, a fresh
PostgreSQL schema); repetitions are interleaved. The clock runs from starting the
command to its exit (start-up, selection and the helpers' start-up included). Reported:
msg/s (median, min–max), the PostgreSQL run against the SQLite run with the same
number of processes (target ≥ 0.8), and whether everyone was sent once (the ledger's
sent rows, the sink's message count).

    python benchmarks/multiprocess.py [--recipients 20000] [--repeat 3] [--concurrency 8]
        [--postgres postgresql://127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from workers import admin, ledger_counts, schema_url

ENTRY = common.ENTRY
HERE = Path(__file__).resolve().parent


class Sink:
    """smtp-sink if Postfix is there, else fastsink.py; ``messages()`` so far."""

    def __init__(self) -> None:
        self.smtp_sink: common.SmtpSink | None = None
        self.fast: subprocess.Popen[str] | None = None
        self.counted = 0
        if Path(common.SMTP_SINK).exists():
            self.smtp_sink = common.SmtpSink()
            self.port = self.smtp_sink.port
            self.name = "smtp-sink"
        else:
            self._start_fast()
            self.name = "fastsink.py"

    def _start_fast(self) -> None:
        self.fast = subprocess.Popen(
            [sys.executable, str(HERE / "fastsink.py")],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.fast.stdout is not None
        self.port = int(self.fast.stdout.readline().split()[1])

    def messages(self) -> int:
        """Messages taken since the last call (fastsink counts only at its end: it is
        restarted on the same port)."""
        if self.smtp_sink is not None:
            now = self.smtp_sink.messages()
            taken, self.counted = now - self.counted, now
            return taken
        assert self.fast is not None and self.fast.stdout is not None
        self.fast.terminate()
        taken = int(self.fast.stdout.read().split()[-1])
        self.fast.wait()
        port = self.port
        self.fast = subprocess.Popen(
            [sys.executable, str(HERE / "fastsink.py"), "--port", str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.fast.stdout is not None
        self.fast.stdout.readline()
        return taken

    def close(self) -> None:
        if self.smtp_sink is not None:
            self.smtp_sink.stop()
        if self.fast is not None:
            self.fast.terminate()
            self.fast.wait()


def set_processes(config: Path, processes: int) -> None:
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["sending"]["processes"] = processes
    config.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


def run(config: Path, ledger: str) -> tuple[float, float, dict[str, int], int]:
    """(wall seconds, CPU seconds of the command and its helpers, counts, exit code)."""
    env = {
        **os.environ,
        "STATUSMAIL_UNSUBSCRIBE_SECRET": common.SECRET,
        "STATUSMAIL_LEDGER": ledger,
    }
    argv = common.statusmail_argv("send", ENTRY, "--yes", "--config", str(config))
    before = os.times()
    start = time.perf_counter()
    child = subprocess.run(
        argv, env=env, cwd=config.parent, stdin=subprocess.DEVNULL, capture_output=True
    )
    wall = time.perf_counter() - start
    after = os.times()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    if child.returncode:
        print(child.stderr.decode("utf-8", "replace")[-2000:], file=sys.stderr)
    return wall, cpu, ledger_counts(ledger), child.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("STATUSMAIL_TEST_POSTGRES", "postgresql://127.0.0.1:5432/test"),
    )
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="statusmail-multiprocess-"))
    config = common.make_project(root / "project", args.recipients)
    sink = Sink()
    print(f"# multiprocess: {args.recipients} recipients, {args.concurrency} connections each")
    print(f"# {common.machine()}; {common.load()}; revision {common.revision()}; {sink.name}")
    rates: dict[str, common.Stats] = {}
    cpus: dict[str, common.Stats] = {}
    complete: dict[str, bool] = {}
    try:
        common.configure(config, port=sink.port, concurrency=args.concurrency)
        for repetition in range(args.repeat):
            for engine in ("sqlite", "pg"):
                for processes in (1, 2):
                    label = f"{engine}, {processes}"
                    set_processes(config, processes)
                    schema = None
                    if engine == "sqlite":
                        ledger = str(root / f"ledger-{repetition}-{processes}.db")
                    else:
                        schema, ledger = schema_url(args.postgres)
                        admin(args.postgres, f"CREATE SCHEMA {schema}")
                    try:
                        wall, cpu, counts, code = run(config, ledger)
                    finally:
                        if schema:
                            admin(args.postgres, f"DROP SCHEMA {schema} CASCADE")
                    received = sink.messages()
                    sent = counts["sent"]
                    ok = code == 0 and counts.get("pending", 0) == 0 and received == sent
                    complete[label] = complete.get(label, True) and ok
                    rates.setdefault(label, common.Stats()).add(sent / wall)
                    cpus.setdefault(label, common.Stats()).add(cpu / max(sent, 1) * 1e6)
                    print(
                        f"  {label:10} rep {repetition + 1}: {sent / wall:7.0f} msg/s,"
                        f" {cpu / max(sent, 1) * 1e6:5.0f} us CPU/msg"
                        f" ({sent} sent, {received} at the sink, exit {code})",
                        flush=True,
                    )
    finally:
        sink.close()
    table = common.Table("sender processes on one host (median (min–max))")
    table.add("ledger, processes", "msg/s", "CPU us/msg", "PG ÷ SQLite", "everyone once")
    for label, stats in rates.items():
        engine, processes = label.split(", ")
        ratio = stats.median / rates[f"sqlite, {processes}"].median
        table.add(label, stats.show(), cpus[label].show(), f"{ratio:.2f}", complete[label])
    table.print()
    common.remove_unless_kept(root, keep=False)


if __name__ == "__main__":
    main()
