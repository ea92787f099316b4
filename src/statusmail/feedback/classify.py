"""What a message in the bounce mailbox is, from its bytes alone.

- a **bounce**: an RFC 3464 delivery status notification (``multipart/report;
  report-type=delivery-status``), read per recipient (``Action: failed`` with a 5.x.x
  status is hard; 4.x.x or ``delayed`` is soft); else, for a message from a mail system,
  whatever GNU Mailman's detectors (``flufl.bounce``) find in the older formats (Exim,
  Exchange, qmail, Yahoo, Mail.ru, texts in Russian…), then the non-delivery reports of
  Exchange, Office 365 (also localized in Russian) and Yahoo that carry no
  delivery-status part. A report wins over the auto-reply headers it carries;
- a **complaint**: an ARF report (RFC 5965) with ``Feedback-Type: abuse``, or a Microsoft
  JMRP complaint (the reported message attached to a message from staff@hotmail.com);
- an **unsubscribe**: ``unsubscribe <token>`` as the subject (as ``List-Unsubscribe``'s
  mailto advertises it) or as a line of the body, or an ARF ``opt-out`` report;
- an **auto-reply** (``Auto-Submitted`` other than ``no``, ``X-Autoreply``,
  ``Precedence: auto_reply``, vacation and out-of-office texts in English and Russian):
  never a bounce;
- **forwarded**: a report a person forwarded (or quoted in a reply) with words of their
  own above it: for a person to read, never acted on;
- anything else, with one failure of nobody in particular: what its text says, hard only
  when it reads as a permanent failure of a bad or disabled mailbox (``unread_failure``).

Each failure carries its *cause* (``cause_of``: a bad or disabled mailbox, a full one, a
message too large, a policy or authentication rejection, the network, an expiry), read
from the status code and the diagnostic text. The classifier only reads. It also gathers
the *clues* that say whom a report is about (the return-path token, the original
Message-ID, the unsubscribe token, the addresses it names); ``feedback`` checks them
against the keys and the ledger.
"""

from __future__ import annotations

import datetime as dt
import email
import email.errors
import email.header
import email.parser
import email.policy
import email.utils
import enum
import hashlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from email.message import Message
from urllib.parse import unquote

from flufl.bounce import all_failures

from statusmail.domain import Cause

log = logging.getLogger(__name__)
# flufl.bounce logs every detector it runs, and a traceback when one trips over a broken
# message (other_failures handles that): none of it is for statusmail's users.
_detectors_log = logging.getLogger("flufl.bounce")
_detectors_log.addHandler(logging.NullHandler())
_detectors_log.propagate = False

MAX_TEXT = 200_000  # characters of a text part read for clues and auto-reply texts


class Verdict(enum.StrEnum):
    BOUNCE = "bounce"
    COMPLAINT = "complaint"
    UNSUBSCRIBE = "unsubscribe"
    AUTO_REPLY = "auto-reply"
    FORWARDED = "forwarded"  # a person forwarded a report, with words of their own: for a person
    OTHER = "other"


@dataclass(frozen=True)
class Failure:
    """One recipient a bounce reports on."""

    address: str | None  # as the report names it (None when only the return path tells)
    hard: bool
    code: str | None  # the status code (5.1.1), else the reply code (550)
    diagnostic: str
    when: dt.datetime | None = None
    cause: Cause = Cause.OTHER  # why, as the code and the text say (``cause_of``)


@dataclass(frozen=True)
class Clues:
    """What may tell whom a report is about, unchecked."""

    return_path_tokens: tuple[str, ...] = ()  # from <local>+<token>@<domain> addresses
    message_ids: tuple[str, ...] = ()  # of the original message the report quotes
    unsubscribe_tokens: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()  # recipients the report names (ARF, the quoted To:)


@dataclass(frozen=True)
class Classified:
    verdict: Verdict
    why: str
    source: str  # the report's Message-ID, else a digest of its bytes
    date: dt.datetime | None = None  # when it happened, as it says
    failures: tuple[Failure, ...] = ()
    clues: Clues = field(default_factory=Clues)
    feedback_type: str | None = None  # ARF
    reporter: str | None = None  # ARF: who reported it


@dataclass(frozen=True)
class ReturnPath:
    """The configured bounce address, to find tokens in ``local+token@domain``."""

    local: str
    domain: str
    delimiter: str = "+"

    @classmethod
    def of(cls, address: str | None, delimiter: str = "+") -> ReturnPath | None:
        if not address or "@" not in address:
            return None
        local, _, domain = address.rpartition("@")
        return cls(local, domain, delimiter)

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(
            rf"(?<![\w.+-]){re.escape(self.local)}{re.escape(self.delimiter)}"
            rf"([A-Za-z0-9_-]{{16,200}})@{re.escape(self.domain)}(?![\w-])",
            re.IGNORECASE,
        )


# -- reading a message ---------------------------------------------------------------


def header(msg: Message, name: str) -> str:
    """A header's value decoded (RFC 2047) and unfolded; "" when absent or broken."""
    value = msg.get(name)
    if value is None:
        return ""
    try:
        text = str(email.header.make_header(email.header.decode_header(str(value))))
    except (ValueError, LookupError, UnicodeError, email.errors.MessageError):
        text = str(value)
    return " ".join(text.split())


