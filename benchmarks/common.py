"""Shared helpers for the statusmail benchmarks (run by hand, never by the test suite).

- ``make_project``: a copy of the sample project with a generated subscriber list.
- ``configure``: point the copied config at a transport (smtp on 127.0.0.1, or maildir).
- ``run_child``: run a command, return its wall time, CPU time (``os.wait4`` gives the
  rusage of exactly that child) and peak RSS (VmHWM from /proc, see ``peak_rss``).
- ``SmtpSink``: Postfix's ``smtp-sink`` on 127.0.0.1 and a free port, with its counters.
- ``floor_send``: the minimal aiosmtplib loop (pre-built message, reused connections).
- ``factory_and_recipients``, ``built_messages``: statusmail's own message factory and
  the first rows of a list; the messages it builds for them, for the floors to send.
- ``per_call_us``: CPU per call of a function in a tight loop.
- ``run_marked``: a child whose CPU time is also read from /proc when a line appears on
  its stderr (statusmail's "selected" line: delivery starts).
- ``Stats``: min/median/max over repetitions.

Everything talks to 127.0.0.1 only. Every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import compileall
import dataclasses
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

REPO = Path(__file__).resolve().parent.parent
ENTRY = "update-2020-04-21"
SECRET = "benchmark-secret-long-enough-for-statusmail"
SAMPLE_ITEMS = ("statusmail.yaml", "regions.yaml", "updates", "templates")
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"

# Locales as subscribers write them (several spellings; '' falls back by region) and
# the audience regions of update-2020-04-21. RU has an access block, BY/KZ may not.
LOCALES = ("en", "ru", "ru-RU", "", "en", "ru")
REGIONS = ("RU", "BY", "KZ", "RU")
EN_NAMES = ("Alex Morgan", "Sam Lee", "", "Jordan O'Neil")
RU_NAMES = ("Анна Петрова", "Иван Смирнов", "", "Кузнецова, Ольга")


def subscriber_row(i: int, *, mixed: bool = True) -> str:
    """One CSV row selected by update-2020-04-21 (active, service-status, RU/BY/KZ)."""
    locale = LOCALES[i % len(LOCALES)]
    region = REGIONS[(i // 7) % len(REGIONS)]
    names = RU_NAMES if locale.startswith("ru") else EN_NAMES
    name = names[(i // 3) % len(names)]
    if '"' in name or "," in name:
        name = '"' + name.replace('"', '""') + '"'
    topics = "service-status;product-news" if i % 5 == 0 else "service-status"
    if not mixed:
        locale, region, name, topics = "en", "RU", "", "service-status"
    return f"user{i:07d}@example.net,{name},{locale},{region},{topics},active\n"


def write_subscribers(path: Path, n: int, *, extra_inactive: int = 0) -> Path:
    """Write ``n`` selected subscribers (plus ``extra_inactive`` unsubscribed rows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", buffering=1 << 20) as handle:
        handle.write("email,name,locale,region,topics,status\n")
        chunk: list[str] = []
        for i in range(n):
            chunk.append(subscriber_row(i))
            if len(chunk) >= 10000:
                handle.write("".join(chunk))
                chunk.clear()
        handle.write("".join(chunk))
        for j in range(extra_inactive):
            handle.write(f"gone{j:07d}@example.net,,en,RU,service-status,unsubscribed\n")
    return path


def make_project(root: Path, n: int, *, subscribers_csv: Path | None = None) -> Path:
    """Copy the sample project into ``root`` with ``n`` generated subscribers only.

    ``subscribers_csv`` (an existing generated list) is symlinked instead of written.
    Returns the config path.
    """
    root.mkdir(parents=True, exist_ok=True)
    for item in SAMPLE_ITEMS:
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, root / item, dirs_exist_ok=True)
        else:
            shutil.copy2(src, root / item)
    subs = root / "subscribers"
    subs.mkdir(exist_ok=True)
    if subscribers_csv is not None:
        (subs / "generated.csv").symlink_to(subscribers_csv.resolve())
    else:
        write_subscribers(subs / "generated.csv", n)
    return root / "statusmail.yaml"


