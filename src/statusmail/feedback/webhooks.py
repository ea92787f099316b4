"""Bounce reports the sending providers post to ``serve``: verified, never trusted unsigned.

One route per configured provider, POST only:

- ``/webhooks/ses``: Amazon SES notifications through SNS. The SNS signature (version 1,
  SHA1withRSA, or 2, SHA256withRSA) is checked over the documented fields with the
  certificate at ``SigningCertURL``, which must be an https URL on an SNS host
  (``sns.<region>.amazonaws.com[.cn]``) ending ``.pem``, else nothing is fetched. The
  certificate must be for ``sns.amazonaws.com`` and is cached by URL. ``TopicArn`` must be
  configured. A verified ``SubscriptionConfirmation`` is confirmed by fetching its
  ``SubscribeURL`` (an SNS host too).
- ``/webhooks/postmark``: Postmark signs nothing; its URL carries HTTP basic auth, checked
  in constant time against the configured username and secret password.
- ``/webhooks/mailgun``: HMAC-SHA256 of timestamp and token under the webhook signing key;
  a timestamp older than ``max_age`` or a token seen within it is refused (a replay).
- ``/webhooks/sendgrid``: the signed event webhook, ECDSA P-256 with SHA-256 over the
  timestamp header and the raw body.

A request that fails its check answers 403 (401 without basic auth), applies nothing, is
counted as forged and logged as a warning without any address. What verifies becomes
``ProviderReport``s, applied by ``feedback.apply_reports`` (the mailbox's policy and storm
guard) in a worker thread; the provider's own event id makes a report posted twice count
once.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import heapq
import hmac
import json
import logging
import re
import time
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from statusmail.domain import FeedbackKind
from statusmail.errors import ConfigError, Problem, StatusmailError
from statusmail.feedback.loop import PassReport, ProviderReport, apply_reports, record_forged
from statusmail.feedback.reading import status_code
from statusmail.project.config import (
    Config,
    MailgunWebhook,
    PostmarkWebhook,
    SesWebhook,
    read_secret,
)

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024  # SNS messages are at most 256 KB; SendGrid batches stay well below
FETCH_TIMEOUT = 10.0  # seconds, for the SNS certificate and subscription URLs
MAX_FETCHED = 64 * 1024  # a certificate is about 2 KB
Fetch = Callable[[str], bytes]  # a URL's body; raises OSError when it cannot be had

SNS_HOST = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?")
SNS_CERTIFICATE_SUBJECT = "sns.amazonaws.com"
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


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _items(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    return str(value).strip() if isinstance(value, str | int | float) else ""


def _address(value: str) -> str | None:
    value = value.strip().strip("<>").strip()
    return value if "@" in value and " " not in value else None


def _message_id(value: str) -> str | None:
    value = value.strip()
    if not value:
        return None
    return value if value.startswith("<") else f"<{value}>"


def _diagnostic(text: str) -> str:
    """A provider's copy of the SMTP reply, without the DSN's ``smtp;`` type."""
    return text[5:].strip() if text.lower().startswith("smtp;") else text


def _iso_time(value: str) -> dt.datetime | None:
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _unix_time(value: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromtimestamp(float(value), dt.UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _json(body: bytes) -> Any:
    """The body as JSON; ``Refused(400)`` when it is not (after its signature held)."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Refused("the body is not JSON", 400) from None


