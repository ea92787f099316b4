"""The entry's queue as the delivery engine sees it: take recipients, keep them, record
what happened, ask whether an address was suppressed this very moment.

Claims are fenced: each claim of a row bumps its epoch, and an outcome is recorded only
where the row's epoch is still the one this process claimed it at. ``Claims`` keeps
what this process holds and until when its lease is known to hold, so that a sender
can tell before each message, mostly without a round trip, that the row is still its
own (see ``Claims``).

On SQLite it is the ledger's own connection, in the event loop (every call is a
local file operation of microseconds). On PostgreSQL it is an asynchronous connection
pool (psycopg 3 and psycopg_pool), so a round trip to the server never blocks the loop;
it also holds the deployment-wide rate limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from statusmail.domain import Outcome, Recipient
from statusmail.errors import LedgerError
from statusmail.ledger import queries
from statusmail.ledger.base import now_iso
from statusmail.ledger.claims import Claims, clock
from statusmail.ledger.claims import worker_name as worker_name  # what the pipeline imports
from statusmail.ledger.database import (
    CONNECTION,
    RETRIES,
    PostgresDialect,
    backoff,
    describe,
    one_line,
    transient,
)
from statusmail.ledger.outcomes import Fenced, claimed, record_params
from statusmail.ledger.store import Ledger


class DeliveryQueue(Protocol):
    entry_id: str
    worker: str
    shared: bool  # other processes may send the entry at the same time
    remote: bool  # each question is a round trip to a server, not a local lookup

    async def state(self) -> tuple[int, int]: ...

    async def claim(
        self, generation: int, count: int, hourly_cap: int | None = None
    ) -> list[Recipient]:
        """Up to ``count`` pending recipients of selection ``generation``, leased to
        this process; with ``hourly_cap``, no more than sending.max_per_hour leaves."""

    def fresh(self) -> bool:
        """The lease of what this process holds surely lasts beyond a margin from now."""

    def holds(self, address: str) -> bool:
        """This process held the row at its last claim or renewal."""

    def drop(self, address: str) -> None:
        """A lost row leaves this process's hands, with no outcome."""

    async def renew(self) -> int:
        """Renew the lease; returns how many rows were found lost to another sender."""

    async def confirm(self) -> int:
        """Renew until the lease surely lasts beyond a margin; how many rows were lost."""

    async def release(self) -> None: ...

    async def record(
        self, outcomes: Sequence[Outcome], check: Sequence[str] = ()
    ) -> dict[str, str]:
        """Record the outcomes and, in the same transaction, find which of the ``check``
        addresses are suppressed (address: reason)."""

    async def remaining(self, generation: int) -> int: ...

    async def suppression_of(self, address: str) -> str | None: ...

    async def suppress(self, address: str, reason: str, detail: str) -> None: ...

    async def hourly_used(self) -> int: ...

    async def take_slots(self, interval: float, count: int) -> float:
        """Reserve ``count`` consecutive slots of the deployment's rate limit; seconds
        to wait for the first."""

    async def close(self) -> None: ...


CONFIRM_TRIES = 3

SUPPRESSED_ANY = "SELECT address, reason FROM suppressions WHERE address = ANY(:addresses)"

# A group commit's outcomes in one statement, which on an autocommit connection is one
# transaction and one round trip (a transaction around an executemany is three: BEGIN,
# the statements, COMMIT), each row fenced by the epoch it was claimed at.
RECORD_ARRAYS = (
    "UPDATE deliveries AS d SET status = v.status, attempts = v.attempts, code = v.code,"
    " detail = v.detail, message_id = COALESCE(v.message_id, d.message_id),"
    " updated_at = {stamp}, claimed_by = NULL, lease_until = NULL"
    " FROM unnest(:address::text[], :status::text[], :attempts::int[], :code::int[],"
    " :detail::text[], :message_id::text[], :epoch::int[])"
    " AS v(address, status, attempts, code, detail, message_id, epoch)"
    " WHERE d.entry_id = :e AND d.address = v.address AND d.claim_epoch = v.epoch"
    " AND (v.status <> 'pending' OR d.status = 'pending')"  # as RECORD_FENCED
)
# The same, and the suppressions of the addresses about to be sent to, in one round trip
# (an unreferenced data-modifying WITH still runs to completion).
RECORD_AND_CHECK = f"WITH recorded AS ({RECORD_ARRAYS}) {SUPPRESSED_ANY}"
RECORD_COLUMNS = ("address", "status", "attempts", "code", "detail", "message_id", "epoch")


