"""SendGrid: the signed event webhook (ECDSA P-256 with SHA-256 over the timestamp header
and the raw body); and the bounces, drops, spam reports and unsubscribes of a batch."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from statusmail.domain import FeedbackKind
from statusmail.feedback.providers.common import (
    Refused,
    address_in,
    mappings_in,
    message_id_in,
    text_at,
    unix_time,
)
from statusmail.feedback.reading import status_code
from statusmail.feedback.reports import ProviderReport

SENDGRID_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"


def load_sendgrid_key(text: str) -> ec.EllipticCurvePublicKey:
    """SendGrid's verification key: base64 DER as its settings show it (or PEM); ValueError
    when it is not a P-256 public key."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error, TypeError) as exc:
        raise ValueError("not a public key in base64 DER or PEM") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("not an ECDSA P-256 public key")
    return key


def verify_sendgrid(
    key: ec.EllipticCurvePublicKey, signature: str | None, timestamp: str | None, body: bytes
) -> None:
    """Raises ``Refused`` unless ``signature`` signs ``timestamp`` and ``body``."""
    if not signature or not timestamp:
        raise Refused("a SendGrid request without its signature headers")
    try:
        key.verify(
            base64.b64decode(signature, validate=True),
            timestamp.encode() + body,
            ec.ECDSA(hashes.SHA256()),
        )
    except (binascii.Error, ValueError, InvalidSignature):
        raise Refused("a bad SendGrid signature") from None


_SENDGRID_DROPPED = (
    ("spam", FeedbackKind.COMPLAINT),
    ("unsubscribe", FeedbackKind.UNSUBSCRIBE),
    ("bounce", FeedbackKind.HARD),
    ("invalid", FeedbackKind.HARD),
)


def sendgrid_reports(events: Any) -> list[ProviderReport]:
    """The reports in a SendGrid batch: bounce (``type`` bounce or blocked), dropped (by
    its reason), spamreport, unsubscribe; other events say nothing."""
    reports: list[ProviderReport] = []
    for event in mappings_in(events):
        name = text_at(event, "event")
        address = address_in(text_at(event, "email"))
        if address is None:
            continue
        reason, status = text_at(event, "reason"), text_at(event, "status")
        kind: FeedbackKind | None = None
        if name == "bounce":
            kind = FeedbackKind.SOFT if text_at(event, "type") == "blocked" else FeedbackKind.HARD
        elif name == "dropped":
            lowered = reason.lower()
            if "smtpapi" not in lowered:
                kind = next((k for word, k in _SENDGRID_DROPPED if word in lowered), None)
        elif name == "spamreport":
            kind = FeedbackKind.COMPLAINT
        elif name in ("unsubscribe", "group_unsubscribe"):
            kind = FeedbackKind.UNSUBSCRIBE
        if kind is None:
            continue
        message_id = message_id_in(text_at(event, "smtp-id"))
        source = text_at(event, "sg_event_id") or (
            f"{text_at(event, 'sg_message_id')}:{name}:{text_at(event, 'timestamp')}"
        )
        bounced = kind in (FeedbackKind.HARD, FeedbackKind.SOFT)
        reports.append(
            ProviderReport(
                "sendgrid",
                kind,
                address,
                source,
                status_code(status, reason) if bounced else None,
                reason or name,
                unix_time(event.get("timestamp")),
                message_id,
            )
        )
    return reports
