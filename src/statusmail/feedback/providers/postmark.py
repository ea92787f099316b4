"""Postmark: it signs nothing, so its URL carries HTTP basic auth, checked in constant
time; and the bounces, complaints and unsubscribes its records report."""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping
from typing import Any

from statusmail.domain import FeedbackKind
from statusmail.feedback.providers.common import Refused, address_in, iso_time, smtp_reply, text_at
from statusmail.feedback.reading import status_code
from statusmail.feedback.reports import ProviderReport

_POSTMARK_HARD = frozenset({"HardBounce", "BadEmailAddress"})
_POSTMARK_SOFT = frozenset(
    {"SoftBounce", "Transient", "DnsError", "SpamNotification", "Blocked", "DMARCPolicy"}
)


def check_basic_auth(header: str | None, username: str, password: str) -> None:
    """Raises ``Refused`` (401 when there is no basic auth) unless ``header`` carries
    ``username`` and ``password``; both compared in constant time."""
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        raise Refused("no basic auth", 401)
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except ValueError:  # binascii.Error, or a character outside ASCII
        raise Refused("basic auth that is not base64", 401) from None
    user, _, secret = given.partition(b":")
    user_ok = hmac.compare_digest(user, username.encode())
    secret_ok = hmac.compare_digest(secret, password.encode())
    if not (user_ok & secret_ok):
        raise Refused("wrong basic auth")


def postmark_reports(record: Mapping[str, Any]) -> list[ProviderReport]:
    """A Postmark Bounce, SpamComplaint or SubscriptionChange record's report."""
    record_type = text_at(record, "RecordType")
    kind_name = text_at(record, "Type")
    if record_type == "SubscriptionChange":
        address = address_in(text_at(record, "Recipient"))
        manual = text_at(record, "SuppressionReason") == "ManualSuppression"
        if address is None or record.get("SuppressSending") is not True or not manual:
            return []
        source = f"{text_at(record, 'MessageID')}:{text_at(record, 'ChangedAt')}"
        when = iso_time(text_at(record, "ChangedAt"))
        said = "unsubscribed through Postmark"
        return [
            ProviderReport("postmark", FeedbackKind.UNSUBSCRIBE, address, source, None, said, when)
        ]
    if record_type == "SpamComplaint" or kind_name == "SpamComplaint":
        kind = FeedbackKind.COMPLAINT
    elif record_type != "Bounce":
        return []  # deliveries, opens, clicks
    elif kind_name in _POSTMARK_HARD:
        kind = FeedbackKind.HARD
    elif kind_name in _POSTMARK_SOFT:
        kind = FeedbackKind.SOFT
    elif kind_name == "Unsubscribe":
        kind = FeedbackKind.UNSUBSCRIBE
    else:
        return []  # auto-responders, address changes, challenge mails: not about delivery
    address = address_in(text_at(record, "Email"))
    if address is None:
        return []
    details = smtp_reply(text_at(record, "Details")) or text_at(record, "Description") or kind_name
    return [
        ProviderReport(
            "postmark",
            kind,
            address,
            text_at(record, "ID") or text_at(record, "MessageID"),
            status_code(details) if kind in (FeedbackKind.HARD, FeedbackKind.SOFT) else None,
            details,
            iso_time(text_at(record, "BouncedAt")),
        )
    ]
