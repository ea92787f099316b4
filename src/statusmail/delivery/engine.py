"""The delivery engine: claims, workers, failure threshold, group-committed ledger (one
recipient's attempts are in ``attempts``, the group commit in ``commit``).

Each worker owns one connection and takes one recipient at a time. A recipient's outcome
is committed to the ledger before its worker hands the next message over (the end of
DATA); the worker builds that message and starts its transaction meanwhile, and the
outcomes of all workers are grouped into one transaction, so at any moment at most
``concurrency`` messages can have been accepted by the server without being recorded
as sent.

With ``dkim`` (the run's ``DkimSigner``: the RSA signature is most of a message's
CPU), each worker builds its next message as soon as it has the current one in hand,
and a process of its own signs it (``signing.py``) while the loop talks to the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from statusmail.delivery.attempts import Build, Delivering, _ClaimLost
from statusmail.delivery.commit import Done, GroupCommitter
from statusmail.delivery.signing import SigningProcess
from statusmail.delivery.throttle import FailureWindow, SharedBucket, TokenBucket
from statusmail.delivery.transport import Connection, Transport
from statusmail.domain import DeliveryStatus, Outcome, Recipient, SuppressionReason, counted
from statusmail.errors import DeliveryError, LedgerError
from statusmail.ledger import DeliveryQueue, controls
from statusmail.project.sending import SendingSettings

if TYPE_CHECKING:
    from statusmail.content.dkim_signing import DkimSigner
    from statusmail.content.message import Built
    from statusmail.metrics import DeliveryMetrics

log = logging.getLogger("statusmail.delivery")
CLOSE_TIMEOUT = 5.0  # a QUIT the relay never answers must not hold up the end of a run
POLL = 0.5  # how often an idle producer looks again (another sender's lease, the list)
OBEY = 0.5  # how often a run asks whether its entry was paused or cancelled
# One claim per 2 messages at one connection cost ~50 us a message; per 16, a PostgreSQL
# sender still spent a round trip (state and claim) per 8 messages. A run's claims start
# at 16 and double up to CLAIM_AT_MOST, and never beyond CLAIM_SPAN seconds of a paced
# run's rate: a short list is still shared among senders (and processes that start
# later), a long fast one costs a claim per 128 messages.
CLAIM_AT_LEAST = 16
CLAIM_AT_MOST = 128
CLAIM_SPAN = 0.25
# With a DKIM key, the messages a worker has built and being signed: enough that its
# next one's signatures are nearly always made by its turn (at 2, more than half of the
# turns at 8 connections waited for the signer; at 3, 1 in 200).
AHEAD = 3
# Why a run stopped taking recipients though nothing went wrong: when it had taken the
# last of them anyway, it did not stop early (exit 0, not 4)
LIMIT = "limit"
CANCELLED = controls.STOPPED_BY[controls.CANCELLED]  # (a cancel leaves nothing to continue)
HOURLY_CAP = "the hourly cap (sending.max_per_hour) was reached"


def ahead(connections: int) -> int:
    """How many recipients a claim takes: enough that a claim (a transaction) is rare
    next to the messages, few enough to leave the rest to other senders."""
    return max(CLAIM_AT_LEAST, 2 * connections)


@dataclass
class RunResult:
    sent: int = 0
    failed: int = 0
    stopped: str | None = None  # why the run stopped early, if it did
    relay_unfit: bool = False  # stopped because the relay cannot take the project's mail


OnOutcome = Callable[[Outcome, Recipient], None]


class Engine(Delivering):
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
        controls: Callable[[], Awaitable[str | None]] | None = None,
        dkim: DkimSigner | None = None,
    ) -> None:
        self.queue = queue
        self.dkim = dkim
        self._signer: SigningProcess | None = None
        self.controls = controls  # why to stop taking recipients (statusmail pause), if so
        self.transport = transport
        self.build = build
        self.settings = settings
        self.stop = stop or asyncio.Event()
        self.on_outcome = on_outcome
        # Its waits end with the run's stop (``_nap``): a worker waiting for its slot
        # then sends nothing (see ``_slot``)
        self.bucket: TokenBucket | SharedBucket = (
            SharedBucket(settings.rate, queue.take_slots, sleep=self._nap)
            if queue.shared
            else TokenBucket(settings.rate, sleep=self._nap)
        )
        self.failures = FailureWindow(settings.stop_after_failures)
        self.failed_too_often = False  # the breaker stopped the run
        self.bounced: list[tuple[str, str]] = []
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

    def halt(self, reason: str, *, relay_unfit: bool = False) -> None:
        if self.result.stopped is None:
            self.result.stopped = reason
            self.result.relay_unfit = relay_unfit
            rest = "" if reason == CANCELLED else ", the rest stay pending"
            log.warning(
                "stopping: %s; in-flight messages finish%s",
                reason,
                rest,
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
        obeying = asyncio.create_task(self._obey())
        connections: list[Connection] = []
        try:
            if self.dkim is not None:
                # Started first: its interpreter and key load (about 0.1 s) overlap the
                # wait for the first recipients and the connections.
                self._signer = SigningProcess(self.dkim)
                await self._signer.start()
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
            with contextlib.suppress(LedgerError):  # (relearnt from the next refusal)
                await self._suppress_bounced()
            renewing.cancel()
            obeying.cancel()
            await asyncio.gather(renewing, obeying, return_exceptions=True)
            for conn in connections:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), CLOSE_TIMEOUT)
            with contextlib.suppress(LedgerError):
                await self.queue.release()  # what was taken but not sent goes back
            if self._signer is not None:  # a message built ahead and not sent is dropped
                await self._signer.close()
                self._signer = None
        return self.result

    async def _next_batch(self, want: int) -> list[Recipient]:
        """The next recipients to send to, waiting while more may come (the selection
        still streams, or another sender's lease may run out); empty when done."""
        while not self.stop.is_set():
            if self.limit is not None and self.taken >= self.limit:
                self.result.stopped = self.result.stopped or LIMIT
                return []  # what was taken is still delivered
            count = want if self.limit is None else min(want, self.limit - self.taken)
            cap = self.settings.max_per_hour or None
            if cap:
                allowed = cap - await self.queue.hourly_used()
                if allowed <= 0:  # what was taken is still delivered: it counted already
                    self.result.stopped = self.result.stopped or HOURLY_CAP
                    return []
                count = min(count, allowed)
            # Whether this run still selects, asked before the ledger's state: a stream
            # that ends meanwhile committed its end before that state is read, so the
            # two never say "nobody selects, and the selection is unfinished" of a
            # selection this run just finished (which it would then take over: the
            # whole list selected again)
            selecting = self.selecting()
            generation, selected = await self.queue.state()
            self.progress.clear()
            # generation 0: no selection has begun yet (another sender is about to)
            # (the claim counts again, atomically: another sender may claim meanwhile)
            batch = await self.queue.claim(generation, count, cap) if generation else []
            if batch:
                self.taken += len(batch)
                return batch
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
        most = CLAIM_AT_MOST
        if self.settings.rate and not math.isinf(self.settings.rate):
            most = min(most, int(self.settings.rate * CLAIM_SPAN))
        while batch := await self._next_batch(want):
            for recipient in batch:
                await feed.put(recipient)
            want = min(want * 2, max(want, most))
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

    async def _obey(self) -> None:
        """Stop taking recipients within a second of a pause or a cancel (``controls``)."""
        while self.controls is not None and not self.stop.is_set():
            with contextlib.suppress(LedgerError):  # the queue's own calls will say it
                if reason := await self.controls():
                    self.halt(reason)
                    return
            await asyncio.sleep(OBEY)

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

        # The recipient in hand and, with a signer, the next ones, each with its message
        # being built.
        hand: deque[tuple[Recipient, asyncio.Future[Built] | None]] = deque()
        fed = True  # the producer may still put recipients (and then None) in the feed
        me = asyncio.current_task()
        while True:
            if me is not None and me.cancelling():
                # A wait inside psycopg_pool (asyncio.wait_for, Python 3.11) can swallow
                # the run's cancellation; the producer is cancelled too, so the feed
                # would never bring this worker its None (the run hung for good when
                # the server dropped every connection).
                raise asyncio.CancelledError
            if not hand:
                recipient = await feed.get() if fed else None
                if recipient is None:
                    break
                hand.append((recipient, self._build_soon(conn, recipient)))
            while self._signer is not None and fed and len(hand) < AHEAD and not feed.empty():
                following = feed.get_nowait()
                if following is None:
                    fed = False
                else:
                    hand.append((following, self._build_soon(conn, following)))
            recipient, built = hand.popleft()
            if self.stop.is_set():
                continue  # drain: what was taken but not started goes back to the queue
            done = await self._deliver_one(conn, recipient, ready, built)
            if done is not None:  # else another sender has it now: nothing to record
                last = self.committer.submit((done[0], recipient, done[1]))
                self._breaker(done[0])
        await ready()

    def _build_soon(self, conn: Connection, recipient: Recipient) -> asyncio.Future[Built] | None:
        """With a signer, the recipient's message built now and being signed; else None
        (it is built when its turn comes)."""
        if self._signer is None:
            return None
        return self._signer.build_signed(self.build, recipient, eight_bit=conn.eight_bit)

    def _recorded(self, batch: list[Done]) -> None:
        for outcome, recipient, error in batch:
            self._count(outcome, recipient, error)
        # A producer waiting for the last in-flight rows of the queue looks again now,
        # not after its POLL.
        self.progress.set()

    def _breaker(self, outcome: Outcome) -> None:
        """The failure breaker, fed as each outcome comes (fed from the commits, refusals
        at RCPT, which wait for none, ran on: 27 to 36 failed where 20 trip it)."""
        if outcome.status in (DeliveryStatus.SKIPPED, DeliveryStatus.PENDING):
            # suppressed just before its turn; handed back by a stopping run, whose
            # workers waiting for their slots would trip it (and hold a paused run's
            # "user unknown" refusals as if the relay had refused everyone)
            return
        self.failures.record(outcome.status is DeliveryStatus.SENT)
        if self.failures.tripped:
            self.failed_too_often = True
            self.halt(
                f"more than {self.settings.stop_after_failures:.0%} of recent recipients failed"
            )

    async def _suppress_bounced(self) -> None:
        """The addresses refused as unknown, suppressed once the run ends; not when the
        breaker stopped it: a relay that refuses everyone (a misconfiguration) said "user
        unknown" of readers who are not, and 20 more were suppressed on every re-run."""
        bounced, self.bounced = self.bounced, []
        # (a run too short to trip the breaker, where the relay took nothing and called
        # two or more unknown, is the same misconfiguration: all 14 were suppressed)
        everyone = len(bounced) >= 2 and not self.result.sent
        if bounced and (self.failed_too_often or everyone):
            log.warning(
                "%s: %s refused as unknown, not suppressed: the relay took nothing else "
                "or the run stopped on failures, as a relay refusing everyone makes it "
                "(once it is right: statusmail retry --failed %s)",
                self.entry_id,
                counted(len(bounced), "recipient"),
                self.entry_id,
                extra={"event": "bounces_held", "entry": self.entry_id, "count": len(bounced)},
            )
            return
        for address, detail in bounced:
            await self.queue.suppress(address, SuppressionReason.BOUNCED, detail)

    def _count(self, outcome: Outcome, recipient: Recipient, error: DeliveryError | None) -> None:
        """Count an outcome the ledger has recorded (so the metrics follow the ledger)."""
        if outcome.status is DeliveryStatus.SENT:
            self.result.sent += 1
            self.metrics.sent()
        elif outcome.status is DeliveryStatus.FAILED:
            self.result.failed += 1
            self.metrics.failed(error)
        elif outcome.status is DeliveryStatus.SKIPPED:  # suppressed just before its turn
            self.metrics.skipped()
        if self.on_outcome:
            self.on_outcome(outcome, recipient)
