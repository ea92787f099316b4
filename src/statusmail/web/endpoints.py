"""The one-click unsubscribe endpoint (RFC 8058) that ``List-Unsubscribe`` points to,
and the preferences page every message links to.

``GET`` only shows a confirmation page (link scanners fetch URLs); ``POST`` with
``List-Unsubscribe=One-Click`` and a valid token suppresses the address at once. The
answers never tell whether an address is (still) subscribed, and nothing logs addresses
or tokens. The preferences page shows a form (language, topics) on ``GET`` and saves it
on ``POST``, but only a post from the page itself: its ``Origin`` must be one of the
public origins the config gives the pages (see ``urls.public_origins``), and it must
carry the form token the page was shown with, from the last ``FORM_TOKEN_LIFETIME``;
anything else gets 403 and changes nothing.
"""

from __future__ import annotations

import email.errors
import email.parser
import email.policy
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, Response

from statusmail.domain import Preference, SuppressionReason
from statusmail.errors import LedgerError
from statusmail.metrics import UnsubscribeMetrics
from statusmail.project.config import Config
from statusmail.project.tokens import (
    Keyring,
    form_token,
    verify_form_token,
    verify_preferences_token,
    verify_unsubscribe_token,
)
from statusmail.web.ledger_access import LedgerAccess, ledger_locale, ledger_preference
from statusmail.web.pages import (
    Choice,
    PreferencesPage,
    accept_language,
    initial_choice,
    posted_form_token,
    read_form,
)
from statusmail.web.served_keys import ServedKeys
from statusmail.web.urls import cross_site, public_origins

log = logging.getLogger("statusmail.web.serve")  # the name its records had before the split

MAX_BODY = 4096  # the one-click body is 26 bytes; a multipart one a few hundred
MAX_TOKEN = 512
CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    # Not no-referrer: under it a browser sends "Origin: null" with the page's own form,
    # and the preferences POST is checked by its Origin. same-origin still sends nothing
    # to any other site.
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
Page = Callable[[str, str, int], Response]  # a fixed page: language, page, status
Endpoint = Callable[[Request], Awaitable[Response]]


def is_one_click(content_type: str, body: bytes) -> bool:
    """Whether the body says ``List-Unsubscribe=One-Click`` (urlencoded or multipart)."""
    if content_type.split(";", 1)[0].strip().lower() == "multipart/form-data":
        head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
        try:
            return _multipart_one_click(head + body)
        except (
            email.errors.MessageError,
            IndexError,
            ValueError,
            TypeError,
            LookupError,
            RecursionError,  # a part header of a thousand nested comments
        ):
            # part headers the email package's parser chokes on (name*="'", say)
            return False
    try:
        fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=16)
    except ValueError:
        return False
    return "One-Click" in fields.get("List-Unsubscribe", [])


def _multipart_one_click(data: bytes) -> bool:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(data)
    if not message.is_multipart():
        return False
    for part in message.walk():
        name = part.get_param("name", header="content-disposition")
        value = part.get_payload(decode=True)
        if name == "List-Unsubscribe" and isinstance(value, bytes):
            return value.strip() == b"One-Click"
    return False


async def read_body(request: Request) -> bytes | None:
    """The request body, or None when it is larger than ``MAX_BODY`` or never ended."""
    declared = request.headers.get("content-length", "0")
    if not (declared.isascii() and declared.isdigit()) or int(declared) > MAX_BODY:
        return None
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return None
    except ClientDisconnect:  # gone before its body ended: nobody reads the answer
        return None  # (it logged an error and a traceback per request: review)
    return bytes(body)


def opened(
    keys: ServedKeys, verify: Callable[[Keyring, str], str | None], token: str
) -> str | None:
    """The address ``token`` names, by the keys in use or, when none opens it, by the
    secrets read again if they changed (``ServedKeys.after_refusal``)."""
    address = verify(keys.keys, token)
    if address is None and (again := keys.after_refusal()) is not None:
        address = verify(again, token)
    return address


