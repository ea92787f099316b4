"""Feedback read back into the ledger: each bounce, complaint or mailto unsubscribe of a
report recorded once (``FeedbackEvent``), with its effects (a soft-bounce day, a
suppression, the delivery row's new outcome), the storm guard's held events, and an
address's history. ``FeedbackEvents`` is this part of ``Ledger``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from statusmail.ledger import queries
from statusmail.ledger.base import LedgerBase, guarded, now_iso

# How long a taken webhook token's row outlives its freshness: the clock skew between
# web hosts that a replay cannot slip through (seconds).
TOKENS_KEPT_PAST_STALE = 3600.0


@dataclass(frozen=True)
class FeedbackEvent:
    """One recipient's part of a report read back, and what it does to the ledger."""

    kind: str  # FeedbackKind
    address: str
    entry_id: str | None
    code: str | None
    diagnostic: str | None
    source: str  # the report's Message-ID: the same report read twice counts once
    event_at: str
    suppress: str | None = None  # suppress the address for this reason
    evidence: str | None = None  # the suppression's (and the delivery row's) detail
    mark: str | None = None  # the entry's sent row becomes this (bounced, complained)
    score_day: str | None = None  # a soft bounce counted on this day
    cause: str | None = None  # a bounce's Cause
    state: str = "applied"  # EventState: only an applied event changes anything

    @property
    def domain(self) -> str:
        """The recipient's domain: the storm guard and bulk undo group by it."""
        return self.address.rpartition("@")[2].lower()


