"""Mailgun: the HMAC-SHA256 of timestamp and token under the webhook signing key, a stale
timestamp refused (a replayed token is refused where the ledger takes it:
``apply_reports``); and the failures, complaints and unsubscribes its events report."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from statusmail.domain import FeedbackKind
from statusmail.feedback.providers.common import (
    Refused,
    address_in,
    mapping_of,
    message_id_in,
    text_at,
    unix_time,
)
from statusmail.feedback.reading import status_code
from statusmail.feedback.reports import ProviderReport, WebhookToken


class MailgunVerifier:
    """Checks the signature Mailgun puts in each body and its timestamp's age. What the
    signature covers is usable once: ``verify`` returns it as a ``WebhookToken``, which
    ``apply_reports`` takes in the ledger (shared by every web host, kept over restarts)."""

    def __init__(self, key: str, max_age: float, clock: Callable[[], float]) -> None:
        self.key = key.encode()
        self.max_age = max_age
        self.clock = clock

    def verify(self, payload: Any) -> WebhookToken:
        """Raises ``Refused`` unless the payload is signed and fresh."""
        timestamp, token, given = _signature(payload)
        if not timestamp or not token or not given:
            raise Refused("a Mailgun body without its signature")
        # Only digits, then only letters and digits: the signature covers the two run
        # together, so "...e0" + "ab..." and "..." + "e0ab..." would both verify.
        if not (timestamp.isascii() and timestamp.isdigit()):
            raise Refused("a Mailgun timestamp that is not a number")
        if not (token.isascii() and token.isalnum()):
            raise Refused("a Mailgun token that is not letters and digits")
        signed = timestamp + token
        mac = crypto_hmac.HMAC(self.key, hashes.SHA256())
        mac.update(signed.encode())
        try:
            mac.verify(bytes.fromhex(given))
        except (ValueError, InvalidSignature):
            raise Refused("a bad Mailgun signature") from None
        age = self.clock() - int(timestamp)
        if not -self.max_age <= age <= self.max_age:
            raise Refused("a stale Mailgun timestamp")
        return WebhookToken("mailgun", signed, int(timestamp) + self.max_age)


def _signature(payload: Any) -> tuple[str, str, str]:
    """The timestamp, token and signature a Mailgun body carries ("" when absent)."""
    signature = mapping_of(mapping_of(payload).get("signature"))
    return (
        text_at(signature, "timestamp"),
        text_at(signature, "token"),
        text_at(signature, "signature"),
    )


def mailgun_reports(payload: Mapping[str, Any]) -> list[ProviderReport]:
    """The report of a Mailgun event: failed (permanent or temporary), complained or
    unsubscribed; other events say nothing about the recipient."""
    event = mapping_of(payload.get("event-data"))
    name = text_at(event, "event")
    address = address_in(text_at(event, "recipient"))
    if address is None:
        return []
    headers = mapping_of(mapping_of(event.get("message")).get("headers"))
    message_id = message_id_in(text_at(headers, "message-id"))
    source = text_at(event, "id") or f"{message_id}:{name}:{text_at(event, 'timestamp')}"
    when = unix_time(event.get("timestamp"))
    if name == "failed":
        status = mapping_of(event.get("delivery-status"))
        said = [text_at(status, "message"), text_at(status, "description")]
        diagnostic = " ".join(dict.fromkeys(s for s in said if s)) or text_at(event, "reason")
        reply = status.get("code")
        code = status_code(*said) or (
            str(reply) if isinstance(reply, int) and 400 <= reply < 600 else None
        )
        kind = FeedbackKind.HARD if text_at(event, "severity") == "permanent" else FeedbackKind.SOFT
        return [
            ProviderReport("mailgun", kind, address, source, code, diagnostic, when, message_id)
        ]
    kinds = {"complained": FeedbackKind.COMPLAINT, "unsubscribed": FeedbackKind.UNSUBSCRIBE}
    if name in kinds:
        text = f"{name} through Mailgun"
        return [
            ProviderReport("mailgun", kinds[name], address, source, None, text, when, message_id)
        ]
    return []