class FencedClaims:
    """Claiming, renewing and recording through fences, the same for both engines; an
    engine's queue supplies the statements (``_claim``, ``_renew``, ``_record``) and
    its name for messages (``where``)."""

    where: str

    def __init__(self, entry_id: str, *, lease: float, thread: str | None) -> None:
        self.entry_id = entry_id
        self.worker = worker_name()
        self.lease = lease
        self.thread = thread
        self.claims = Claims(lease)
        self._renewing = asyncio.Lock()
        self._renewals = 0

    async def _claim(
        self, generation: int, count: int, hourly_cap: int | None
    ) -> list[tuple[Recipient, int]]:
        raise NotImplementedError

    async def _renew(self) -> dict[str, int]:
        raise NotImplementedError

    async def _record(self, outcomes: Fenced, check: Sequence[str]) -> dict[str, str]:
        raise NotImplementedError

    async def claim(
        self, generation: int, count: int, hourly_cap: int | None = None
    ) -> list[Recipient]:
        start = clock()
        return self.claims.taken(start, await self._claim(generation, count, hourly_cap))

    def fresh(self) -> bool:
        return self.claims.fresh()

    def holds(self, address: str) -> bool:
        return self.claims.holds(address)

    def drop(self, address: str) -> None:
        self.claims.drop(address)

    async def renew(self) -> int:
        seen = self._renewals
        async with self._renewing:
            if self._renewals != seen and self.claims.fresh():
                return 0  # renewed while this caller waited, and that lease holds
            start, before = clock(), self.claims.snapshot()
            held = await self._renew()
            self._renewals += 1
            return self.claims.confirmed(start, before, held)

    async def confirm(self) -> int:
        """Renew until the lease surely lasts beyond the margin again; returns how many
        rows were found lost. A ledger too slow to answer within the lease ends the run
        rather than let a message go that another sender may hold by now."""
        lost = 0
        for _ in range(CONFIRM_TRIES):
            if self.claims.fresh():
                return lost
            lost += await self.renew()
        if self.claims.fresh():
            return lost
        raise LedgerError(
            f"{self.where}: {CONFIRM_TRIES} renewals of this sender's claim in a row took "
            f"longer than three quarters of sending.lease ({self.lease:g}s); stopping "
            "rather than sending what another sender may hold"
        )

    async def record(
        self, outcomes: Sequence[Outcome], check: Sequence[str] = ()
    ) -> dict[str, str]:
        return await self._record(self.claims.settle(outcomes), check)


