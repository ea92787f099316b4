"""On a terminal, ``send`` asks first; ``--yes`` and non-terminals do not. While it asks,
nothing is locked: the suppression list and the unsubscribe endpoint go on working, and
Ctrl-C cancels at once."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import time
from pathlib import Path

from conftest import (
    SECRET,
    UPDATE,
    clean_environ,
    command,
    http_request,
    invoke,
    outbox_count,
    outbox_messages,
    recipient,
    serving,
)
from statusmail.project.tokens import Keyring, unsubscribe_token

PROMPT = b"Type yes to send"


class Terminal:
    """``statusmail send`` on a pseudo-terminal, as a person runs it. Use it as a context
    manager: on leaving, a program still running is killed and the terminal closed."""

    def __init__(self, config: Path, *args: str) -> None:
        self.main_fd, child_fd = pty.openpty()
        self.process = subprocess.Popen(
            command(config, "send", UPDATE, "--rate", "0", *args),
            stdin=child_fd,
            stdout=child_fd,
            stderr=child_fd,
            close_fds=True,
            env=clean_environ(COLUMNS="200", STATUSMAIL_UNSUBSCRIBE_SECRET=SECRET),
        )
        os.close(child_fd)
        self.output = b""

    def read_until(self, wanted: bytes, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while wanted not in self.output:
            assert time.monotonic() < deadline, self.text()
            ready, _, _ = select.select([self.main_fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(self.main_fd, 4096)
                except OSError:
                    chunk = b""
                assert chunk, f"the program ended before {wanted!r}: {self.text()}"
                self.output += chunk

    def type(self, line: str) -> None:
        os.write(self.main_fd, line.encode() + b"\n")

    def finish(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([self.main_fd], [], [], 0.2)
            if ready:
                try:
                    self.output += os.read(self.main_fd, 4096)
                except OSError:
                    break
        code = self.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        self.close()
        return code

    def close(self) -> None:
        if self.main_fd >= 0:
            os.close(self.main_fd)
            self.main_fd = -1

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.close()

    def text(self) -> str:
        return " ".join(
            re.sub(r"\x1b\[[0-9;]*m", "", self.output.decode("utf-8", "replace")).split()
        )


def run_on_terminal(config: Path, answer: str) -> tuple[int, str]:
    """Run ``send`` on a terminal and type ``answer`` at the prompt."""
    with Terminal(config) as terminal:
        terminal.read_until(PROMPT)
        terminal.type(answer)
        code = terminal.finish()
    return code, terminal.text()


def test_a_terminal_is_asked_and_no_sends_nothing(project: Path) -> None:
    code, output = run_on_terminal(project, "no")
    assert "Send update-2020-04-21 to 14 recipients" in output
    assert code == 1 and "nothing was recorded" in output
    assert not (project.parent / "outbox").exists()
    code, output = run_on_terminal(project, "yes")
    assert code == 0, output
    assert outbox_count(project) == 14


def test_while_the_prompt_waits_nothing_is_locked(project: Path) -> None:
    """Suppressing an address and a one-click unsubscribe each finish within 2 s while a
    person reads the prompt, and the run that follows respects both."""
    with Terminal(project) as terminal:
        terminal.read_until(PROMPT)

        started = time.monotonic()
        added = invoke(project, "suppress", "add", "anna.petrova@example.org")
        assert added.exit_code == 0, added.stderr
        assert time.monotonic() - started < 2

        with serving(project, SECRET) as port:
            path = "/status/unsubscribe/" + unsubscribe_token(
                Keyring(SECRET.encode()), "ivan.smirnov@example.com"
            )
            started = time.monotonic()
            reply = http_request(
                port,
                "POST",
                path,
                b"List-Unsubscribe=One-Click",
                {"Content-Type": "application/x-www-form-urlencoded"},
            )
            assert reply.status == 200
            assert time.monotonic() - started < 2

        terminal.type("yes")
        assert terminal.finish() == 0, terminal.text()
    recipients = {recipient(message) for message in outbox_messages(project)}
    assert len(recipients) == 12
    assert not any("anna.petrova" in r or "ivan.smirnov" in r for r in recipients)


def test_ctrl_c_at_the_prompt_cancels_at_once(project: Path) -> None:
    with Terminal(project) as terminal:
        # At once: a signal between the prompt's last byte and the read of the answer
        # ends the wait too (read in steps, not one blocking read).
        terminal.read_until(PROMPT)
        started = time.monotonic()
        terminal.process.send_signal(signal.SIGINT)
        code = terminal.finish(timeout=5)
    assert time.monotonic() - started < 2
    assert code == 4, terminal.text()
    assert "interrupted by SIGINT before delivery: nothing was sent" in terminal.text()
    assert not (project.parent / "outbox").exists()
