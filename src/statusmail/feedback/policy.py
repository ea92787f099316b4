"""What proven events do: the storm guard holds a storm of one domain's bounces, the
policy acts by cause (soft bounces scored by day), held events are released on request,
and each event is told (the pass report, the log, the metrics). ``Applying`` is this
half of ``loop.Feedback``; ``proof.Assessing`` is the other."""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from statusmail import metrics
from statusmail.domain import (
    Cause,
    DeliveryStatus,
    EventState,
    FeedbackKind,
    SuppressionReason,
    scrub,
)
from statusmail.feedback.proof import BOUNCES, addresses_masked
from statusmail.feedback.reports import PassReport
from statusmail.ledger import FeedbackEvent, Ledger
from statusmail.project.config import Config

log = logging.getLogger("statusmail.feedback")


class Applying:
    """The storm guard, the policy and the telling of one pass."""

    config: Config
    ledger: Ledger
    dry_run: bool
    mask: Callable[[str], str]
    now: dt.datetime
    report: PassReport
    _suppressed: set[str]
    _seen: set[tuple[str, str, str]]  # events of this pass
    _days: defaultdict[str, set[str]]  # soft days of this pass
    _overruled: set[tuple[str, str, str]]  # events about a message sent before a lift

    # -- the storm guard -------------------------------------------------------------------

    def _storms(self, events: Iterable[FeedbackEvent]) -> set[tuple[str, str, str]]:
        """The (entry, domain, cause) groups to hold: more than ``storm_share`` of the
        domain's recipients of the entry (and at least ``storm_minimum`` addresses)
        bounced for that cause, counting what earlier passes recorded; or the group has
        held events already."""
        settings = self.config.bounces
        groups: defaultdict[tuple[str, str, str], set[str]] = defaultdict(set)
        for e in events:
            if e.state == EventState.APPLIED and e.kind in BOUNCES and e.entry_id and e.cause:
                groups[(e.entry_id, e.domain, e.cause)].add(e.address)
        held: set[tuple[str, str, str]] = set()
        for group, addresses in groups.items():
            earlier, holding = self.ledger.bounced_in_group(*group)
            bounced = len(addresses | earlier)
            if holding or (
                bounced >= settings.storm_minimum
                and bounced > settings.storm_share * self.ledger.recipients_at(*group[:2])
            ):
                held.add(group)
        return held

    # -- the policy -----------------------------------------------------------------------

    def _record(
        self, assessed: Sequence[list[FeedbackEvent]], held: set[tuple[str, str, str]]
    ) -> None:
        """Apply the policy to the events of a chunk of reports and record them in one
        transaction."""
        settled = [[self._settled(e, held) for e in events] for events in assessed]
        flat = [e for events in settled for e in events]
        if self.dry_run:
            new = [not self.ledger.has_feedback(e.source, e.address, e.kind) for e in flat]
        else:
            new = self.ledger.record_feedback(flat)
        self.report.handled += len(settled)
        for event, fresh in zip(flat, new, strict=True):
            self._note(event, fresh)

    def _settled(self, event: FeedbackEvent, held: set[tuple[str, str, str]]) -> FeedbackEvent:
        if event.state != EventState.APPLIED:
            return event
        if (event.entry_id, event.domain, event.cause) in held:
            return replace(event, state=str(EventState.HELD))
        return self.policy(event)

    def policy(self, event: FeedbackEvent) -> FeedbackEvent:
        """What an applied event does, by its kind and cause; nothing when it is about a
        message sent before the address's suppression was lifted (a late or second
        report of what the operator has already seen and overruled)."""
        if event.entry_id and self.ledger.lifted_since_sent(event.entry_id, event.address):
            self._overruled.add((event.address, event.kind, event.source))
            return event
        said = " ".join(part for part in (event.code, event.diagnostic) if part)
        kind = FeedbackKind(event.kind)
        if kind is FeedbackKind.COMPLAINT:
            return _with(event, SuppressionReason.COMPLAINED, f"complaint: {said}", "complained")
        if kind is FeedbackKind.UNSUBSCRIBE:
            return _with(event, SuppressionReason.UNSUBSCRIBED, "mailto unsubscribe", None)
        cause = Cause(event.cause or Cause.OTHER)
        if cause.senders_problem:
            return event
        if kind is FeedbackKind.HARD and cause.suppresses_at_once:
            return _with(event, SuppressionReason.BOUNCED, f"hard bounce: {said}", "bounced")
        return self._score(event, dt.date.fromisoformat(event.event_at[:10]), said)

    def _score(self, event: FeedbackEvent, day: dt.date, said: str) -> FeedbackEvent:
        """A soft bounce counts once a day; ``soft_limit`` counted days within the last
        ``soft_window_days`` suppress."""
        settings = self.config.bounces
        since = self.now.date() - dt.timedelta(days=settings.soft_window_days - 1)
        address = event.address
        if (address, event.kind, event.source) in self._seen or self.ledger.has_feedback(
            event.source, address, event.kind, applied=True
        ):
            return event  # read before: counts nothing again
        days = self.ledger.soft_days(address, since) | self._days[address]
        counted = day.isoformat()
        self._days[address].add(counted)
        score = len({d for d in days | {counted} if d >= since.isoformat()})
        event = replace(event, score_day=counted)
        if score < settings.soft_limit:
            return event
        evidence = (
            f"{score} days with soft bounces within {settings.soft_window_days} days; last: {said}"
        )
        return _with(event, SuppressionReason.BOUNCED, evidence, None)

    # -- held events, released --------------------------------------------------------------

    def release(self, domain: str) -> None:
        """Apply every event held for ``domain``, oldest first, as the policy says now."""
        held = self.ledger.held_events(domain)
        applied = [self.policy(replace(e, state=str(EventState.APPLIED))) for e in held]
        if not self.dry_run:
            self.ledger.release_held(applied)
        self.report.released = len(applied)
        for event in applied:
            self._note(event, True)

    # -- telling what happened ------------------------------------------------------------

    def _note(self, event: FeedbackEvent, fresh: bool) -> None:
        key = (event.address, event.kind, event.source)
        state = EventState(event.state)
        if not fresh or key in self._seen:
            self.report.already_recorded += 1
            effect = "already recorded"
        else:
            self._seen.add(key)
            effect = self._effect(event, state)
            if self.dry_run:
                effect = "would be " + effect
        shown = self.mask(event.address) if event.address else "-"
        # (a diagnostic is one line of at most 400 characters: reading.one_line)
        detail = addresses_masked(
            scrub(event.diagnostic or "", [event.address], self.mask), self.mask
        )
        self.report.events.append(
            {
                "kind": event.kind,
                "state": event.state,
                "cause": event.cause,
                "entry": event.entry_id,
                "address": shown,
                "code": event.code,
                "diagnostic": detail,
                "at": event.event_at,
                "source": event.source,
                "effect": effect,
            }
        )
        level = logging.WARNING if fresh and state is EventState.FORGED else logging.INFO
        log.log(
            level,
            "%s %s%s: %s",
            event.kind,
            shown,
            f" ({event.entry_id})" if event.entry_id else "",
            effect,
            extra={
                "event": "feedback_event",
                "kind": event.kind,
                "state": event.state,
                "cause": event.cause,
                "entry": event.entry_id,
                "recipient": shown,
            },
        )

    def _effect(self, event: FeedbackEvent, state: EventState) -> str:
        """Count a new event; what it does, in words."""
        report = self.report
        if state is EventState.UNVERIFIED:
            report.unverified += 1
            self._count_report(state)
            return "unverified: no proof it is about this address; applied to nobody"
        if state is EventState.FORGED:
            report.forged += 1
            self._count_report(state)
            return f"forged ({event.evidence}); applied to nobody"
        if state is EventState.HELD:
            report.held[(event.domain, event.cause or "")] += 1
            self._count_report(state)
            return f"held: a storm of {event.cause} bounces from {event.domain}"
        report.kinds[event.kind] += 1
        if not self.dry_run:
            metrics.feedback_event(str(event.kind))
        cause = Cause(event.cause) if event.cause else None
        if cause is not None and cause.senders_problem:
            report.senders_side[(event.domain, cause.value)] += 1
            return f"recorded: {cause} (a problem on the sending side)"
        if (event.address, event.kind, event.source) in self._overruled:
            return "recorded: about a message sent before its suppression was lifted"
        if event.suppress and event.address not in self._suppressed:
            self._suppressed.add(event.address)
            report.suppressed += 1
            return f"suppressed as {event.suppress}"
        if event.suppress:
            return "recorded (already suppressed)"
        return "scored" if event.score_day else "recorded"

    def _count_report(self, state: EventState) -> None:
        if not self.dry_run:
            metrics.feedback_report(state)


def _with(event: FeedbackEvent, reason: str, evidence: str, mark: str | None) -> FeedbackEvent:
    return replace(
        event,
        suppress=reason,
        evidence=evidence[:500],
        mark=DeliveryStatus(mark).value if mark else None,
    )