class LocalQueue(FencedClaims):
    """The queue of a SQLite ledger, through the run's own ledger connection; ``shared``
    when other processes of the run send from the same file."""

    def __init__(
        self,
        ledger: Ledger,
        entry_id: str,
        *,
        lease: float,
        thread: str | None,
        shared: bool = False,
    ) -> None:
        super().__init__(entry_id, lease=lease, thread=thread)
        self.shared = shared
        self.remote = False
        self.ledger = ledger
        self.where = ledger.database.where

    async def state(self) -> tuple[int, int]:
        return self.ledger.queue_state(self.entry_id)

    async def _claim(
        self, generation: int, count: int, hourly_cap: int | None
    ) -> list[tuple[Recipient, int]]:
        return self.ledger.claim_fenced(
            self.entry_id, generation, self.worker, count, self.lease, self.thread, hourly_cap
        )

    async def _renew(self) -> dict[str, int]:
        return self.ledger.renew(self.entry_id, self.worker, self.lease)

    async def release(self) -> None:
        self.ledger.release(self.entry_id, self.worker)

    async def _record(self, outcomes: Fenced, check: Sequence[str]) -> dict[str, str]:
        self.ledger.record(self.entry_id, outcomes)
        found = ((address, self.ledger.suppression_of(address)) for address in check)
        return {address: reason for address, reason in found if reason is not None}

    async def remaining(self, generation: int) -> int:
        return self.ledger.remaining(self.entry_id, generation)

    async def suppression_of(self, address: str) -> str | None:
        return self.ledger.suppression_of(address)

    async def suppress(self, address: str, reason: str, detail: str) -> None:
        self.ledger.suppress(address, reason, detail)

    async def hourly_used(self) -> int:
        return self.ledger.hourly_used()

    async def take_slots(self, interval: float, count: int) -> float:
        return self.ledger.take_slots("send", interval * count)

    async def close(self) -> None:
        return None