def configure(
    config: Path,
    *,
    transport: str = "smtp",
    port: int = 25,
    rate: float = 0,
    concurrency: int = 8,
    timeout: float = 30,
    processes: int | None = None,
) -> Path:
    """Point ``config`` at the relay; ``processes`` sets ``sending.processes`` (unset:
    statusmail's default, which depends on the cores and the DKIM key)."""
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["transport"] = transport
    data["smtp"] = {"host": "127.0.0.1", "port": port, "security": "none", "timeout": timeout}
    data["sending"] = {
        "rate": rate,
        "concurrency": concurrency,
        "max_attempts": 5,
        "stop_after_failures": 0.5,
    }
    if processes is not None:
        data["sending"]["processes"] = processes
    config.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return config


def fresh_ledger(config: Path) -> None:
    """Remove the ledger and outbox so that the next send starts from nothing."""
    for p in config.parent.glob("statusmail.db*"):
        p.unlink()
    shutil.rmtree(config.parent / "outbox", ignore_errors=True)


# -- children ------------------------------------------------------------------


def peak_rss(pid: int) -> float:
    """The child's peak RSS so far in MB: VmHWM of /proc/PID/status, 0 once it is gone.

    Not ``ru_maxrss`` from ``os.wait4``: Linux carries the high-water mark of the memory
    a process had before its exec into it, and a child forked (or vforked) by this
    Python starts from this process's memory, so every child would show at least this
    benchmark's own peak. Polled while the child runs (VmHWM only grows)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


@dataclass
class ChildResult:
    returncode: int
    wall: float
    peak_rss_mb: float
    stdout: str
    stderr: str
    cpu: float = 0.0  # user + system seconds of the child

    def json(self) -> dict[str, Any]:
        text = self.stdout.strip()
        start = text.find("{")
        return json.loads(text[start:]) if start >= 0 else {}


def _wait_measured(proc: subprocess.Popen[bytes], deadline: float) -> tuple[int, Any, float]:
    """Wait for ``proc`` (killed at ``deadline``, a perf_counter time), polling its peak
    RSS every 5 ms: (wait status, its rusage from ``os.wait4``, peak RSS in MB)."""
    peak = 0.0
    while True:
        peak = max(peak, peak_rss(proc.pid))
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            return status, usage, peak
        if time.perf_counter() > deadline:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
            return status, usage, peak
        time.sleep(0.005)


def run_child(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 3600,
) -> ChildResult:
    """Run ``argv``: wall time, peak RSS (MB, from /proc) and CPU time (``os.wait4``)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
        status, usage, peak = _wait_measured(proc, start + timeout)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ChildResult(
            proc.returncode,
            wall,
            peak,
            out.read().decode("utf-8", "replace"),
            err.read().decode("utf-8", "replace"),
            usage.ru_utime + usage.ru_stime,
        )


def statusmail_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "statusmail", *args]


def run_statusmail(config: Path, *args: str, timeout: float = 3600) -> ChildResult:
    return run_child(
        statusmail_argv(*args, "--config", str(config)),
        env={"STATUSMAIL_UNSUBSCRIBE_SECRET": SECRET},
        cwd=config.parent,
        timeout=timeout,
    )


@dataclass
class MarkedResult:
    child: ChildResult
    mark_wall: float | None = None  # seconds from start to the marker line
    mark_cpu: float | None = None  # user + system seconds of the child at that moment


