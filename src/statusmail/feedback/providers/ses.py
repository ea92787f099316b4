"""Amazon SES notifications through SNS: the SNS signature (version 1, SHA1withRSA, or 2,
SHA256withRSA) checked over the documented fields with the certificate at
``SigningCertURL`` (an https URL on an SNS host, ending ``.pem``; for
``sns.amazonaws.com``; cached by URL), the topic checked configured, a subscription
confirmed; and the bounces and complaints an SES notification reports."""

from __future__ import annotations

import base64
import datetime as dt
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from statusmail.domain import FeedbackKind
from statusmail.feedback.providers.common import (
    Fetch,
    Refused,
    Unavailable,
    address_in,
    iso_time,
    mapping_of,
    mappings_in,
    message_id_in,
    smtp_reply,
    text_at,
)
from statusmail.feedback.reading import status_code
from statusmail.feedback.reports import ProviderReport
from statusmail.project.feedback_settings import SesWebhook

SNS_HOST = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?")
SNS_CERTIFICATE_SUBJECT = "sns.amazonaws.com"
# Anyone who knows a topic's ARN can post unsigned messages naming certificate URLs on
# the SNS hosts: each would be fetched before its signature is checked. So a URL that
# failed is not fetched again for a while, and only so many fetches run at once (the
# others answer 503 at once; SNS retries): they held the threads serve answers with.
FAILED_FOR = 60.0  # seconds
FETCHES_AT_ONCE = 2
REMEMBERED = 256  # certificates kept, and URLs remembered as failed
_SNS_SIGNED = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_SNS_SIGNED["UnsubscribeConfirmation"] = _SNS_SIGNED["SubscriptionConfirmation"]
_SNS_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "1": hashes.SHA1,
    "2": hashes.SHA256,
}