# -- Amazon SES through SNS -----------------------------------------------------------------


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
    """Checks SNS messages; keeps each good signing certificate by its URL."""

    def __init__(self, settings: SesWebhook, fetch: Fetch) -> None:
        self.topics = frozenset(settings.topic_arns)
        self.fetch = fetch
        self._certificates: dict[str, x509.Certificate] = {}

    def verify(self, message: Mapping[str, Any]) -> None:
        """Raises ``Refused`` unless ``message`` is signed by SNS for a configured topic;
        blocking (it may fetch the certificate)."""
        kind = message.get("Type")
        if kind not in _SNS_SIGNED:
            raise Refused("not an SNS message")
        if message.get("TopicArn") not in self.topics:
            raise Refused("an SNS topic not configured in webhooks.ses.topic_arns")
        fields = [name for name in _SNS_SIGNED[str(kind)] if name != "Subject"]
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
        except binascii.Error:
            raise Refused("an SNS signature that is not base64") from None
        key = self._public_key(url)
        try:
            key.verify(signature, sns_string_to_sign(message), padding.PKCS1v15(), algorithm())
        except InvalidSignature:
            raise Refused("a bad SNS signature") from None

    def _public_key(self, url: str) -> rsa.RSAPublicKey:
        certificate = self._certificates.get(url)
        if certificate is None:
            try:
                data = self.fetch(url)
            except OSError as exc:
                host = urlsplit(url).hostname
                message = f"cannot fetch the SNS signing certificate from {host}: {exc}"
                raise Unavailable(message) from None
            try:
                certificate = x509.load_pem_x509_certificate(data)
            except ValueError:
                raise Refused("a signing certificate that does not parse") from None
            if not _names_sns(certificate):
                raise Refused(f"a signing certificate not for {SNS_CERTIFICATE_SUBJECT}")
            if len(self._certificates) >= 64:  # SNS has a few; never grow without bound
                self._certificates.clear()
            self._certificates[url] = certificate
        now = dt.datetime.now(dt.UTC)
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            raise Refused("a signing certificate outside its validity")
        key = certificate.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise Refused("a signing certificate without an RSA key")
        return key

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
    kind = _text(notification, "notificationType") or _text(notification, "eventType")
    message_id = _ses_message_id(_mapping(notification.get("mail")))
    reports: list[ProviderReport] = []
    if kind == "Bounce":
        bounce = _mapping(notification.get("bounce"))
        rated = (
            FeedbackKind.HARD if _text(bounce, "bounceType") == "Permanent" else FeedbackKind.SOFT
        )
        source = _text(bounce, "feedbackId") or fallback_id
        when = _iso_time(_text(bounce, "timestamp"))
        for recipient in _items(bounce.get("bouncedRecipients")):
            address = _address(_text(recipient, "emailAddress"))
            if address is None:
                continue
            diagnostic = _diagnostic(_text(recipient, "diagnosticCode"))
            code = status_code(_text(recipient, "status"), diagnostic)
            reports.append(
                ProviderReport("ses", rated, address, source, code, diagnostic, when, message_id)
            )
    elif kind == "Complaint":
        complaint = _mapping(notification.get("complaint"))
        if _text(complaint, "complaintFeedbackType") == "not-spam":
            return []
        source = _text(complaint, "feedbackId") or fallback_id
        when = _iso_time(_text(complaint, "timestamp"))
        said = _text(complaint, "complaintFeedbackType") or "complaint"
        for recipient in _items(complaint.get("complainedRecipients")):
            address = _address(_text(recipient, "emailAddress"))
            if address is not None:
                reports.append(
                    ProviderReport(
                        "ses", FeedbackKind.COMPLAINT, address, source, None, said, when, message_id
                    )
                )
    return reports


def _ses_message_id(mail: Mapping[str, Any]) -> str | None:
    for header in _items(mail.get("headers")):
        if _text(header, "name").lower() == "message-id":
            return _message_id(_text(header, "value"))
    return _message_id(_text(_mapping(mail.get("commonHeaders")), "messageId"))


# -- Postmark -------------------------------------------------------------------------------

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
    except binascii.Error:
        raise Refused("basic auth that is not base64", 401) from None
    user, _, secret = given.partition(b":")
    user_ok = hmac.compare_digest(user, username.encode())
    secret_ok = hmac.compare_digest(secret, password.encode())
    if not (user_ok & secret_ok):
        raise Refused("wrong basic auth")