def _parse_date(value: str) -> dt.datetime | None:
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)


def _text(part: Message) -> str:
    """A leaf part's text, decoded with its charset (whatever it claims)."""
    try:
        payload = part.get_payload(decode=True)
    except (ValueError, AssertionError):
        payload = None
    if not isinstance(payload, bytes):
        raw = part.get_payload()
        return raw[:MAX_TEXT] if isinstance(raw, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")[:MAX_TEXT]
    except (LookupError, ValueError):  # a charset no codec has, or not even a name
        return payload.decode("utf-8", "replace")[:MAX_TEXT]


def _walk(msg: Message) -> Iterator[Message]:
    """Every part, also inside attached messages (message/rfc822)."""
    try:
        yield from msg.walk()
    except (TypeError, AttributeError):  # a malformed tree
        yield msg


def body_text(msg: Message) -> str:
    """The message's own text/plain parts (not those of a message it quotes), else its
    text/html parts stripped of tags."""
    texts: list[str] = []
    html: list[str] = []
    for part in _own_parts(msg):
        kind = part.get_content_type()
        if kind == "text/plain":
            texts.append(_text(part))
        elif kind == "text/html":
            html.append(re.sub(r"<[^>]+>", " ", _text(part)))
    return "\n".join(texts or html)


def _own_parts(msg: Message) -> Iterator[Message]:
    """The leaf parts of ``msg`` that are not inside an attached message."""
    if msg.is_multipart():
        payload = msg.get_payload()
        for part in payload if isinstance(payload, list) else []:
            if isinstance(part, Message) and not part.get_content_type().startswith("message/"):
                yield from _own_parts(part)
    else:
        yield msg


def _embedded(msg: Message) -> list[Message]:
    """The original message (or its headers) a report carries."""
    found: list[Message] = []
    for part in _walk(msg):
        kind = part.get_content_type()
        if kind in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list):
                found += [p for p in payload if isinstance(p, Message)]
            elif isinstance(payload, str):
                found.append(email.message_from_string(payload, policy=email.policy.compat32))
        elif kind in ("text/rfc822-headers", "message/rfc822-headers", "text/global-headers"):
            found.append(
                email.message_from_string(_text(part).lstrip(), policy=email.policy.compat32)
            )
    return found


def _header_blocks(part: Message) -> list[Message]:
    """The field blocks of a message/delivery-status or message/feedback-report part."""
    payload = part.get_payload()
    if isinstance(payload, list) and all(isinstance(p, Message) for p in payload):
        return list(payload)
    text = _text(part) if not isinstance(payload, list) else ""
    parser = email.parser.HeaderParser(policy=email.policy.compat32)
    return [parser.parsestr(block) for block in re.split(r"\r?\n\s*\r?\n", text) if block.strip()]


def _address(field_value: str) -> str | None:
    """``rfc822; anna@example.org`` → ``anna@example.org``."""
    value = field_value.split(";", 1)[-1].strip().strip("<>").strip()
    if value.lower().startswith("utf-8;"):
        value = value[6:].strip()
    return value or None


# -- codes ---------------------------------------------------------------------------

_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_REPLY = re.compile(r"(?<![\d.])([245]\d\d)(?![\d.])")


def status_code(*texts: str) -> str | None:
    """The first enhanced status code (5.1.1) in ``texts``, else the first reply code."""
    for text in texts:
        found = _STATUS.search(text)
        if found:
            return found.group(0)
    for text in texts:
        found = _REPLY.search(text)
        if found:
            return found.group(0)
    return None


# -- causes --------------------------------------------------------------------------------

