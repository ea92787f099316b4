"""The providers' bounce webhooks over real HTTP: signed with keys made here, shaped as each
provider documents its payloads, applied to a real ledger, and every forgery refused."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette

from conftest import SECRET, UPDATE, Reply, copy_sample, http_request, invoke, serving
from feedback_helpers import ledger_dump, query, sent_to
from statusmail import metrics
from statusmail.errors import ConfigError, LedgerError
from statusmail.feedback import loop as feedback_loop
from statusmail.feedback.providers.common import Unavailable
from statusmail.feedback.providers.ses import FETCHES_AT_ONCE, SnsVerifier
from statusmail.feedback.webhooks import MAX_BODY, routes, webhook_problems
from statusmail.project.config import Config, load_config
from statusmail.project.feedback_settings import SesWebhook
from statusmail.web.health import BackgroundServer, listen

TOPIC = "arn:aws:sns:us-east-1:123456789012:statusmail-bounces"
CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem"
POSTMARK_PASSWORD = "a-postmark-webhook-password"
MAILGUN_KEY = "key-" + "5" * 32
WEBHOOKS = f"""
webhooks:
  ses: {{topic_arns: ["{TOPIC}"]}}
  postmark: {{username: statusmail, password_env: TEST_POSTMARK_PASSWORD}}
  mailgun: {{signing_key_env: TEST_MAILGUN_KEY}}
  sendgrid: {{public_key_env: TEST_SENDGRID_KEY}}
"""


# -- the keys the providers would hold --------------------------------------------------


def certificate(key: rsa.RSAPrivateKey, name: str) -> bytes:
    """A self-signed certificate for ``name``, valid now, as PEM."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    built = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return built.public_bytes(serialization.Encoding.PEM)


@dataclass
class Fetcher:
    """What statusmail fetches from the SNS hosts: the pages it may have, and what it asked."""

    pages: dict[str, bytes]
    asked: list[str] = field(default_factory=list)

    def __call__(self, url: str) -> bytes:
        self.asked.append(url)
        if url not in self.pages:
            raise OSError("HTTP Error 404: Not Found")
        return self.pages[url]


@dataclass
class Site:
    config: Path
    port: int
    fetcher: Fetcher
    sns_key: rsa.RSAPrivateKey
    sendgrid_key: ec.EllipticCurvePrivateKey
    sent: dict[str, str]  # address -> the Message-ID it was sent with
    free: list[str]  # addresses no test has used yet
    environ: dict[str, str]  # the providers' secrets

    def address(self) -> str:
        return self.free.pop()

    def post(self, provider: str, body: bytes, headers: Mapping[str, str] | None = None) -> Reply:
        return http_request(self.port, "POST", f"/webhooks/{provider}", body, headers)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The sample project after the April update went out (its ledger holds the
    deliveries), with every provider's webhook served on a free port."""
    config = copy_sample(tmp_path_factory.mktemp("webhooks") / "project")
    with config.open("a", encoding="utf-8") as handle:
        handle.write(WEBHOOKS)
    result = invoke(config, "send", UPDATE, "--yes", "--rate", "0")
    assert result.exit_code == 0, result.output
    rows = query(config, "SELECT address, message_id FROM deliveries WHERE entry_id = ?", UPDATE)
    sns_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sendgrid_key = ec.generate_private_key(ec.SECP256R1())
    public = sendgrid_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    environ = {
        "TEST_POSTMARK_PASSWORD": POSTMARK_PASSWORD,
        "TEST_MAILGUN_KEY": MAILGUN_KEY,
        "TEST_SENDGRID_KEY": base64.b64encode(public).decode(),
    }
    fetcher = Fetcher({CERT_URL: certificate(sns_key, "sns.amazonaws.com")})
    app = Starlette(routes=routes(load_config(config), fetch=fetcher, environ=environ))
    server = BackgroundServer(app, listen("127.0.0.1", 0)).start()
    try:
        port = int(server.address.rpartition(":")[2])
        sent = {str(address): str(mid) for address, mid in rows}
        yield Site(config, port, fetcher, sns_key, sendgrid_key, sent, sorted(sent), environ)
    finally:
        server.stop()


def forged_count() -> float:
    """Forged reports counted so far (the served app counts into the unexposed metrics)."""
    value = metrics.current().registry.get_sample_value(
        "statusmail_feedback_reports_total", {"state": "forged"}
    )
    return value or 0.0


