"""The clues to whom a report is about, unchecked: the return-path tokens, the original
Message-IDs, the unsubscribe tokens and the recipients it names; and the ``unsubscribe
<token>`` a mailto unsubscribe carries."""

from __future__ import annotations

import email.utils
import re
from email.message import Message
from urllib.parse import unquote

from statusmail.feedback.classified import Clues, ReturnPath, Verdict
from statusmail.feedback.reading import (
    body_text,
    embedded,
    header,
    header_blocks,
    headers_text,
    walk,
)

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


_LIST_UNSUBSCRIBE_TOKEN = re.compile(
    r"<https?://[^>]*/([A-Za-z0-9_-]{20,600})>"
    r"|subject=unsubscribe(?:%20|\+| )([A-Za-z0-9_-]{20,600})",
    re.IGNORECASE,
)
MAX_LIST_UNSUBSCRIBE = 4000
_MESSAGE_ID_LINE = re.compile(r"^message-id:\s*(<[^<>\s]+>)", re.IGNORECASE | re.MULTILINE)


_FIELD_PARTS = (
    "message/delivery-status",
    "message/global-delivery-status",
    "message/feedback-report",
)


def clues(msg: Message, return_path: ReturnPath | None, verdict: Verdict) -> Clues:
    originals = embedded(msg)
    texts = [headers_text(msg)] + [headers_text(o) for o in originals]
    tokens: list[str] = []
    if return_path is not None:
        # also the report's own fields: ARF's Original-Mail-From, Postfix's X-Postfix-Sender
        texts += [
            headers_text(block)
            for part in walk(msg)
            if part.get_content_type() in _FIELD_PARTS
            for block in header_blocks(part)
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
        # (cut: the pattern is quadratic on a long run of "<https://"; ours is far shorter)
        listed = header(original, "List-Unsubscribe")[:MAX_LIST_UNSUBSCRIBE]
        for a, b in _LIST_UNSUBSCRIBE_TOKEN.findall(listed):
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