# What the diagnostic text says, as real MTAs word it (Postfix, Exim, Exchange and Office
# 365, Gmail, Yahoo, Mail.Ru, Yandex, in English and in Russian). The first that matches
# wins, so each comes before the looser ones it would otherwise lose to: an expiry names
# the connection error it gave up on, "reverse DNS" is not a DNS failure, an account
# "blocked" is disabled rather than a spam block, "mailbox size limit" is a full mailbox.
_CAUSE_TEXTS: tuple[tuple[Cause, re.Pattern[str]], ...] = tuple(
    (cause, re.compile(pattern, re.IGNORECASE))
    for cause, pattern in (
        (
            Cause.AUTHENTICATION,
            r"\b(?:spf|dkim|dmarc|ptr|rdns)\b|reverse (?:dns|lookup)|"
            r"(?:not|un)authenticated|authentication (?:required|failed|failure)|"
            r"sender (?:address|domain) (?:rejected|does not resolve|not verified)|"
            r"requires all senders to authenticate|authrequired|"
            r"не прош\w+ (?:проверку )?(?:spf|dkim|dmarc)|обратн\w+ (?:dns|зон)",
        ),
        (
            Cause.EXPIRED,
            r"expired|retry timeout exceeded|delivery time expired|"
            r"could not be delivered within|too long in (?:the )?queue|in (?:the )?queue too long|"
            r"(?:message|mail) (?:has been )?delayed (?:for )?too long|"
            r"maximum time in queue|"
            r"срок (?:доставки |хранения )?(?:\w+ )?ист[её]к|ист[её]к\w* срок|истекло время",
        ),
        (
            Cause.DISABLED,
            r"\b(?:account|mailbox|user|recipient)\b[^.;\n]{0,30}?\b(?:is|has been|was)\s+"
            r"(?:disabled|deactivated|suspended|blocked|locked|closed|inactive)|"
            r"\bdisabled\b|\binactive\b|deactivated|"
            r"(?:ящик|аккаунт|учетн\w+ запис\w+|пользовател\w+)[^.;\n]{0,30}?"
            r"(?:заблокирован|отключ[её]н|неактивен|удал[её]н)",
        ),
        (
            Cause.BAD_MAILBOX,
            r"user unknown|unknown (?:user|recipient|address|mailbox)|"
            r"no such (?:user|mailbox|recipient|address|account|person)|"
            r"(?:user|recipient|address|mailbox|account) (?:was )?not found|"
            r"(?:does not|doesn't|did not|does no longer) exist|not exist|"
            r"(?:doesn't|does not) have an? \S+ account|recipientnotfound|"
            r"wasn't found at|couldn't be found|could not be found|"
            r"invalid (?:recipient|mailbox|address|user)|no mailbox here|"
            r"unrouteable address|not (?:a )?valid (?:recipient|mailbox|user)|"
            r"recipient name is not recognized|not listed in (?:the )?(?:domino )?directory|"
            r"нет такого пользователя|пользовател\w* не (?:найден|существует)|"
            r"(?:адрес\w*|ящик\w*|получател\w*) не (?:найден|существует)|не удается найти|"
            r"несуществующ|неизвестн\w+ (?:пользовател|адрес|получател)",
        ),
        (
            Cause.MAILBOX_FULL,
            r"over ?quota|quota (?:exceeded|exceed)|exceeded (?:the |their |his |her )?"
            r"(?:storage|quota)|mailbox (?:is )?full|mail ?box size limit|"
            r"insufficient (?:storage|disk space)|out of storage|full mailbox|"
            r"переполнен|превыш\w+ (?:квот|лимит|объ[её]м)|недостаточно места",
        ),
        (
            Cause.TOO_LARGE,
            r"message (?:is )?too (?:large|big)|(?:message )?size (?:limit|exceeds)|"
            r"exceeds? (?:the )?(?:maximum |max )?(?:message |allowed )?size|"
            r"message size exceeds|слишком (?:большой|велик)|превышает (?:\w+ )?размер",
        ),
        (
            Cause.POLICY,
            r"spam|block ?list|black ?list|blocked|banned|listed (?:at|in|on|by)|"
            r"polic(?:y|ies)|spamhaus|spamcop|barracuda|\b(?:rbl|dnsbl)\b|reputation|unsolicited|"
            r"content rejected|not accepted for policy|спам|заблокирован|"
            r"черн\w+ спис|политик",
        ),
        (
            Cause.NETWORK,
            r"host (?:or domain name )?not found|host unknown|\bdns\b|"
            r"connection (?:refused|timed out|reset|lost|closed)|timed out|"
            r"\bno mx\b|mx (?:record|lookup)|name server|name service|"
            r"network is unreachable|no route to host|"
            r"(?:could not|couldn't|can't|cannot|unable to) connect|"
            r"хост не найден|не удалось (?:подключиться|соединиться)|"
            r"соединени\w+ (?:разорван|отклонен|прервано)",
        ),
        (
            Cause.BAD_MAILBOX,  # looser words, after the policy ones that may come with them
            r"mailbox (?:is )?(?:unavailable|not available)|"
            r"requested action not taken: mailbox|"
            r"ящик недоступен",
        ),
    )
)
_SENDER_SIDE_CAUSES = (Cause.AUTHENTICATION, Cause.POLICY)


def _text_causes(text: str) -> list[Cause]:
    """Every cause the words give, in the order above; words that gave one give no other
    ("mailbox blocked" is a disabled mailbox, not also a spam block)."""
    found: list[Cause] = []
    for cause, pattern in _CAUSE_TEXTS:
        text, matched = pattern.subn(" ", text)
        if matched:
            found.append(cause)
    return found


def _code_cause(code: str) -> Cause | None:
    """What an enhanced status code says (RFC 3463, RFC 7372), None when it says little."""
    _, subject, detail = (int(x) for x in code.split("."))
    if (subject, detail) == (4, 7):
        return Cause.EXPIRED
    if subject == 1:
        return Cause.AUTHENTICATION if detail in (7, 8) else Cause.BAD_MAILBOX
    if subject == 2:
        return {1: Cause.DISABLED, 2: Cause.MAILBOX_FULL, 3: Cause.TOO_LARGE}.get(detail)
    if (subject, detail) == (3, 4):
        return Cause.TOO_LARGE
    if subject == 4:
        return Cause.NETWORK
    if subject == 7:
        return Cause.AUTHENTICATION if 20 <= detail <= 27 else Cause.POLICY
    return None