def suppression(config: Path, address: str) -> str | None:
    rows = query(config, "SELECT reason FROM suppressions WHERE address = ?", address)
    return str(rows[0][0]) if rows else None


def row_status(config: Path, address: str) -> str:
    rows = query(
        config,
        "SELECT status FROM deliveries WHERE entry_id = ? AND address = ?",
        UPDATE,
        address,
    )
    return str(rows[0][0])


def assert_refused(site: Site, reply: Reply, status: int = 403) -> None:
    assert reply.status == status, reply
    assert "refused" in reply.body


@pytest.fixture
def unchanged(site: Site, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The test's requests change no ledger row, each counts as a forged report, and
    the warnings say so without any address."""
    before, forged = ledger_dump(site.config), forged_count()
    with caplog.at_level(logging.WARNING, logger="statusmail"):
        yield
    assert ledger_dump(site.config) == before
    assert forged_count() > forged
    warned = [r.getMessage() for r in caplog.get_records("call") if r.levelno == logging.WARNING]
    assert any("forged" in line for line in warned), warned
    assert not any("@" in line for line in warned), warned


# -- Amazon SES through SNS -------------------------------------------------------------


def aws_string_to_sign(message: Mapping[str, str]) -> bytes:
    """As the SNS documentation builds it: the fields in byte order, name and value each
    on a line; Subject only when the notification has one."""
    if message["Type"] == "Notification":
        names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    return "".join(f"{n}\n{message[n]}\n" for n in names if n in message).encode()


def sns_signed(key: rsa.RSAPrivateKey, message: dict[str, str], version: str = "2") -> bytes:
    algorithm = hashes.SHA256() if version == "2" else hashes.SHA1()
    signature = key.sign(aws_string_to_sign(message), padding.PKCS1v15(), algorithm)
    message |= {
        "SignatureVersion": version,
        "Signature": base64.b64encode(signature).decode(),
    }
    message.setdefault("SigningCertURL", CERT_URL)
    return json.dumps(message).encode()


def sns_notification(ses: Mapping[str, Any], **fields: str) -> dict[str, str]:
    return {
        "Type": "Notification",
        "MessageId": secrets.token_hex(16),
        "TopicArn": TOPIC,
        "Message": json.dumps(ses),
        "Timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
        **fields,
    }


def ses_bounce(address: str, message_id: str, status: str = "5.1.1") -> dict[str, Any]:
    return {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": "Permanent",
            "bounceSubType": "General",
            "bouncedRecipients": [
                {
                    "emailAddress": address,
                    "action": "failed",
                    "status": status,
                    "diagnosticCode": f"smtp; 550 {status} <{address}>: user unknown",
                }
            ],
            "timestamp": "2020-04-21T10:05:00.000Z",
            "feedbackId": f"0100017{secrets.token_hex(8)}-000000",
            "reportingMTA": "dsn; a8-70.smtp-out.amazonses.com",
        },
        "mail": {
            "timestamp": "2020-04-21T10:04:58.000Z",
            "source": "status@startmail.example",
            "messageId": "0100017164ae7c5a-7d1e8c2a-2c5c-4ecb-a3f6-000000000000-000000",
            "destination": [address],
            "headers": [{"name": "Message-ID", "value": message_id}],
            "commonHeaders": {"messageId": message_id, "to": [address]},
        },
    }


def ses_complaint(address: str) -> dict[str, Any]:
    return {
        "notificationType": "Complaint",
        "complaint": {
            "complainedRecipients": [{"emailAddress": address}],
            "complaintFeedbackType": "abuse",
            "timestamp": "2020-04-21T11:00:00.000Z",
            "feedbackId": f"0100017{secrets.token_hex(8)}-000000",
        },
        "mail": {"messageId": "0100017164ae7c5a-0000", "destination": [address]},
    }


def test_ses_bounce_signed_v2_suppresses_the_address(site: Site) -> None:
    address = site.address()
    body = sns_signed(site.sns_key, sns_notification(ses_bounce(address, site.sent[address])))
    reply = site.post("ses", body, {"x-amz-sns-message-type": "Notification"})
    assert reply.status == 200, reply
    assert suppression(site.config, address) == "bounced"
    assert row_status(site.config, address) == "bounced"


def test_ses_complaint_signed_v1_suppresses_and_the_certificate_is_fetched_once(
    site: Site,
) -> None:
    address = site.address()
    body = sns_signed(site.sns_key, sns_notification(ses_complaint(address)), version="1")
    reply = site.post("ses", body)
    assert reply.status == 200, reply
    assert suppression(site.config, address) == "complained"
    assert site.fetcher.asked.count(CERT_URL) == 1  # cached by URL since the first message


def test_ses_delivery_notifications_change_nothing(site: Site) -> None:
    address = site.free[-1]
    delivery = {"notificationType": "Delivery", "mail": {"destination": [address]}}
    before = ledger_dump(site.config)
    reply = site.post("ses", sns_signed(site.sns_key, sns_notification(delivery)))
    assert reply.status == 200, reply
    assert json.loads(reply.body) == {"reports": 0}
    assert ledger_dump(site.config) == before


def test_sns_subscription_confirmation_fetches_its_subscribe_url(site: Site) -> None:
    subscribe = (
        "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription"
        f"&TopicArn={TOPIC}&Token={secrets.token_hex(32)}"
    )
    site.fetcher.pages[subscribe] = b"<ConfirmSubscriptionResponse/>"
    message = {
        "Type": "SubscriptionConfirmation",
        "MessageId": secrets.token_hex(16),
        "Token": subscribe.rpartition("=")[2],
        "TopicArn": TOPIC,
        "Message": f"You have chosen to subscribe to the topic {TOPIC}.",
        "SubscribeURL": subscribe,
        "Timestamp": "2020-04-21T10:00:00.000Z",
    }
    reply = site.post("ses", sns_signed(site.sns_key, message))
    assert reply.status == 200, reply
    assert subscribe in site.fetcher.asked


@pytest.mark.usefixtures("unchanged")
def test_a_subscribe_url_off_the_sns_hosts_is_never_fetched(site: Site) -> None:
    subscribe = "https://evil.example/?Action=ConfirmSubscription&Token=0123"
    message = {
        "Type": "SubscriptionConfirmation",
        "MessageId": secrets.token_hex(16),
        "Token": "0123",
        "TopicArn": TOPIC,
        "Message": f"You have chosen to subscribe to the topic {TOPIC}.",
        "SubscribeURL": subscribe,
        "Timestamp": "2020-04-21T10:00:00.000Z",
    }
    assert_refused(site, site.post("ses", sns_signed(site.sns_key, message)))
    assert subscribe not in site.fetcher.asked


OFF_HOST = (
    "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem",
    "https://sns.us-east-1.amazonaws.com.evil.example/SimpleNotificationService-1.pem",
    "https://evil.example/sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem",
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-1.txt",
    "https://user@sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem",
)


@pytest.mark.parametrize("url", OFF_HOST)
@pytest.mark.usefixtures("unchanged")
def test_sns_certificate_url_off_the_sns_hosts_is_refused_unfetched(site: Site, url: str) -> None:
    address = site.free[-1]
    message = sns_notification(ses_bounce(address, site.sent[address]), SigningCertURL=url)
    site.fetcher.pages[url] = certificate(site.sns_key, "sns.amazonaws.com")
    assert_refused(site, site.post("ses", sns_signed(site.sns_key, message)))
    assert url not in site.fetcher.asked


def _tampered(site: Site, message: dict[str, str]) -> bytes:
    signed = json.loads(sns_signed(site.sns_key, message))
    signed["Message"] = signed["Message"].replace("5.1.1", "5.1.2")
    return json.dumps(signed).encode()


def _unknown_topic(site: Site, message: dict[str, str]) -> bytes:
    return sns_signed(site.sns_key, message | {"TopicArn": TOPIC + "-other"})


def _other_key(site: Site, message: dict[str, str]) -> bytes:
    return sns_signed(rsa.generate_private_key(public_exponent=65537, key_size=1024), message)


def _unsigned(site: Site, message: dict[str, str]) -> bytes:
    return json.dumps(message | {"SigningCertURL": CERT_URL}).encode()


def _wrong_subject(site: Site, message: dict[str, str]) -> bytes:
    url = CERT_URL.replace(".pem", "-evil.pem")
    site.fetcher.pages[url] = certificate(site.sns_key, "evil.example")
    return sns_signed(site.sns_key, message | {"SigningCertURL": url})


@pytest.mark.parametrize(
    "forge", [_tampered, _unknown_topic, _other_key, _unsigned, _wrong_subject]
)
@pytest.mark.usefixtures("unchanged")
def test_forged_sns_messages_are_refused(site: Site, forge: Any) -> None:
    address = site.free[-1]
    message = sns_notification(ses_bounce(address, site.sent[address]))
    assert_refused(site, site.post("ses", forge(site, message)))
    assert suppression(site.config, address) is None


def unsigned_notification(url: str) -> dict[str, str]:
    """What anyone who knows the topic's ARN can post: no real signature, any URL on
    the SNS hosts as its certificate."""
    message = sns_notification(ses_bounce("x@example.org", "<m@x>"))
    return message | {"SignatureVersion": "2", "Signature": "AAAA", "SigningCertURL": url}


def test_a_certificate_url_that_failed_is_not_fetched_again_for_a_while() -> None:
    """Every unsigned post naming a certificate URL made statusmail fetch it again."""
    fetcher = Fetcher({})
    verifier = SnsVerifier(SesWebhook((TOPIC,)), fetcher)
    url = CERT_URL.replace("0123", "dead")
    for _ in range(5):
        with pytest.raises(Unavailable):
            verifier.verify(unsigned_notification(url))
    assert fetcher.asked == [url]


def test_only_so_many_certificate_fetches_run_at_once() -> None:
    """Each new URL was fetched at once, each holding one of serve's worker threads for
    up to the fetch's timeout: a genuine report waited behind them."""
    release, started = threading.Event(), threading.Semaphore(0)
    asked: list[str] = []

    def slow(url: str) -> bytes:
        asked.append(url)
        started.release()
        release.wait(10)
        raise OSError("HTTP Error 404: Not Found")

    verifier = SnsVerifier(SesWebhook((TOPIC,)), slow)
    urls = [CERT_URL.replace("0123", f"{n:04d}") for n in range(FETCHES_AT_ONCE + 1)]

    def post(url: str) -> None:
        with contextlib.suppress(Unavailable):
            verifier.verify(unsigned_notification(url))

    threads = [threading.Thread(target=post, args=(url,)) for url in urls[:-1]]
    for thread in threads:
        thread.start()
    for _ in threads:
        assert started.acquire(timeout=10)  # every slot is taken, each by a fetch
    with pytest.raises(Unavailable, match="fetches are under way"):
        verifier.verify(unsigned_notification(urls[-1]))
    release.set()
    for thread in threads:
        thread.join(10)
    assert sorted(asked) == sorted(urls[:-1])


# -- Postmark ---------------------------------------------------------------------------


def postmark_bounce(address: str) -> bytes:
    return json.dumps(
        {
            "RecordType": "Bounce",
            "MessageStream": "outbound",
            "ID": int(time.time_ns() % 10**12),
            "Type": "HardBounce",
            "TypeCode": 1,
            "Name": "Hard bounce",
            "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
            "Description": "The server was unable to deliver your message (ex: unknown user).",
            "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
            "Email": address,
            "From": "status@startmail.example",
            "BouncedAt": "2020-04-21T10:05:00.2735393-04:00",
            "DumpAvailable": False,
            "Inactive": True,
            "CanActivate": True,
            "Subject": "Appeals against the block: the April 21 update",
        }
    ).encode()


def basic(username: str, password: str) -> dict[str, str]:
    return {
        "Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
    }


def test_postmark_bounce_with_basic_auth_suppresses_the_address(site: Site) -> None:
    address = site.address()
    reply = site.post("postmark", postmark_bounce(address), basic("statusmail", POSTMARK_PASSWORD))
    assert reply.status == 200, reply
    assert suppression(site.config, address) == "bounced"


def test_a_verified_report_naming_no_storable_address_changes_nothing(site: Site) -> None:
    """JSON can carry a lone surrogate, which no ledger can store: a verified post naming
    "\ud800@example.org" was a 500 with a traceback."""
    before = ledger_dump(site.config)
    body = postmark_bounce("\ud800@example.org")
    assert b"\\ud800" in body  # as JSON writes it
    reply = site.post("postmark", body, basic("statusmail", POSTMARK_PASSWORD))
    assert reply.status == 200, reply
    assert ledger_dump(site.config) == before


@pytest.mark.usefixtures("unchanged")
def test_postmark_without_basic_auth_is_asked_for_it(site: Site) -> None:
    reply = site.post("postmark", postmark_bounce(site.free[-1]))
    assert_refused(site, reply, 401)
    assert reply.headers["www-authenticate"].startswith("Basic")


@pytest.mark.parametrize(
    "credentials", [("statusmail", "a-wrong-password"), ("someone", POSTMARK_PASSWORD)]
)
@pytest.mark.usefixtures("unchanged")
def test_postmark_with_wrong_basic_auth_is_refused(
    site: Site, credentials: tuple[str, str]
) -> None:
    assert_refused(site, site.post("postmark", postmark_bounce(site.free[-1]), basic(*credentials)))


# -- Mailgun ----------------------------------------------------------------------------


def mailgun_body(
    address: str,
    *,
    event: str = "failed",
    severity: str = "permanent",
    age: float = 0,
    key: str = MAILGUN_KEY,
) -> bytes:
    timestamp = str(int(time.time() - age))
    token = secrets.token_hex(25)
    signature = hmac.new(key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256)
    return json.dumps(
        {
            "signature": {
                "timestamp": timestamp,
                "token": token,
                "signature": signature.hexdigest(),
            },
            "event-data": {
                "event": event,
                "id": secrets.token_urlsafe(16),
                "timestamp": time.time(),
                "log-level": "error",
                "severity": severity,
                "reason": "bounce",
                "recipient": address,
                "recipient-domain": address.rpartition("@")[2],
                "delivery-status": {
                    "attempt-no": 1,
                    "code": 550,
                    "message": "",
                    "description": "5.1.1 The email account that you tried to reach does not exist",
                },
                "message": {
                    "headers": {
                        "to": address,
                        "message-id": "20200421100458.1.ABCDEF@mg.startmail.example",
                        "from": "StartMail <status@startmail.example>",
                    }
                },
            },
        }
    ).encode()


def test_mailgun_permanent_failure_suppresses_the_address(site: Site) -> None:
    address = site.address()
    reply = site.post("mailgun", mailgun_body(address))
    assert reply.status == 200, reply
    assert suppression(site.config, address) == "bounced"


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param({"key": "key-" + "6" * 32}, id="other-key"),
        pytest.param({"age": 3600}, id="stale"),
        pytest.param({"age": -3600}, id="from-the-future"),
    ],
)
@pytest.mark.usefixtures("unchanged")
def test_forged_or_stale_mailgun_bodies_are_refused(site: Site, forge: dict[str, Any]) -> None:
    assert_refused(site, site.post("mailgun", mailgun_body(site.free[-1], **forge)))


