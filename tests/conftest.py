"""What every test shares: the sample project in a temporary folder, a clean
environment, and the few helpers that run statusmail and wait for real parts."""

from __future__ import annotations

import email.policy
import http.client
import mailbox
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import TypeVar

import pytest
from click.testing import CliRunner, Result

from statusmail.cli import main

REPO = Path(__file__).resolve().parent.parent
SAMPLE_FILES = ("statusmail.yaml", "regions.yaml")
SAMPLE_DIRS = ("updates", "subscribers", "templates")
STATUSMAIL_VARIABLES = (
    "STATUSMAIL_CONFIG",
    "STATUSMAIL_TRANSPORT",
    "STATUSMAIL_SMTP_HOST",
    "STATUSMAIL_SMTP_PORT",
    "STATUSMAIL_SMTP_SECURITY",
    "STATUSMAIL_SMTP_PASSWORD",
    "STATUSMAIL_UNSUBSCRIBE_SECRET",
)
T = TypeVar("T")


def copy_sample(dest: Path) -> Path:
    """Copy the repo's sample project to ``dest``; returns the config path."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in SAMPLE_FILES:
        shutil.copy(REPO / name, dest / name)
    for name in SAMPLE_DIRS:
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("*.mo"))
    return dest / "statusmail.yaml"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The sample project in a temporary folder; returns its config path."""
    return copy_sample(tmp_path / "project")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests never see the caller's statusmail settings."""
    for name in STATUSMAIL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    yield


def clean_environ(**extra: str) -> dict[str, str]:
    """This process's environment without statusmail's variables, plus ``extra``."""
    environ = {k: v for k, v in os.environ.items() if k not in STATUSMAIL_VARIABLES}
    environ.update(extra)
    return environ


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    check: Callable[[], T | None], *, timeout: float = 10.0, what: str = "the condition"
) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


def statusmail(
    config: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m statusmail ARGS --config CONFIG`` in a subprocess, as a user runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "statusmail", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=clean_environ(**(env or {})),
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def invoke(config: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    """The same in this process, through click's runner (faster; no signals)."""
    return CliRunner().invoke(main, [*args, "--config", str(config)], env=env)


def outbox_messages(config: Path) -> list[EmailMessage]:
    """Every message in the project's maildir outbox, parsed."""
    folder = config.parent / "outbox"
    if not folder.exists():
        return []
    box = mailbox.Maildir(folder, create=False)
    messages = []
    for key in box.iterkeys():
        message = email.message_from_bytes(box.get_bytes(key), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        messages.append(message)
    return messages


def command(config: Path, *args: str) -> list[str]:
    """The command line of ``statusmail ARGS --config CONFIG`` run by this Python."""
    return [sys.executable, "-m", "statusmail", *args, "--config", str(config)]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def serving(
    config: Path, secret: str, *extra: str, env: dict[str, str] | None = None
) -> Iterator[int]:
    """``statusmail serve`` on a free port, once it accepts connections; yields the port."""
    port = free_port()
    process = subprocess.Popen(
        command(config, "serve", "--port", str(port), *extra),
        env=clean_environ(STATUSMAIL_UNSUBSCRIBE_SECRET=secret, **(env or {})),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: port_open(port) or process.poll() is not None, what="serve to listen")
        assert process.poll() is None, process.communicate()[1]
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=10)


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    """One HTTP request to 127.0.0.1:port; (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body, headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8")
    finally:
        conn.close()
