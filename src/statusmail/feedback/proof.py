"""What one message (or one provider's report) says, and about whom: tied to a delivery
only by proof statusmail made and can verify (the VERP return-path token, a Message-ID
whose HMAC checks, an unsubscribe token); a report that proves nothing is recorded as
``unverified`` or ``forged`` and applied to nobody. ``Assessing`` is this half of
``loop.Feedback``; ``policy.Applying`` is the other."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from email_validator import EmailNotValidError

from statusmail.domain import Cause, EventState, FeedbackKind, mask_addresses, short_source
from statusmail.feedback.causes import cause_of
from statusmail.feedback.classified import Classified, Failure, ReturnPath, Verdict
from statusmail.feedback.classify import classify
from statusmail.feedback.reading import header, parse
from statusmail.feedback.reports import PassReport, ProviderReport
from statusmail.ledger import FeedbackEvent, Ledger
from statusmail.project.config import Config
from statusmail.project.subscriber_rows import address_key, check_address
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
MAX_NAMED = 20  # addresses an unproven report is recorded for, at most
BOUNCES = (FeedbackKind.HARD, FeedbackKind.SOFT)
# What a verdict claims, for a report recorded without proof.
_CLAIMED = {
    Verdict.BOUNCE: FeedbackKind.HARD,
    Verdict.COMPLAINT: FeedbackKind.COMPLAINT,
    Verdict.UNSUBSCRIBE: FeedbackKind.UNSUBSCRIBE,
}
# A statusmail Message-ID: <entry.32 hex digits@domain>
_OUR_MESSAGE_ID = re.compile(r"<[^<>\s]+\.[0-9a-f]{32}@[^<>\s]+>")


@dataclass(frozen=True)
class _Proof:
    """Whom a report is about, and what in it failed to verify."""

    named: Named | None = None
    forged: str | None = None


class Assessing:
    """The events a report gives, before the storm guard and the policy."""

    config: Config
    keys: Keyring
    ledger: Ledger
    mask: Callable[[str], str]
    now: dt.datetime
    report: PassReport
    return_path: ReturnPath | None

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
        addresses = [f.address for f in found.failures] + list(found.clues.addresses)
        for value in found.clues.message_ids:
            delivery = self._by_message_id(value, addresses)
            if delivery is not None:
                return _Proof(delivery)
            if _OUR_MESSAGE_ID.fullmatch(value) and _ours(value, self.config):
                forged = forged or "a Message-ID of statusmail's shape that it never made"
        for token in found.clues.unsubscribe_tokens:
            address = verify_unsubscribe_token(self.keys, token)
            if address is not None:
                return _Proof((self.ledger.last_entry_sent(address), address.lower()))
            forged = forged or "an unsubscribe token that no key of statusmail made"
        return _Proof(None, forged)

    def _by_message_id(self, value: str, addresses: Iterable[str | None]) -> Named | None:
        """The delivery a Message-ID of statusmail's names: as the ledger recorded it, or,
        before its outcome is recorded (the group commit's moment, a sender killed just
        after the relay's reply), the entry it names and an address of the report that
        its MAC proves, when the entry has a row for that address. Such a report was
        called forged, or tied to the entry sent before (review)."""
        delivery = self.ledger.delivery_by_message_id(value)
        if delivery is not None and message_id_names(self.keys, value, *delivery):
            return delivery
        if not _OUR_MESSAGE_ID.fullmatch(value):
            return None
        entry = value.strip("<>").rpartition("@")[0].rpartition(".")[0]
        for address in addresses:
            key = _address_key(address)
            if (
                key is not None
                and message_id_names(self.keys, value, entry, key)
                and self.ledger.has_delivery(entry, key)
            ):
                return (entry, key)
        return None

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
        """An address the report names, if statusmail has sent it something. One whose
        letter case is folded into another address's is nobody's: the KELVIN SIGN (and
        its kind) lower-cases to an ASCII "k", so "\u212aate@…" was kate@…."""
        key = _address_key(address)
        entry = None if key is None else self.ledger.last_entry_sent(key)
        return (entry, key) if entry and key else None

    def _unproven(
        self, found: Classified, claimed: FeedbackKind | None, state: EventState, why: str
    ) -> list[FeedbackEvent]:
        """The report recorded for the operator with the addresses it names (or none),
        applied to nobody."""
        names = [f.address for f in found.failures if f.address] + list(found.clues.addresses)
        addresses = list(dict.fromkeys(a.lower() for a in names if "@" in a))[:MAX_NAMED]
        kind = claimed or FeedbackKind.HARD
        # Each address with the failure that names it: one recipient's diagnostic (and
        # address) is never shown or kept as another's.
        own = {f.address.lower(): f for f in reversed(found.failures) if f.address}
        nameless = next((f for f in found.failures if not f.address), None)
        return [
            replace(
                self._event(found, kind, (None, address), own.get(address, nameless)),
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
            named = self._by_message_id(item.message_id, [item.address])
        named = named or self._known(item.address)
        if named is None:
            return []
        bounce = item.kind in BOUNCES
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
            short_source(f"{item.provider}:{item.source}"),
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
        if kind in BOUNCES:
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


def _masked(text: str, mask: Callable[[str], str]) -> str:
    # Cut first: anyone can send a megabyte of Subject, and an address that starts in
    # the 200 kept ends by 600.
    return addresses_masked(text[:600], mask)[:200]


def addresses_masked(text: str, mask: Callable[[str], str]) -> str:
    """``text`` with everything shaped like an address masked: the rule of every output
    (``domain.mask_addresses``), whatever a report's sender wrote."""
    return mask_addresses(text, mask)


def _address_key(address: str | None) -> str | None:
    """An address a report names, as the lists key it; None for none, or for one whose
    letter case is folded into another address's (the KELVIN SIGN and its kind
    lower-case to ASCII: "\u212aate@…" was kate@…)."""
    if not address or "@" not in address:
        return None
    if any(not c.isascii() and c.lower().isascii() for c in address):
        return None
    # A report names an IDN recipient as the message went, its domain in punycode
    # (maria@xn--e1afmkfd…), the ledger as read (maria@пример…)
    try:
        return address_key(check_address(address)[0])
    except EmailNotValidError:
        return address.lower()


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
