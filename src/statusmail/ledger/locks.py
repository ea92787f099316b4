"""Who may do what at once: one run per entry and one watcher per ledger.

On SQLite these are kernel ``flock``s next to the ledger file, released when a process
dies. On PostgreSQL they are session advisory locks, released by the server when a
process's connection ends, so they hold across hosts: a second sender of an entry joins
the first instead of refusing, and a standby watcher takes over when the active one's
host goes away.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from statusmail.config import is_url
from statusmail.errors import LedgerError
from statusmail.ledger.database import CONNECTION, describe


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for an advisory lock named ``name``."""
    return int.from_bytes(
        hashlib.sha256(f"statusmail:{name}".encode()).digest()[:8], "big", signed=True
    )


@contextmanager
def run_lock(target: str | Path, name: str) -> Iterator[None]:
    """An exclusive lock per SQLite ledger and name; the kernel drops it when a process
    dies. On PostgreSQL there is nothing to hold here: runs cooperate (see ``Lease``)."""
    if is_url(target):
        yield
        return
    ledger_path = Path(target)
    lock_path = ledger_path.with_name(f"{ledger_path.name}.{name}.lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise LedgerError(
            f"{lock_path}: cannot create the run lock: {exc.strerror or exc}"
        ) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise LedgerError(
                f"{lock_path}: another statusmail run holds this lock ({name}); "
                "wait for it to finish or stop it first"
            ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)


class ServerLock:
    """A PostgreSQL session advisory lock on a connection of its own, held until
    ``release`` or until the process (and so its connection) is gone."""

    def __init__(self, url: str, name: str) -> None:
        import psycopg

        self.where = describe(url)
        try:
            self.db = psycopg.connect(url, **CONNECTION)
            # Advisory locks are the database's: a deployment in its own schema has its own.
            row = self.db.execute("SELECT current_schema()").fetchone()
            self.key = lock_key(f"{row[0] if row else ''}:{name}")
            # a dead peer is noticed by the server within seconds, releasing its locks
            self.db.execute("SET tcp_keepalives_idle = 5")
            self.db.execute("SET tcp_keepalives_interval = 2")
            self.db.execute("SET tcp_keepalives_count = 3")
        except psycopg.Error as exc:
            raise LedgerError(f"{self.where}: cannot take the lock {name!r}: {exc}") from exc

    def try_acquire(self) -> bool:
        import psycopg

        try:
            row = self.db.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
        except psycopg.Error as exc:
            raise LedgerError(f"{self.where}: cannot take a lock: {exc}") from exc
        return bool(row and row[0])

    def release(self) -> None:
        self.db.close()