def test_a_replayed_mailgun_token_is_refused(site: Site) -> None:
    address = site.address()
    body = mailgun_body(address, event="failed", severity="temporary")
    assert site.post("mailgun", body).status == 200
    before, forged = ledger_dump(site.config), forged_count()
    assert_refused(site, site.post("mailgun", body))
    assert ledger_dump(site.config) == before
    assert forged_count() == forged + 1


def test_a_mailgun_token_taken_here_is_refused_by_another_host_and_after_a_restart(
    site: Site,
) -> None:
    """Mailgun signs its timestamp and token, not the events beside them: whoever saw one
    signed post could put any event beside its signature, within max_age. The token is
    taken in the ledger, so another web host on the same ledger, or this one after a
    restart (a fresh process: nothing in memory), refuses it too."""
    seen, victim = site.address(), site.address()
    body = json.loads(mailgun_body(seen, event="failed", severity="temporary"))
    assert site.post("mailgun", json.dumps(body).encode()).status == 200
    forged = json.loads(mailgun_body(victim))  # a permanent failure: suppresses
    forged["signature"] = body["signature"]
    before, count = ledger_dump(site.config), forged_count()
    app = Starlette(routes=routes(load_config(site.config), environ=site.environ))
    other = BackgroundServer(app, listen("127.0.0.1", 0)).start()
    try:
        port = int(other.address.rpartition(":")[2])
        reply = http_request(port, "POST", "/webhooks/mailgun", json.dumps(forged).encode())
    finally:
        other.stop()
    assert_refused(site, reply)
    assert ledger_dump(site.config) == before
    assert suppression(site.config, victim) is None
    assert forged_count() == count + 1


