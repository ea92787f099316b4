"""A command on a pseudo-terminal, as a person runs it: what it drew, what to type, and
the process. Use it as a context manager: on leaving, a program still running is killed
and the terminal closed."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time

_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")


class Terminal:
    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.main_fd, child_fd = pty.openpty()
        self.process = subprocess.Popen(
            args, stdin=child_fd, stdout=child_fd, stderr=child_fd, close_fds=True, env=env
        )
        os.close(child_fd)
        self.output = b""

    def _read(self, timeout: float) -> bool:
        """What the program drew within ``timeout``; False once it has closed its end."""
        ready, _, _ = select.select([self.main_fd], [], [], timeout)
        if ready:
            try:
                chunk = os.read(self.main_fd, 65536)
            except OSError:
                chunk = b""
            self.output += chunk
            return bool(chunk)
        return True

    def read_until(self, pattern: str, timeout: float = 30) -> None:
        """Read until ``pattern`` (a regular expression) is in ``text()``."""
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.text()):
            assert time.monotonic() < deadline, self.text()
            assert self._read(0.05), f"the program ended before {pattern!r}: {self.text()}"

    def type(self, line: str) -> None:
        os.write(self.main_fd, line.encode() + b"\n")

    def finish(self, timeout: float = 30) -> int:
        """The exit code, reading what it draws meanwhile."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            if not self._read(0.05):
                break
        return self.process.wait(timeout=max(0.1, deadline - time.monotonic()))

    def text(self) -> str:
        """What it drew, without the terminal's escape sequences."""
        return _ESCAPES.sub("", self.output.decode("utf-8", "replace"))

    def words(self) -> str:
        """``text()`` with every run of whitespace (a wrapped line) one space."""
        return " ".join(self.text().split())

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.main_fd)
