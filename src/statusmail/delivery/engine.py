"""The delivery engine: workers, throttle, retries, failure threshold, group-committed ledger.

Each worker owns one connection and takes one recipient at a time. A recipient's outcome
is committed to the ledger before its worker hands the next message over (the end of
DATA); the worker builds that message and starts its transaction meanwhile, and the
outcomes of all workers are grouped into one transaction, so at any moment at most
``concurrency`` messages can have been accepted by the server without being recorded
as sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from statusmail.content.message import Built
from statusmail.delivery.throttle import FailureWindow, SharedBucket, TokenBucket
from statusmail.delivery.transport import Connection, Ready, SessionEnded, Transport
from statusmail.domain import DeliveryStatus, Envelope, Outcome, Recipient, SuppressionReason, scrub
from statusmail.errors import BuildError, DeliveryError, LedgerError
from statusmail.ledger import DeliveryQueue
from statusmail.project.config import SendingSettings

if TYPE_CHECKING:
    from statusmail.metrics import DeliveryMetrics

log = logging.getLogger("statusmail.delivery")
CLOSE_TIMEOUT = 5.0  # a QUIT the relay never answers must not hold up the end of a run
POLL = 0.5  # how often an idle producer looks again (another sender's lease, the list)
CLAIM_AT_LEAST = 16  # one claim per 2 messages at one connection cost ~50 us a message
LINGER = 0.02  # the longest an outcome waits for a transaction that no worker asked for


def ahead(connections: int) -> int:
    """How many recipients a claim takes: enough that a claim (a transaction) is rare
    next to the messages, few enough to leave the rest to other senders."""
    return max(CLAIM_AT_LEAST, 2 * connections)


@dataclass
class RunResult:
    sent: int = 0
    failed: int = 0
    stopped: str | None = None  # why the run stopped early, if it did


Done = tuple[Outcome, Recipient, "DeliveryError | None"]  # an outcome, whom, and why


class GroupCommitter:
    """Outcomes wait here until a worker needs its last one recorded (just before its
    next message is handed over) or ``LINGER`` has passed; then one transaction records
    every outcome waiting, and ``on_recorded`` counts them. Workers go on building and
    talking to the relay meanwhile, so the transaction carries the outcomes of every
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
        while self._waiting and self._batch is not None:
            batch, future = self._waiting, self._batch
            self._waiting, self._batch = [], None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            try:
                await self.queue.record([outcome for outcome, _, _ in batch])
                self.on_recorded(batch)
            except BaseException as exc:  # the ledger is the truth: nobody goes on without it
                future.set_exception(exc)
                future.exception()  # retrieved: the engine raises it
                self.on_failure(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            future.set_result(None)


class _Stopping(Exception):
    """Raised inside the retry loop when the run is stopping between attempts."""


class _Suppressed(Exception):
    """The address was suppressed by the time its message was about to go."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _ClaimLost(Exception):
    """Another sender took the recipient over (this one's lease ran out): not sent here."""


@dataclass
class _Attempts:
    charged: int  # attempts that reached the server, over every run (the ledger's count)


OnOutcome = Callable[[Outcome, Recipient], None]


class Build(Protocol):
    """``MessageFactory.build``: one recipient's message, for a connection that takes
    8-bit bodies or not."""

    def __call__(self, recipient: Recipient, *, eight_bit: bool = ...) -> Built: ...


class Engine:
    """Delivers an entry's queue: takes recipients from it a few at a time (a claim with a
    lease, so several processes can share it), while the selection may still be filling
    it; ends when the selection is complete and nothing of it is left pending."""

    def __init__(
        self,
        *,
        queue: DeliveryQueue,
        transport: Transport,
        build: Build,
        settings: SendingSettings,
        stop: asyncio.Event | None = None,
        on_outcome: OnOutcome | None = None,
        mask: Callable[[str], str] = lambda address: address,
        limit: int | None = None,
        selecting: Callable[[], bool] = lambda: False,
        progress: asyncio.Event | None = None,
        on_idle: Callable[[], Awaitable[None]] | None = None,
        metrics: DeliveryMetrics | None = None,
    ) -> None:
        self.queue = queue
        self.transport = transport
        self.build = build
        self.settings = settings
        self.stop = stop or asyncio.Event()
        self.on_outcome = on_outcome
        self.bucket: TokenBucket | SharedBucket = (
            SharedBucket(settings.rate, queue.take_slot)
            if queue.shared
            else TokenBucket(settings.rate)
        )
        self.failures = FailureWindow(settings.stop_after_failures)
        self.committer = GroupCommitter(queue, self._recorded, self._fail)
        self.mask = mask
        self.limit = limit
        self.selecting = selecting
        self.progress = progress or asyncio.Event()
        self.on_idle = on_idle
        self.result = RunResult()
        self.taken = 0
        self.entry_id = queue.entry_id
        self.relay = str(getattr(transport, "server", transport.name))  # host:port for logs
        # Imported here: prometheus-client takes a tenth of a second to import, which the
        # commands that never deliver (check, status, list) need not pay.
        from statusmail.metrics import current

        self.metrics = (metrics or current()).for_entry(self.entry_id)
        self._relay_failed = False  # a reconnect failed since the relay last took a message
        self._tasks: list[asyncio.Task[None]] = []
        self._fatal: BaseException | None = None  # what stopped the run (the ledger)

    def halt(self, reason: str) -> None:
        if self.result.stopped is None:
            self.result.stopped = reason
            log.warning(
                "stopping: %s; in-flight messages finish, the rest stay pending",
                reason,
                extra={"event": "run_stopping", "entry": self.entry_id, "reason": reason},
            )
        self.stop.set()

    async def run(self) -> RunResult:
        """Deliver the queue; raises ``ConnectError`` if no connection can be opened.

        Connections are opened when there is a first recipient to send to: a run with
        nothing left to send needs no relay. An error that no recipient is to blame for
        (the ledger, building a message) stops every worker and the producer at once and
        is raised; what was recorded stands, and the recipients in hand stay pending
        (handed back to the queue).
        """
        renewing = asyncio.create_task(self._renew())
        connections: list[Connection] = []
        try:
            first = await self._next_batch(ahead(self.settings.concurrency))
            if not first:
                return self.result
            connections = await self._open_connections()
            log.info(
                "%s: delivering through %s over %d connection(s)",
                self.entry_id,
                self.relay,
                len(connections),
                extra={
                    "event": "delivering",
                    "entry": self.entry_id,
                    "relay": self.relay,
                    "connections": len(connections),
                },
            )
            # a few taken ahead of the workers, no more (the rest stays for other senders)
            feed: asyncio.Queue[Recipient | None] = asyncio.Queue(maxsize=len(first))
            for recipient in first:
                feed.put_nowait(recipient)
            tasks = [asyncio.create_task(self._worker(conn, feed)) for conn in connections]
            tasks.append(asyncio.create_task(self._produce(feed, len(connections))))
            self._tasks = tasks
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                # One failed (the ledger, say): no other worker may go on sending
                # unrecorded.
                self.stop.set()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if self._fatal is not None:
                    raise self._fatal from None
                raise
        finally:
            await self.committer.close()
            renewing.cancel()
            await asyncio.gather(renewing, return_exceptions=True)
            for conn in connections:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), CLOSE_TIMEOUT)
            with contextlib.suppress(LedgerError):
                await self.queue.release()  # what was taken but not sent goes back
        return self.result

    async def _next_batch(self, want: int) -> list[Recipient]:
        """The next recipients to send to, waiting while more may come (the selection
        still streams, or another sender's lease may run out); empty when done."""
        while not self.stop.is_set():
            if self.limit is not None and self.taken >= self.limit:
                self.result.stopped = self.result.stopped or "limit"
                return []  # what was taken is still delivered
            count = want if self.limit is None else min(want, self.limit - self.taken)
            if self.settings.max_per_hour:
                allowed = self.settings.max_per_hour - await self.queue.hourly_used()
                if allowed <= 0:  # what was taken is still delivered: it counted already
                    self.result.stopped = self.result.stopped or (
                        "the hourly cap (sending.max_per_hour) was reached"
                    )
                    return []
                count = min(count, allowed)
            generation, selected = await self.queue.state()
            self.progress.clear()
            # generation 0: no selection has begun yet (another sender is about to)
            batch = await self.queue.claim(generation, count) if generation else []
            if batch:
                self.taken += len(batch)
                return batch
            selecting = self.selecting()
            if not selecting and selected == generation and generation:
                if not await self.queue.remaining(generation):
                    return []  # the selection is complete and nothing of it is left
            elif not selecting and self.on_idle is not None:
                await self.on_idle()  # nobody streams the selection: take it over?
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progress.wait(), POLL)
        return []

    async def _produce(self, feed: asyncio.Queue[Recipient | None], workers: int) -> None:
        want = ahead(workers)
        while batch := await self._next_batch(want):
            for recipient in batch:
                await feed.put(recipient)
        # Only on the normal path: a cancelled producer never waits for dead workers.
        for _ in range(workers):
            await feed.put(None)

    async def _renew(self) -> None:
        """Keep the lease of what this process holds while it works on it."""
        interval = max(0.5, self.settings.lease / 3)
        me = asyncio.current_task()
        # psycopg_pool waits with asyncio.wait_for, which on Python 3.11 returns a result
        # that arrived with the cancellation, swallowing it: a cancelled loop ends anyway.
        while me is None or not me.cancelling():
            await asyncio.sleep(interval)
            with contextlib.suppress(LedgerError):
                self._lost(await self.queue.renew())
        raise asyncio.CancelledError

    async def _check_claim(self, recipient: Recipient) -> None:
        """Raise ``_ClaimLost`` unless this process still holds the recipient's claim: a
        look at the clock while the lease surely lasts (nearly always: no round trip),
        else a renewal first (see ``Claims``). A lost one leaves this process's hands."""
        queue = self.queue
        if queue.fresh() and queue.holds(recipient.address):
            return
        self._lost(await queue.confirm())
        if not queue.holds(recipient.address):
            queue.drop(recipient.address)
            raise _ClaimLost

    def _lost(self, count: int) -> None:
        if count:
            log.warning(
                "%s: %d recipient(s) of this sender's claim were taken over by another "
                "sender (this process stood still past its lease); they are not sent from here",
                self.entry_id,
                count,
                extra={"event": "claim_lost", "entry": self.entry_id, "count": count},
            )

    async def _open_connections(self) -> list[Connection]:
        wanted = max(1, self.settings.concurrency)
        results = await asyncio.gather(
            *(self.transport.connect() for _ in range(wanted)), return_exceptions=True
        )
        connections = [r for r in results if not isinstance(r, BaseException)]
        errors = [r for r in results if isinstance(r, BaseException)]
        self.metrics.relay(bool(connections), len(errors))
        if not connections:
            raise errors[0]
        if errors:
            log.warning(
                "opened %d of %d connections (%s)",
                len(connections),
                wanted,
                errors[0],
                extra={
                    "event": "connections_partial",
                    "entry": self.entry_id,
                    "relay": self.relay,
                    "opened": len(connections),
                    "wanted": wanted,
                },
            )
        return connections

    def _fail(self, exc: BaseException) -> None:
        """The ledger could not record outcomes: stop every worker now."""
        if self._fatal is None:
            self._fatal = exc
        self.stop.set()
        for task in self._tasks:
            task.cancel()

    async def _worker(self, conn: Connection, feed: asyncio.Queue[Recipient | None]) -> None:
        last: asyncio.Future[None] | None = None  # the transaction of this worker's last outcome

        async def ready() -> None:
            # Before the next message is handed over, the last one is in the ledger: so
            # at most one message per connection is ever accepted but not recorded.
            if last is not None:
                await self.committer.recorded(last)

        while True:
            recipient = await feed.get()
            if recipient is None:
                break
            if self.stop.is_set():
                continue  # drain: what was taken but not started goes back to the queue
            done = await self._deliver_one(conn, recipient, ready)
            if done is not None:  # else another sender has it now: nothing to record
                last = self.committer.submit((done[0], recipient, done[1]))
        await ready()

    def _recorded(self, batch: list[Done]) -> None:
        for outcome, recipient, error in batch:
            self._count(outcome, recipient, error)
        # A producer waiting for the last in-flight rows of the queue looks again now,
        # not after its POLL.
        self.progress.set()

    def _count(self, outcome: Outcome, recipient: Recipient, error: DeliveryError | None) -> None:
        """Count an outcome the ledger has recorded (so the metrics follow the ledger)."""
        if outcome.status is DeliveryStatus.SENT:
            self.result.sent += 1
            self.failures.record(True)
            self.metrics.sent()
        elif outcome.status is DeliveryStatus.FAILED:
            self.result.failed += 1
            self.failures.record(False)
            self.metrics.failed(error)
        elif outcome.status is DeliveryStatus.SKIPPED:  # suppressed just before its turn
            self.metrics.skipped()
        else:  # handed back as pending: the run stopped, or the relay went away
            self.failures.record(False)
        if self.failures.tripped:
            self.halt(
                f"more than {self.settings.stop_after_failures:.0%} of recent recipients failed"
            )
        if self.on_outcome:
            self.on_outcome(outcome, recipient)

    async def _deliver_one(
        self, conn: Connection, recipient: Recipient, ready: Ready
    ) -> tuple[Outcome, DeliveryError | None] | None:
        """The outcome, and the error that decided it, if one did; None when the claim
        was lost to another sender."""
        tally = _Attempts(recipient.attempts)
        try:
            return await self._deliver(conn, recipient, ready, tally)
        except _Suppressed as exc:  # an unsubscribe on any web host, say: never sent
            skipped = Outcome(
                recipient.address,
                DeliveryStatus.SKIPPED,
                tally.charged,
                None,
                f"suppressed: {exc.reason}",
            )
            return skipped, None
        except _ClaimLost:
            return None

    async def _deliver(
        self, conn: Connection, recipient: Recipient, ready: Ready, tally: _Attempts
    ) -> tuple[Outcome, DeliveryError | None]:
        try:
            # Built for what this connection takes: a message is signed as it is sent.
            built = self.build(recipient, eight_bit=conn.eight_bit)
        except Exception as exc:
            # Every variant was built before the run started, so this is the run's
            # problem (a template or key changed underneath), not the recipient's.
            raise BuildError(f"cannot build a message: {exc}") from exc
        envelope = built.envelope

        async def handover() -> None:
            # Just before the end of DATA: the last outcome is recorded, and the claim
            # still this process's (it may have stood still since MAIL FROM).
            await ready()
            await self._check_claim(recipient)

        try:
            # Most messages go through at once: tenacity is set up only for a retry.
            await self._attempt(conn, recipient, envelope, tally, handover)
        except DeliveryError as exc:
            remaining = self.settings.max_attempts - tally.charged
            if not exc.transient or remaining <= 0:
                return await self._failure(recipient, tally.charged, exc), exc
            self.metrics.retried(exc)
            try:
                await self._retry(conn, recipient, envelope, tally, remaining, handover)
            except _Stopping:
                stopped = Outcome(
                    recipient.address,
                    DeliveryStatus.PENDING,
                    tally.charged,
                    None,
                    "stopped before retry",
                )
                return stopped, exc
            except DeliveryError as last:
                return await self._failure(recipient, tally.charged, last), last
        sent = Outcome(
            recipient.address, DeliveryStatus.SENT, tally.charged, 250, None, envelope.message_id
        )
        return sent, None

    async def _attempt(
        self,
        conn: Connection,
        recipient: Recipient,
        envelope: Envelope,
        tally: _Attempts,
        ready: Ready,
    ) -> None:
        while True:
            await self.bucket.acquire()
            # After the wait for the rate limit, just before MAIL FROM: a claim another
            # sender took over meanwhile is not sent, and an unsubscribe answered by now
            # wins.
            await self._check_claim(recipient)
            reason = await self.queue.suppression_of(recipient.address)
            if reason is not None:
                raise _Suppressed(reason)
            try:
                await conn.send(envelope, ready)
                break
            except SessionEnded as exc:
                # The relay's limit per session, not the recipient: at once, uncharged,
                # on the session the connection opened (a fresh one, so this happens
                # once per attempt), unless the run is stopping (then it stays pending).
                self._learnt(exc, recipient)
                if self.stop.is_set():
                    raise
                self.metrics.retried(exc)
            except DeliveryError as exc:
                self._undelivered(exc, tally)
                raise
        tally.charged += 1
        if self._relay_failed:
            self._relay_failed = False
            self.metrics.relay(True)

    def _undelivered(self, exc: DeliveryError, tally: _Attempts) -> None:
        """Charge a failed attempt, unless the message never left."""
        if exc.relay_down:
            self._relay_failed = True
            self.metrics.relay(False, 1)
        else:
            tally.charged += 1

    def _learnt(self, exc: SessionEnded, recipient: Recipient) -> None:
        """Log the relay's per-session count when this reply taught it."""
        if exc.learnt is None:
            return
        said = scrub(
            str(exc), (recipient.email, recipient.ascii_email, recipient.address), self.mask
        )
        log.info(
            "%s takes %d message(s) per session, then answers %s; each connection "
            "starts a new session after %d from now on",
            self.relay,
            exc.learnt,
            said,
            exc.learnt,
            extra={
                "event": "session_limit",
                "entry": self.entry_id,
                "relay": self.relay,
                "per_session": exc.learnt,
            },
        )

    async def _retry(
        self,
        conn: Connection,
        recipient: Recipient,
        envelope: Envelope,
        tally: _Attempts,
        remaining: int,
        ready: Ready,
    ) -> None:
        wait = wait_random_exponential(
            multiplier=self.settings.retry_initial, max=self.settings.retry_max
        )
        await self._nap(self.settings.retry_initial * random.random())
        retrying = AsyncRetrying(
            stop=stop_after_attempt(remaining),
            wait=wait,
            sleep=self._nap,
            retry=retry_if_exception(lambda exc: isinstance(exc, DeliveryError) and exc.transient),
            before_sleep=self._retrying,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if self.stop.is_set():
                    raise _Stopping
                await self._attempt(conn, recipient, envelope, tally, ready)

    def _retrying(self, state: RetryCallState) -> None:
        """A failed attempt that tenacity will follow with another."""
        self.metrics.retried(state.outcome.exception() if state.outcome else None)

    async def _nap(self, seconds: float) -> None:
        """A backoff wait that a stopping run cuts short (shutdown stays prompt)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    async def _failure(self, recipient: Recipient, attempts: int, exc: DeliveryError) -> Outcome:
        who = self.mask(recipient.email)
        # Server replies often quote the address: mask it there too.
        said = scrub(
            str(exc), (recipient.email, recipient.ascii_email, recipient.address), self.mask
        )
        if exc.relay_down:
            # Not the recipient's fault: keep it pending and stop taking new recipients.
            self.halt(f"the relay is unreachable ({exc.message})")
            return Outcome(recipient.address, DeliveryStatus.PENDING, attempts, None, exc.message)
        fields = {
            "entry": self.entry_id,
            "recipient": who,
            "code": exc.code,
            "attempts": attempts,
            "relay": self.relay,
        }
        if exc.transient:
            log.warning(
                "%s: gave up after %d attempts: %s",
                who,
                attempts,
                said,
                extra={"event": "gave_up", **fields},
            )
            return Outcome(
                recipient.address, DeliveryStatus.FAILED, attempts, exc.code, exc.message
            )
        log.warning("%s: refused: %s", who, said, extra={"event": "refused", **fields})
        if exc.bounce:
            await self.queue.suppress(
                recipient.address, SuppressionReason.BOUNCED, f"{exc.code} {exc.message}"
            )
        return Outcome(recipient.address, DeliveryStatus.FAILED, attempts, exc.code, exc.message)