def test_a_signed_mailgun_post_with_no_report_still_spends_its_token(site: Site) -> None:
    """A "delivered" event (or the dashboard's test post) gives no report: its token was
    never taken, so the same signature with a permanent failure beside it suppressed
    whomever it named."""
    victim = site.address()
    seen = json.loads(mailgun_body("someone@example.org", event="delivered"))
    assert site.post("mailgun", json.dumps(seen).encode()).status == 200
    forged = json.loads(mailgun_body(victim))
    forged["signature"] = seen["signature"]
    assert_refused(site, site.post("mailgun", json.dumps(forged).encode()))
    assert suppression(site.config, victim) is None


def test_a_mailgun_token_gone_stale_since_its_check_is_not_taken(site: Site) -> None:
    """Checked fresh on the event loop, taken in a worker thread a moment later: past
    its max_age by then, the row that said it was taken had been dropped as stale, and
    every replay queued at the edge of max_age went through."""
    from statusmail.ledger import Ledger

    with Ledger(site.config.parent / "statusmail.db") as ledger:
        now = time.time()
        assert ledger.take_webhook_token("mailgun", "t" * 50, now + 60, now)
        assert not ledger.take_webhook_token("mailgun", "t" * 50, now + 60, now)
        stale = now + 61  # the row is dropped as stale: the take must still refuse
        assert not ledger.take_webhook_token("mailgun", "t" * 50, now + 60, stale)