def sns_url_allowed(url: str, *, certificate: bool) -> bool:
    """Whether ``url`` is https on an SNS host (and, for a certificate, ends ``.pem``)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    host = parts.hostname or ""
    return (
        parts.scheme == "https"
        and port in (None, 443)
        and parts.username is None
        and SNS_HOST.fullmatch(host) is not None
        and (not certificate or parts.path.endswith(".pem"))
    )


def sns_string_to_sign(message: Mapping[str, Any]) -> bytes:
    """The canonical string SNS signs: each signed field present, as ``name\\nvalue\\n``."""
    fields = _SNS_SIGNED[str(message.get("Type"))]
    lines = []
    for name in fields:
        value = message.get(name)
        if value is None:
            continue  # Subject is optional; the rest are checked present before
        lines.append(f"{name}\n{value}\n")
    return "".join(lines).encode("utf-8")


def _names_sns(certificate: x509.Certificate) -> bool:
    names = [
        str(attribute.value)
        for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ]
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names += extension.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        pass
    return any(name == SNS_CERTIFICATE_SUBJECT or SNS_HOST.fullmatch(name) for name in names)


class SnsVerifier:
    """Checks SNS messages; keeps each good signing certificate by its URL, and each URL
    whose certificate could not be had for ``FAILED_FOR``."""

    def __init__(self, settings: SesWebhook, fetch: Fetch) -> None:
        self.topics = frozenset(settings.topic_arns)
        self.fetch = fetch
        self._certificates: dict[str, x509.Certificate] = {}
        self._failed: dict[str, float] = {}  # URL -> until when it is not fetched again
        self._lock = threading.Lock()  # (verify runs in serve's worker threads)
        self._fetches = threading.BoundedSemaphore(FETCHES_AT_ONCE)

    def verify(self, message: Mapping[str, Any]) -> None:
        """Raises ``Refused`` unless ``message`` is signed by SNS for a configured topic;
        blocking (it may fetch the certificate)."""
        kind, topic = message.get("Type"), message.get("TopicArn")
        if not isinstance(kind, str) or kind not in _SNS_SIGNED:
            raise Refused("not an SNS message")
        if not isinstance(topic, str) or topic not in self.topics:
            raise Refused("an SNS topic not configured in webhooks.ses.topic_arns")
        fields = [name for name in _SNS_SIGNED[kind] if name != "Subject"]
        signed = ["Signature", "SignatureVersion", "SigningCertURL", *fields]
        if not all(isinstance(message.get(name), str) for name in signed):
            raise Refused("an SNS message without its signed fields")
        if message.get("Subject") is not None and not isinstance(message["Subject"], str):
            raise Refused("an SNS message with a malformed Subject")
        algorithm = _SNS_HASHES.get(message["SignatureVersion"])
        if algorithm is None:
            raise Refused("an SNS signature version other than 1 or 2")
        url = message["SigningCertURL"]
        if not sns_url_allowed(url, certificate=True):
            raise Refused("a signing certificate URL off the SNS hosts")
        try:
            signature = base64.b64decode(message["Signature"], validate=True)
        except ValueError:  # binascii.Error, or a character outside ASCII
            raise Refused("an SNS signature that is not base64") from None
        key = self._public_key(url)
        try:
            key.verify(signature, sns_string_to_sign(message), padding.PKCS1v15(), algorithm())
        except InvalidSignature:
            raise Refused("a bad SNS signature") from None

    def _public_key(self, url: str) -> rsa.RSAPublicKey:
        certificate = self._certificate(url)
        now = dt.datetime.now(dt.UTC)
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            raise Refused("a signing certificate outside its validity")
        key = certificate.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise Refused("a signing certificate without an RSA key")
        return key

    def _certificate(self, url: str) -> x509.Certificate:
        """The certificate at ``url``: kept, else fetched (one fetch of a URL at a time,
        ``FETCHES_AT_ONCE`` in all), unless it failed within ``FAILED_FOR``."""
        known = self._known(url)
        if known is not None:
            return known
        if not self._fetches.acquire(blocking=False):
            raise Unavailable(f"{FETCHES_AT_ONCE} SNS certificate fetches are under way")
        try:
            known = self._known(url)  # fetched meanwhile, or failed
            if known is not None:
                return known
            try:
                certificate = self._fetched(url)
            except (Unavailable, Refused):
                self._remember(self._failed, url, time.monotonic() + FAILED_FOR)
                raise
            self._remember(self._certificates, url, certificate)
            return certificate
        finally:
            self._fetches.release()

    def _fetched(self, url: str) -> x509.Certificate:
        """The SNS signing certificate at ``url``, fetched now."""
        try:
            certificate = x509.load_pem_x509_certificate(self.fetch(url))
        except OSError as exc:
            host = urlsplit(url).hostname
            message = f"cannot fetch the SNS signing certificate from {host}: {exc}"
            raise Unavailable(message) from None
        except ValueError:
            raise Refused("a signing certificate that does not parse") from None
        if not _names_sns(certificate):
            raise Refused(f"a signing certificate not for {SNS_CERTIFICATE_SUBJECT}")
        return certificate

    def _known(self, url: str) -> x509.Certificate | None:
        """The certificate kept for ``url``; ``Unavailable`` if it failed lately."""
        with self._lock:
            certificate = self._certificates.get(url)
            failed_until = self._failed.get(url, 0.0)
        if certificate is None and time.monotonic() < failed_until:
            host = urlsplit(url).hostname
            raise Unavailable(
                f"the SNS signing certificate at {host} could not be had lately; "
                f"not fetched again within {FAILED_FOR:.0f} s"
            )
        return certificate

    def _remember(self, kept: dict[str, Any], url: str, value: Any) -> None:
        with self._lock:
            if len(kept) >= REMEMBERED:  # SNS has a few certificates; never grow unbounded
                kept.clear()
            kept[url] = value

    def confirm(self, message: Mapping[str, Any]) -> None:
        """Confirm a verified subscription by fetching its ``SubscribeURL``."""
        url = str(message.get("SubscribeURL"))
        if not sns_url_allowed(url, certificate=False):
            raise Refused("a SubscribeURL off the SNS hosts")
        try:
            self.fetch(url)
        except OSError as exc:
            raise Unavailable(f"cannot confirm at {urlsplit(url).hostname}: {exc}") from None


def ses_reports(notification: Mapping[str, Any], fallback_id: str) -> list[ProviderReport]:
    """The reports in an SES notification (``notificationType``, or ``eventType`` of an
    event-publishing destination): Bounce and Complaint; Delivery and others say nothing."""
    kind = text_at(notification, "notificationType") or text_at(notification, "eventType")
    message_id = _ses_message_id(mapping_of(notification.get("mail")))
    reports: list[ProviderReport] = []
    if kind == "Bounce":
        bounce = mapping_of(notification.get("bounce"))
        rated = (
            FeedbackKind.HARD if text_at(bounce, "bounceType") == "Permanent" else FeedbackKind.SOFT
        )
        source = text_at(bounce, "feedbackId") or fallback_id
        when = iso_time(text_at(bounce, "timestamp"))
        for recipient in mappings_in(bounce.get("bouncedRecipients")):
            address = address_in(text_at(recipient, "emailAddress"))
            if address is None:
                continue
            diagnostic = smtp_reply(text_at(recipient, "diagnosticCode"))
            code = status_code(text_at(recipient, "status"), diagnostic)
            reports.append(
                ProviderReport("ses", rated, address, source, code, diagnostic, when, message_id)
            )
    elif kind == "Complaint":
        complaint = mapping_of(notification.get("complaint"))
        if text_at(complaint, "complaintFeedbackType") == "not-spam":
            return []
        source = text_at(complaint, "feedbackId") or fallback_id
        when = iso_time(text_at(complaint, "timestamp"))
        said = text_at(complaint, "complaintFeedbackType") or "complaint"
        for recipient in mappings_in(complaint.get("complainedRecipients")):
            address = address_in(text_at(recipient, "emailAddress"))
            if address is not None:
                reports.append(
                    ProviderReport(
                        "ses", FeedbackKind.COMPLAINT, address, source, None, said, when, message_id
                    )
                )
    return reports


def _ses_message_id(mail: Mapping[str, Any]) -> str | None:
    for header in mappings_in(mail.get("headers")):
        if text_at(header, "name").lower() == "message-id":
            return message_id_in(text_at(header, "value"))
    return message_id_in(text_at(mapping_of(mail.get("commonHeaders")), "messageId"))