class FeedbackEvents(LedgerBase):
    """Recording, releasing and reading back feedback events."""

    @guarded("look up a return path")
    def delivery_by_row(self, row: int) -> tuple[str, str] | None:
        """(entry, address) of the delivery a return path names by its row."""
        rows = self._q("SELECT entry_id, address FROM deliveries WHERE {seq} = :row", row=row)
        return (rows[0][0], rows[0][1]) if rows else None

    @guarded("look up a lifted suppression")
    def lifted_since_sent(self, entry_id: str, address: str) -> bool:
        """Whether ``address``'s suppression was lifted after (or in the second) the
        entry's message to it went out: a later report about that message is one the
        lift already answered."""
        rows = self._q(
            "SELECT 1 FROM suppression_lifts l JOIN deliveries d ON d.address = l.address"
            " WHERE d.entry_id = :e AND d.address = :a AND l.lifted_at >= d.updated_at"
            " LIMIT 1",
            e=entry_id,
            a=address,
        )
        return bool(rows)

    @guarded("look up a Message-ID")
    def delivery_by_message_id(self, message_id: str) -> tuple[str, str] | None:
        """(entry, address) of the message sent with ``message_id``."""
        rows = self._q(
            "SELECT entry_id, address FROM deliveries WHERE message_id = :m LIMIT 1",
            m=message_id,
        )
        return (rows[0][0], rows[0][1]) if rows else None

    @guarded("look up a delivery")
    def has_delivery(self, entry_id: str, address: str) -> bool:
        """Whether ``entry_id`` has a row for ``address``, whatever its outcome."""
        rows = self._q(
            "SELECT 1 FROM deliveries WHERE entry_id = :e AND address = :a", e=entry_id, a=address
        )
        return bool(rows)

    @guarded("look up an address")
    def last_entry_sent(self, address: str) -> str | None:
        """The entry most recently sent to ``address``, or None if none ever was."""
        value = self._one(
            "SELECT entry_id FROM deliveries WHERE address = :a"
            " AND status IN ('sent', 'bounced', 'complained')"
            " ORDER BY updated_at DESC, {seq} DESC LIMIT 1",
            a=address.lower(),
        )
        return None if value is None else str(value)

    @guarded("read the feedback events")
    def has_feedback(self, source: str, address: str, kind: str, *, applied: bool = False) -> bool:
        """Whether this report's event was recorded (``applied``: and acted on)."""
        return bool(
            self._q(
                "SELECT 1 FROM feedback_events WHERE address = :a AND kind = :k AND source = :s"
                + (" AND state = 'applied'" if applied else ""),
                a=address,
                k=str(kind),
                s=source,
            )
        )

    @guarded("read the feedback events")
    def bounced_in_group(self, entry_id: str, domain: str, cause: str) -> tuple[set[str], bool]:
        """The addresses of ``domain`` recorded as bouncing ``entry_id`` for ``cause``
        (applied or held), and whether any of them is held."""
        rows = self._q(
            "SELECT address, state FROM feedback_events WHERE domain = :d AND entry_id = :e"
            " AND cause = :c AND state IN ('applied', 'held')",
            d=domain,
            e=entry_id,
            c=cause,
        )
        return {row[0] for row in rows}, any(row[1] == "held" for row in rows)

    @guarded("count an entry's recipients")
    def recipients_at(self, entry_id: str, domain: str) -> int:
        """How many recipients of ``entry_id`` are at ``domain``."""
        return int(
            self._one(
                "SELECT COUNT(*) FROM deliveries WHERE entry_id = :e AND address LIKE :p",
                e=entry_id,
                p=f"%@{domain}",
            )
            or 0
        )

    @guarded("read the held feedback")
    def held_events(self, domain: str) -> list[FeedbackEvent]:
        """The events the storm guard holds for ``domain``, oldest first."""
        return [
            FeedbackEvent(
                kind=r[0],
                address=r[1],
                entry_id=r[2],
                code=r[3],
                diagnostic=r[4],
                source=r[5],
                event_at=r[6],
                cause=r[7],
                state="held",
            )
            for r in self._q(
                "SELECT kind, address, entry_id, code, diagnostic, source, event_at, cause"
                " FROM feedback_events WHERE domain = :d AND state = 'held'"
                " ORDER BY event_at, address",
                d=domain,
            )
        ]

    @guarded("count the held feedback")
    def held_count(self) -> int:
        return int(self._one("SELECT COUNT(*) FROM feedback_events WHERE state = 'held'") or 0)

    @guarded("release held feedback")
    def release_held(self, events: Iterable[FeedbackEvent]) -> int:
        """Apply held events (their effects decided again): one transaction."""
        stamp = now_iso()
        released = 0
        with self.transaction():
            for e in events:
                if self._q(
                    "UPDATE feedback_events SET state = 'applied' WHERE address = :a"
                    " AND kind = :k AND source = :s AND state = 'held' RETURNING address",
                    a=e.address,
                    k=str(e.kind),
                    s=e.source,
                ):
                    released += 1
                    self._apply_feedback(e, stamp)
        return released

    @guarded("read an address's history")
    def history(self, address: str) -> dict[str, Any]:
        """Everything recorded about ``address``: its suppression, every feedback event
        and every lifted suppression."""
        address = address.lower()
        current = self._q(
            "SELECT reason, detail, created_at FROM suppressions WHERE address = :a", a=address
        )
        events = self._q(
            "SELECT received_at, event_at, entry_id, kind, cause, code, diagnostic, source,"
            " state, suppressed FROM feedback_events WHERE address = :a"
            " ORDER BY event_at, received_at",
            a=address,
        )
        lifts = self._q(
            "SELECT reason, detail, suppressed_at, lifted_at, why FROM suppression_lifts"
            " WHERE address = :a ORDER BY lifted_at",
            a=address,
        )
        names = [
            *("received_at", "event_at", "entry", "kind", "cause", "code", "diagnostic"),
            *("source", "state", "suppressed"),
        ]
        return {
            "address": address,
            "suppressed": (
                {"reason": current[0][0], "detail": current[0][1], "since": current[0][2]}
                if current
                else None
            ),
            "events": [
                {**dict(zip(names, row, strict=True)), "suppressed": bool(row[9])} for row in events
            ],
            "lifted": [
                dict(zip(("reason", "detail", "suppressed_at", "lifted_at", "why"), r, strict=True))
                for r in lifts
            ],
        }

    @guarded("read the bounce score")
    def soft_days(self, address: str, since: dt.date) -> set[str]:
        """The days (UTC, ISO) since ``since`` on which a soft bounce of ``address`` counted."""
        rows = self._q(
            "SELECT day FROM bounce_scores WHERE address = :a AND day >= :since",
            a=address,
            since=since.isoformat(),
        )
        return {row[0] for row in rows}

    @guarded("record feedback")
    def record_feedback(self, events: Iterable[FeedbackEvent]) -> list[bool]:
        """Record the events of a chunk of reports, with their effects, in one
        transaction; an event already recorded (the same report read again) changes
        nothing, and only an applied event has effects. Returns, per event, whether it
        was new."""
        self.check_same_file()
        stamp = now_iso()
        new: list[bool] = []
        events = list(events)
        with self.transaction():
            self.hold_addresses(e.address for e in events if e.state == "applied")
            for e in events:
                inserted = self._q(
                    "INSERT INTO feedback_events (received_at, event_at, entry_id, address,"
                    " kind, code, diagnostic, source, cause, state, domain) VALUES (:now, :at,"
                    " :e, :a, :k, :code, :diag, :s, :cause, :state, :domain)"
                    " ON CONFLICT (address, kind, source) DO NOTHING RETURNING address",
                    now=stamp,
                    at=e.event_at,
                    e=e.entry_id,
                    code=e.code,
                    diag=e.diagnostic,
                    a=e.address,
                    k=str(e.kind),
                    s=e.source,
                    cause=e.cause,
                    state=str(e.state),
                    domain=e.domain,
                )
                new.append(bool(inserted))
                if inserted and e.state == "applied":
                    self._apply_feedback(e, stamp)
        return new

    def _apply_feedback(self, e: FeedbackEvent, stamp: str) -> None:
        """What an applied event does: its soft-bounce day, its suppression (with this
        report as the evidence), its delivery row's new outcome. Nothing when a lift
        came after the message went out: the pass decided before the lift, which answered
        the report (review: the address was suppressed again at once, the operator told
        "removed")."""
        if e.entry_id and self.lifted_since_sent(e.entry_id, e.address):
            return
        key = {"a": e.address, "k": str(e.kind), "s": e.source}
        if e.score_day:
            self._q(
                "INSERT INTO bounce_scores (address, day, source) VALUES (:a, :d, :s)"
                " ON CONFLICT (address, day) DO NOTHING",
                a=e.address,
                d=e.score_day,
                s=e.source,
            )
        if e.suppress:
            added = self._q(
                queries.SUPPRESS + " RETURNING address",
                address=e.address,
                reason=str(e.suppress),
                detail=e.evidence,
                stamp=stamp,
            )
            if added:  # this report is the suppression's evidence
                self._q(
                    "UPDATE feedback_events SET suppressed = 1"
                    " WHERE address = :a AND kind = :k AND source = :s",
                    **key,
                )
        if e.mark and e.entry_id:
            self._q(
                # updated_at stays when it went out: the hourly cap counts it from then
                "UPDATE deliveries SET status = :mark, detail = :detail"
                " WHERE entry_id = :e AND address = :a AND status = 'sent'",
                mark=str(e.mark),
                detail=e.evidence,
                e=e.entry_id,
                a=e.address,
            )

    @guarded("summarise the feedback")
    def feedback_counts(self, entry_id: str) -> dict[str, int]:
        """Applied events per kind recorded for ``entry_id`` (not those held)."""
        rows = self._q(
            "SELECT kind, COUNT(*) FROM feedback_events WHERE entry_id = :e"
            " AND state = 'applied' GROUP BY kind",
            e=entry_id,
        )
        return {row[0]: int(row[1]) for row in rows}

    @guarded("take a webhook's token")
    def take_webhook_token(self, provider: str, token: str, fresh_until: float, now: float) -> bool:
        """Take ``token`` of ``provider`` once, for every host on this ledger; False if it
        was taken already and is still fresh, or is stale by now (its check may have
        passed a moment ago on a busy host; its row, dropped once stale, no longer
        says it was taken). Tokens gone stale are dropped as it goes."""
        if fresh_until < now:
            return False
        with self.transaction():
            # Kept an hour past stale by this host's clock: another host whose clock is
            # behind still takes the token as fresh, and must find it taken.
            self._q(
                "DELETE FROM webhook_tokens WHERE fresh_until < :before",
                before=now - TOKENS_KEPT_PAST_STALE,
            )
            taken = self._q(
                "INSERT INTO webhook_tokens (provider, token, fresh_until)"
                " VALUES (:p, :t, :f) ON CONFLICT (provider, token) DO NOTHING RETURNING token",
                p=provider,
                t=token,
                f=fresh_until,
            )
        return bool(taken)

    @guarded("give back a webhook's token")
    def give_back_webhook_token(self, provider: str, token: str) -> None:
        """Give back what ``take_webhook_token`` took, when what it carried was not
        applied: the provider's retry brings it again."""
        with self.transaction():
            self._q(
                "DELETE FROM webhook_tokens WHERE provider = :p AND token = :t", p=provider, t=token
            )
