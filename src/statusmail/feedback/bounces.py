"""Bounces, read per recipient: RFC 3464 delivery status notifications
(``dsn_failures``); the older and private formats GNU Mailman's detectors read
(``other_failures``, for a message from a mail system only); the non-delivery reports of
Exchange, Office 365 and Yahoo that carry no delivery-status part (``ndr_failures``);
and, for a message that is no report at all, what its text says (``unread_failure``)."""

from __future__ import annotations

import email.utils
import logging
import re
from email.message import Message

from flufl.bounce import all_failures

from statusmail.domain import Cause
from statusmail.feedback.causes import cause_of
from statusmail.feedback.classified import Failure
from statusmail.feedback.reading import (
    REPLY,
    STATUS,
    body_text,
    field_address,
    header,
    header_blocks,
    one_line,
    parse_date,
    status_code,
    walk,
)

log = logging.getLogger(__name__)
# flufl.bounce logs every detector it runs, and a traceback when one trips over a broken
# message (other_failures handles that): none of it is for statusmail's users.
_detectors_log = logging.getLogger("flufl.bounce")
_detectors_log.addHandler(logging.NullHandler())
_detectors_log.propagate = False


# -- RFC 3464 delivery status notifications -------------------------------------------


def dsn_failures(msg: Message) -> tuple[Failure, ...] | None:
    """Per recipient, what an RFC 3464 report says; None when ``msg`` is not one."""
    parts = [
        p
        for p in walk(msg)
        if p.get_content_type() in ("message/delivery-status", "message/global-delivery-status")
    ]
    if not parts:
        return None
    failures: list[Failure] = []
    for part in parts:
        blocks = header_blocks(part)
        arrival = parse_date(header(blocks[0], "Arrival-Date")) if blocks else None
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
            when = parse_date(header(block, "Last-Attempt-Date")) or arrival
            cause = cause_of(code, diagnostic)
            if action == "failed" and not hard and cause in (Cause.NETWORK, Cause.OTHER):
                cause = Cause.EXPIRED  # given up on a temporary failure: the queue expired
            failures.append(
                Failure(
                    field_address(recipient),
                    hard,
                    code,
                    one_line(diagnostic or status or action),
                    when,
                    cause,
                )
            )
    return tuple(failures)


# -- other bounces ---------------------------------------------------------------------

DAEMON_FROM = re.compile(
    r"daemon|postmaster|mail delivery|mail administrator|mail system|mailer|"
    r"system administrator|microsoftexchange|microsoft outlook|"
    r"почтов\w* (?:служб|систем)|системн\w* администратор",
    re.IGNORECASE,
)
BOUNCE_SUBJECT = re.compile(
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
        DAEMON_FROM.search(sender)
        or not email.utils.parseaddr(sender)[1]
        or BOUNCE_SUBJECT.search(header(msg, "Subject"))
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
            reply = next((x for x in window if REPLY.search(x) or STATUS.search(x)), None)
            return code, one_line(reply or " ".join(window))
    return status_code(text), ""


def other_failures(msg: Message) -> tuple[Failure, ...]:
    """What GNU Mailman's detectors find in a bounce of an older or private format."""
    try:
        temporary, permanent = all_failures(msg)
    except Exception as exc:  # a detector tripping over a malformed message
        log.debug("flufl.bounce could not read a message: %s", exc)
        return ()
    text = body_text(msg)
    when = parse_date(header(msg, "Date"))
    failures: list[Failure] = []
    for raw, hard in [(a, True) for a in sorted(permanent)] + [
        (a, False) for a in sorted(temporary - permanent)
    ]:
        address = raw.decode("utf-8", "replace").strip("<>")
        code, reply = _near(text, address)
        said = reply or one_line(header(msg, "Subject"))
        failures.append(Failure(address, hard, code, said, when, cause_of(code, said)))
    return tuple(failures)


# Non-delivery reports of Exchange (the Internet Mail Connector of Exchange 4.0 and 5.x,
# 2007 and later, Office 365, localized in Russian) and Yahoo's "Failure Notice", when
# they come without a delivery-status part: the sentence that opens the list of
# recipients, and where each recipient is named in it.
NDR_START = re.compile(
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
    start = NDR_START.search(text)
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
    when = parse_date(header(msg, "Date"))
    whole = "\n".join(lines)
    failures: list[Failure] = []
    for address, places in named.items():
        windows = [lines[i : i + 4] for i in places]
        said = next(
            (x for w in windows for x in w[1:] if STATUS.search(x) or REPLY.search(x)), None
        )
        code = status_code(said) if said else status_code(whole)
        if said is None and code is not None:  # said once for all, as Office 365 does
            said = max((x for x in lines if code in x), key=len, default=None)
        near = " ".join(x for w in windows for x in w[1:])
        said = said or near or header(msg, "Subject")
        hard = (code or "5").startswith("5")
        failures.append(
            Failure(address, hard, code, one_line(said), when, cause_of(code, f"{said} {near}"))
        )
    return tuple(failures)


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
        None, hard, code, one_line(said or subject), parse_date(header(msg, "Date")), cause
    )
