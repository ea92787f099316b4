"""The things statusmail talks about, with no behaviour beyond their own invariants.

Every other module speaks in these types: entries and who they are for, recipients and
what happened to them, and the exit codes that tell a caller how a command ended.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path


class ExitCode(enum.IntEnum):
    """The SPEC's exit codes."""

    OK = 0  # every selected recipient sent (or skipped by rule)
    NOT_STARTED = 1  # bad input, config, auth, unreachable server: nothing was sent
    USAGE = 2
    FAILED = 3  # the run finished, but some recipients failed permanently
    STOPPED = 4  # the run stopped early: re-run to continue


class EntryStatus(enum.StrEnum):
    DRAFT = "draft"
    READY = "ready"


class DeliveryStatus(enum.StrEnum):
    """A ledger row: ``pending`` → ``sent`` | ``failed`` | ``skipped`` | ``cancelled`` (its
    entry was cancelled: never sent); a sent row turns ``bounced`` or ``complained`` when a
    hard bounce or a complaint about it comes back."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    CANCELLED = "cancelled"


class SubscriberStatus(enum.StrEnum):
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"


class FeedbackKind(enum.StrEnum):
    """What a message read back from the bounce mailbox says about one recipient."""

    HARD = "hard"  # a permanent failure (5.x.x): the address is suppressed as bounced
    SOFT = "soft"  # a temporary failure or a delay (4.x.x): scored
    COMPLAINT = "complaint"  # a spam report (ARF): suppressed as complained
    UNSUBSCRIBE = "unsubscribe"  # a mailto unsubscribe: suppressed as unsubscribed


class Cause(enum.StrEnum):
    """Why a message bounced, as the report says it; the policy acts by cause."""

    BAD_MAILBOX = "bad-mailbox"  # 5.1.x, user unknown: suppressed at once
    DISABLED = "disabled"  # 5.2.1, a closed or disabled mailbox: suppressed at once
    MAILBOX_FULL = "mailbox-full"  # 5.2.2 / 4.2.2: scored like a soft bounce
    TOO_LARGE = "too-large"  # 5.3.4 / 5.2.3: the sender's message, never suppresses
    POLICY = "policy"  # 5.7.x, spam or policy rejection, blocklists: never suppresses
    AUTHENTICATION = "authentication"  # SPF, DKIM, DMARC, PTR: the sender's, never suppresses
    NETWORK = "network"  # DNS, routing, connection (5.4.x, 4.4.x): scored
    EXPIRED = "expired"  # given up after retrying in the queue (4.4.7): scored
    OTHER = "other"  # nothing readable: scored

    @property
    def suppresses_at_once(self) -> bool:
        return self in (Cause.BAD_MAILBOX, Cause.DISABLED)

    @property
    def senders_problem(self) -> bool:
        """A cause on the sending side: counted per receiving domain, never suppresses."""
        return self in (Cause.POLICY, Cause.AUTHENTICATION, Cause.TOO_LARGE)


class EventState(enum.StrEnum):
    """What became of a feedback event."""

    APPLIED = "applied"  # tied to a delivery by proof, and acted on
    HELD = "held"  # proven, but part of a storm: waits for feedback --release-held
    UNVERIFIED = "unverified"  # names addresses, proves nothing: applied to nobody
    FORGED = "forged"  # carries a token that does not verify: applied to nobody


class SuppressionReason(enum.StrEnum):
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    MANUAL = "manual"


@dataclass(frozen=True)
class Content:
    subject: str
    summary: str
    body: str  # Markdown
    source: str | None = None  # a translation: the hash of the English block it was made from


@dataclass(frozen=True)
class Audience:
    """Who an entry is for: OR within a key, AND across keys; None means any."""

    regions: frozenset[str] | None = None
    topics: frozenset[str] | None = None
    locales: frozenset[str] | None = None

    def matches(self, region: str | None, topics: frozenset[str], locale: str) -> bool:
        if self.regions is not None and region not in self.regions:
            return False
        if self.topics is not None and not (self.topics & topics):
            return False
        return self.locales is None or locale in self.locales


@dataclass(frozen=True)
class Entry:
    id: str
    date: dt.date
    status: EntryStatus
    content: Mapping[str, Content]
    audience: Audience = field(default_factory=Audience)
    thread: str | None = None
    corrects: str | None = None  # a correction of this entry: to its recipients only
    access_instructions: bool = True
    send_at: dt.datetime | None = None
    path: Path | None = None
    lines: Mapping[str, int] = field(default_factory=dict)
    digest: str = ""  # of the file's text, to notice edits after sending

    @property
    def ready(self) -> bool:
        return self.status is EntryStatus.READY

    @property
    def where(self) -> Path | str:
        return self.path or self.id

    def line(self, key: str) -> int | None:
        return self.lines.get(key)


@dataclass(frozen=True, slots=True)
class Recipient:
    """One subscriber as a run needs them: who, in which language, from where."""

    address: str  # lower-cased, the comparison key
    email: str  # as the subscriber wrote it (normalized)
    ascii_email: str | None  # domain in punycode; None if the local part is not ASCII
    name: str
    locale: str
    region: str | None
    attempts: int = 0
    # The Message-ID of the threaded entry's message to this recipient, as sent.
    parent_message_id: str | None = None
    # The ledger row this delivery is (the return path names it); None outside a run.
    row: int | None = None
    # Of an entry for two or more topics, those this reader chose (the footer names
    # them) when not all of them; None: the entry's own (one topic, all, or every one).
    topics: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Preference:
    """What a subscriber chose on the preferences page; None leaves the list's value."""

    locale: str | None = None
    topics: frozenset[str] | None = None  # among the topics the config declares