def test_a_mailgun_token_is_still_taken_for_a_host_whose_clock_is_behind(site: Site) -> None:
    """Two serve hosts on one ledger, A a minute behind B. B, taking another token,
    dropped rows stale by its own clock; a replay to A, for which the token was still
    fresh, was taken again (applied twice)."""
    from statusmail.ledger import Ledger

    with Ledger(site.config.parent / "statusmail.db") as ledger:
        at_a = time.time()
        fresh_until = at_a + 300
        assert ledger.take_webhook_token("mailgun", "a" * 50, fresh_until, at_a)
        at_b = at_a + 301 + 60  # B: past the token's freshness, and a minute ahead
        assert ledger.take_webhook_token("mailgun", "b" * 50, at_b + 300, at_b)
        assert not ledger.take_webhook_token("mailgun", "a" * 50, fresh_until, at_a + 290)


@pytest.mark.parametrize("where", ["id", "message-id", "description"])
def test_a_lone_surrogate_in_a_signed_report_is_stored_replaced_not_a_500(
    site: Site, where: str
) -> None:
    """Mailgun's signature does not cover its events: anyone holding an unspent token
    could make the post a 500 with a traceback (the ledger refuses lone surrogates)."""
    address = site.address()
    body = json.loads(mailgun_body(address))
    event = body["event-data"]
    if where == "id":
        event["id"] = "\ud800"
    elif where == "message-id":
        event["message"]["headers"]["message-id"] = "<\ud800@x>"
    else:
        event["delivery-status"]["description"] += " \ud800"
    reply = site.post("mailgun", json.dumps(body).encode())
    assert reply.status == 200, reply
    assert suppression(site.config, address) == "bounced"


