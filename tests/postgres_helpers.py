"""Tests on the real PostgreSQL server: reading a ledger there as an outsider would, and
starting several senders on one entry. The server and the fixtures (``postgres``,
``ledger_target``) are in conftest."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from conftest import SECRET, clean_environ, command
from delivery_helpers import add_subscribers, point_at
from smtp_server import ReceivedMessage


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on the ledger at ``url``, read as an outsider would."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return list(conn.execute(sql, params).fetchall())


# -- senders on one entry ------------------------------------------------------------------

ENTRY = "update-2020-04-21"
SAMPLE = 14  # the sample's recipients of the entry


def configure(project: Path, port: int, count: int, **sending: Any) -> list[str]:
    """The sample project sending ``ENTRY`` to ``SAMPLE + count`` recipients over SMTP."""
    addresses = add_subscribers(project, count)
    point_at(project, port, **{"concurrency": 4, "lease": 2, **sending})
    return addresses


def senders(
    project: Path, postgres: str, n: int, *args: str, stdout: int = subprocess.DEVNULL
) -> list[subprocess.Popen[str]]:
    """``n`` processes of ``statusmail *args`` on the ledger at ``postgres``; their
    standard output is thrown away unless ``stdout`` says (``subprocess.PIPE``)."""
    env = clean_environ(STATUSMAIL_UNSUBSCRIBE_SECRET=SECRET, STATUSMAIL_LEDGER=postgres)
    return [
        subprocess.Popen(
            command(project, *args),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]


def finish(
    processes: list[subprocess.Popen[str]],
    timeout: float = 120,
    outputs: list[str] | None = None,
) -> list[int]:
    """The processes' exit codes once each has ended; their standard output (where it
    was piped) is appended to ``outputs``."""
    codes = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=timeout)
        if outputs is not None:
            outputs.append(stdout or "")
        assert "Traceback" not in stderr, stderr
        if process.returncode:
            print(f"exit {process.returncode}:\n{stderr}")  # shown when the test fails
        codes.append(process.returncode)
    return codes


def recipient_of(message: ReceivedMessage) -> str:
    return message.rcpt_tos[0].lower()


def ledger_sent(postgres: str) -> dict[str, str]:
    rows = query(
        postgres,
        "SELECT address, message_id FROM deliveries WHERE entry_id = %s AND status = 'sent'",
        ENTRY,
    )
    return {address: message_id for address, message_id in rows}
