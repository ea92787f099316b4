"""``statusmail feedback``: what comes back to the return path, read and acted on.

Each message of the bounce mailbox is classified (``classify``), then tied to a
delivery: first by the VERP return-path token (authenticated, and naming the entry and
the recipient), then by the Message-ID of the original it quotes, then by an
unsubscribe token it carries, and last by an address it names that statusmail has sent
to. A report about nobody statusmail wrote to is left alone.

The policy, not a reflex:

- a **hard bounce** suppresses the address as ``bounced`` and turns its row for that
  entry into ``bounced``;
- a **soft bounce** scores: at most one a day per address counts, and an address is
  suppressed as ``bounced`` once ``bounces.soft_limit`` days within the last
  ``bounces.soft_window_days`` have one; older days fall out of the window, so the
  score decays;
- a **complaint** suppresses as ``complained`` and marks the row ``complained``;
- a **mailto unsubscribe** (its token checked as ``serve`` checks it) suppresses as
  ``unsubscribed``.

Every event is recorded once (by the report's Message-ID), so a report read twice
counts once. Handled messages move to the ``processed`` folder; auto-replies and
everything else stay exactly where they were. ``--dry-run`` changes and moves nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from statusmail import metrics
from statusmail.bouncebox import ImapBox, Mailbox, MaildirBox
from statusmail.classify import Classified, Failure, ReturnPath, Verdict, classify
from statusmail.config import Config
from statusmail.domain import DeliveryStatus, FeedbackKind, SuppressionReason
from statusmail.errors import ConfigError, Problem
from statusmail.ledger import SCHEMA_VERSION, FeedbackEvent, Ledger, run_lock
from statusmail.ledger import exists as ledger_exists
from statusmail.report import mask_address, scrub
from statusmail.tokens import (
    Keyring,
    Purpose,
    open_row_token,
    row_token_names,
    verify_entry_token,
    verify_unsubscribe_token,
)

log = logging.getLogger("statusmail.feedback")

Named = tuple[str | None, str]  # (entry or None, address)
# Why a report was left alone although it is one.
_LEFT = {
    Verdict.BOUNCE: "bounce about nobody statusmail wrote to",
    Verdict.COMPLAINT: "complaint about nobody statusmail wrote to",
    Verdict.UNSUBSCRIBE: "unsubscribe whose token no key of statusmail made",
}


@dataclass
class PassReport:
    """What one pass read and did (or, with ``--dry-run``, would do)."""

    dry_run: bool
    mailboxes: list[str] = field(default_factory=list)
    read: int = 0
    handled: int = 0  # tied to a recipient, recorded, moved to processed
    kinds: Counter[str] = field(default_factory=Counter)  # hard, soft, complaint, unsubscribe
    left: Counter[str] = field(default_factory=Counter)  # why untouched: auto-reply, …
    already_recorded: int = 0
    suppressed: int = 0  # addresses newly suppressed
    events: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None

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
            "events": self.events,
            "stopped": self.stopped,
        }


def mailboxes(config: Config, *, readonly: bool) -> list[Mailbox]:
    """The configured bounce mailboxes, opened; ``ConfigError`` when there is none."""
    bounces = config.bounces
    if bounces.maildir is None and bounces.imap is None:
        raise ConfigError(
            [
                Problem(
                    config.path,
                    config.line("bounces"),
                    "feedback needs a mailbox: set bounces.maildir or bounces.imap",
                )
            ]
        )
    boxes: list[Mailbox] = []
    try:
        if bounces.maildir is not None:
            boxes.append(MaildirBox(bounces.maildir, bounces.processed, readonly=readonly))
        if bounces.imap is not None:
            password = bounces.imap.password()
            boxes.append(ImapBox(bounces.imap, bounces.processed, password, readonly=readonly))
    except BaseException:
        for box in boxes:
            box.close()
        raise
    return boxes


def run_pass(
    config: Config,
    *,
    dry_run: bool = False,
    mask: Callable[[str], str] = mask_address,
    should_stop: Callable[[], bool] = lambda: False,
) -> PassReport:
    """One pass over every configured mailbox (one pass per ledger at a time)."""
    keys, _ = config.keyring()
    with run_lock(config.paths.ledger, "feedback"):
        boxes = mailboxes(config, readonly=dry_run)
        try:
            if not ledger_exists(config.paths.ledger) and all(box.empty() for box in boxes):
                return PassReport(dry_run, [box.name for box in boxes])  # nothing, nowhere
            with _ledger(config, dry_run) as ledger:
                work = Feedback(config, keys, ledger, dry_run=dry_run, mask=mask)
                for box in boxes:
                    work.run(box, should_stop)
                    if work.report.stopped:
                        break
        finally:
            for box in boxes:
                box.close()
    return work.report


@contextmanager
def _ledger(config: Config, dry_run: bool) -> Iterator[Ledger]:
    """The ledger; a dry run reads it without a write (nor a migration), and with no
    ledger yet reads an empty one: nothing was ever sent."""
    path = config.paths.ledger
    if not dry_run:
        with Ledger(path) as ledger:
            yield ledger
        return
    if not ledger_exists(path):
        with tempfile.TemporaryDirectory() as scratch, Ledger(Path(scratch) / "l.db") as empty:
            yield empty
        return
    with Ledger(path, readonly=True) as ledger:
        if ledger.schema_version() < SCHEMA_VERSION:
            raise ledger.error(
                "the ledger predates what statusmail feedback records; run it once without "
                "--dry-run (or any command that writes) to upgrade the ledger"
            )
        yield ledger


class Feedback:
    """One pass over the mailboxes, against one ledger connection."""

    def __init__(
        self,
        config: Config,
        keys: Keyring,
        ledger: Ledger,
        *,
        dry_run: bool = False,
        mask: Callable[[str], str] = mask_address,
        now: dt.datetime | None = None,
    ) -> None:
        self.config = config
        self.keys = keys
        self.ledger = ledger
        self.dry_run = dry_run
        self.mask = mask
        self.now = now or dt.datetime.now(dt.UTC)
        self.return_path = ReturnPath.of(config.bounces.address, config.bounces.delimiter)
        self.report = PassReport(dry_run)
        self._suppressed = ledger.suppressed()
        self._seen: set[tuple[str, str, str]] = set()  # events of this pass
        self._days: defaultdict[str, set[str]] = defaultdict(set)  # soft days of this pass

    # -- a pass --------------------------------------------------------------------

    def run(self, box: Mailbox, should_stop: Callable[[], bool] = lambda: False) -> PassReport:
        self.report.mailboxes.append(box.name)
        for key, data in box.messages():
            if should_stop():
                self.report.stopped = "interrupted by a signal"
                break
            self.report.read += 1
            if data is None:
                self.report.left["too large to be a report"] += 1
                continue
            if self.handle(data):
                box.move_to_processed([key])
        return self.report

    def handle(self, data: bytes) -> bool:
        """Classify one message and act on it; True when it was handled (to move)."""
        found = classify(data, self.return_path)
        named = self._events(found)
        if not named:
            self.report.left[_LEFT.get(found.verdict, found.verdict.value)] += 1
            log.debug("left alone: %s", found.why)
            return False
        events = [self._policy(found, *item) for item in named]
        if self.dry_run:
            new = [not self.ledger.has_feedback(e.source, e.address, e.kind) for e in events]
        else:
            new = self.ledger.record_feedback(events)
        self.report.handled += 1
        for event, fresh in zip(events, new, strict=True):
            self._note(event, fresh)
        return True

    # -- whom a report is about --------------------------------------------------------

    def _by_return_path(self, found: Classified) -> Named | None:
        for token in found.clues.return_path_tokens:
            sealed = verify_entry_token(self.keys, Purpose.VERP, token)
            if sealed is not None:
                return sealed
            opened = open_row_token(self.keys, token)
            if opened is not None:
                row, check = opened
                delivery = self.ledger.delivery_by_row(row)
                if delivery is not None and row_token_names(check, *delivery):
                    return delivery
        return None

    def _by_message_id(self, found: Classified) -> Named | None:
        for message_id in found.clues.message_ids:
            delivery = self.ledger.delivery_by_message_id(message_id)
            if delivery is not None:
                return delivery
        return None

    def _by_unsubscribe_token(self, found: Classified) -> Named | None:
        for token in found.clues.unsubscribe_tokens:
            address = verify_unsubscribe_token(self.keys, token)
            if address is not None:
                return self.ledger.last_entry_sent(address), address.lower()
        return None

    def _known(self, address: str | None) -> Named | None:
        """An address the report names, if statusmail has sent it something."""
        if not address or "@" not in address:
            return None
        entry = self.ledger.last_entry_sent(address.lower())
        return (entry, address.lower()) if entry else None

    def _events(self, found: Classified) -> list[tuple[FeedbackKind, Named, Failure | None]]:
        if found.verdict is Verdict.BOUNCE:
            subject = self._by_return_path(found) or self._by_message_id(found)
            if subject is not None:
                kind, failure = _worst(found.failures, subject[1])
                return [(kind, subject, failure)]
            events: list[tuple[FeedbackKind, Named, Failure | None]] = []
            for failure in found.failures:
                known = self._known(failure.address)
                kind = FeedbackKind.HARD if failure.hard else FeedbackKind.SOFT
                if known is not None and all(e[1][1] != known[1] for e in events):
                    events.append((kind, known, failure))
            return events
        if found.verdict is Verdict.COMPLAINT:
            subject = (
                self._by_return_path(found)
                or self._by_message_id(found)
                or self._by_unsubscribe_token(found)
                or next(filter(None, map(self._known, found.clues.addresses)), None)
            )
            return [(FeedbackKind.COMPLAINT, subject, None)] if subject else []
        if found.verdict is Verdict.UNSUBSCRIBE:
            subject = self._by_unsubscribe_token(found)
            return [(FeedbackKind.UNSUBSCRIBE, subject, None)] if subject else []
        return []

    # -- the policy -----------------------------------------------------------------------

    def _policy(
        self, found: Classified, kind: FeedbackKind, named: Named, failure: Failure | None
    ) -> FeedbackEvent:
        entry, address = named
        when = min(
            (failure.when if failure and failure.when else None) or found.date or self.now,
            self.now,
        )
        code = failure.code if failure else None
        diagnostic = failure.diagnostic if failure else found.why
        if kind is FeedbackKind.COMPLAINT and found.reporter:
            diagnostic = f"{found.why} from {found.reporter}"
        base = FeedbackEvent(
            kind=kind.value,
            address=address,
            entry_id=entry,
            code=code,
            diagnostic=diagnostic,
            source=found.source,
            event_at=when.isoformat(timespec="seconds"),
        )
        said = " ".join(part for part in (code, diagnostic) if part)
        if kind is FeedbackKind.HARD:
            return _with(base, SuppressionReason.BOUNCED, f"hard bounce: {said}", "bounced")
        if kind is FeedbackKind.COMPLAINT:
            return _with(base, SuppressionReason.COMPLAINED, f"complaint: {said}", "complained")
        if kind is FeedbackKind.UNSUBSCRIBE:
            return _with(base, SuppressionReason.UNSUBSCRIBED, "mailto unsubscribe", None)
        return self._score(base, when.date(), said)

    def _score(self, event: FeedbackEvent, day: dt.date, said: str) -> FeedbackEvent:
        """A soft bounce counts once a day; ``soft_limit`` counted days within the last
        ``soft_window_days`` suppress."""
        settings = self.config.bounces
        since = self.now.date() - dt.timedelta(days=settings.soft_window_days - 1)
        address = event.address
        if (address, event.kind, event.source) in self._seen or self.ledger.has_feedback(
            event.source, address, event.kind
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

    def _note(self, event: FeedbackEvent, fresh: bool) -> None:
        key = (event.address, event.kind, event.source)
        if not fresh or key in self._seen:
            self.report.already_recorded += 1
            effect = "already recorded"
        else:
            self._seen.add(key)
            self.report.kinds[event.kind] += 1
            if not self.dry_run:
                metrics.feedback_event(str(event.kind))
            effect = "recorded"
            if event.kind == FeedbackKind.SOFT:
                effect = "scored"
            if event.suppress and event.address not in self._suppressed:
                self._suppressed.add(event.address)
                self.report.suppressed += 1
                effect = f"suppressed as {event.suppress}"
            elif event.suppress:
                effect = "recorded (already suppressed)"
        shown = self.mask(event.address)
        detail = scrub(event.diagnostic or "", [event.address], self.mask)
        self.report.events.append(
            {
                "kind": event.kind,
                "entry": event.entry_id,
                "address": shown,
                "code": event.code,
                "diagnostic": detail,
                "at": event.event_at,
                "source": event.source,
                "effect": ("would be " if self.dry_run and fresh else "") + effect,
            }
        )
        log.info(
            "%s %s%s: %s",
            event.kind,
            shown,
            f" ({event.entry_id})" if event.entry_id else "",
            effect,
            extra={
                "event": "feedback_event",
                "kind": event.kind,
                "entry": event.entry_id,
                "recipient": shown,
            },
        )


def _worst(failures: tuple[Failure, ...], address: str) -> tuple[FeedbackKind, Failure | None]:
    """The failure a report gives for ``address`` (the one the return path names), else
    its worst: one recipient per message, so any failure in it is that recipient's."""
    mine = [f for f in failures if f.address and f.address.lower() == address] or list(failures)
    if not mine:
        return FeedbackKind.HARD, None
    chosen = next((f for f in mine if f.hard), mine[0])
    return (FeedbackKind.HARD if chosen.hard else FeedbackKind.SOFT), chosen


def _with(event: FeedbackEvent, reason: str, evidence: str, mark: str | None) -> FeedbackEvent:
    return replace(
        event,
        suppress=reason,
        evidence=evidence[:500],
        mark=DeliveryStatus(mark).value if mark else None,
    )