def postmark_reports(record: Mapping[str, Any]) -> list[ProviderReport]:
    """A Postmark Bounce, SpamComplaint or SubscriptionChange record's report."""
    record_type = _text(record, "RecordType")
    kind_name = _text(record, "Type")
    if record_type == "SubscriptionChange":
        address = _address(_text(record, "Recipient"))
        manual = _text(record, "SuppressionReason") == "ManualSuppression"
        if address is None or record.get("SuppressSending") is not True or not manual:
            return []
        source = f"{_text(record, 'MessageID')}:{_text(record, 'ChangedAt')}"
        when = _iso_time(_text(record, "ChangedAt"))
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
    address = _address(_text(record, "Email"))
    if address is None:
        return []
    details = _diagnostic(_text(record, "Details")) or _text(record, "Description") or kind_name
    return [
        ProviderReport(
            "postmark",
            kind,
            address,
            _text(record, "ID") or _text(record, "MessageID"),
            status_code(details) if kind in (FeedbackKind.HARD, FeedbackKind.SOFT) else None,
            details,
            _iso_time(_text(record, "BouncedAt")),
        )
    ]


# -- Mailgun --------------------------------------------------------------------------------


class MailgunVerifier:
    """Checks the signature Mailgun puts in each body, and refuses replays."""

    def __init__(self, key: str, max_age: float, clock: Callable[[], float]) -> None:
        self.key = key.encode()
        self.max_age = max_age
        self.clock = clock
        self._tokens: set[str] = set()  # used, with a timestamp that is still fresh
        self._expiry: list[tuple[float, str]] = []  # a heap: when each stops being fresh

    def verify(self, payload: Any) -> str:
        """Raises ``Refused`` unless the payload is signed, fresh and new; returns its token
        (taken: ``release`` gives it back when what it carried could not be applied)."""
        signature = _mapping(_mapping(payload).get("signature"))
        timestamp, token = _text(signature, "timestamp"), _text(signature, "token")
        given = _text(signature, "signature")
        if not timestamp or not token or not given:
            raise Refused("a Mailgun body without its signature")
        mac = crypto_hmac.HMAC(self.key, hashes.SHA256())
        mac.update(f"{timestamp}{token}".encode())
        try:
            mac.verify(bytes.fromhex(given))
        except (ValueError, InvalidSignature):
            raise Refused("a bad Mailgun signature") from None
        now = self.clock()
        try:
            age = now - float(timestamp)
        except ValueError:
            raise Refused("a Mailgun timestamp that is not a number") from None
        if not -self.max_age <= age <= self.max_age:
            raise Refused("a stale Mailgun timestamp")
        while self._expiry and self._expiry[0][0] < now:
            self._tokens.discard(heapq.heappop(self._expiry)[1])
        if token in self._tokens:
            raise Refused("a replayed Mailgun token")
        self._tokens.add(token)
        heapq.heappush(self._expiry, (float(timestamp) + self.max_age, token))
        return token

    def release(self, token: str) -> None:
        self._tokens.discard(token)


def mailgun_reports(payload: Mapping[str, Any]) -> list[ProviderReport]:
    """The report of a Mailgun event: failed (permanent or temporary), complained or
    unsubscribed; other events say nothing about the recipient."""
    event = _mapping(payload.get("event-data"))
    name = _text(event, "event")
    address = _address(_text(event, "recipient"))
    if address is None:
        return []
    headers = _mapping(_mapping(event.get("message")).get("headers"))
    message_id = _message_id(_text(headers, "message-id"))
    source = _text(event, "id") or f"{message_id}:{name}:{_text(event, 'timestamp')}"
    when = _unix_time(event.get("timestamp"))
    if name == "failed":
        status = _mapping(event.get("delivery-status"))
        said = [_text(status, "message"), _text(status, "description")]
        diagnostic = " ".join(dict.fromkeys(s for s in said if s)) or _text(event, "reason")
        reply = status.get("code")
        code = status_code(*said) or (
            str(reply) if isinstance(reply, int) and 400 <= reply < 600 else None
        )
        kind = FeedbackKind.HARD if _text(event, "severity") == "permanent" else FeedbackKind.SOFT
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


