"""Who may do what at once: one run per entry and one watcher per ledger.

On SQLite these are kernel ``flock``s next to the ledger file, released when a process
dies. On PostgreSQL runs of one entry cooperate instead (the selection and the claims
are leased in the ledger), and the watchers elect a leader with a session advisory lock
(``LeaderLock``), released by the server when a process's connection ends, so a standby
takes over when the active one's host goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from statusmail.errors import LedgerError
from statusmail.ledger.database import CONNECTION, describe, one_line
from statusmail.project.config import is_url

if TYPE_CHECKING:
    import psycopg

T = TypeVar("T")

# The server side of a lock's connection: a dead peer is noticed within seconds, which
# releases its locks.
SERVER_KEEPALIVES = (
    "SET tcp_keepalives_idle = 5",
    "SET tcp_keepalives_interval = 2",
    "SET tcp_keepalives_count = 3",
)


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
        # never through a link: it truncated and overwrote the file it pointed to
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
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


class LeaderLock:
    """The watchers' leadership on PostgreSQL: a session advisory lock on an asynchronous
    connection of its own, so the event loop (and the watchdog it feeds) never waits on
    the server. Every call is bounded by ``timeout`` seconds; a connection that is gone
    (a server restart, a network cut, its backend terminated) raises ``LedgerError``,
    and the lock went with it: the caller connects anew and tries again.

    The connection's ``application_name`` is ``statusmail watch <pid>``, so an operator
    sees in ``pg_stat_activity`` which watcher holds which connection."""

    def __init__(self, db: psycopg.AsyncConnection[Any], key: int, where: str, timeout: float):
        self.db = db
        self.key = key
        self.where = where
        self.timeout = timeout

    @classmethod
    async def connect(cls, url: str, name: str, *, timeout: float = 10.0) -> LeaderLock:
        import psycopg

        where = describe(url)
        db: psycopg.AsyncConnection[Any] | None = None
        try:
            async with asyncio.timeout(timeout):
                db = await psycopg.AsyncConnection.connect(
                    url, **CONNECTION, application_name=f"statusmail watch {os.getpid()}"
                )
                cursor = await db.execute("SELECT current_schema()")
                row = await cursor.fetchone()
                for setting in SERVER_KEEPALIVES:
                    await db.execute(setting)
        except (psycopg.Error, TimeoutError) as exc:
            if db is not None:
                await db.close()
            raise LedgerError(
                f"{where}: cannot connect for the lock {name!r}: {_why(exc)}"
            ) from exc
        # Advisory locks are the database's: a deployment in its own schema has its own.
        return cls(db, lock_key(f"{row[0] if row else ''}:{name}"), where, timeout)

    async def _bounded(self, step: Awaitable[T], what: str) -> T:
        import psycopg

        try:
            async with asyncio.timeout(self.timeout):
                return await step
        except (psycopg.Error, TimeoutError) as exc:
            raise LedgerError(f"{self.where}: {what}: {_why(exc)}") from exc

    async def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; True when this connection holds it now."""

        async def ask() -> bool:
            cursor = await self.db.execute("SELECT pg_try_advisory_lock(%s)", (self.key,))
            row = await cursor.fetchone()
            return bool(row and row[0])

        return await self._bounded(ask(), "cannot take the leadership lock")

    async def check(self) -> None:
        """Raise ``LedgerError`` unless the connection (and so a lock it took) is alive."""
        await self._bounded(self.db.execute("SELECT 1"), "lost the leadership lock's connection")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.db.close()


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "the server did not answer in time"
    return one_line(exc)
