"""One recipient's delivery over one connection: the rate limit, the claim and the
suppression checked as each attempt starts, the attempts and their backoff, and the
outcome a failure comes to. ``Delivering`` is the engine's half that does this."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from statusmail.delivery.commit import GroupCommitter
from statusmail.delivery.throttle import SharedBucket, TokenBucket
from statusmail.delivery.transport import Connection, Ready, SessionEnded
from statusmail.domain import (
    DeliveryStatus,
    Envelope,
    Outcome,
    Recipient,
    counted,
    scrub,
)
from statusmail.errors import BuildError, DeliveryError
from statusmail.ledger import DeliveryQueue
from statusmail.project.sending import SendingSettings

if TYPE_CHECKING:
    from statusmail.content.message import Built
    from statusmail.metrics import EntryMetrics

log = logging.getLogger("statusmail.delivery")


MAYBE_KEPT = (
    "the connection was lost after the whole message was sent (it may have been accepted); "
    "the run stopped before trying again, so it is not sent again (statusmail retry "
    "--failed sends it)"
)


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
    unconfirmed: int = 0  # of this run's, lost after the whole message was written


def _cleared(check: asyncio.Future[str | None], ready: Ready) -> Ready:
    """``ready``, after the attempt's suppression check has answered that the address
    may be sent to (raising ``_Suppressed`` otherwise, which abandons the transaction)."""

    async def cleared() -> None:
        reason = await check
        if reason is not None:
            raise _Suppressed(reason)
        await ready()

    return cleared


def _settle(check: asyncio.Future[str | None]) -> None:
    """An attempt that ended before its check was awaited: cancel the check, or take
    its exception (the next question to the ledger meets the same failure)."""
    if not check.done():
        check.cancel()
    elif not check.cancelled():
        check.exception()


class Build(Protocol):
    """``MessageFactory.build``: one recipient's message, for a connection that takes
    8-bit bodies or not; signed, or with what its signatures need (``Built.unsigned``)."""

    def __call__(
        self, recipient: Recipient, *, eight_bit: bool = ..., signed: bool = ...
    ) -> Built: ...


class Delivering:
    """What the engine does for one recipient; the engine supplies the run's parts."""

    queue: DeliveryQueue
    committer: GroupCommitter
    build: Build
    settings: SendingSettings
    stop: asyncio.Event
    bucket: TokenBucket | SharedBucket
    bounced: list[tuple[str, str]]  # "no such user" refusals, suppressed as the run ends
    mask: Callable[[str], str]
    metrics: EntryMetrics
    entry_id: str
    relay: str
    _relay_failed: bool

    def halt(self, reason: str, *, relay_unfit: bool = False) -> None:
        raise NotImplementedError

    async def _check_claim(self, recipient: Recipient) -> None:
        raise NotImplementedError

    async def _deliver_one(
        self,
        conn: Connection,
        recipient: Recipient,
        ready: Ready,
        built: asyncio.Future[Built] | None = None,
    ) -> tuple[Outcome, DeliveryError | None] | None:
        """The outcome, and the error that decided it, if one did; None when the claim
        was lost to another sender. ``built``: its message, being signed by the signer process."""
        tally = _Attempts(recipient.attempts)
        try:
            done = await self._deliver(conn, recipient, ready, tally, built)
            if done is None or done[0].status is not DeliveryStatus.PENDING:
                return done
            # Handed back after a loss the relay may have kept; unless the relay went
            # away altogether (then, as ever, it is the relay's and the row pending)
            if tally.unconfirmed and not (done[1] is not None and done[1].relay_down):
                return self._maybe_kept(recipient, tally), done[1]
            return done
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
        self,
        conn: Connection,
        recipient: Recipient,
        ready: Ready,
        tally: _Attempts,
        ahead: asyncio.Future[Built] | None,
    ) -> tuple[Outcome, DeliveryError | None]:
        try:
            # Built for what this connection takes: a message is signed as it is sent.
            if ahead is not None:
                built = await ahead
            else:
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
        except _Stopping:  # paused, cancelled or stopped while it waited for its slot
            return Outcome(
                recipient.address, DeliveryStatus.PENDING, tally.charged, None, "stopped"
            ), None
        except DeliveryError as exc:
            remaining = self.settings.max_attempts - tally.charged
            if exc.lost and remaining <= 0:
                exc = await self._relay_gone(conn, envelope, exc, tally)
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
            await self._slot()
            check: asyncio.Future[str | None] | None = None
            try:
                # After the wait for the rate limit and the session's opening (the next
                # one, or a lost one again: seconds, on a slow relay), as the attempt
                # starts, just before MAIL FROM: a claim another sender took over
                # meanwhile is not sent, and an unsubscribe answered by now wins.
                await conn.prepare(envelope)
                await self._check_claim(recipient)
                check = await self._suppression_check(recipient.address)
                await conn.send(envelope, ready if check is None else _cleared(check, ready))
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
            finally:
                if check is not None:
                    _settle(check)
        tally.charged += 1
        if self._relay_failed:
            self._relay_failed = False
            self.metrics.relay(True)

    async def _relay_gone(
        self, conn: Connection, envelope: Envelope, exc: DeliveryError, tally: _Attempts
    ) -> DeliveryError:
        """The connection was lost in the recipient's last attempt: if the relay cannot
        be reached again, it went away (the recipient stays pending, that attempt not
        charged, as when it cannot be reached at all); else the attempt stands."""
        try:
            await conn.prepare(envelope)
        except DeliveryError as down:
            if down.relay_down:
                tally.charged -= 1
                return down
        return exc

    async def _slot(self) -> None:
        """Wait for this message's slot of the rate limit; ``_Stopping`` if the run
        stops first (a pause, a cancel, a signal): a worker waits here for up to
        ``concurrency / rate`` seconds, and nothing of the message has left yet. (The
        bucket sleeps with ``_nap``, which the run's stop cuts short.)"""
        if self.stop.is_set():
            raise _Stopping
        await self.bucket.acquire()
        if self.stop.is_set():
            raise _Stopping

    async def _suppression_check(self, address: str) -> asyncio.Future[str | None] | None:
        """Raise ``_Suppressed`` if the address is suppressed now, on a local ledger
        (a lookup of microseconds, just before MAIL FROM). On a server the check is a
        round trip: it is asked now, of the group commit's next transaction (with the
        outcomes waiting), and its answer awaited just before the end of DATA
        (``_cleared``), so that it overlaps MAIL FROM, RCPT TO and DATA rather than
        preceding them. It still sees every unsubscribe answered before the attempt
        began, and a suppressed address's transaction never ends: nothing is delivered."""
        if self.queue.remote:
            return self.committer.check(address)
        reason = await self.queue.suppression_of(address)
        if reason is not None:
            raise _Suppressed(reason)
        return None

    def _maybe_kept(self, recipient: Recipient, tally: _Attempts) -> Outcome:
        """A recipient whose message the relay may have kept, handed back by a stopping
        run before its one more try: recorded failed, not pending, so that no later run
        tries it twice more (the relay kept 3 copies: review)."""
        log.warning(
            "%s: the relay may have kept the message (its answer was lost); the run "
            "stopped before trying again, so it is not sent again",
            self.mask(recipient.email),
            extra={"event": "maybe_kept", "entry": self.entry_id, "relay": self.relay},
        )
        return Outcome(recipient.address, DeliveryStatus.FAILED, tally.charged, None, MAYBE_KEPT)

    def _undelivered(self, exc: DeliveryError, tally: _Attempts) -> None:
        """Charge a failed attempt, unless the message never left. One the relay may
        have kept (lost after its end was written) is tried once more at most: it may
        arrive twice, as the README says, never max_attempts times (a relay that closed
        after each final dot got 5 copies of every message)."""
        if exc.unconfirmed:
            tally.unconfirmed += 1
            if tally.unconfirmed > 1:
                exc.transient = False
        if exc.relay_down:
            self._relay_failed = True
            self.metrics.relay(False, 1)
        elif not exc.unfit:
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
            "starts a new session after %d message(s) from now on",
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
        # retry_initial before the second attempt, doubling, at most retry_max, each
        # plus up to retry_initial of jitter (full jitter from 0 spent five attempts on a
        # greylisting relay in under 5 s, against 1, 2, 4 and 8 configured)
        initial, most = self.settings.retry_initial, self.settings.retry_max
        jittered = wait_exponential(multiplier=2 * initial, max=most) + wait_random(0, initial)

        def wait(state: RetryCallState) -> float:
            return min(most, jittered(state))

        await self._nap(initial * (1 + random.random()))
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
        if exc.relay_down or exc.unfit:
            # Not the recipient's fault: keep it pending and stop taking new recipients.
            why = "the relay is unreachable" if exc.relay_down else "the relay cannot take it"
            self.halt(f"{why} ({exc})", relay_unfit=exc.unfit)
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
                "%s: gave up after %s: %s",
                who,
                counted(attempts, "attempt"),
                said,
                extra={"event": "gave_up", **fields},
            )
            return Outcome(
                recipient.address, DeliveryStatus.FAILED, attempts, exc.code, exc.message
            )
        log.warning("%s: refused: %s", who, said, extra={"event": "refused", **fields})
        if exc.bounce:
            self.bounced.append((recipient.address, f"{exc.code} {exc.message}"))
        return Outcome(recipient.address, DeliveryStatus.FAILED, attempts, exc.code, exc.message)