def proc_cpu(pid: int) -> float | None:
    """user + system seconds of ``pid`` so far, from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_marked(
    argv: list[str],
    marker: str,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 3600,
) -> MarkedResult:
    """``run_child``, and the child's wall and CPU time when ``marker`` first appears in
    a line of its stderr (read as it comes; /proc has 10 ms resolution)."""
    import threading

    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
        result = MarkedResult(ChildResult(0, 0.0, 0.0, "", ""))
        lines: list[bytes] = []

        def read() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                if result.mark_wall is None and marker.encode() in line:
                    result.mark_cpu = proc_cpu(proc.pid)
                    result.mark_wall = time.perf_counter() - start
                lines.append(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        status, usage, peak = _wait_measured(proc, start + timeout)
        wall = time.perf_counter() - start
        reader.join(10)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        result.child = ChildResult(
            proc.returncode,
            wall,
            peak,
            out.read().decode("utf-8", "replace"),
            b"".join(lines).decode("utf-8", "replace"),
            usage.ru_utime + usage.ru_stime,
        )
        return result


# -- smtp-sink -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SmtpSink:
    """``smtp-sink -c`` on 127.0.0.1:<free port>; ``messages`` parses its counters."""

    def __init__(self, *extra: str, backlog: int = 1000, max_conn: int = 256) -> None:
        if not Path(SMTP_SINK).exists():
            sys.exit("smtp-sink not found: apt-get install postfix (see benchmarks/README.md)")
        self.port = free_port()
        self._out = tempfile.TemporaryFile()  # noqa: SIM115 (closed in __exit__)
        argv = [SMTP_SINK, "-c", "-m", str(max_conn)]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]
        argv += [*extra, f"127.0.0.1:{self.port}", str(backlog)]
        self.proc = subprocess.Popen(argv, stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError("smtp-sink did not start")

    def messages(self) -> int:
        self._out.seek(0)
        found = re.findall(rb"mesg=(\d+)", self._out.read())
        return int(found[-1]) if found else 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> SmtpSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._out.close()


# -- the floor -----------------------------------------------------------------


async def _floor(port: int, data: bytes, n: int, connections: int, timeout: float) -> int:
    import aiosmtplib

    sent = 0
    counter = iter(range(n))

    async def worker() -> None:
        nonlocal sent
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=timeout)
        await smtp.connect()
        try:
            for i in counter:  # shared iterator: each index taken once
                await smtp.sendmail("status@startmail.example", [f"user{i:07d}@example.net"], data)
                sent += 1
        finally:
            await smtp.quit()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return sent


def floor_send(
    port: int, data: bytes, n: int, connections: int, timeout: float = 30
) -> tuple[int, float, float]:
    """Send ``data`` ``n`` times over ``connections`` reused aiosmtplib sessions.

    Returns (messages sent, seconds, CPU seconds of this process). Runs in this
    process: the time excludes interpreter start-up, so it is the strictest floor.
    """
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    sent = asyncio.run(_floor(port, data, n, connections, timeout))
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return sent, wall, cpu


def sample_message(root: Path, n: int = 50) -> bytes:
    """One message statusmail produced (a dry-run preview .eml) for the floor to send.

    The preview is rendered for a made-up address; the size differs from a real
    recipient's by a few bytes only.
    """
    config = make_project(root, n)
    result = run_statusmail(
        config, "send", ENTRY, "--dry-run", "--json", "--preview-dir", str(root / "previews")
    )
    if result.returncode != 0:
        raise RuntimeError(f"dry run failed: {result.stderr}")
    emls = sorted((root / "previews" / ENTRY).glob("*.eml"), key=lambda p: p.stat().st_size)
    # The median-size variant (variants differ by the access block).
    data = emls[len(emls) // 2].read_bytes()
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class BuiltMessage(NamedTuple):
    sender: str  # the envelope sender statusmail gives it (the VERP return path)
    data: bytes
    eight_bit: bool  # sent with BODY=8BITMIME


def factory_and_recipients(config: Path, count: int) -> tuple[Any, list[Any]]:
    """statusmail's own ``MessageFactory`` for the project's entry, and the first
    ``count`` selected recipients of its list (the list's own mix of variants), each with
    its row number as a claim from the ledger gives it."""
    from statusmail.content.message import MessageFactory
    from statusmail.content.render import Renderer
    from statusmail.domain import Recipient
    from statusmail.project.config import load_config
    from statusmail.project.entries import find_entry
    from statusmail.project.regions import load_regions
    from statusmail.project.selection import select
    from statusmail.project.tokens import Keyring

    loaded = load_config(config)
    entry = find_entry(loaded.paths.updates, ENTRY)
    renderer = Renderer(
        loaded.paths.templates, load_regions(loaded.paths.regions), loaded.sender.name
    )
    factory = MessageFactory(loaded, entry, renderer, Keyring(SECRET.encode()))
    recipients: list[Recipient] = []
    for row, item in enumerate(
        select(entry, loaded.paths.subscribers, loaded.default_locale_by_region), start=1
    ):
        if isinstance(item, Recipient):
            recipients.append(dataclasses.replace(item, row=row))
            if len(recipients) == count:
                break
    return factory, recipients


def built_messages(config: Path, count: int, *, eight_bit: bool) -> list[BuiltMessage]:
    """What statusmail builds for the first ``count`` selected rows of the project's list
    (so the variants and sizes come in the list's own mix), by its own factory, for a
    connection that takes 8-bit bodies or not."""
    factory, recipients = factory_and_recipients(config, count)
    built: list[BuiltMessage] = []
    for recipient in recipients:
        envelope = factory.build(recipient, eight_bit=eight_bit).envelope
        assert envelope.shape is not None
        built.append(BuiltMessage(envelope.sender, envelope.data, envelope.shape.eight_bit))
    return built


FLOOR = Path(__file__).resolve().parent / "floor.py"


def write_messages(path: Path, built: list[BuiltMessage]) -> Path:
    """The messages for ``floor.py --messages``."""
    import pickle

    path.write_bytes(pickle.dumps([tuple(m) for m in built]))
    return path


def run_floor(messages: Path, n: int, conc: int, mode: str) -> tuple[ChildResult, int]:
    """``floor.py`` as a child sending ``n`` of ``messages`` over ``conc`` connections to
    a fresh smtp-sink: the child (its JSON line: the loop's wall and CPU) and how many
    messages the sink counted."""
    with SmtpSink() as sink:
        child = run_child(
            [
                sys.executable,
                str(FLOOR),
                *("--port", str(sink.port), "--messages", str(messages), "--n", str(n)),
                *("--concurrency", str(conc), "--mode", mode),
            ]
        )
        got = sink_count(sink)
    return child, got


def sink_count(sink: SmtpSink) -> int:
    """The messages ``sink`` counted, once the sender is done."""
    time.sleep(0.2)  # smtp-sink prints its counter when the last session quits
    return sink.messages()


def per_call_us(fn: Callable[[], object], n: int) -> float:
    """CPU microseconds per call of ``fn`` over ``n`` calls (this process)."""
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n * 1e6


# -- reporting -----------------------------------------------------------------


def archived(rev: str, where: Path, *paths: str) -> Path:
    """``rev`` of this repository (only ``paths`` of it, if given) copied into ``where``
    with git archive, so that edits to the checkout while a benchmark runs change
    nothing. Its package is compiled, as pip compiles an installed one: with
    $PYTHONDONTWRITEBYTECODE set (as on these machines) every statusmail process, its
    signer and its helpers would compile it again, a start-up cost no installation has."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev, *paths],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True, timeout=120)
    compileall.compile_dir(where / "src", quiet=2)
    return where


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.node()} · {os.cpu_count()} cores · {cpu} · "
        f"Python {platform.python_version()} · statusmail {revision()}"
    )


def revision() -> str:
    """The checked-out commit of the repository, with ``+dirty`` if src/ has changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return (head or "?") + ("+dirty" if dirty else "")


@dataclass
class Table:
    title: str
    rows: list[tuple[str, ...]] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append(tuple(str(c) for c in cells))

    def print(self) -> None:
        print(f"\n## {self.title}")
        if not self.rows:
            return
        widths = [max(len(r[i]) for r in self.rows) for i in range(len(self.rows[0]))]
        for j, row in enumerate(self.rows):
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())
            if j == 0:
                print("  ".join("-" * w for w in widths))


@dataclass
class Stats:
    """min / median / max of one figure over the repetitions."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        import statistics

        return statistics.median(self.values) if self.values else float("nan")

    def show(self, fmt: str = "{:.0f}") -> str:
        if not self.values:
            return "-"
        low, mid, high = min(self.values), self.median, max(self.values)
        return f"{fmt.format(mid)} ({fmt.format(low)}–{fmt.format(high)})"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def tool(name: str) -> str:
    """A console script next to this interpreter, else on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        sys.exit(f"{name} not found: pip install {name} (see benchmarks/README.md)")
    return found


def py_spy_argv(out: Path, *argv: str, on_cpu: bool = False) -> list[str]:
    """``py-spy record`` around ``argv``: collapsed stacks for a .txt ``out``, else
    speedscope JSON; wall-clock time (waits included) unless ``on_cpu``."""
    fmt = "raw" if out.suffix == ".txt" else "speedscope"
    return [
        tool("py-spy"),
        "record",
        "-r",
        "250",
        *(() if on_cpu else ("--idle",)),
        "--threads",
        "--nolineno",
        "-f",
        fmt,
        "-o",
        str(out),
        "--",
        *argv,
    ]


def remove_unless_kept(tmp: Path, keep: bool) -> None:
    if keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