class ServerQueue(FencedClaims):
    """The queue of a PostgreSQL ledger, shared with every other sender of the entry."""

    shared = True
    remote = True

    def __init__(self, url: str, entry_id: str, *, lease: float, thread: str | None) -> None:
        super().__init__(entry_id, lease=lease, thread=thread)
        self.url = url
        self.where = describe(url)
        self._dialect = PostgresDialect()
        self._pool: Any = None
        self._limiter_ready = False

    async def _run(
        self, sql: str, params: dict[str, Any], *, many: Sequence[dict[str, Any]] = ()
    ) -> list[tuple[Any, ...]]:
        text = self._dialect.sql(sql)

        async def work(conn: Any) -> list[tuple[Any, ...]]:
            if many:
                async with conn.transaction(), conn.cursor() as cursor:
                    await cursor.executemany(text, many)
                return []
            # One statement on an autocommit connection is a transaction of its
            # own: no BEGIN and COMMIT round trips around it.
            cursor = await conn.execute(text, params)
            return list(await cursor.fetchall()) if cursor.description else []

        return await self._with_connection(work)

    async def _with_connection(
        self, work: Callable[[Any], Awaitable[list[tuple[Any, ...]]]]
    ) -> list[tuple[Any, ...]]:
        """``work`` on a pooled connection: one transaction, run again (once) when the
        server gives up on it (a deadlock's victim); a ``LedgerError`` naming the server."""
        import psycopg
        import psycopg_pool

        task = asyncio.current_task()
        cancels = task.cancelling() if task is not None else 0
        for attempt in range(RETRIES + 1):
            try:
                if self._pool is None:
                    # The first connection is made here: a server that refuses says why at
                    # once (the pool retries in the background and says only, ten seconds
                    # later, that it timed out).
                    first = await psycopg.AsyncConnection.connect(self.url, **CONNECTION)
                    await first.close()
                    self._pool = psycopg_pool.AsyncConnectionPool(
                        self.url,
                        min_size=0,
                        max_size=4,
                        open=False,
                        kwargs=CONNECTION,
                        timeout=5,
                    )
                    await self._pool.open()
                async with self._pool.connection() as conn:
                    if task is not None and task.cancelling() > cancels:
                        # psycopg_pool waits for a connection with asyncio.wait_for, which
                        # on Python 3.11 returns one handed over as the task is cancelled,
                        # swallowing the cancellation: a stopped worker would go on, then
                        # wait forever for a recipient the cancelled producer never sends.
                        raise asyncio.CancelledError
                    return await work(conn)
            except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                # Every call is one transaction, safe to run again: a deadlock's victim
                # (say, renewing leases while outcomes are recorded) tries once more.
                if attempt < RETRIES and transient(exc):
                    await asyncio.sleep(backoff(attempt))
                    continue
                raise LedgerError(f"{self.where}: {one_line(exc)}") from exc
        raise AssertionError("unreachable")

    async def state(self) -> tuple[int, int]:
        rows = await self._run(queries.STATE, {"e": self.entry_id})
        return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)

    async def _claim(
        self, generation: int, count: int, hourly_cap: int | None
    ) -> list[tuple[Recipient, int]]:
        params = {"e": self.entry_id, "g": generation, "me": self.worker, "n": count}
        params["lease"] = self.lease
        if hourly_cap is None:
            rows = await self._run(queries.CLAIM["postgresql"], params)
        else:
            rows = await self._claim_capped(params, hourly_cap)
        rows.sort(key=lambda row: int(row[0]))
        parents: dict[str, str] = {}
        if self.thread and rows:
            marks = {f"a{i}": row[1] for i, row in enumerate(rows)}
            found = await self._run(queries.parents(len(rows)), {"thread": self.thread, **marks})
            parents = {row[0]: row[1] for row in found if row[1]}
        return [claimed(row, parents) for row in rows]

    async def _claim_capped(self, params: dict[str, Any], cap: int) -> list[tuple[Any, ...]]:
        """The claim in one transaction with the hourly count, under the cap's lock."""
        dialect = self._dialect
        hourly, claim = dialect.sql(queries.HOURLY), dialect.sql(queries.CLAIM["postgresql"])

        async def work(conn: Any) -> list[tuple[Any, ...]]:
            async with conn.transaction():
                await conn.execute(queries.HOURLY_LOCK)
                counted = await conn.execute(hourly)
                row = await counted.fetchone()
                count = min(params["n"], cap - int(row[0] if row else 0))
                if count <= 0:
                    return []
                cursor = await conn.execute(claim, params | {"n": count})
                return list(await cursor.fetchall())

        return await self._with_connection(work)

    async def _renew(self) -> dict[str, int]:
        params = {"e": self.entry_id, "me": self.worker, "lease": self.lease}
        return {str(row[0]): int(row[1]) for row in await self._run(queries.RENEW, params)}

    async def release(self) -> None:
        await self._run(queries.RELEASE, {"e": self.entry_id, "me": self.worker})

    async def _record(self, outcomes: Fenced, check: Sequence[str]) -> dict[str, str]:
        rows = list(record_params(self.entry_id, outcomes))
        if not rows and not check:
            return {}
        params: dict[str, Any] = {name: [row[name] for row in rows] for name in RECORD_COLUMNS}
        params |= {"e": self.entry_id, "addresses": list(check)}
        sql = RECORD_AND_CHECK if check else RECORD_ARRAYS
        return {str(row[0]): str(row[1]) for row in await self._run(sql, params)}

    async def remaining(self, generation: int) -> int:
        rows = await self._run(queries.REMAINING, {"e": self.entry_id, "g": generation})
        return int(rows[0][0])

    async def suppression_of(self, address: str) -> str | None:
        # (a sender asks with its outcomes instead: ``record``'s ``check``)
        rows = await self._run(SUPPRESSED_ANY, {"addresses": [address]})
        return str(rows[0][1]) if rows else None

    async def suppress(self, address: str, reason: str, detail: str) -> None:
        await self._run(
            queries.SUPPRESS,
            {"address": address.lower(), "reason": reason, "detail": detail, "stamp": now_iso()},
        )

    async def hourly_used(self) -> int:
        rows = await self._run(queries.HOURLY, {})
        return int(rows[0][0])

    async def take_slots(self, interval: float, count: int) -> float:
        if not self._limiter_ready:
            await self._run(queries.LIMITER_CREATE, {"name": "send"})
            self._limiter_ready = True
        rows = await self._run(queries.SLOTS, {"name": "send", "span": interval * count})
        return float(rows[0][0])

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
