"""On a terminal, ``send`` asks first; ``--yes`` and non-terminals do not."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path


def run_on_terminal(config: Path, answer: str) -> tuple[int, str]:
    """Run ``send`` with a pseudo-terminal as stdin/stdout and type ``answer``."""
    main_fd, child_fd = pty.openpty()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "statusmail",
            "send",
            "update-2020-04-21",
            "--rate",
            "0",
            "--config",
            str(config),
        ],
        stdin=child_fd,
        stdout=child_fd,
        stderr=child_fd,
        close_fds=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    os.close(child_fd)
    output = b""
    deadline = time.monotonic() + 60
    answered = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main_fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(main_fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
            if not answered and b"Type yes to send" in output:
                os.write(main_fd, answer.encode() + b"\n")
                answered = True
        elif process.poll() is not None:
            break
    process.wait(timeout=30)
    os.close(main_fd)
    text = re.sub(r"\x1b\[[0-9;]*m", "", output.decode("utf-8", "replace"))
    return process.returncode, " ".join(text.split())


def test_a_terminal_is_asked_and_no_sends_nothing(project: Path) -> None:
    code, output = run_on_terminal(project, "no")
    assert "Send update-2020-04-21 to 14 recipients" in output
    assert code == 1 and "nothing was recorded" in output
    assert not (project.parent / "outbox").exists()
    code, output = run_on_terminal(project, "yes")
    assert code == 0, output
    assert len(list((project.parent / "outbox" / "new").iterdir())) == 14