def cause_of(code: str | None, text: str) -> Cause:
    """Why a message bounced, from its status code (5.1.1, or a bare 550) and the
    diagnostic text around it.

    A specific code decides (5.1.1 is a bad mailbox, 5.2.2 a full one, 4.4.7 an expiry,
    5.7.26 an authentication failure, whatever words come with it). The text decides where
    the code says little: no code, a bare reply code (550, 554), a generic one (5.0.0,
    5.1.0: then the code's class only when the text says nothing), or one with no cause of
    its own (5.5.x, 5.6.x). Under 5.7.x (policy) the text
    may tell more: an SPF or DKIM failure is authentication, and a mailbox cause counts
    (Yandex answers "5.7.1 No such user!") only when nothing in it speaks of policy. Under
    4.4.x/5.4.x the text may tell that the queue gave up (expired).
    """
    found = _STATUS.search(code or "")
    by_code = _code_cause(found.group(0)) if found else None
    detail = found.group(3) if found else "0"
    if by_code not in (None, Cause.POLICY, Cause.NETWORK) and detail != "0":
        return by_code  # decisive: no need to read the words
    said = _text_causes(text[:MAX_TEXT])
    if found is None:
        return said[0] if said else Cause.OTHER
    if by_code is Cause.POLICY:
        sender_side = [c for c in said if c in _SENDER_SIDE_CAUSES]
        return (sender_side or said or [Cause.POLICY])[0]
    if by_code is Cause.NETWORK and Cause.EXPIRED in said:
        return Cause.EXPIRED
    if by_code is not None and detail != "0":
        return by_code
    return said[0] if said else by_code or Cause.OTHER


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- RFC 3464 delivery status notifications -------------------------------------------


def _is_report(msg: Message, report_type: str) -> bool:
    if msg.get_content_type() != "multipart/report":
        return False
    value = msg.get_param("report-type")
    kind = email.utils.collapse_rfc2231_value(value) if value else ""
    return str(kind).strip().lower() == report_type


def dsn_failures(msg: Message) -> tuple[Failure, ...] | None:
    """Per recipient, what an RFC 3464 report says; None when ``msg`` is not one."""
    parts = [
        p
        for p in _walk(msg)
        if p.get_content_type() in ("message/delivery-status", "message/global-delivery-status")
    ]
    if not parts:
        return None
    failures: list[Failure] = []
    for part in parts:
        blocks = _header_blocks(part)
        arrival = _parse_date(header(blocks[0], "Arrival-Date")) if blocks else None
        for block in blocks:
            action = header(block, "Action").lower().split(" ", 1)[0]
            recipient = header(block, "Final-Recipient") or header(block, "Original-Recipient")
            if not action or not recipient:
                continue
            if action.startswith(("fail", "error")):  # "failure", "error": seen in the wild
                action = "failed"
            if action not in ("failed", "delayed"):
                continue  # delivered, relayed, expanded: no failure
            status = header(block, "Status")
            diagnostic = header(block, "Diagnostic-Code")
            diagnostic = diagnostic.split(";", 1)[1].strip() if ";" in diagnostic else diagnostic
            code = status_code(status, diagnostic)
            hard = action == "failed" and (code or "5").startswith("5")
            when = _parse_date(header(block, "Last-Attempt-Date")) or arrival
            cause = cause_of(code, diagnostic)
            if action == "failed" and not hard and cause in (Cause.NETWORK, Cause.OTHER):
                cause = Cause.EXPIRED  # given up on a temporary failure: the queue expired
            failures.append(
                Failure(
                    _address(recipient),
                    hard,
                    code,
                    _one_line(diagnostic or status or action),
                    when,
                    cause,
                )
            )
    return tuple(failures)


# -- other bounces ---------------------------------------------------------------------

_DAEMON_FROM = re.compile(
    r"daemon|postmaster|mail delivery|mail administrator|mail system|mailer|"
    r"system administrator|microsoftexchange|microsoft outlook|"
    r"почтов\w* (?:служб|систем)|системн\w* администратор",
    re.IGNORECASE,
)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery status notification|delivery (?:has )?fail|failure notice|"
    r"returned mail|mail delivery (?:failed|failure|system)|could not be delivered|"
    r"non[- ]?delivery|delivery notification|(?:mail|delivery) (?:system )?error|"
    r"user unknown|mail failure|"
    r"недостав|не доставлен|не может быть доставлен|не удалось доставить|ошибк\w* доставки|"
    r"возвращ[её]нное письмо",
    re.IGNORECASE,
)


def from_a_mail_system(msg: Message) -> bool:
    """Whether ``msg`` comes from a mail system rather than a person: its sender (or
    none), its subject, its type or the headers mail systems put on bounces say so.
    Only then are the heuristic detectors asked, so a person's reply never bounces."""
    sender = header(msg, "From")
    return bool(
        _DAEMON_FROM.search(sender)
        or not email.utils.parseaddr(sender)[1]
        or _BOUNCE_SUBJECT.search(header(msg, "Subject"))
        or msg.get_content_type() == "multipart/report"
        or msg.get("X-Failed-Recipients")
    )


