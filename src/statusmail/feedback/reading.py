"""Reading a message of the bounce mailbox as mail systems write it, whatever is broken
in it: its headers decoded, its dates, the text of its parts, the original message a
report carries, the field blocks of a report part, and the status codes in a text."""

from __future__ import annotations

import datetime as dt
import email
import email.errors
import email.header
import email.parser
import email.policy
import email.utils
import hashlib
import re
from collections.abc import Iterator
from email.message import Message

from statusmail.domain import printable, short_source

MAX_TEXT = 200_000  # characters of a text part read for clues and auto-reply texts


def header(msg: Message, name: str) -> str:
    """A header's value decoded (RFC 2047) and unfolded; "" when absent or broken."""
    value = msg.get(name)
    if value is None:
        return ""
    try:
        text = str(email.header.make_header(email.header.decode_header(str(value))))
    except (ValueError, LookupError, UnicodeError, email.errors.MessageError):
        text = str(value)
    return unfolded(text)


def unfolded(text: str) -> str:
    """Outside text as statusmail keeps and shows it: storable, one line (its runs of
    whitespace, line breaks too, one space), escapes visible (``printable``)."""
    return printable(" ".join(storable(text).split()))


def storable(text: str) -> str:
    """``text`` as the ledger can store it: a lone surrogate (an encoded-word or a part
    in UTF-7, say, which Python decodes into one; SQLite and PostgreSQL refuse them)
    becomes U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def parse_date(value: str) -> dt.datetime | None:
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return when.astimezone(dt.UTC)
    except (TypeError, ValueError, IndexError, OverflowError):  # (9999-12-31 -1000)
        return None


def part_text(part: Message) -> str:
    """A leaf part's text, decoded with its charset (whatever it claims)."""
    try:
        payload = part.get_payload(decode=True)
    except (ValueError, AssertionError):
        payload = None
    if not isinstance(payload, bytes):
        raw = part.get_payload()
        return storable(raw[:MAX_TEXT]) if isinstance(raw, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return storable(payload.decode(charset, "replace")[:MAX_TEXT])
    except (LookupError, ValueError):  # a charset no codec has, or not even a name
        return payload.decode("utf-8", "replace")[:MAX_TEXT]


def walk(msg: Message) -> Iterator[Message]:
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
            texts.append(part_text(part))
        elif kind == "text/html":
            html.append(re.sub(r"<[^>]+>", " ", part_text(part)))
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


def embedded(msg: Message) -> list[Message]:
    """The original message (or its headers) a report carries."""
    found: list[Message] = []
    for part in walk(msg):
        kind = part.get_content_type()
        if kind in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list):
                found += [p for p in payload if isinstance(p, Message)]
            elif isinstance(payload, str):
                found.append(email.message_from_string(payload, policy=email.policy.compat32))
        elif kind in ("text/rfc822-headers", "message/rfc822-headers", "text/global-headers"):
            found.append(
                email.message_from_string(part_text(part).lstrip(), policy=email.policy.compat32)
            )
    return found


def header_blocks(part: Message) -> list[Message]:
    """The field blocks of a message/delivery-status or message/feedback-report part."""
    payload = part.get_payload()
    if isinstance(payload, list) and all(isinstance(p, Message) for p in payload):
        blocks: list[Message] = []
        for block in (p for p in payload if isinstance(p, Message)):
            blocks.append(block)
            # message/global-delivery-status (RFC 6533): the parser takes it for an
            # embedded message, its first block the headers and the others the body
            rest = block.get_payload()
            if isinstance(rest, str):
                blocks += _field_blocks(rest)
        return blocks
    return _field_blocks(part_text(part) if not isinstance(payload, list) else "")


def _field_blocks(text: str) -> list[Message]:
    parser = email.parser.HeaderParser(policy=email.policy.compat32)
    return [parser.parsestr(block) for block in re.split(r"\r?\n\s*\r?\n", text) if block.strip()]


def field_address(field_value: str) -> str | None:
    """``rfc822; anna@example.org`` → ``anna@example.org``."""
    value = field_value.split(";", 1)[-1].strip().strip("<>").strip()
    if value.lower().startswith("utf-8;"):
        value = value[6:].strip()
    return value if value and may_be_address(value) else None


MAX_ADDRESS_OCTETS = 254  # RFC 5321's path, less its brackets


def may_be_address(value: str) -> bool:
    """Whether a report's ``value`` can be an address at all: printable (no control
    character, such as ESC, a bidi override or an encoded line break; no surrogate; no
    space but " ") and at most ``MAX_ADDRESS_OCTETS`` long."""
    return value.isprintable() and len(value.encode("utf-8", "replace")) <= MAX_ADDRESS_OCTETS


def headers_text(msg: Message) -> str:
    return "\n".join(f"{k}: {v}" for k, v in msg.items())


# -- codes ---------------------------------------------------------------------------

STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
REPLY = re.compile(r"(?<![\d.])([245]\d\d)(?![\d.])")


def status_code(*texts: str) -> str | None:
    """The first enhanced status code (5.1.1) in ``texts``, else the first reply code."""
    for text in texts:
        found = STATUS.search(text)
        if found:
            return found.group(0)
    for text in texts:
        found = REPLY.search(text)
        if found:
            return found.group(0)
    return None


def one_line(text: str, limit: int = 400) -> str:
    """A diagnostic as it is stored and shown: ``unfolded``, at most ``limit`` long."""
    text = unfolded(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def source_id(msg: Message, data: bytes) -> str:
    mid = header(msg, "Message-ID")
    if mid:
        return short_source(mid)
    return "sha256:" + hashlib.sha256(data).hexdigest()[:32]


def parse(data: bytes) -> Message:
    return email.message_from_bytes(data, policy=email.policy.compat32)
