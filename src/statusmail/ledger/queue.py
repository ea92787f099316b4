"""The entry's queue as the delivery engine sees it: take recipients, keep them, record
what happened, ask whether an address was suppressed this very moment.

On SQLite it is the ledger's own connection, in the event loop (every call is a
local file operation of microseconds). On PostgreSQL it is an asynchronous connection
pool (psycopg 3 and psycopg_pool), so a round trip to the server never blocks the loop;
it also holds the deployment-wide rate limit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
import socket
from collections.abc import Sequence
from typing import Any, Protocol

from statusmail.domain import Outcome, Recipient
from statusmail.errors import LedgerError
from statusmail.ledger import queries
from statusmail.ledger.database import (
    CONNECTION,
    RETRIES,
    PostgresDialect,
    backoff,
    describe,
    transient,
)
from statusmail.ledger.store import Ledger, claimed, now_iso, record_params


def worker_name() -> str:
    """This process, as claims name it: host, pid and a random part (pids repeat)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class DeliveryQueue(Protocol):
    entry_id: str
    worker: str
    shared: bool  # other processes may send the entry at the same time

    async def state(self) -> tuple[int, int]: ...

    async def claim(self, generation: int, count: int) -> list[Recipient]: ...

    async def renew(self) -> None: ...

    async def release(self) -> None: ...

    async def record(self, outcomes: Sequence[Outcome]) -> None: ...

    async def remaining(self, generation: int) -> int: ...

    async def suppression_of(self, address: str) -> str | None: ...

    async def suppress(self, address: str, reason: str, detail: str) -> None: ...

    async def hourly_used(self) -> int: ...

    async def take_slot(self, interval: float) -> float: ...

    async def close(self) -> None: ...


class LocalQueue:
    """The queue of a SQLite ledger, through the run's own ledger connection."""

    shared = False

    def __init__(self, ledger: Ledger, entry_id: str, *, lease: float, thread: str | None) -> None:
        self.ledger = ledger
        self.entry_id = entry_id
        self.worker = worker_name()
        self.lease = lease
        self.thread = thread

    async def state(self) -> tuple[int, int]:
        return self.ledger.queue_state(self.entry_id)

    async def claim(self, generation: int, count: int) -> list[Recipient]:
        return self.ledger.claim(
            self.entry_id, generation, self.worker, count, self.lease, self.thread
        )

    async def renew(self) -> None:
        self.ledger.renew(self.entry_id, self.worker, self.lease)

    async def release(self) -> None:
        self.ledger.release(self.entry_id, self.worker)

    async def record(self, outcomes: Sequence[Outcome]) -> None:
        self.ledger.record(self.entry_id, outcomes)

    async def remaining(self, generation: int) -> int:
        return self.ledger.remaining(self.entry_id, generation)

    async def suppression_of(self, address: str) -> str | None:
        return self.ledger.suppression_of(address)

    async def suppress(self, address: str, reason: str, detail: str) -> None:
        self.ledger.suppress(address, reason, detail)

    async def hourly_used(self) -> int:
        return self.ledger.hourly_used()

    async def take_slot(self, interval: float) -> float:
        return self.ledger.take_slot("send", interval)

    async def close(self) -> None:
        return None


class ServerQueue:
    """The queue of a PostgreSQL ledger, shared with every other sender of the entry."""

    shared = True

    def __init__(self, url: str, entry_id: str, *, lease: float, thread: str | None) -> None:
        self.url = url
        self.where = describe(url)
        self.entry_id = entry_id
        self.worker = worker_name()
        self.lease = lease
        self.thread = thread
        self._dialect = PostgresDialect()
        self._pool: Any = None
        self._limiter_ready = False

    async def _run(
        self, sql: str, params: dict[str, Any], *, many: Sequence[dict[str, Any]] = ()
    ) -> list[tuple[Any, ...]]:
        import psycopg
        import psycopg_pool

        for attempt in range(RETRIES + 1):
            try:
                if self._pool is None:
                    self._pool = psycopg_pool.AsyncConnectionPool(
                        self.url, min_size=1, max_size=4, open=False, kwargs=CONNECTION
                    )
                    await self._pool.open(wait=True, timeout=10)
                async with self._pool.connection() as conn:
                    text = self._dialect.sql(sql)
                    if many:
                        async with conn.transaction(), conn.cursor() as cursor:
                            await cursor.executemany(text, many)
                        return []
                    # One statement on an autocommit connection is a transaction of its
                    # own: no BEGIN and COMMIT round trips around it.
                    cursor = await conn.execute(text, params)
                    return list(await cursor.fetchall()) if cursor.description else []
            except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                # Every call is one transaction, safe to run again: a deadlock's victim
                # (say, renewing leases while outcomes are recorded) tries once more.
                if attempt < RETRIES and transient(exc):
                    await asyncio.sleep(backoff(attempt))
                    continue
                raise LedgerError(f"{self.where}: {exc}") from exc
        raise AssertionError("unreachable")

    async def state(self) -> tuple[int, int]:
        rows = await self._run(queries.STATE, {"e": self.entry_id})
        return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)

    async def claim(self, generation: int, count: int) -> list[Recipient]:
        params = {"e": self.entry_id, "g": generation, "me": self.worker, "n": count}
        rows = await self._run(queries.CLAIM["postgresql"], params | {"lease": self.lease})
        rows.sort(key=lambda row: int(row[0]))
        parents: dict[str, str] = {}
        if self.thread and rows:
            marks = {f"a{i}": row[1] for i, row in enumerate(rows)}
            found = await self._run(queries.parents(len(rows)), {"thread": self.thread, **marks})
            parents = {row[0]: row[1] for row in found if row[1]}
        return [claimed(row, parents) for row in rows]

    async def renew(self) -> None:
        await self._run(queries.RENEW, {"e": self.entry_id, "me": self.worker, "lease": self.lease})

    async def release(self) -> None:
        await self._run(queries.RELEASE, {"e": self.entry_id, "me": self.worker})

    async def record(self, outcomes: Sequence[Outcome]) -> None:
        await self._run(
            queries.RECORD, {}, many=list(record_params(self.entry_id, outcomes, now_iso()))
        )

    async def remaining(self, generation: int) -> int:
        rows = await self._run(queries.REMAINING, {"e": self.entry_id, "g": generation})
        return int(rows[0][0])

    async def suppression_of(self, address: str) -> str | None:
        rows = await self._run(queries.SUPPRESSED, {"address": address})
        return str(rows[0][0]) if rows else None

    async def suppress(self, address: str, reason: str, detail: str) -> None:
        await self._run(
            queries.SUPPRESS,
            {"address": address.lower(), "reason": reason, "detail": detail, "stamp": now_iso()},
        )

    async def hourly_used(self) -> int:
        since = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat(timespec="seconds")
        rows = await self._run(queries.HOURLY, {"since": since})
        return int(rows[0][0])

    async def take_slot(self, interval: float) -> float:
        if not self._limiter_ready:
            await self._run(queries.LIMITER_CREATE, {"name": "send"})
            self._limiter_ready = True
        rows = await self._run(queries.LIMITER_TAKE, {"name": "send", "interval": interval})
        return float(rows[0][0])

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
