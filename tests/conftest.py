"""What every test shares: the sample project in a temporary folder, a clean
environment, and the few helpers that run statusmail and wait for real parts."""

from __future__ import annotations

import email.policy
import mailbox
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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