def test_a_mailgun_token_moved_into_its_timestamp_is_a_replay(site: Site) -> None:
    """The signature covers timestamp and token run together: a token that starts with
    "e0" (one in 256) could lend those two characters to the timestamp ("…e0" is still
    a float, and as fresh), verify, and count as new, carrying any event-data."""
    address = site.address()
    while True:
        body = json.loads(mailgun_body(address, event="failed", severity="temporary"))
        if body["signature"]["token"].startswith("e0"):
            break
    assert site.post("mailgun", json.dumps(body).encode()).status == 200
    signature = body["signature"]
    signature["timestamp"] += "e0"
    signature["token"] = signature["token"][2:]
    body["event-data"]["severity"] = "permanent"  # what a replay would make of it
    before = ledger_dump(site.config)
    assert_refused(site, site.post("mailgun", json.dumps(body).encode()))
    assert ledger_dump(site.config) == before
    assert suppression(site.config, address) is None


UNREADABLE = {
    "sns-topic-a-list": ("ses", b'{"Type": "Notification", "TopicArn": []}', {}),
    "sns-type-a-list": ("ses", b'{"Type": [], "TopicArn": "x"}', {}),
    "sns-signature-not-ascii": (
        "ses",
        json.dumps(
            {
                "Type": "Notification",
                "TopicArn": TOPIC,
                "Message": "x",
                "MessageId": "1",
                "Timestamp": "t",
                "Signature": "\u00e9",
                "SignatureVersion": "1",
                "SigningCertURL": CERT_URL,
            }
        ).encode(),
        {},
    ),
    "sns-nested-100000-deep": ("ses", b"[" * 100_000, {}),
    "mailgun-nested-100000-deep": ("mailgun", b"[" * 100_000, {}),
    "mailgun-lone-surrogate": (
        "mailgun",
        b'{"signature": {"timestamp": "1", "token": "\\ud800", "signature": "00"}}',
        {},
    ),
    "postmark-auth-not-ascii": ("postmark", b"{}", {"Authorization": "Basic \u00e9\u00e9"}),
}


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_a_body_nothing_foresaw_is_refused_not_a_500(
    site: Site, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    provider, body, headers = UNREADABLE[case]
    before = ledger_dump(site.config)
    with caplog.at_level(logging.WARNING, logger="statusmail"):
        reply = site.post(provider, body, headers)
    assert reply.status in (400, 401, 403), reply
    assert "refused" in reply.body
    assert ledger_dump(site.config) == before
    assert "Traceback" not in caplog.text


# -- SendGrid ---------------------------------------------------------------------------


def sendgrid_events(address: str) -> bytes:
    now = int(time.time())
    common = {"email": address, "timestamp": now, "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>"}
    return json.dumps(
        [
            common
            | {
                "event": "processed",
                "sg_event_id": secrets.token_urlsafe(16),
                "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
            },
            common
            | {
                "event": "bounce",
                "category": ["status"],
                "sg_event_id": secrets.token_urlsafe(16),
                "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
                "reason": "550 5.1.1 The email account that you tried to reach does not exist.",
                "status": "5.1.1",
                "type": "bounce",
            },
        ]
    ).encode()


def sendgrid_headers(key: ec.EllipticCurvePrivateKey, body: bytes) -> dict[str, str]:
    timestamp = str(int(time.time()))
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
    }