def _near(text: str, address: str) -> tuple[str | None, str]:
    """The status code and the reply near where ``text`` names ``address``."""
    lines = text.splitlines()
    lowered = address.lower()
    for index, line in enumerate(lines):
        if lowered in line.lower():
            window = []  # the paragraph from that line on, at most four lines
            for follow in lines[index : index + 4]:
                if not follow.strip():
                    break
                window.append(follow.strip())
            code = status_code(*window)
            reply = next((x for x in window if _REPLY.search(x) or _STATUS.search(x)), None)
            return code, _one_line(reply or " ".join(window))
    return status_code(text), ""


def other_failures(msg: Message) -> tuple[Failure, ...]:
    """What GNU Mailman's detectors find in a bounce of an older or private format."""
    try:
        temporary, permanent = all_failures(msg)
    except Exception as exc:  # a detector tripping over a malformed message
        log.debug("flufl.bounce could not read a message: %s", exc)
        return ()
    text = body_text(msg)
    when = _parse_date(header(msg, "Date"))
    failures: list[Failure] = []
    for raw, hard in [(a, True) for a in sorted(permanent)] + [
        (a, False) for a in sorted(temporary - permanent)
    ]:
        address = raw.decode("utf-8", "replace").strip("<>")
        code, reply = _near(text, address)
        said = reply or _one_line(header(msg, "Subject"))
        failures.append(Failure(address, hard, code, said, when, cause_of(code, said)))
    return tuple(failures)


# Non-delivery reports of Exchange (the Internet Mail Connector of Exchange 4.0 and 5.x,
# 2007 and later, Office 365, localized in Russian) and Yahoo's "Failure Notice", when
# they come without a delivery-status part: the sentence that opens the list of
# recipients, and where each recipient is named in it.
_NDR_START = re.compile(
    r"delivery has failed to these recipients|your message to \S+ couldn't be delivered|"
    r"did not reach (?:some or all of )?the (?:intended|following) recipient|"
    r"following recipients? ?(?:\(s\) )?(?:did not receive|could not be reached)|"
    r"unable to deliver (?:your|the) message to the following|"
    r"не удалось доставить (?:это )?сообщение|доставка не выполнена|"
    r"сообщение не (?:было )?доставлено следующим",
    re.IGNORECASE,
)
_NDR_END = re.compile(
    r"^\s*(?:original message headers|исходные заголовки|--- ?below this line|"
    r"--- ?original message|(?:received|return-path|message-id|dkim-signature):)",
    re.IGNORECASE,
)
_ADDR = r"[^\s@<>'\"(),;:]+@[^\s@<>'\"(),;:]+\.[^\s@<>'\"(),;:]+"
_NDR_RECIPIENT = re.compile(
    rf"^\s*['\"<]?(?P<alone>{_ADDR}?)['\">]?:?(?:\s+on\s.*)?\s*$"
    rf"|your message to (?P<to>{_ADDR}?) couldn't be delivered"
    rf"|recipient address:\s*(?P<field>{_ADDR})",
    re.IGNORECASE,
)


def ndr_failures(msg: Message) -> tuple[Failure, ...]:
    """The recipients an Exchange, Office 365 or Yahoo non-delivery report names in its
    text, each with the code and the line that says why."""
    text = body_text(msg)
    start = _NDR_START.search(text)
    if start is None:
        return ()
    lines: list[str] = []
    for line in text[start.start() :].splitlines():
        if _NDR_END.match(line):
            break
        lines.append(line.strip())
    named: dict[str, list[int]] = {}
    for index, line in enumerate(lines):
        found = _NDR_RECIPIENT.search(line)
        address = found and (found.group("alone") or found.group("to") or found.group("field"))
        if address:
            named.setdefault(address.rstrip(".").lower(), []).append(index)
    when = _parse_date(header(msg, "Date"))
    whole = "\n".join(lines)
    failures: list[Failure] = []
    for address, places in named.items():
        windows = [lines[i : i + 4] for i in places]
        said = next(
            (x for w in windows for x in w[1:] if _STATUS.search(x) or _REPLY.search(x)), None
        )
        code = status_code(said) if said else status_code(whole)
        if said is None and code is not None:  # said once for all, as Office 365 does
            said = max((x for x in lines if code in x), key=len, default=None)
        near = " ".join(x for w in windows for x in w[1:])
        said = said or near or header(msg, "Subject")
        hard = (code or "5").startswith("5")
        failures.append(
            Failure(address, hard, code, _one_line(said), when, cause_of(code, f"{said} {near}"))
        )
    return tuple(failures)


# -- complaints --------------------------------------------------------------------------


def arf_report(msg: Message) -> tuple[str, str | None, list[str]] | None:
    """(feedback type, reporter, the recipients it names) of an ARF report, else None."""
    parts = [p for p in _walk(msg) if p.get_content_type() == "message/feedback-report"]
    if not parts and not _is_report(msg, "feedback-report"):
        return None
    fields: dict[str, str] = {}
    recipients: list[str] = []
    for part in parts:
        for block in _header_blocks(part):
            for name in ("Feedback-Type", "User-Agent", "Reporting-MTA", "Source-IP"):
                fields.setdefault(name, header(block, name))
            recipients += [
                a for v in block.get_all("Original-Rcpt-To") or [] if (a := _address(str(v)))
            ]
    kind = (fields.get("Feedback-Type") or "").lower().strip()
    reporter = fields.get("User-Agent") or _address(fields.get("Reporting-MTA") or "")
    return kind, reporter or None, recipients


