"""Helpers for the tests of running statusmail for real: the system tools they need,
scraping /metrics, listening as systemd's notify socket, and the services as subprocesses
with extra environment."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from conftest import (
    SECRET,
    clean_environ,
    command,
    free_port,
    http_request,
    missing,
    port_open,
    wait_for,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def need(tool: str, install: str) -> str:
    """The tool's path (sbin included); a skip saying why when it is missing, a failure
    under CI=true."""
    found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if found is None:
        missing(f"{tool} is not installed ({install})")
    return found


def scrape(port: int) -> Samples:
    """GET /metrics, parsed by prometheus-client's own parser: (name, labels) → value."""
    status, body = http_request(port, "GET", "/metrics").pair()
    assert status == 200, body
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def ledger_count(config: Path, sql: str, *args: object) -> int:
    """One number from the ledger, read with sqlite3 itself (not statusmail's code)."""
    db = sqlite3.connect(f"file:{config.parent / 'statusmail.db'}?mode=ro", uri=True)
    try:
        return int(db.execute(sql, args).fetchone()[0] or 0)
    finally:
        db.close()


def selection_complete(config: Path, entry_id: str) -> bool:
    """Whether the entry's latest selection has been read to its end (while it streams,
    the ledger's pending count can rise; after, it only falls). False before the ledger
    or its schema exists."""
    try:
        return bool(
            ledger_count(
                config,
                "SELECT COUNT(*) FROM entries WHERE entry_id = ? AND generation > 0"
                " AND selected_generation = generation",
                entry_id,
            )
        )
    except sqlite3.OperationalError:
        return False


def break_ledger(config: Path, how: str) -> None:
    """Make the ledger unreadable: garbage bytes, or a directory where the file was."""
    path = config.parent / "statusmail.db"
    for extra in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        extra.unlink(missing_ok=True)
    if how == "garbage":
        path.write_bytes(b"this is not an SQLite database\n" * 64)
    else:
        path.mkdir()


class NotifySocket:
    """A datagram socket where systemd would listen for sd_notify messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[str] = []

    def wait_for(self, message: str, timeout: float = 20.0, count: int = 1) -> list[str]:
        """Read datagrams until ``message`` arrived ``count`` times; returns all so far."""
        deadline = time.monotonic() + timeout
        while self.received.count(message) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {message} within {timeout:g}s: {self.received}")
            self.sock.settimeout(left)
            try:
                self.received.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
        return self.received

    def close(self) -> None:
        self.sock.close()


@contextmanager
def serve_process(
    config: Path, *extra: str, env: dict[str, str] | None = None
) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """``statusmail ... serve`` with ``env`` added, once it listens: (port, process)."""
    port = free_port()
    process = subprocess.Popen(
        command(config, *extra, "serve", "--port", str(port)),
        env=clean_environ(STATUSMAIL_UNSUBSCRIBE_SECRET=SECRET, **(env or {})),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: port_open(port) or process.poll() is not None, what="serve to listen")
        assert process.poll() is None, process.communicate()[1]
        yield port, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.communicate(timeout=10)


class Service:
    """``statusmail --log-format json ARGS`` in a subprocess; a thread reads its log
    lines as they come, so a test can wait for an event without sleeping."""

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            command(config, "--log-format", "json", *args),
            env=clean_environ(STATUSMAIL_UNSUBSCRIBE_SECRET=SECRET, **(env or {})),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def records(self) -> list[dict[str, Any]]:
        """Every log line so far as its JSON object (each line must be one)."""
        return [json.loads(line) for line in list(self.lines)]

    def events(self) -> list[str]:
        return [record["event"] for record in self.records()]

    def wait_for_event(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            if self.process.poll() is not None and event not in self.events():
                self._reader.join(5)
                raise AssertionError(f"exited {self.process.returncode}: {self.text}")
            return next((r for r in self.records() if r["event"] == event), None)

        return wait_for(found, timeout=timeout, what=f"the log event {event}")

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait(self, timeout: float) -> int:
        """Wait for a process that ends by itself; its log is then complete."""
        self.process.wait(timeout=timeout)
        self._reader.join(10)
        if self.process.stderr is not None:
            self.process.stderr.close()
        return self.process.returncode

    def stop(self) -> str:
        """SIGTERM, wait, expect exit 0 and no traceback; returns the whole log."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._reader.join(10)
            if self.process.stderr is not None:
                self.process.stderr.close()
        assert self.process.returncode == 0, self.text
        assert "Traceback" not in self.text, self.text
        return self.text


def stop(process: subprocess.Popen[str]) -> str:
    """SIGTERM, wait, expect exit 0; returns stderr."""
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    return stderr


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command's name (from the state on)."""
    return Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rpartition(")")[2].split()


def process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat (T: stopped)."""
    return _stat(pid)[0]


def cpu_seconds(pid: int) -> float:
    """User and system CPU of process ``pid`` so far (/proc/PID/stat)."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def silent_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """A port that accepts connections and never answers; yields (port, the accepted)."""
    accepted: list[socket.socket] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def accept() -> None:
            with contextlib.suppress(OSError):  # the listener closed: the test is over
                while True:
                    accepted.append(listener.accept()[0])

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            yield int(listener.getsockname()[1]), accepted
        finally:
            listener.shutdown(socket.SHUT_RDWR)
            thread.join(timeout=5)
            for conn in accepted:
                conn.close()