def test_sendgrid_signed_bounce_suppresses_the_address(site: Site) -> None:
    address = site.address()
    body = sendgrid_events(address)
    reply = site.post("sendgrid", body, sendgrid_headers(site.sendgrid_key, body))
    assert reply.status == 200, reply
    assert json.loads(reply.body) == {"reports": 1}  # "processed" says nothing
    assert suppression(site.config, address) == "bounced"


def test_an_address_that_only_case_folds_into_a_subscribers_is_nobody(site: Site) -> None:
    """ "\u212a" (KELVIN SIGN) lower-cases to an ASCII "k": a verified report naming
    "\u212aate@…", an address never mailed, suppressed kate@…."""
    from statusmail.ledger import Ledger
    from statusmail.project.tokens import Keyring

    victim = "kate.kelvin@example.com"
    with Ledger(site.config.parent / "statusmail.db") as ledger:
        sent_to(ledger, Keyring(SECRET.encode()), "kelvin-2020-05-01", [victim])
    body = sendgrid_events("\u212aate.kelvin@example.com")
    reply = site.post("sendgrid", body, sendgrid_headers(site.sendgrid_key, body))
    assert reply.status == 200, reply
    assert suppression(site.config, victim) is None


def _sendgrid_other_key(site: Site, body: bytes) -> dict[str, str]:
    return sendgrid_headers(ec.generate_private_key(ec.SECP256R1()), body)


def _sendgrid_other_body(site: Site, body: bytes) -> dict[str, str]:
    return sendgrid_headers(site.sendgrid_key, body.replace(b"5.1.1", b"4.2.2"))


