"""What a feedback pass deals in: ``ProviderReport``, a report a sending provider posted
(its signature checked), and ``PassReport``, what one pass read and did."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from statusmail.domain import FeedbackKind


@dataclass
class PassReport:
    """What one pass read and did (or, with ``--dry-run``, would do)."""

    dry_run: bool
    mailboxes: list[str] = field(default_factory=list)
    read: int = 0
    handled: int = 0  # recorded and moved to processed
    kinds: Counter[str] = field(default_factory=Counter)  # applied: hard, soft, complaint, …
    left: Counter[str] = field(default_factory=Counter)  # why untouched: auto-reply, …
    already_recorded: int = 0
    suppressed: int = 0  # addresses newly suppressed
    unverified: int = 0  # reports that named addresses but proved nothing
    forged: int = 0  # reports whose token did not verify
    held: Counter[tuple[str, str]] = field(default_factory=Counter)  # (domain, cause)
    senders_side: Counter[tuple[str, str]] = field(default_factory=Counter)  # (domain, cause)
    unrecognized: list[dict[str, str]] = field(default_factory=list)  # left for a person
    released: int = 0  # held events applied by --release-held
    events: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "mailboxes": self.mailboxes,
            "read": self.read,
            "handled": self.handled,
            "hard": self.kinds[FeedbackKind.HARD],
            "soft": self.kinds[FeedbackKind.SOFT],
            "complaints": self.kinds[FeedbackKind.COMPLAINT],
            "unsubscribes": self.kinds[FeedbackKind.UNSUBSCRIBE],
            "auto_replies": self.left["auto-reply"],
            "untouched": self.read - self.handled,
            "left": dict(sorted(self.left.items())),
            "already_recorded": self.already_recorded,
            "newly_suppressed": self.suppressed,
            "unverified": self.unverified,
            "forged": self.forged,
            "held": _by_domain(self.held),
            "senders_problems": _by_domain(self.senders_side),
            "unrecognized": len(self.unrecognized),
            "unrecognized_messages": self.unrecognized,
            "released": self.released,
            "events": self.events,
            "stopped": self.stopped,
            "error": self.error,
        }


def _by_domain(counts: Counter[tuple[str, str]]) -> list[dict[str, Any]]:
    return [
        {"domain": domain, "cause": cause, "events": n}
        for (domain, cause), n in sorted(counts.items())
    ]


@dataclass(frozen=True)
class ProviderReport:
    """A report a sending provider posted to a webhook, its signature already checked."""

    provider: str  # ses, postmark, mailgun, sendgrid
    kind: FeedbackKind  # HARD or SOFT (a bounce, as the provider rates it), COMPLAINT, …
    address: str  # the recipient the provider names
    source: str  # the provider's id of this event: the same event twice counts once
    code: str | None = None  # 5.1.1, else 550
    diagnostic: str = ""
    when: dt.datetime | None = None
    message_id: str | None = None  # the original's Message-ID, when the provider says it


@dataclass(frozen=True)
class WebhookToken:
    """What a provider's signature makes usable once: Mailgun signs a timestamp and a
    token, not the events beside them, so the pair is taken in the ledger before they
    are applied, and kept until the timestamp is stale."""

    provider: str
    token: str  # the timestamp and the token, as signed
    fresh_until: float  # Unix time


class Replayed(Exception):
    """A webhook's token already taken (here or on another host) while still fresh."""