# Microsoft's Junk Mail Reporting Program (Outlook.com, Hotmail) sends the reported message
# attached to a message of its own, not as ARF; the recipient is in a header it adds.
_JMRP_SENDERS = frozenset({"staff@hotmail.com", "staff@outlook.com"})
JMRP_REPORTER = "Microsoft JMRP"


def jmrp_recipients(msg: Message) -> list[str] | None:
    """The recipients a Microsoft JMRP complaint names, else None when it is not one."""
    if "staff@" not in str(msg.get("From", "")).lower():  # most messages: cheaply not one
        return None
    if email.utils.parseaddr(header(msg, "From"))[1].lower() not in _JMRP_SENDERS:
        return None
    originals = _embedded(msg)
    if not originals:
        return None
    named = [header(o, "X-HmXmrOriginalRecipient") for o in [msg, *originals]]
    return [a for _, a in email.utils.getaddresses([n for n in named if n]) if a]


# -- auto-replies -------------------------------------------------------------------------

_AUTO_HEADERS = ("X-Autoreply", "X-Autorespond", "X-Autogenerated", "X-Mail-Autoreply")
_AUTO_SUBJECT = re.compile(
    r"^\s*(?:auto(?:matic)?[ -]?(?:reply|response|antwort)|autoreply|auto:|"
    r"out of (?:the )?office|on vacation|vacation|away from|"
    r"автоответ|автоматический ответ|нет на месте|в отпуске|отпуск|вне офиса|"
    r"отсутствую|отсутствие)",
    re.IGNORECASE,
)
_AUTO_BODY = re.compile(
    r"\b(?:I am|I'm|I will be) (?:currently )?(?:out of (?:the )?office|away|on (?:annual )?"
    r"(?:leave|vacation|holiday)|travelling|traveling)|\bout of (?:the )?office (?:until|from)|"
    r"я (?:сейчас |буду )?(?:в отпуске|в командировке|на больничном|вне офиса)|"
    r"нахожусь в (?:отпуске|командировке)|буду отсутствовать|не смогу (?:вам )?ответить|"
    r"это автоматический ответ|this is an automat(?:ic|ed) (?:reply|response)",
    re.IGNORECASE,
)


def auto_reply_reason(msg: Message) -> str | None:
    """Why ``msg`` is an auto-reply (a header, the subject, a vacation text), or None."""
    submitted = header(msg, "Auto-Submitted").split(";", 1)[0].strip().lower()
    if submitted and submitted != "no":
        return f"Auto-Submitted: {submitted}"
    for name in _AUTO_HEADERS:
        if msg.get(name) is not None:
            return f"{name} header"
    if "auto_reply" in header(msg, "Precedence").lower():
        return "Precedence: auto_reply"
    if _AUTO_SUBJECT.search(header(msg, "Subject")):
        return "an out-of-office subject"
    if _AUTO_BODY.search(body_text(msg)[:4000]):
        return "an out-of-office text"
    return None


# -- forwarded by a person ------------------------------------------------------------------

_FORWARD_SUBJECT = re.compile(
    r"^\s*(?:(?:fwd?|tr|wg|rv|пересл\w*|переслано)\s*(?:\[\d+\])?\s*:)", re.IGNORECASE
)
_REPLY_SUBJECT = re.compile(r"^\s*(?:re|aw|sv|ответ|отв)\s*(?:\[\d+\])?\s*:", re.IGNORECASE)
_FORWARD_MARKER = re.compile(
    r"-{2,}\s*(?:forwarded message|original message|пересылаемое сообщение|"
    r"исходное сообщение|перенаправленное сообщение|пересланное сообщение)\s*-{2,}|"
    r"^\s*begin forwarded message:|^\s*_{20,}\s*$",
    re.IGNORECASE | re.MULTILINE,
)
# where quoting begins: "> ", "On … wrote:", "21.04.2020, 15:04, "…" <…>:" ("пишет:")
_QUOTE_START = re.compile(r"^\s*>|^.{0,200}(?:wrote|пишет|написал\w*):\s*$", re.MULTILINE)
_SIGNATURE = re.compile(r"^-- ?$", re.MULTILINE)
_WORD = re.compile(r"[^\W\d_]{2,}")


def _from_a_person(msg: Message) -> bool:
    """Whether ``msg`` was written by a person, not generated by a mail system: a sender
    with an address that is no daemon's, no null return path, nothing automatic, and no
    report part of its own (a feedback loop sending "FW: …" as multipart/mixed is still a
    feedback loop)."""
    if msg.get("X-Failed-Recipients") or "".join(str(msg.get("Return-Path", "")).split()) == "<>":
        return False
    submitted = str(msg.get("Auto-Submitted", "")).split(";", 1)[0].strip().lower()
    if submitted and submitted != "no":
        return False
    sender = header(msg, "From")
    if not email.utils.parseaddr(sender)[1] or _DAEMON_FROM.search(sender):
        return False
    return not any(p.get_content_type() in _REPORT_PARTS for p in _top(msg))