# -- SendGrid -------------------------------------------------------------------------------

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
    for event in _items(events):
        name = _text(event, "event")
        address = _address(_text(event, "email"))
        if address is None:
            continue
        reason, status = _text(event, "reason"), _text(event, "status")
        kind: FeedbackKind | None = None
        if name == "bounce":
            kind = FeedbackKind.SOFT if _text(event, "type") == "blocked" else FeedbackKind.HARD
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
        message_id = _message_id(_text(event, "smtp-id"))
        source = _text(event, "sg_event_id") or (
            f"{_text(event, 'sg_message_id')}:{name}:{_text(event, 'timestamp')}"
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
                _unix_time(event.get("timestamp")),
                message_id,
            )
        )
    return reports


# -- the routes -----------------------------------------------------------------------------

Receive = Callable[[Request, bytes], Awaitable[list[ProviderReport]]]


@dataclass(frozen=True)
class Provider:
    name: str
    receive: Receive
    admit: Callable[[Request], None] = lambda request: None  # checks before the body is read
    forget: Callable[[bytes], None] = lambda body: None  # when its reports were not applied


def _missing(config: Config, name: str, what: str) -> Problem:
    return Problem(
        config.path,
        config.line("webhooks"),
        f"${name} is not set; the {what} webhook needs it",
        code="secret-missing",
    )


def webhook_problems(config: Config, environ: Mapping[str, str] | None = None) -> list[Problem]:
    """What would stop ``serve`` from answering the configured webhooks (for ``check``)."""
    try:
        _providers(config, fetch_url, environ, time.time)
    except ConfigError as exc:
        return list(exc.problems)
    return []


def _ses(settings: SesWebhook, fetch: Fetch) -> Provider:
    verifier = SnsVerifier(settings, fetch)

    async def receive(request: Request, body: bytes) -> list[ProviderReport]:
        try:
            message = _mapping(json.loads(body))
        except (ValueError, UnicodeDecodeError):
            raise Refused("not an SNS message") from None
        await run_in_threadpool(verifier.verify, message)
        kind, topic = message["Type"], message["TopicArn"]
        if kind == "SubscriptionConfirmation":
            await run_in_threadpool(verifier.confirm, message)
            log.info(
                "confirmed the SNS subscription to %s", topic, extra={"event": "sns_subscribed"}
            )
            return []
        if kind == "UnsubscribeConfirmation":
            log.warning(
                "SNS says the subscription to %s ended", topic, extra={"event": "sns_unsubscribed"}
            )
            return []
        try:
            notification = _mapping(json.loads(message["Message"]))
        except ValueError:
            return []  # SNS's own test message: plain text
        return ses_reports(notification, message["MessageId"])

    return Provider("ses", receive)


def _postmark(settings: PostmarkWebhook, password: str) -> Provider:
    def admit(request: Request) -> None:
        check_basic_auth(request.headers.get("authorization"), settings.username, password)

    async def receive(request: Request, body: bytes) -> list[ProviderReport]:
        return postmark_reports(_mapping(_json(body)))

    return Provider("postmark", receive, admit)


def _mailgun(settings: MailgunWebhook, key: str, clock: Callable[[], float]) -> Provider:
    verifier = MailgunVerifier(key, settings.max_age, clock)

    async def receive(request: Request, body: bytes) -> list[ProviderReport]:
        try:
            payload = _mapping(json.loads(body))
        except (ValueError, UnicodeDecodeError):
            raise Refused("a Mailgun body that is not JSON") from None
        verifier.verify(payload)
        return mailgun_reports(payload)

    def forget(body: bytes) -> None:
        verifier.release(_text(_mapping(json.loads(body).get("signature")), "token"))

    return Provider("mailgun", receive, forget=forget)


def _sendgrid(key: ec.EllipticCurvePublicKey) -> Provider:
    async def receive(request: Request, body: bytes) -> list[ProviderReport]:
        headers = request.headers
        verify_sendgrid(key, headers.get(SENDGRID_SIGNATURE), headers.get(SENDGRID_TIMESTAMP), body)
        return sendgrid_reports(_json(body))

    return Provider("sendgrid", receive)


