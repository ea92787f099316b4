"""On PostgreSQL one watcher leads (it holds a session advisory lock) and the others
stand by; a lost lock connection stops the leader's sending at once, and leader and
standby alike connect again with backoff and stand for election anew. ``Leadership`` is
this part of ``watch.Watcher``; ``cancelled`` ends its background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable

from statusmail import metrics, signals
from statusmail.errors import LedgerError, SchemaTooNew
from statusmail.ledger.locks import LeaderLock
from statusmail.service.options import WatchOptions
from statusmail.service.steps import done_before
from statusmail.web import health

log = logging.getLogger("statusmail.watch")


class Leadership:
    """Standing for leadership, standing by, and leading while the lock holds."""

    options: WatchOptions
    stop: asyncio.Event
    halt: asyncio.Event
    metrics: metrics.DeliveryMetrics
    role: str
    _lock_problem: str | None
    _said_ready: bool
    _loss_logged: LedgerError | None

    async def _watch(self) -> None:
        raise NotImplementedError  # the loop: watch.Watcher's

    def _halt(self) -> None:
        raise NotImplementedError  # watch.Watcher's

    def _say_ready(self) -> None:
        """``READY=1`` once: the watcher is up, leading, standing by, or waiting for the
        ledger's server with backoff (``/readyz`` tells which)."""
        if not self._said_ready:
            self._said_ready = True
            health.notify("READY=1")

    def _leading(self, leading: bool) -> None:
        if leading:
            self.role = "leader"
        self.metrics.leader(leading)

    async def _elect(self, url: str) -> None:
        """Stand for leadership until stopped: connect, stand by until the lock is had,
        lead until the lock's connection is lost, and over again. A refused or lost
        connection is retried with backoff (``--retry-after``'s doubling, from
        ``lock_retry_initial`` up to ``lock_retry_max``); nothing here ends the process."""
        delay = self.options.lock_retry_initial
        while not self.stop.is_set():
            try:
                lock = await self._unless_stopped(LeaderLock.connect(url, "watch"))
            except LedgerError as exc:
                self.role = "reconnecting"
                self._lock_problem = f"{exc}; trying again in {delay:g}s"
                log.error("%s", self._lock_problem, extra={"event": "leadership_unavailable"})
                self._say_ready()
                await self._pause(delay)
                delay = min(delay * 2, self.options.lock_retry_max)
                continue
            if lock is None:
                return
            self._lock_problem = None
            try:
                if not await self._stand_by(lock):
                    return
                delay = self.options.lock_retry_initial
                await self._lead(lock)
                if self.options.once:  # one pass, led: done (it stood again, forever)
                    return
            except SchemaTooNew as exc:
                # Waiting cannot help, and holding the lock would keep an upgraded
                # watcher standing by for good (review): step down and stop.
                log.error(
                    "%s: stopping, so that a watcher that knows the schema can lead",
                    exc,
                    extra={"event": "schema_too_new"},
                )
                raise
            except LedgerError as exc:
                self.role = "reconnecting"
                self._lock_problem = f"{exc}; connecting again"
                if exc is not self._loss_logged:  # the leader's guard said it already
                    log.error("%s; connecting again", exc, extra={"event": "leadership_lost"})
            finally:
                self._leading(False)
                await lock.close()
            if not self.stop.is_set():  # a server that comes and goes is not hammered
                await self._pause(delay)
                delay = min(delay * 2, self.options.lock_retry_max)

    async def _unless_stopped(self, connecting: Awaitable[LeaderLock]) -> LeaderLock | None:
        """The lock's connection, or None when the watcher is stopped first (nothing is
        in flight while it connects: ``steps.done_before``)."""
        connection = asyncio.ensure_future(connecting)
        if await done_before(connection, self.stop):
            return connection.result()
        connection.cancel()
        with contextlib.suppress(asyncio.CancelledError, LedgerError):
            await (await connection).close()  # (made as it was cancelled)
        return None

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    async def _stand_by(self, lock: LeaderLock) -> bool:
        """Wait for the lock: the server releases the leader's when its process or host
        is gone, and a standby takes over within ``--takeover`` seconds. True once held;
        False when stopped; ``LedgerError`` when the lock's connection is lost."""
        if await lock.try_acquire():
            log.info("leading: this watcher sends", extra={"event": "active"})
            return True
        if self.options.once:  # (a cron job: the active watcher does this pass's work)
            log.info(
                "another watcher is active on this ledger: --once has nothing to do",
                extra={"event": "standby"},
            )
            return False
        self.role = "standby"
        self._say_ready()
        log.info(
            "standing by: another watcher is active on this ledger; taking over within %ss "
            "of its end",
            f"{self.options.takeover:g}",
            extra={"event": "standby"},
        )
        poll = max(0.2, self.options.takeover / 3)
        while not self.stop.is_set():
            await self._pause(poll)
            if not self.stop.is_set() and await lock.try_acquire():
                log.info("the active watcher is gone: taking over", extra={"event": "active"})
                return True
        return False

    async def _lead(self, lock: LeaderLock) -> None:
        """Send while the lock's connection lives: a guard looks at it every
        ``lock_check`` seconds and, when it is gone, stops the sending at once (another
        watcher may hold the lock a moment later): gently, then, if the sending still
        runs after ``signals.FORCE_AFTER`` seconds (on a server that is gone, say), cut
        short where it waits. Raises the lost connection's ``LedgerError``."""
        self._leading(True)
        self.halt = asyncio.Event()
        lost: list[LedgerError] = []
        watching = asyncio.create_task(self._watch())

        async def guard() -> None:
            while True:
                await asyncio.sleep(self.options.lock_check)
                try:
                    await lock.check()
                except LedgerError as exc:
                    log.error(
                        "%s: stopping the sending now; connecting again",
                        exc,
                        extra={"event": "leadership_lost"},
                    )
                    lost.append(exc)
                    self._loss_logged = exc
                    self._halt()
                    break
            await asyncio.sleep(signals.FORCE_AFTER)
            while not watching.done():
                watching.cancel()
                await asyncio.sleep(signals.RECANCEL)

        guarding = asyncio.create_task(guard())
        me = asyncio.current_task()
        try:
            await watching
        except asyncio.CancelledError:
            if not lost or (me is not None and me.cancelling()):
                raise  # this task is cancelled, not only the sending the guard cut short
        finally:
            await cancelled(guarding, watching)
        if lost and not self.stop.is_set():
            raise lost[0]


async def cancelled(*tasks: asyncio.Task[None] | None) -> None:
    """Cancel background tasks and wait for them to end. A cancellation of the caller
    itself while it waits still propagates (``gather`` re-raises it)."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
