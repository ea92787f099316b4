"""``statusmail feedback``: what comes back to the return path, read and acted on only
where it is proven.

Each message of the bounce mailbox is classified (``classify``), then tied to a
delivery by something statusmail made and can verify: the VERP return-path token
(authenticated, naming the entry and the recipient), the Message-ID of the original it
quotes (its HMAC checked), or an unsubscribe token. Nothing else is proof:

- a report that names addresses but proves nothing is recorded as ``unverified`` (with
  those addresses, for the operator) and applied to nobody, unless
  ``bounces.trust_unsigned`` says to act on addresses statusmail sent to;
- a report whose token does not verify is ``forged``: recorded, counted, logged as a
  warning, applied to nobody;
- whatever arrives proven and is not an auto-reply (or a person's forwarded message) is
  a bounce, soft when no permanent cause can be read from it.

The policy acts by cause (``domain.Cause``): a bad or disabled mailbox suppresses at
once; a full mailbox, an expiry, a network failure or an unreadable cause scores like a
soft bounce (``bounces.soft_limit`` days within ``bounces.soft_window_days`` suppress,
at most one a day counts, older days fall out); a policy, spam, size or sender
authentication rejection never suppresses the recipient: it is the sender's problem,
counted per receiving domain. A complaint suppresses as ``complained``, an unsubscribe
as ``unsubscribed``.

The storm guard: when, for one entry, more than ``bounces.storm_share`` of one receiving
domain's recipients (and at least ``bounces.storm_minimum`` addresses) bounce for the
same cause, that domain and cause is ``held``: recorded, applied to nobody, until
``feedback --release-held DOMAIN``.

Every event is recorded once (by the report's Message-ID), so a report read twice counts
once. Handled messages move to the ``processed`` folder in batches, after they are
recorded; auto-replies, a person's forwarded reports and everything unrecognized stay
exactly where they were. ``--dry-run`` changes and moves nothing.

Signed reports from sending providers' webhooks (``webhooks``) come in through
``apply_reports`` and meet the same policy.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from statusmail import metrics
from statusmail.domain import (
    Cause,
    DeliveryStatus,
    EventState,
    FeedbackKind,
    SuppressionReason,
    mask_address,
    scrub,
)
from statusmail.errors import ConfigError, Problem
from statusmail.feedback.bouncebox import ImapBox, Mailbox, MaildirBox
from statusmail.feedback.causes import cause_of
from statusmail.feedback.classified import Classified, Failure, ReturnPath, Verdict
from statusmail.feedback.classify import classify
from statusmail.feedback.reading import header, parse
from statusmail.ledger import SCHEMA_VERSION, FeedbackEvent, Ledger, run_lock
from statusmail.ledger import exists as ledger_exists
from statusmail.project.config import Config, imap_password_problem
from statusmail.project.tokens import (
    Keyring,
    Purpose,
    message_id_names,
    open_row_token,
    row_token_names,
    verify_entry_token,
    verify_unsubscribe_token,
)

log = logging.getLogger("statusmail.feedback")

Named = tuple[str | None, str]  # (entry or None, address)
CHUNK = 500  # reports recorded in one transaction, then moved in one command
MAX_NAMED = 20  # addresses an unproven report is recorded for, at most
_BOUNCES = (FeedbackKind.HARD, FeedbackKind.SOFT)
# What a verdict claims, for a report recorded without proof.
_CLAIMED = {
    Verdict.BOUNCE: FeedbackKind.HARD,
    Verdict.COMPLAINT: FeedbackKind.COMPLAINT,
    Verdict.UNSUBSCRIBE: FeedbackKind.UNSUBSCRIBE,
}
# A statusmail Message-ID: <entry.32 hex digits@domain>
_OUR_MESSAGE_ID = re.compile(r"<[^<>\s]+\.[0-9a-f]{32}@[^<>\s]+>")
_ADDRESS = re.compile(r"[^\s<>(),;:\"']+@[^\s<>(),;:\"']+")


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
            if password is None:
                raise ConfigError([imap_password_problem(config)])
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
    report: PassReport | None = None,
) -> PassReport:
    """One pass over every configured mailbox (one pass per ledger at a time). What it
    did so far is in ``report`` (when given) also if it fails."""
    keys, _ = config.keyring(announce=True)
    report = report if report is not None else PassReport(dry_run)
    with run_lock(config.paths.ledger, "feedback"):
        boxes = mailboxes(config, readonly=dry_run)
        try:
            report.mailboxes = [box.name for box in boxes]
            if not ledger_exists(config.paths.ledger) and all(box.empty() for box in boxes):
                return report  # nothing, nowhere
            with _ledger(config, dry_run) as ledger:
                work = Feedback(config, keys, ledger, dry_run=dry_run, mask=mask, report=report)
                for box in boxes:
                    work.run(box, should_stop)
                    if report.stopped:
                        break
                work.finish()
        finally:
            for box in boxes:
                box.close()
    return report


def release_held(
    config: Config,
    domain: str,
    *,
    dry_run: bool = False,
    mask: Callable[[str], str] = mask_address,
) -> PassReport:
    """Apply the events held for ``domain`` (every cause) as if no storm had held them."""
    keys, _ = config.keyring(announce=True)
    report = PassReport(dry_run)
    with run_lock(config.paths.ledger, "feedback"), _ledger(config, dry_run) as ledger:
        work = Feedback(config, keys, ledger, dry_run=dry_run, mask=mask, report=report)
        work.release(domain.strip().lower())
        work.finish()
    return report


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


def apply_reports(
    config: Config,
    reports: Sequence[ProviderReport],
    *,
    mask: Callable[[str], str] = mask_address,
    ledger: Ledger | None = None,
) -> PassReport:
    """Apply signed provider reports with the mailbox's policy and storm guard, on
    ``ledger`` (one serve keeps) or on one opened for them.

    The provider's signature proves who sent the report; the delivery it is about is
    the one with the Message-ID it quotes (its HMAC checked), else the last entry sent
    to the address it names. A report about nobody statusmail wrote to is left."""
    keys, _ = config.keyring()
    report = PassReport(False, sorted({f"webhook:{r.provider}" for r in reports}))
    opened = nullcontext(ledger) if ledger is not None else Ledger(config.paths.ledger)
    with opened as ledger:
        work = Feedback(config, keys, ledger, mask=mask, report=report)
        batch = []
        for item in reports:
            report.read += 1
            events = work.from_provider(item)
            if events:
                batch.append(events)
            else:
                report.left[f"{item.provider} report about nobody statusmail wrote to"] += 1
        work.settle(batch)
        work.finish()
    return report


def record_forged(config: Config, provider: str, why: str) -> None:
    """Count a webhook request that failed verification. It changes nothing, and the
    ledger is not written for it: an unauthenticated request never costs a row."""
    metrics.feedback_report(EventState.FORGED)
    log.warning(
        "forged %s webhook refused: %s",
        provider,
        why,
        extra={"event": "feedback_forged", "provider": provider},
    )


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


@dataclass(frozen=True)
class _Proof:
    """Whom a report is about, and what in it failed to verify."""

    named: Named | None = None
    forged: str | None = None


class Feedback:
    """One pass over the mailboxes (or one batch of provider reports), against one
    ledger connection."""

    def __init__(
        self,
        config: Config,
        keys: Keyring,
        ledger: Ledger,
        *,
        dry_run: bool = False,
        mask: Callable[[str], str] = mask_address,
        now: dt.datetime | None = None,
        report: PassReport | None = None,
    ) -> None:
        self.config = config
        self.keys = keys
        self.ledger = ledger
        self.dry_run = dry_run
        self.mask = mask
        self.now = now or dt.datetime.now(dt.UTC)
        self.return_path = ReturnPath.of(config.bounces.address, config.bounces.delimiter)
        self.report = report if report is not None else PassReport(dry_run)
        self._suppressed = ledger.suppressed()
        self._seen: set[tuple[str, str, str]] = set()  # events of this pass
        self._days: defaultdict[str, set[str]] = defaultdict(set)  # soft days of this pass

    # -- a pass --------------------------------------------------------------------

    def run(self, box: Mailbox, should_stop: Callable[[], bool] = lambda: False) -> PassReport:
        """Read the whole box, decide the storms over all it holds, then record and move
        the handled messages chunk by chunk (recorded first: a rerun counts nothing
        twice)."""
        if box.name not in self.report.mailboxes:
            self.report.mailboxes.append(box.name)
        keys: list[Any] = []
        assessed: list[list[FeedbackEvent]] = []
        for key, data in box.messages():
            if should_stop():
                self.report.stopped = "interrupted by a signal"
                break
            self.report.read += 1
            if data is None:
                self.report.left["too large to be a report"] += 1
                continue
            events = self.assess(data)
            if events:
                keys.append(key)
                assessed.append(events)

        def move(chunk: slice) -> None:
            if not self.dry_run:
                box.move_to_processed(keys[chunk])

        self.settle(assessed, move)
        return self.report

    def handle(self, data: bytes) -> bool:
        """Classify one message and act on it; True when it was handled (to move)."""
        events = self.assess(data)
        if events:
            self.settle([events])
        return bool(events)

    def settle(
        self,
        assessed: Sequence[list[FeedbackEvent]],
        recorded: Callable[[slice], None] = lambda _chunk: None,
    ) -> None:
        """Decide the storms over ``assessed`` (the events of one report each), then
        apply and record them a chunk to a transaction, calling ``recorded`` with each
        chunk once it is committed."""
        held = self._storms(e for events in assessed for e in events)
        for start in range(0, len(assessed), CHUNK):
            chunk = slice(start, start + CHUNK)
            self._record(assessed[chunk], held)
            recorded(chunk)

    def finish(self) -> None:
        """Say what the pass held and what the sending side should look at."""
        for (domain, cause), n in sorted(self.report.held.items()):
            log.warning(
                "storm guard: %d %s bounce(s) from %s held, not applied; look, then run "
                "statusmail feedback --release-held %s",
                n,
                cause,
                domain,
                domain,
                extra={"event": "feedback_held", "domain": domain, "cause": cause, "events": n},
            )
        for (domain, cause), n in sorted(self.report.senders_side.items()):
            log.warning(
                "%s rejected %d message(s) for %s: a problem on the sending side, no "
                "recipient suppressed",
                domain,
                n,
                cause,
                extra={"event": "feedback_senders_side", "domain": domain, "cause": cause},
            )
        if not self.dry_run:
            metrics.feedback_held(self.ledger.held_count())

    # -- what one message says, and about whom ----------------------------------------

    def assess(self, data: bytes) -> list[FeedbackEvent]:
        """The events one message gives, before the storm guard and the policy; [] when
        it is left where it is (and why is counted)."""
        found = classify(data, self.return_path)
        if found.verdict is Verdict.AUTO_REPLY:
            self._leave(found, data, "auto-reply")
            return []
        if found.verdict is Verdict.FORWARDED or (
            found.verdict is Verdict.OTHER and not found.failures
        ):  # a person's words (a reply, a question, a forward), a success DSN, not-spam
            self._leave(found, data, None)
            return []
        proof = self._proof(found)
        if proof.named is not None:
            return self._proven(found, proof.named)
        claimed = _CLAIMED.get(found.verdict)
        if proof.forged is not None:
            return self._unproven(found, claimed, EventState.FORGED, proof.forged)
        if claimed is None:
            self._leave(found, data, None)
            return []
        if self.config.bounces.trust_unsigned:
            trusted = self._by_address(found, claimed)
            if trusted:
                return trusted
        return self._unproven(found, claimed, EventState.UNVERIFIED, "no proof")

    def _leave(self, found: Classified, data: bytes, why: str | None) -> None:
        """Count a message left where it is; one for a person is listed (its sender and
        subject with any address in them masked)."""
        if why is not None:
            self.report.left[why] += 1
        else:
            self.report.left["unrecognized"] += 1
            msg = parse(data)
            self.report.unrecognized.append(
                {
                    "source": found.source,
                    "from": _masked(header(msg, "From"), self.mask),
                    "subject": _masked(header(msg, "Subject"), self.mask),
                    "why": found.why,
                }
            )
        log.debug("left alone: %s", found.why)

    def _proof(self, found: Classified) -> _Proof:
        forged: str | None = None
        for token in found.clues.return_path_tokens:
            named = self._return_path(token)
            if named is not None:
                return _Proof(named)
            forged = forged or "a return-path token that no key of statusmail made"
        for value in found.clues.message_ids:
            delivery = self.ledger.delivery_by_message_id(value)
            if delivery is not None and message_id_names(self.keys, value, *delivery):
                return _Proof(delivery)
            if _OUR_MESSAGE_ID.fullmatch(value) and _ours(value, self.config):
                forged = forged or "a Message-ID of statusmail's shape that it never made"
        for token in found.clues.unsubscribe_tokens:
            address = verify_unsubscribe_token(self.keys, token)
            if address is not None:
                return _Proof((self.ledger.last_entry_sent(address), address.lower()))
            forged = forged or "an unsubscribe token that no key of statusmail made"
        return _Proof(None, forged)

    def _return_path(self, token: str) -> Named | None:
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

    def _proven(self, found: Classified, named: Named) -> list[FeedbackEvent]:
        if found.verdict is Verdict.COMPLAINT:
            return [self._event(found, FeedbackKind.COMPLAINT, named, None)]
        if found.verdict is Verdict.UNSUBSCRIBE:
            return [self._event(found, FeedbackKind.UNSUBSCRIBE, named, None)]
        # A bounce, or anything else proven and not an auto-reply: a bounce of some shape.
        kind, failure = _worst(found.failures, named[1])
        return [self._event(found, kind, named, failure)]

    def _by_address(self, found: Classified, claimed: FeedbackKind) -> list[FeedbackEvent]:
        """``bounces.trust_unsigned``: every address the report names that statusmail
        sent to."""
        events: list[FeedbackEvent] = []
        if found.verdict is Verdict.BOUNCE:
            for failure in found.failures:
                known = self._known(failure.address)
                if known is not None and all(e.address != known[1] for e in events):
                    kind = FeedbackKind.HARD if failure.hard else FeedbackKind.SOFT
                    events.append(self._event(found, kind, known, failure))
            return events
        for address in found.clues.addresses:
            known = self._known(address)
            if known is not None and all(e.address != known[1] for e in events):
                events.append(self._event(found, claimed, known, None))
        return events

    def _known(self, address: str | None) -> Named | None:
        """An address the report names, if statusmail has sent it something."""
        if not address or "@" not in address:
            return None
        entry = self.ledger.last_entry_sent(address.lower())
        return (entry, address.lower()) if entry else None

    def _unproven(
        self, found: Classified, claimed: FeedbackKind | None, state: EventState, why: str
    ) -> list[FeedbackEvent]:
        """The report recorded for the operator with the addresses it names (or none),
        applied to nobody."""
        names = [f.address for f in found.failures if f.address] + list(found.clues.addresses)
        addresses = list(dict.fromkeys(a.lower() for a in names if "@" in a))[:MAX_NAMED]
        kind = claimed or FeedbackKind.HARD
        failure = found.failures[0] if found.failures else None
        return [
            replace(
                self._event(found, kind, (None, address), failure),
                state=str(state),
                evidence=why,
            )
            for address in addresses or [""]
        ]

    def from_provider(self, item: ProviderReport) -> list[FeedbackEvent]:
        """The event a signed provider report gives, tied to a delivery; [] when it is
        about nobody statusmail wrote to."""
        named: Named | None = None
        if item.message_id:
            delivery = self.ledger.delivery_by_message_id(item.message_id)
            if delivery is not None and message_id_names(self.keys, item.message_id, *delivery):
                named = delivery
        named = named or self._known(item.address)
        if named is None:
            return []
        bounce = item.kind in _BOUNCES
        failure = Failure(
            named[1],
            item.kind is FeedbackKind.HARD,
            item.code,
            item.diagnostic,
            item.when,
            cause=cause_of(item.code, item.diagnostic),
        )
        found = Classified(
            Verdict.BOUNCE if bounce else Verdict.OTHER,
            f"a {item.provider} webhook report",
            f"{item.provider}:{item.source}",
            item.when,
            failures=(failure,),
            reporter=item.provider,
        )
        return [self._event(found, item.kind, named, failure if bounce else None)]

    def _event(
        self, found: Classified, kind: FeedbackKind, named: Named, failure: Failure | None
    ) -> FeedbackEvent:
        entry, address = named
        when = min(
            (failure.when if failure and failure.when else None) or found.date or self.now,
            self.now,
        )
        diagnostic = failure.diagnostic if failure else found.why
        if kind is FeedbackKind.COMPLAINT and found.reporter:
            diagnostic = f"{found.why} from {found.reporter}"
        cause = None
        if kind in _BOUNCES:
            cause = failure.cause if failure else Cause.OTHER
        return FeedbackEvent(
            kind=kind.value,
            address=address,
            entry_id=entry,
            code=failure.code if failure else None,
            diagnostic=diagnostic,
            source=found.source,
            event_at=when.isoformat(timespec="seconds"),
            cause=str(cause) if cause else None,
        )

    # -- the storm guard -------------------------------------------------------------------

    def _storms(self, events: Iterable[FeedbackEvent]) -> set[tuple[str, str, str]]:
        """The (entry, domain, cause) groups to hold: more than ``storm_share`` of the
        domain's recipients of the entry (and at least ``storm_minimum`` addresses)
        bounced for that cause, counting what earlier passes recorded; or the group has
        held events already."""
        settings = self.config.bounces
        groups: defaultdict[tuple[str, str, str], set[str]] = defaultdict(set)
        for e in events:
            if e.state == EventState.APPLIED and e.kind in _BOUNCES and e.entry_id and e.cause:
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
        """What an applied event does, by its kind and cause."""
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
        detail = scrub(event.diagnostic or "", [event.address], self.mask)
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


def _masked(text: str, mask: Callable[[str], str]) -> str:
    return _ADDRESS.sub(lambda m: mask(m.group(0)), text)[:200]


def _ours(message_id: str, config: Config) -> bool:
    """Whether a Message-ID is on the domain statusmail's own carry."""
    domain = message_id.strip("<>").rpartition("@")[2].lower()
    return domain == config.sender.address.rpartition("@")[2].lower()


def _worst(failures: tuple[Failure, ...], address: str) -> tuple[FeedbackKind, Failure | None]:
    """The failure a report gives for ``address`` (the one the proof names), else its
    worst: one recipient per message, so any failure in it is that recipient's. With no
    failure read at all, a soft bounce of no readable cause."""
    mine = [f for f in failures if f.address and f.address.lower() == address] or list(failures)
    if not mine:
        return FeedbackKind.SOFT, None
    chosen = next((f for f in mine if f.hard), mine[0])
    return (FeedbackKind.HARD if chosen.hard else FeedbackKind.SOFT), chosen


def _with(event: FeedbackEvent, reason: str, evidence: str, mark: str | None) -> FeedbackEvent:
    return replace(
        event,
        suppress=reason,
        evidence=evidence[:500],
        mark=DeliveryStatus(mark).value if mark else None,
    )