def unsubscribe_endpoint(
    keys: ServedKeys, ledgers: LedgerAccess, page: Page, counted: UnsubscribeMetrics
) -> Endpoint:
    """GET shows the confirmation page; POST with ``List-Unsubscribe=One-Click`` and a
    valid token suppresses the address."""

    def address_of(request: Request) -> str | None:
        token = request.path_params.get("token", "")
        if not isinstance(token, str) or len(token) > MAX_TOKEN:
            return None
        return opened(keys, verify_unsubscribe_token, token)

    async def language(request: Request, address: str | None) -> str:
        if address is not None:
            known = await run_in_threadpool(ledger_locale, ledgers, address.lower())
            if known:
                return known
        return accept_language(request.headers.get("accept-language"))

    def unsubscribe(address: str) -> None:
        ledgers.run(
            lambda ledger: ledger.suppress(address, SuppressionReason.UNSUBSCRIBED, "one-click")
        )

    async def endpoint(request: Request) -> Response:
        return await (one_click if request.method == "POST" else confirm)(request)

    async def confirm(request: Request) -> Response:
        address = address_of(request)
        lang = await language(request, address)
        if address is None:
            return page(lang, "invalid", 400)
        return page(lang, "confirm", 200)

    async def one_click(request: Request) -> Response:
        address = address_of(request)
        if address is None:
            counted.request("invalid")
            return page(accept_language(request.headers.get("accept-language")), "invalid", 400)
        body = await read_body(request)
        lang = await language(request, address)
        if body is None:
            counted.request("bad_request")
            return page(lang, "too_large", 413)
        if not is_one_click(request.headers.get("content-type", ""), body):
            counted.request("bad_request")
            return page(lang, "confirm", 400)
        try:
            await run_in_threadpool(unsubscribe, address)
        except LedgerError as exc:
            counted.request("error")
            log.error(
                "cannot record an unsubscribe in the ledger: %s",
                exc,
                extra={"event": "unsubscribe_failed"},
            )
            return page(lang, "error", 503)
        counted.request("done")
        log.info("one-click unsubscribe recorded", extra={"event": "unsubscribed"})
        return page(lang, "done", 200)

    return endpoint


def preferences_endpoint(
    config: Config,
    keys: ServedKeys,
    form: PreferencesPage,
    page: Page,
    ledgers: LedgerAccess,
) -> Endpoint:
    """GET shows the form; POST saves what the reader changed and shows it again, saying
    so. A valid token for any address gets the same page: nothing tells whether it is
    on the list. A POST from anywhere but the page itself (another origin, no form token,
    or one too old) gets 403 and changes nothing."""
    declared = config.topics
    origins = public_origins(config)

    def respond(lang: str, html: str, status: int = 200) -> Response:
        headers = {**SECURITY_HEADERS, "Content-Language": lang}
        return HTMLResponse(html, status_code=status, headers=headers)

    def save(address: str, preference: Preference) -> None:
        ledgers.run(lambda ledger: ledger.set_preference(address, preference))

    async def endpoint(request: Request) -> Response:
        token = request.path_params.get("token", "")
        address = None
        if isinstance(token, str) and len(token) <= MAX_TOKEN:
            address = opened(keys, verify_preferences_token, token)
        asked = accept_language(request.headers.get("accept-language"))
        if address is None:
            return page(asked, "invalid_link", 400)
        address = address.lower()
        stored = await run_in_threadpool(ledger_preference, ledgers, address)
        lang = (stored.locale if stored else None) or (
            await run_in_threadpool(ledger_locale, ledgers, address) or asked
        )

        def show(
            shown_in: str, choice: Choice, status: int = 200, *, saved: bool = False
        ) -> Response:
            """The form, with a form token made now for this page."""
            html = form.render(
                shown_in, choice, saved=saved, form_token=form_token(keys.keys, token)
            )
            return respond(shown_in, html, status)

        if request.method != "POST":
            return show(lang, initial_choice(stored, lang, declared))
        body = await read_body(request)
        if body is None:
            return page(lang, "too_large", 413)
        refused = cross_site(request.headers, origins)
        if refused is None and not verify_form_token(keys.keys, posted_form_token(body), token):
            refused = "without a valid form token (missing, forged or expired)"
        if refused is not None:
            log.warning(
                "refused a preferences post %s: nothing saved",
                refused,
                extra={"event": "preferences_refused"},
            )
            return page(lang, "refused", 403)
        submitted = read_form(body, declared)
        if submitted is None:
            return show(lang, initial_choice(stored, lang, declared), 400)
        chosen, preference = submitted
        if preference != Preference():
            try:
                await run_in_threadpool(save, address, preference)
            except LedgerError as exc:
                log.error("cannot save a preference in the ledger: %s", exc)
                return page(lang, "error", 503)
        log.info("preferences saved")
        # What the ledger holds now, not what was posted: a field the reader left as
        # this (perhaps stale) page showed it is not saved, and must not show as chosen
        stored = await run_in_threadpool(ledger_preference, ledgers, address)
        now = initial_choice(stored, chosen.locale, declared)
        return show(now.locale, now, saved=True)

    return endpoint