@dataclass(frozen=True, slots=True)
class Outcome:
    address: str
    status: DeliveryStatus  # PENDING: handed back (transient, or the run stopped)
    attempts: int
    code: int | None = None
    detail: str | None = None
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class Shape:
    """What the message builder knows of the bytes it made, so that no transport has to
    scan them: they are wire-ready (CRLF line endings only, no bare CR or LF, no line
    that starts with a dot, none longer than 998 octets), and:"""

    eight_bit: bool  # the body holds octets above 127 (an 8bit part: BODY=8BITMIME)
    ascii_headers: bool  # else the headers need SMTPUTF8


@dataclass(frozen=True, slots=True)
class Envelope:
    """One outgoing message: exactly one recipient."""

    sender: str  # envelope MAIL FROM
    recipient: str  # envelope RCPT TO, as the subscriber's address (may be IDN)
    recipient_ascii: str | None  # ASCII form (punycode domain); None if the local part is not ASCII
    data: bytes  # the whole message, CRLF line endings
    message_id: str
    shape: Shape | None = None  # None: made elsewhere; a transport must look at ``data``
    # For an 8-bit message: the same message built for a relay without 8BITMIME.
    seven_bit: Callable[[], Envelope] | None = None


def printable(text: str) -> str:
    """``text`` with every character that is not printable (ESC and the other control
    characters, bidi overrides, line breaks) shown as its escape, ``\\x1b``: outside text
    (a bounce's address or diagnostic, a relay's reply) that reaches a terminal, a log
    or a report can then neither act on the terminal nor pass for another line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


MAX_SOURCE = 200  # characters of a report's id kept as it is


def short_source(source: str) -> str:
    """A report's id as the ledger keys it: as it is, or its digest when longer than
    ``MAX_SOURCE`` (anyone can send a Message-ID of 3,000 characters, which PostgreSQL's
    index refused: every feedback pass ended there, and no SQLite ledger holding one
    could be copied)."""
    if len(source) <= MAX_SOURCE:
        return source
    return "sha256:" + hashlib.sha256(source.encode("utf-8", "replace")).hexdigest()[:32]


def counted(n: int, noun: str, nouns: str | None = None) -> str:
    """``n`` and the noun in English as the number wants it: "1 recipient", "2 recipients"
    (what comms read in a dry run, a summary, check's verdict)."""
    return f"{n} {noun if n == 1 else (nouns or noun + 's')}"


def mask_address(address: str) -> str:
    """``anna@example.org`` → ``a***@example.org``: enough to recognise, not to harvest."""
    local, at, domain = address.rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


# What ``mask_addresses`` takes for an address: a run of characters other than
# whitespace and ``<>(),;:"`` that holds an ``@`` (or ``%40``, an ``@`` in a URL) with
# something on both sides; ``@`` and ``'`` may be in it (``a@b@c``, ``o'brien@x``: the
# mask keeps what follows the last ``@``). One opening mark before the run stays
# outside it (``'anna@x'``, ``«anna@x»``, ``[anna@x]`` keep the address's first letter).
# Or a quoted local part (``"john doe"@x``), its opening quote kept; no ``*`` in the
# quotes, so a masked one (``"j***@x``) never opens a quoted string again.
# A run is tried only where it starts: a long run with no ``@`` is read once, not once
# per character (anyone can write a bounce's diagnostic).
_RUN = r"""[^\s<>(),;:"]"""
_OPENING = re.escape("'‘“„«‹[")
_AT = "(?:@|%40)"
_ADDRESS = re.compile(
    rf"(?<!{_RUN})(?P<mark>[{_OPENING}]?)(?P<run>{_RUN}+{_AT}{_RUN}+)"
    rf"""|(?P<quote>")(?P<quoted>(?:[^"\\\r\n*]|\\[^\r\n]){{1,64}}"{_AT}{_RUN}+)"""
)


def mask_addresses(text: str, mask: Callable[[str], str] = mask_address) -> str:
    """``text`` with each address in it masked (see ``_ADDRESS``), however it is quoted,
    bracketed or encoded: the one rule of the CI summary, the log and the commands'
    output, and the diagnostics quoted from reports. Masking masked text changes nothing."""

    def masked(match: re.Match[str]) -> str:
        kept, address = (
            match.group("mark", "run") if match["run"] else match.group("quote", "quoted")
        )
        at = max(address.rfind("@"), address.rfind("%40"))
        if not address[:at].strip("*"):
            return match[0]  # a mask already (``***@x``): ``mask_address`` would add a star
        if address[at] == "@":
            return kept + mask(address)
        # The @ is written %40: masked as an @, and written back as it was.
        shown = mask(f"{address[:at]}@{address[at + 3 :]}")
        local, split, domain = shown.rpartition("@")
        return kept + (f"{local}%40{domain}" if split else shown)

    return _ADDRESS.sub(masked, text)


def scrub(
    text: str, addresses: Iterable[str | None], mask: Callable[[str], str] = mask_address
) -> str:
    """``text`` with each of ``addresses`` (any letter case) masked."""
    for address in {a for a in addresses if a}:
        # The mask as text, not as a template: an address may hold a backslash.
        masked = mask(address).replace("\\", "\\\\")
        text = re.sub(re.escape(address), masked, text, flags=re.IGNORECASE)
    return text
