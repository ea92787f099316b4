"""What the providers' checks and readers share: ``Refused`` (a request that failed its
check) and ``Unavailable`` (what a check needs cannot be had now), the fetch of a URL
(the SNS certificate), and the tolerant reading of the JSON the providers post."""

from __future__ import annotations

import datetime as dt
import json
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from statusmail.feedback.reading import may_be_address, unfolded

FETCH_TIMEOUT = 10.0  # seconds, for the SNS certificate and subscription URLs
MAX_FETCHED = 64 * 1024  # a certificate is about 2 KB
Fetch = Callable[[str], bytes]  # a URL's body; raises OSError when it cannot be had


class Refused(Exception):
    """A request that failed its check: nothing of it is applied."""

    def __init__(self, why: str, status: int = 403) -> None:
        super().__init__(why)
        self.why = why
        self.status = status


class Unavailable(Exception):
    """What a check needs cannot be had now (the SNS certificate host): try again later."""


def fetch_url(url: str) -> bytes:
    """``url``'s body over https, at most ``MAX_FETCHED`` bytes; OSError on failure."""
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as response:
        data: bytes = response.read(MAX_FETCHED + 1)
    if len(data) > MAX_FETCHED:
        raise OSError(f"more than {MAX_FETCHED} bytes")
    return data


# -- reading what the providers post ------------------------------------------------------


def mapping_of(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def mappings_in(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def text_at(data: Mapping[str, Any], key: str) -> str:
    """The text at ``key`` as the ledger can store it (JSON carries lone surrogates: an
    event id or a diagnostic holding one made a post a 500) and a report can show it
    (one line, escapes visible: a multi-line diagnostic forged lines of ``suppress
    show``), "" when it is no text."""
    value = data.get(key)
    if not isinstance(value, str | int | float):
        return ""
    return unfolded(str(value))


def address_in(value: str) -> str | None:
    """The address a report names, or None: not one (a lone surrogate, which JSON can
    carry and no ledger can store, made a verified post a 500)."""
    value = value.strip().strip("<>").strip()
    return value if "@" in value and " " not in value and may_be_address(value) else None


def message_id_in(value: str) -> str | None:
    value = value.strip()
    if not value:
        return None
    return value if value.startswith("<") else f"<{value}>"


def smtp_reply(text: str) -> str:
    """A provider's copy of the SMTP reply, without the DSN's ``smtp;`` type."""
    return text[5:].strip() if text.lower().startswith("smtp;") else text


def iso_time(value: str) -> dt.datetime | None:
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def unix_time(value: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromtimestamp(float(value), dt.UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def json_of(body: bytes, why: str = "the body is not JSON", status: int = 400) -> Any:
    """The body as JSON; ``Refused(status)`` saying ``why`` when it is not (nested past
    the parser's depth included). 400 after its signature held; a body whose signature
    is inside it is unproven, 403."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Refused(why, status) from None
