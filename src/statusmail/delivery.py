"""The delivery engine: workers, throttle, retries, failure threshold, group-committed ledger.

Each worker owns one connection and takes one recipient at a time. A recipient's outcome
is committed to the ledger before its worker takes the next one; the commits of all
workers are grouped into one transaction, so at any moment at most ``concurrency``
messages can have been accepted by the server without being recorded as sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from statusmail.config import SendingSettings
from statusmail.domain import DeliveryStatus, Outcome, Recipient, SuppressionReason
from statusmail.errors import BuildError, DeliveryError, LedgerError
from statusmail.ledger import Ledger
from statusmail.message import Built
from statusmail.report import scrub
from statusmail.throttle import FailureWindow, HourlyWindow, TokenBucket
from statusmail.transport import Connection, Envelope, Transport

if TYPE_CHECKING:
    from statusmail.metrics import DeliveryMetrics

log = logging.getLogger("statusmail.delivery")
CLOSE_TIMEOUT = 5.0  # a QUIT the relay never answers must not hold up the end of a run


@dataclass
class RunResult:
    sent: int = 0
    failed: int = 0
    stopped: str | None = None  # why the run stopped early, if it did


class GroupCommitter:
    """Outcomes wait here until the next transaction, which takes all that are waiting."""

    def __init__(self, ledger: Ledger, entry_id: str) -> None:
        self.ledger = ledger
        self.entry_id = entry_id
        self._waiting: list[tuple[Outcome, asyncio.Future[None]]] = []
        self._scheduled = False

    async def record(self, outcome: Outcome) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((outcome, future))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        await future

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._waiting = self._waiting, []
        try:
            self.ledger.record(self.entry_id, [outcome for outcome, _ in batch])
        except LedgerError as exc:  # the ledger is the truth: nobody goes on without it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for _, future in batch:
            if not future.done():
                future.set_result(None)


class _Stopping(Exception):
    """Raised inside the retry loop when the run is stopping between attempts."""


@dataclass
class _Attempts:
    charged: int  # attempts that reached the server, over every run (the ledger's count)


OnOutcome = Callable[[Outcome, Recipient], None]


class Build(Protocol):
    """``MessageFactory.build``: one recipient's message, for a connection that takes
    8-bit bodies or not."""

    def __call__(self, recipient: Recipient, *, eight_bit: bool = ...) -> Built: ...


class Engine:
    def __init__(
        self,
        *,
        entry_id: str,
        transport: Transport,
        ledger: Ledger,
        build: Build,
        settings: SendingSettings,
        stop: asyncio.Event | None = None,
        on_outcome: OnOutcome | None = None,
        hourly: HourlyWindow | None = None,
        mask: Callable[[str], str] = lambda address: address,
        metrics: DeliveryMetrics | None = None,
    ) -> None:
        self.entry_id = entry_id
        self.transport = transport
        self.ledger = ledger
        self.build = build
        self.settings = settings
        self.stop = stop or asyncio.Event()
        self.on_outcome = on_outcome
        self.bucket = TokenBucket(settings.rate)
        self.hourly = hourly or HourlyWindow(settings.max_per_hour)
        self.failures = FailureWindow(settings.stop_after_failures)
        self.committer = GroupCommitter(ledger, entry_id)
        self.mask = mask
        self.result = RunResult()
        self.relay = str(getattr(transport, "server", transport.name))  # host:port for logs
        # Imported here: prometheus-client takes a tenth of a second to import, which the
        # commands that never deliver (check, status, list) need not pay.
        from statusmail.metrics import current

        self.metrics = (metrics or current()).for_entry(entry_id)
        self._relay_failed = False  # a reconnect failed since the relay last took a message

    def _halt(self, reason: str) -> None:
        if self.result.stopped is None:
            self.result.stopped = reason
            log.warning(
                "stopping: %s; in-flight messages finish, the rest stay pending",
                reason,
                extra={"event": "run_stopping", "entry": self.entry_id, "reason": reason},
            )
        self.stop.set()

    async def run(self, recipients: Iterable[Recipient]) -> RunResult:
        """Deliver to ``recipients``; raises ``ConnectError`` if no connection can be opened.

        An error that no recipient is to blame for (the ledger, building a message)
        stops every worker and the producer at once and is raised; what was recorded
        stands, and the recipient in hand stays pending.
        """
        connections = await self._open_connections()
        queue: asyncio.Queue[Recipient | None] = asyncio.Queue(maxsize=len(connections) * 2)

        async def produce() -> None:
            for recipient in recipients:
                if self.stop.is_set():
                    break
                await queue.put(recipient)
            # Only on the normal path: a cancelled producer must not wait on a full queue
            # whose workers are gone.
            for _ in connections:
                await queue.put(None)

        tasks = [asyncio.create_task(self._worker(conn, queue)) for conn in connections]
        tasks.append(asyncio.create_task(produce()))
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            # One failed (the ledger, say): no other worker may go on sending unrecorded.
            self.stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            for conn in connections:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), CLOSE_TIMEOUT)
        return self.result

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

    async def _worker(self, conn: Connection, queue: asyncio.Queue[Recipient | None]) -> None:
        while True:
            recipient = await queue.get()
            if recipient is None:
                return
            if self.stop.is_set():
                continue  # drain: what was queued but not started stays pending
            if not self.hourly.try_take():
                self._halt("the hourly cap (sending.max_per_hour) was reached")
                continue
            outcome, error = await self._deliver_one(conn, recipient)
            await self.committer.record(outcome)
            self._count(outcome, recipient, error)

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
        else:  # handed back as pending: the run stopped, or the relay went away
            self.failures.record(False)
        if self.failures.tripped:
            self._halt(
                f"more than {self.settings.stop_after_failures:.0%} of recent recipients failed"
            )
        if self.on_outcome:
            self.on_outcome(outcome, recipient)

    async def _deliver_one(
        self, conn: Connection, recipient: Recipient
    ) -> tuple[Outcome, DeliveryError | None]:
        """The outcome, and the error that decided it, if one did."""
        try:
            # Built for what this connection takes: a message is signed as it is sent.
            built = self.build(recipient, eight_bit=conn.eight_bit)
        except Exception as exc:
            # Every variant was built before the run started, so this is the run's
            # problem (a template or key changed underneath), not the recipient's.
            raise BuildError(f"cannot build a message: {exc}") from exc
        envelope = built.envelope
        tally = _Attempts(recipient.attempts)
        try:
            # Most messages go through at once: tenacity is set up only for a retry.
            await self._attempt(conn, envelope, tally)
        except DeliveryError as exc:
            remaining = self.settings.max_attempts - tally.charged
            if not exc.transient or remaining <= 0:
                return self._failure(recipient, tally.charged, exc), exc
            self.metrics.retried(exc)
            try:
                await self._retry(conn, envelope, tally, remaining)
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
                return self._failure(recipient, tally.charged, last), last
        sent = Outcome(
            recipient.address, DeliveryStatus.SENT, tally.charged, 250, None, envelope.message_id
        )
        return sent, None

    async def _attempt(self, conn: Connection, envelope: Envelope, tally: _Attempts) -> None:
        await self.bucket.acquire()
        try:
            await conn.send(envelope)
        except DeliveryError as exc:
            if exc.relay_down:  # the message never left: nothing to charge
                self._relay_failed = True
                self.metrics.relay(False, 1)
            else:
                tally.charged += 1
            raise
        tally.charged += 1
        if self._relay_failed:
            self._relay_failed = False
            self.metrics.relay(True)

    async def _retry(
        self, conn: Connection, envelope: Envelope, tally: _Attempts, remaining: int
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
                await self._attempt(conn, envelope, tally)

    def _retrying(self, state: RetryCallState) -> None:
        """A failed attempt that tenacity will follow with another."""
        self.metrics.retried(state.outcome.exception() if state.outcome else None)

    async def _nap(self, seconds: float) -> None:
        """A backoff wait that a stopping run cuts short (shutdown stays prompt)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    def _failure(self, recipient: Recipient, attempts: int, exc: DeliveryError) -> Outcome:
        who = self.mask(recipient.email)
        # Server replies often quote the address: mask it there too.
        said = scrub(
            str(exc), (recipient.email, recipient.ascii_email, recipient.address), self.mask
        )
        if exc.relay_down:
            # Not the recipient's fault: keep it pending and stop taking new recipients.
            self._halt(f"the relay is unreachable ({exc.message})")
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
            self.ledger.suppress(
                recipient.address, SuppressionReason.BOUNCED, f"{exc.code} {exc.message}"
            )
        return Outcome(recipient.address, DeliveryStatus.FAILED, attempts, exc.code, exc.message)