def _sendgrid_unsigned(site: Site, body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json"}


@pytest.mark.parametrize("forge", [_sendgrid_other_key, _sendgrid_other_body, _sendgrid_unsigned])
@pytest.mark.usefixtures("unchanged")
def test_forged_sendgrid_batches_are_refused(site: Site, forge: Any) -> None:
    body = sendgrid_events(site.free[-1])
    assert_refused(site, site.post("sendgrid", body, forge(site, body)))


# -- what every route shares ------------------------------------------------------------


def test_a_body_over_the_limit_is_refused_unread_and_a_get_is_not_allowed(site: Site) -> None:
    before = ledger_dump(site.config)
    assert site.post("mailgun", b"{" + b" " * MAX_BODY + b"}").status == 413
    assert http_request(site.port, "GET", "/webhooks/ses").status == 405
    assert ledger_dump(site.config) == before


def _config_with(tmp_path: Path, webhooks: str) -> Config:
    config = copy_sample(tmp_path / "project")
    with config.open("a", encoding="utf-8") as handle:
        handle.write(webhooks)
    return load_config(config)


def test_only_the_configured_providers_are_served_and_a_missing_secret_is_named(
    tmp_path: Path,
) -> None:
    config = _config_with(tmp_path, "webhooks:\n  mailgun: {signing_key_env: TEST_MAILGUN_KEY}\n")
    served = routes(config, environ={"TEST_MAILGUN_KEY": MAILGUN_KEY})
    assert [route.path for route in served] == ["/webhooks/mailgun"]
    assert webhook_problems(config, {"TEST_MAILGUN_KEY": MAILGUN_KEY}) == []
    assert [p.code for p in webhook_problems(config, {})] == ["secret-missing"]
    with pytest.raises(ConfigError) as error:
        routes(config, environ={})
    (problem,) = error.value.problems
    assert "$TEST_MAILGUN_KEY is not set" in str(problem)
    assert str(problem).startswith(f"{config.path}:{config.line('webhooks')}: ")


def test_a_bad_webhooks_section_is_one_line_per_problem(tmp_path: Path) -> None:
    webhooks = "webhooks:\n  ses: {topic_arns: [not-an-arn]}\n  postmark: {}\n  sparkpost: {}\n"
    with pytest.raises(ConfigError) as error:
        _config_with(tmp_path, webhooks)
    said = [str(problem) for problem in error.value.problems]
    assert len(said) == 3, said
    assert any("'not-an-arn' is not the ARN of an SNS topic" in line for line in said)
    assert any("missing 'webhooks.postmark.username'" in line for line in said)
    assert any("unknown key 'webhooks.sparkpost'" in line for line in said)


def test_serve_answers_the_configured_webhooks_and_check_names_a_missing_secret(
    tmp_path: Path,
) -> None:
    """The real ``statusmail serve`` mounts the webhooks beside its pages; ``check``
    says what would keep one from being served."""
    config = copy_sample(tmp_path / "project")
    with config.open("a", encoding="utf-8") as handle:
        handle.write("webhooks:\n  mailgun: {signing_key_env: TEST_MAILGUN_KEY}\n")
    env = {"STATUSMAIL_UNSUBSCRIBE_SECRET": SECRET}
    assert invoke(config, "send", UPDATE, "--yes", "--rate", "0", env=env).exit_code == 0
    checked = invoke(config, "check", env=env)
    assert checked.exit_code == 1
    assert "$TEST_MAILGUN_KEY is not set" in checked.stdout + checked.stderr
    address = str(query(config, "SELECT address FROM deliveries LIMIT 1")[0][0])
    with serving(config, SECRET, env={"TEST_MAILGUN_KEY": MAILGUN_KEY}) as port:
        reply = http_request(port, "POST", "/webhooks/mailgun", body=mailgun_body(address))
        forged = http_request(
            port, "POST", "/webhooks/mailgun", body=mailgun_body(address, key="key-" + "6" * 32)
        )
    assert reply.status == 200, reply
    assert forged.status == 403, forged
    assert suppression(config, address) == "bounced"


def test_a_mailgun_body_that_could_not_be_recorded_is_taken_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body whose reports cannot be recorded gets 503 and gives back the token it
    took in the ledger, so Mailgun's retry of it is taken, not refused as a replay."""
    config = _config_with(tmp_path, "webhooks:\n  mailgun: {signing_key_env: TEST_MAILGUN_KEY}\n")
    failures = [LedgerError("the ledger is busy")]
    settle = feedback_loop.Feedback.settle

    def failing(self: feedback_loop.Feedback, batch: Any) -> None:
        if failures:  # the fault: the ledger fails once the token is taken
            raise failures.pop()
        settle(self, batch)

    monkeypatch.setattr(feedback_loop.Feedback, "settle", failing)
    app = Starlette(routes=routes(config, environ={"TEST_MAILGUN_KEY": MAILGUN_KEY}))
    server = BackgroundServer(app, listen("127.0.0.1", 0)).start()
    try:
        port = int(server.address.rpartition(":")[2])
        body = mailgun_body("anna.petrova@example.org")
        assert http_request(port, "POST", "/webhooks/mailgun", body).status == 503
        assert http_request(port, "POST", "/webhooks/mailgun", body).status == 200
        assert http_request(port, "POST", "/webhooks/mailgun", body).status == 403  # a replay
    finally:
        server.stop()
