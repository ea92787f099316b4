"""The group commit: the outcomes of every connection recorded in one transaction, and
each worker waiting only for its own last one, just before its next message is handed
over (so at most one accepted message per connection is ever unrecorded). On a server
the suppression checks of the attempts starting meanwhile go in the same transaction:
one round trip answers both."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from statusmail.domain import Outcome, Recipient
from statusmail.errors import DeliveryError
from statusmail.ledger import DeliveryQueue

LINGER = 0.02  # the longest an outcome waits for a transaction that no worker asked for

Done = tuple[Outcome, Recipient, "DeliveryError | None"]  # an outcome, whom, and why


class GroupCommitter:
    """Outcomes wait here until a worker needs its last one recorded (just before its
    next message is handed over), a worker asks a suppression check (``check``) or
    ``LINGER`` has passed; then one transaction records every outcome waiting and
    answers every check, and ``on_recorded`` counts the outcomes. Workers go on building
    and talking to the relay meanwhile, so the transaction carries the outcomes of every
    connection that finished in the time of a few round trips, not of one loop turn."""

    def __init__(
        self,
        queue: DeliveryQueue,
        on_recorded: Callable[[list[Done]], None],
        on_failure: Callable[[BaseException], None],
    ) -> None:
        self.queue = queue
        self.on_recorded = on_recorded
        self.on_failure = on_failure
        self._waiting: list[Done] = []
        self._checks: dict[str, list[asyncio.Future[str | None]]] = {}
        self._batch: asyncio.Future[None] | None = None  # done when _waiting is recorded
        self._timer: asyncio.TimerHandle | None = None
        self._writing: asyncio.Task[None] | None = None

    def submit(self, done: Done) -> asyncio.Future[None]:
        """Queue an outcome; the future is done once it is recorded."""
        if self._batch is None:
            loop = asyncio.get_running_loop()
            self._batch = loop.create_future()
            self._timer = loop.call_later(LINGER, self._write)
        self._waiting.append(done)
        return self._batch

    def check(self, address: str) -> asyncio.Future[str | None]:
        """Whether ``address`` is suppressed (its reason, or None), asked of the ledger
        by the next transaction: it starts now unless one is being written (then it is
        the one after), so it sees every suppression committed before this call. The
        outcomes waiting go with it: one round trip for both."""
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._checks.setdefault(address, []).append(future)
        self._write()
        return future

    async def recorded(self, batch: asyncio.Future[None]) -> None:
        """Return once ``batch`` is recorded (writing it now if it waits), or raise the
        ``LedgerError`` that kept it from the ledger."""
        if batch.done():
            batch.result()
            return
        if batch is self._batch:
            self._write()
        await asyncio.shield(batch)  # a cancelled worker must not cancel the others' batch

    async def close(self) -> None:
        """Record what still waits (a run cut short after messages were accepted)."""
        if self._waiting:
            self._write()
        if self._writing is not None:
            await asyncio.gather(self._writing, return_exceptions=True)

    def _write(self) -> None:
        """Start the writer, unless it is writing: then it takes what waits next (the
        batch's timer goes when the writer takes the batch)."""
        if self._writing is None or self._writing.done():
            self._writing = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self._waiting or self._checks:
            batch, future, checks = self._waiting, self._batch, self._checks
            self._waiting, self._batch, self._checks = [], None, {}
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            waiting = [f for f in (future, *(f for fs in checks.values() for f in fs)) if f]
            try:
                found = await self.queue.record([outcome for outcome, _, _ in batch], list(checks))
                if batch:
                    self.on_recorded(batch)
            except BaseException as exc:  # the ledger is the truth: nobody goes on without it
                for each in waiting:
                    if not each.done():
                        each.set_exception(exc)
                        each.exception()  # retrieved: the engine raises it
                self.on_failure(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            if future is not None:
                future.set_result(None)
            for address, futures in checks.items():
                for each in futures:
                    if not each.done():  # (an attempt that ended first cancelled it)
                        each.set_result(found.get(address))