_REPORT_PARTS = frozenset(
    {
        "multipart/report",
        "message/delivery-status",
        "message/global-delivery-status",
        "message/feedback-report",
        "text/rfc822-headers",
    }
)


def written(msg: Message) -> tuple[str, str] | None:
    """(the person's own words, what follows them: a forwarded or quoted message) when a
    person wrote ``msg`` with words of their own; None otherwise."""
    if not _from_a_person(msg):
        return None
    text = body_text(msg)
    marker = _FORWARD_MARKER.search(text)
    cut = min(
        (m.start() for m in (marker, _QUOTE_START.search(text)) if m is not None),
        default=len(text),
    )
    own = text[:cut]
    signature = _SIGNATURE.search(own)
    own = own[: signature.start()] if signature else own
    if not _WORD.search(own):
        return None
    return own.strip(), text[cut:] + "\n".join(_headers_text(o) for o in _embedded(msg))


def forwarded(msg: Message) -> tuple[str, str] | None:
    """(the person's own words, what they forwarded or quoted) when a person forwarded
    something (or replied to it) with words of their own above it; None otherwise."""
    if not _from_a_person(msg):
        return None
    subject = header(msg, "Subject")
    shaped = (
        _FORWARD_SUBJECT.match(subject)
        or _REPLY_SUBJECT.match(subject)
        or any(p.get_content_type() in ("message/rfc822", "message/global") for p in _top(msg))
    )
    if not shaped and not _FORWARD_MARKER.search(body_text(msg)):
        return None
    return written(msg)


def _top(msg: Message) -> list[Message]:
    """The parts of ``msg`` itself, not those inside a message it carries."""
    found: list[Message] = []
    pending = [msg]
    while pending:
        part = pending.pop()
        found.append(part)
        if part.get_content_maintype() != "multipart":
            continue
        payload = part.get_payload()
        if isinstance(payload, list):
            pending += [p for p in payload if isinstance(p, Message)]
    return found


def _looks_like_a_report(text: str) -> bool:
    """Whether forwarded or quoted text is (the text of) a bounce or a complaint."""
    return bool(
        _BOUNCE_SUBJECT.search(text)
        or _NDR_START.search(text)
        or re.search(r"^from:.*(?:daemon|postmaster|mail delivery)", text, re.I | re.M)
        or re.search(r"feedback-type:|report-type=(?:delivery-status|feedback-report)", text, re.I)
    )


# -- mailto unsubscribes -----------------------------------------------------------------

_UNSUBSCRIBE = re.compile(r"^\s*unsubscribe\s+([A-Za-z0-9_-]{20,600})\s*$", re.IGNORECASE)


def unsubscribe_tokens(msg: Message) -> tuple[str, ...]:
    """``unsubscribe <token>`` as the subject (how List-Unsubscribe's mailto puts it) or
    as a line of the body; quoted lines (``>``) never count."""
    found: list[str] = []
    subject = _UNSUBSCRIBE.match(header(msg, "Subject"))
    if subject:
        found.append(subject.group(1))
    for line in body_text(msg).splitlines()[:50]:
        match = _UNSUBSCRIBE.match(line)
        if match and match.group(1) not in found:
            found.append(match.group(1))
    return tuple(found)


# -- clues ----------------------------------------------------------------------------------

_LIST_UNSUBSCRIBE_TOKEN = re.compile(
    r"<https?://[^>]*/([A-Za-z0-9_-]{20,600})>"
    r"|subject=unsubscribe(?:%20|\+| )([A-Za-z0-9_-]{20,600})",
    re.IGNORECASE,
)
_MESSAGE_ID_LINE = re.compile(r"^message-id:\s*(<[^<>\s]+>)", re.IGNORECASE | re.MULTILINE)


def _headers_text(msg: Message) -> str:
    return "\n".join(f"{k}: {v}" for k, v in msg.items())


_FIELD_PARTS = (
    "message/delivery-status",
    "message/global-delivery-status",
    "message/feedback-report",
)


def clues(msg: Message, return_path: ReturnPath | None, verdict: Verdict) -> Clues:
    originals = _embedded(msg)
    texts = [_headers_text(msg)] + [_headers_text(o) for o in originals]
    tokens: list[str] = []
    if return_path is not None:
        # also the report's own fields: ARF's Original-Mail-From, Postfix's X-Postfix-Sender
        texts += [
            _headers_text(block)
            for part in _walk(msg)
            if part.get_content_type() in _FIELD_PARTS
            for block in _header_blocks(part)
        ]
        pattern = return_path.pattern
        for text in texts:
            tokens += [t for t in pattern.findall(text) if t not in tokens]
    message_ids: list[str] = []
    for original in originals:
        mid = header(original, "Message-ID")
        if mid and mid not in message_ids:
            message_ids.append(mid)
    unsubscribe: list[str] = []
    addresses: list[str] = []
    for original in originals:
        for a, b in _LIST_UNSUBSCRIBE_TOKEN.findall(header(original, "List-Unsubscribe")):
            token = unquote(a or b)
            if token not in unsubscribe:
                unsubscribe.append(token)
        for _name, address in email.utils.getaddresses([header(original, "To")]):
            if address and address not in addresses:
                addresses.append(address)
    if verdict is Verdict.BOUNCE and not originals:
        # a bounce of an older format quotes the original's headers in its text
        message_ids += [m for m in _MESSAGE_ID_LINE.findall(body_text(msg)) if m not in message_ids]
    return Clues(tuple(tokens), tuple(message_ids), tuple(unsubscribe), tuple(addresses))


