"""Bounce reports the sending providers post to ``serve``: verified, never trusted unsigned.

One route per configured provider, POST only:

- ``/webhooks/ses``: Amazon SES notifications through SNS. The SNS signature (version 1,
  SHA1withRSA, or 2, SHA256withRSA) is checked over the documented fields with the
  certificate at ``SigningCertURL``, which must be an https URL on an SNS host
  (``sns.<region>.amazonaws.com[.cn]``) ending ``.pem``, else nothing is fetched. The
  certificate must be for ``sns.amazonaws.com`` and is cached by URL; a URL that failed
  is not fetched again for a while, and only two fetches run at once. ``TopicArn`` must be
  configured. A verified ``SubscriptionConfirmation`` is confirmed by fetching its
  ``SubscribeURL`` (an SNS host too).
- ``/webhooks/postmark``: Postmark signs nothing; its URL carries HTTP basic auth, checked
  in constant time against the configured username and secret password.
- ``/webhooks/mailgun``: HMAC-SHA256 of timestamp and token under the webhook signing key;
  a timestamp older than ``max_age`` is refused, and so is a token already taken within
  it: the signature does not cover the events, so each token is taken once, in the
  ledger, for every web host and over restarts (``WebhookToken``).
- ``/webhooks/sendgrid``: the signed event webhook, ECDSA P-256 with SHA-256 over the
  timestamp header and the raw body.

A request that fails its check answers 403 (401 without basic auth), applies nothing, is
counted as forged and logged as a warning without any address. What verifies becomes
``ProviderReport``s, applied by ``feedback.apply_reports`` (the mailbox's policy and storm
guard) in a worker thread; the provider's own event id makes a report posted twice count
once.

Here: the routes, each provider's wiring and ``check``'s look at their secrets; each
provider's signature check and reader is a module of ``providers``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from statusmail.errors import ConfigError, Problem, StatusmailError
from statusmail.feedback.loop import apply_reports, record_forged
from statusmail.feedback.providers.common import (
    Fetch,
    Refused,
    Unavailable,
    fetch_url,
    json_of,
    mapping_of,
)
from statusmail.feedback.providers.mailgun import MailgunVerifier, mailgun_reports
from statusmail.feedback.providers.postmark import check_basic_auth, postmark_reports
from statusmail.feedback.providers.sendgrid import (
    SENDGRID_SIGNATURE,
    SENDGRID_TIMESTAMP,
    load_sendgrid_key,
    sendgrid_reports,
    verify_sendgrid,
)
from statusmail.feedback.providers.ses import SnsVerifier, ses_reports
from statusmail.feedback.reports import PassReport, ProviderReport, Replayed, WebhookToken
from statusmail.project.config import Config
from statusmail.project.feedback_settings import MailgunWebhook, PostmarkWebhook, SesWebhook
from statusmail.project.secrets import read_secret

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024  # SNS messages are at most 256 KB; SendGrid batches stay well below


# -- the routes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """What a verified request carries: its reports, and the token its signature makes
    usable once (Mailgun's)."""

    reports: list[ProviderReport]
    token: WebhookToken | None = None


Receive = Callable[[Request, bytes], Awaitable[Received]]


@dataclass(frozen=True)
class Provider:
    name: str
    receive: Receive
    admit: Callable[[Request], None] = lambda request: None  # checks before the body is read


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

    async def receive(request: Request, body: bytes) -> Received:
        message = mapping_of(json_of(body, "not an SNS message", 403))
        await run_in_threadpool(verifier.verify, message)
        kind, topic = message["Type"], message["TopicArn"]
        if kind == "SubscriptionConfirmation":
            await run_in_threadpool(verifier.confirm, message)
            log.info(
                "confirmed the SNS subscription to %s", topic, extra={"event": "sns_subscribed"}
            )
            return Received([])
        if kind == "UnsubscribeConfirmation":
            log.warning(
                "SNS says the subscription to %s ended", topic, extra={"event": "sns_unsubscribed"}
            )
            return Received([])
        try:
            notification = mapping_of(json.loads(message["Message"]))
        except ValueError:
            return Received([])  # SNS's own test message: plain text
        return Received(ses_reports(notification, message["MessageId"]))

    return Provider("ses", receive)


def _postmark(settings: PostmarkWebhook, password: str) -> Provider:
    def admit(request: Request) -> None:
        check_basic_auth(request.headers.get("authorization"), settings.username, password)

    async def receive(request: Request, body: bytes) -> Received:
        return Received(postmark_reports(mapping_of(json_of(body))))

    return Provider("postmark", receive, admit)


def _mailgun(settings: MailgunWebhook, key: str, clock: Callable[[], float]) -> Provider:
    verifier = MailgunVerifier(key, settings.max_age, clock)

    async def receive(request: Request, body: bytes) -> Received:
        payload = mapping_of(json_of(body, "a Mailgun body that is not JSON", 403))
        token = verifier.verify(payload)
        return Received(mailgun_reports(payload), token)

    return Provider("mailgun", receive)


def _sendgrid(key: ec.EllipticCurvePublicKey) -> Provider:
    async def receive(request: Request, body: bytes) -> Received:
        headers = request.headers
        verify_sendgrid(key, headers.get(SENDGRID_SIGNATURE), headers.get(SENDGRID_TIMESTAMP), body)
        return Received(sendgrid_reports(json_of(body)))

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
    if declared is not None and (
        not (declared.isascii() and declared.isdigit()) or int(declared) > limit
    ):
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


# Applies verified reports, taking their token first: feedback.apply_reports on a ledger
# of its own, unless serve lends one of its kept connections.
Apply = Callable[[Config, Sequence[ProviderReport], WebhookToken | None], PassReport]


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
            received = await provider.receive(request, body)
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
        except Exception as exc:  # anyone can post here: a body nothing above foresaw
            log.warning(
                "webhook %s: refused a body that could not be read (%s)",
                provider.name,
                type(exc).__name__,
                extra={"event": "webhook_refused", "provider": provider.name},
            )
            return PlainTextResponse("refused: a body that could not be read\n", 400)
        reports = received.reports
        # A signed post carrying no report (a "delivered" event, the provider's test)
        # still spends its token: replayed with other events beside it, it was taken.
        if reports or received.token is not None:
            try:
                await run_in_threadpool(apply, config, reports, received.token)
            except Replayed as exc:
                return await refuse(Refused(str(exc)))
            except StatusmailError as exc:  # the ledger, or the unsubscribe secret
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