def _providers(
    config: Config,
    fetch: Fetch,
    environ: Mapping[str, str] | None,
    clock: Callable[[], float],
) -> list[Provider]:
    settings = config.webhooks
    providers: list[Provider] = []
    problems: list[Problem] = []

    def secret(name: str, what: str) -> str | None:
        value = read_secret(name, environ)
        if not value:
            problems.append(_missing(config, name, what))
        return value

    if settings.ses is not None:
        providers.append(_ses(settings.ses, fetch))
    if settings.postmark is not None:
        password = secret(settings.postmark.password_env, "Postmark")
        if password:
            providers.append(_postmark(settings.postmark, password))
    if settings.mailgun is not None:
        key = secret(settings.mailgun.signing_key_env, "Mailgun")
        if key:
            providers.append(_mailgun(settings.mailgun, key, clock))
    if settings.sendgrid is not None:
        text = settings.sendgrid.public_key or secret(settings.sendgrid.public_key_env, "SendGrid")
        if text:
            try:
                providers.append(_sendgrid(load_sendgrid_key(text)))
            except ValueError as exc:
                where = "webhooks.sendgrid.public_key"
                if not settings.sendgrid.public_key:
                    where = f"${settings.sendgrid.public_key_env}"
                problems.append(Problem(config.path, config.line("webhooks"), f"{where}: {exc}"))
    if problems:
        raise ConfigError(problems)
    return providers


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None when it is larger than ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


# Applies verified reports: feedback.apply_reports on a ledger of its own, unless serve
# lends one of its kept connections.
Apply = Callable[[Config, Sequence[ProviderReport]], PassReport]


def _endpoint(
    config: Config, provider: Provider, apply: Apply
) -> Callable[[Request], Awaitable[Response]]:
    async def refuse(refused: Refused) -> Response:
        headers = {"WWW-Authenticate": 'Basic realm="statusmail"'} if refused.status == 401 else {}
        if refused.status in (401, 403):  # record_forged counts it and logs the warning
            await run_in_threadpool(record_forged, config, provider.name, refused.why)
        else:
            log.warning(
                "webhook %s: refused %s",
                provider.name,
                refused.why,
                extra={"event": "webhook_refused", "provider": provider.name},
            )
        return PlainTextResponse(f"refused: {refused.why}\n", refused.status, headers=headers)

    async def endpoint(request: Request) -> Response:
        try:
            provider.admit(request)
            body = await _read_body(request, MAX_BODY)
            if body is None:
                return PlainTextResponse("the body is too large\n", 413)
            reports = await provider.receive(request, body)
        except ClientDisconnect:
            return PlainTextResponse("the body was cut short\n", 400)
        except Refused as refused:
            return await refuse(refused)
        except Unavailable as exc:
            log.warning(
                "webhook %s: %s",
                provider.name,
                exc,
                extra={"event": "webhook_unavailable", "provider": provider.name},
            )
            return PlainTextResponse("try again later\n", 503)
        if reports:
            try:
                await run_in_threadpool(apply, config, reports)
            except StatusmailError as exc:  # the ledger, or the unsubscribe secret
                provider.forget(body)
                log.error(
                    "webhook %s: cannot record %d report(s): %s",
                    provider.name,
                    len(reports),
                    exc,
                    extra={"event": "webhook_failed", "provider": provider.name},
                )
                return PlainTextResponse("cannot record now; try again later\n", 503)
        return JSONResponse({"reports": len(reports)})

    return endpoint


def routes(
    config: Config,
    *,
    fetch: Fetch = fetch_url,
    environ: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.time,
    apply: Apply = apply_reports,
) -> list[Route]:
    """``POST /webhooks/<provider>`` for each configured provider; ``ConfigError`` naming
    the variable when a provider's secret is not set. ``fetch`` gets the SNS certificate
    and subscription URLs (urllib; tests give their own); ``apply`` records the verified
    reports."""
    return [
        Route(f"/webhooks/{provider.name}", _endpoint(config, provider, apply), methods=["POST"])
        for provider in _providers(config, fetch, environ, clock)
    ]