# -- all together ---------------------------------------------------------------------------


def source_id(msg: Message, data: bytes) -> str:
    mid = header(msg, "Message-ID")
    if mid:
        return mid
    return "sha256:" + hashlib.sha256(data).hexdigest()[:32]


def parse(data: bytes) -> Message:
    return email.message_from_bytes(data, policy=email.policy.compat32)


def unread_failure(msg: Message) -> Failure:
    """A message that is no report statusmail reads, as a failure of nobody in particular:
    what its text says (its first status code, the line holding it, the cause). Hard only
    when a permanent code comes with a bad or disabled mailbox; else soft."""
    text = body_text(msg)
    head = _NDR_END.search(text) or re.search(r"^(?:received|return-path):", text, re.I | re.M)
    text = text[: head.start()] if head else text
    subject = header(msg, "Subject")
    code = status_code(text)
    lines = text.splitlines()
    at = next((i for i, x in enumerate(lines) if code and code in x), None)
    if at is None:
        said, context = subject, f"{subject}\n{text[:4000]}"
    else:
        window = [x.strip() for x in lines[at : at + 4]]
        said, context = window[0], " ".join(window)
    cause = cause_of(code, context)
    hard = bool(code and code.startswith("5") and cause.suppresses_at_once)
    return Failure(
        None, hard, code, _one_line(said or subject), _parse_date(header(msg, "Date")), cause
    )


def classify(data: bytes, return_path: ReturnPath | None = None) -> Classified:
    """What the message ``data`` is, and the clues to whom it is about."""
    msg = parse(data)
    source = source_id(msg, data)
    date = _parse_date(header(msg, "Date"))
    person = forwarded(msg)

    def done(verdict: Verdict, why: str) -> Classified:
        return Classified(verdict, why, source, date, clues=clues(msg, return_path, verdict))

    def report(verdict: Verdict, why: str) -> Classified:
        """A report, unless a person forwarded it to ask about it: then it is theirs."""
        if person is not None:
            return done(Verdict.FORWARDED, f"a person forwarded {why}, with words of their own")
        return done(verdict, why)

    arf = arf_report(msg)
    if arf is not None:
        kind, reporter, named = arf
        if kind == "abuse":
            verdict, why = Verdict.COMPLAINT, "an ARF abuse report"
        elif kind in ("opt-out", "opt-out-list"):
            verdict, why = Verdict.UNSUBSCRIBE, f"an ARF {kind} report"
        else:  # not-spam, auth-failure, …: for a person to read
            return done(Verdict.OTHER, f"an ARF report of type {kind or 'unknown'!r}")
        return _naming(report(verdict, why), named, kind, reporter)
    jmrp = jmrp_recipients(msg)
    if jmrp is not None:
        found = done(Verdict.COMPLAINT, "a Microsoft JMRP complaint")
        return _naming(found, jmrp, "abuse", JMRP_REPORTER)

    def bounce(failures: tuple[Failure, ...], why: str) -> Classified:
        found = report(Verdict.BOUNCE, why)
        return replace(found, failures=failures) if found.verdict is Verdict.BOUNCE else found

    failures = dsn_failures(msg)
    if failures:
        return bounce(failures, "an RFC 3464 delivery status notification")
    is_dsn = failures is not None
    if is_dsn or from_a_mail_system(msg):  # a report too broken to read, or an older format
        for read, why in (
            (other_failures, "a bounce flufl.bounce read"),
            (ndr_failures, "a non-delivery report"),
        ):
            failures = read(msg)
            if failures:
                return bounce(failures, why)
    tokens = unsubscribe_tokens(msg)
    if tokens:
        result = done(Verdict.UNSUBSCRIBE, "a mailto unsubscribe")
        return replace(result, clues=replace(result.clues, unsubscribe_tokens=tokens))
    reason = auto_reply_reason(msg)
    if reason:
        return done(Verdict.AUTO_REPLY, f"an auto-reply ({reason})")
    if is_dsn:
        return done(Verdict.OTHER, "a delivery status notification without a failure")
    if person is not None and _looks_like_a_report(person[1]):
        return done(Verdict.FORWARDED, "a person forwarded a report, with words of their own")
    if written(msg) is not None:  # a person's own message, a reply or a question: theirs
        return done(Verdict.OTHER, "a message a person wrote, with words of their own")
    result = done(Verdict.OTHER, "not a report statusmail reads")
    return replace(result, failures=(unread_failure(msg),))


def _naming(found: Classified, named: list[str], kind: str, reporter: str | None) -> Classified:
    """A feedback report with every recipient it names among its clues."""
    if found.verdict is Verdict.FORWARDED:
        return found
    addresses = tuple(dict.fromkeys(named + list(found.clues.addresses)))
    return replace(
        found,
        feedback_type=kind,
        reporter=reporter,
        clues=replace(found.clues, addresses=addresses),
    )
