"""The one-click unsubscribe endpoint (RFC 8058) that ``List-Unsubscribe`` points to,
and the preferences page every message links to.

``GET`` only shows a confirmation page (link scanners fetch URLs); ``POST`` with
``List-Unsubscribe=One-Click`` and a valid token suppresses the address at once. The
answers never tell whether an address is (still) subscribed, and nothing logs addresses
or tokens. The preferences page shows a form (language, topics) on ``GET`` and saves it
on ``POST``, but only a post from the page itself: its ``Origin`` must be one of the
public origins the config gives the pages (see ``public_origins``), and it must carry the
form token the page was shown with, from the last ``FORM_TOKEN_LIFETIME``; anything else
gets 403 and changes nothing. The pages come from ``templates/pages/`` and the messages'
gettext catalog; the fixed ones are rendered once per app in every language. The same
port answers ``/metrics``, ``/healthz`` and ``/readyz`` (see ``health``); a reverse proxy
forwards only the unsubscribe and preferences paths.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import jinja2
import uvicorn
from babel import Locale
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from statusmail.content.catalog import (
    catalog_path,
    load_translations,
    render_error,
    template_environment,
)
from statusmail.domain import Preference, SuppressionReason
from statusmail.errors import ConfigError, InputError, LedgerError, Problem
from statusmail.ledger import Ledger, LedgerPool
from statusmail.ledger import exists as ledger_exists
from statusmail.metrics import UnsubscribeMetrics, new_registry
from statusmail.project.config import Config, is_url, secret_length_problem
from statusmail.project.locales import FALLBACK_LOCALE, SUPPORTED_LOCALES, normalize_locale
from statusmail.project.regions import load_regions
from statusmail.project.tokens import (
    Keyring,
    form_token,
    verify_form_token,
    verify_preferences_token,
    verify_unsubscribe_token,
)
from statusmail.web.health import (
    Heartbeat,
    ServeError,
    ledger_problem,
    listen,
    notify,
    routes,
    uvicorn_server,
)
from statusmail.web.pages import (
    Choice,
    PreferencesPage,
    initial_choice,
    posted_form_token,
    preferences_page,
    read_form,
)

log = logging.getLogger(__name__)

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

CONFIRM_PAGE = "pages/confirm.html.j2"  # under the templates folder
NOTICE_PAGE = "pages/notice.html.j2"
NOTICES = (
    "done",
    "invalid",
    "invalid_link",
    "refused",
    "too_large",
    "not_found",
    "method",
    "error",
)
DEFAULT_PORTS = {"http": 80, "https": 443}
# Sec-Fetch-Site values that stand for the page itself when a browser sent no Origin.
SAME_SITE_FETCHES = frozenset({"same-origin", "none"})
__all__ = ["LedgerAccess", "ServeError", "make_app", "run_server"]
T = TypeVar("T")


def route_path(config: Config, url: str | None = None, key: str = "unsubscribe.url") -> str:
    """The path of ``unsubscribe.url`` (or ``url``), with ``{token}`` as the path
    parameter."""
    path = unquote(urlsplit(url or config.unsubscribe.url).path)
    rest = path.replace("{token}", "", 1)
    if not path.startswith("/") or "{token}" not in path or "{" in rest or "}" in rest:
        message = f"{key!r}: serve needs {{token}} exactly once in the URL's path"
        raise ConfigError([Problem(config.path, None, message)])
    return path


def route_paths(config: Config, url: str | None = None, key: str = "unsubscribe.url") -> list[str]:
    """Every path the unsubscribe URL (or ``url``) has on any host: its own, and each
    region's rewrite of it (a mirror may serve it under another path). ``serve``
    answers the token on every host the reverse proxies forward, whatever the Host
    header says."""
    url = url or config.unsubscribe.url
    paths = [route_path(config, url, key)]
    if config.paths.regions.is_file():
        for region in load_regions(config.paths.regions).values():
            rewritten = route_path(config, region.rewrite(url), key)
            if rewritten not in paths:
                paths.append(rewritten)
    return paths


def preferences_paths(config: Config) -> list[str]:
    """Every path of the preferences page, as ``route_paths`` for the unsubscribe URL."""
    paths = route_paths(config, config.preferences_url, "preferences.url")
    taken = set(route_paths(config))
    if taken & set(paths):
        message = "'preferences.url' must not have the path of 'unsubscribe.url'"
        raise ConfigError([Problem(config.path, config.line("preferences"), message)])
    return paths


Origin = tuple[str, str, int]  # scheme, host (IDNA), port


def origin_of(url: str) -> Origin | None:
    """The origin of an http(s) URL, as a browser serializes it in ``Origin``."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
        host = (parts.hostname or "").encode("idna").decode("ascii")
    except (ValueError, UnicodeError):
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not host:
        return None
    return scheme, host, port or DEFAULT_PORTS[scheme]


def public_origins(config: Config) -> frozenset[Origin]:
    """The origins readers open the pages under: those of ``unsubscribe.url`` and the
    preferences URL, and of each region's rewrite of them (a mirror, an onion address).
    serve sits behind reverse proxies, so these, not the Host header it sees, are where a
    genuine form comes from."""
    pages = (config.unsubscribe.url, config.preferences_url)
    urls = list(pages)
    if config.paths.regions.is_file():
        regions = load_regions(config.paths.regions).values()
        urls += [region.rewrite(url) for region in regions for url in pages]
    return frozenset(origin for origin in map(origin_of, urls) if origin is not None)


def cross_site(headers: Mapping[str, str], origins: frozenset[Origin]) -> str | None:
    """Why a POST did not come from a page under ``origins`` (for the log), or None when
    it did: its ``Origin`` is one of them or, when a browser sent no ``Origin``,
    ``Sec-Fetch-Site`` says the page itself (``same-origin``) or the reader (``none``)."""
    origin = headers.get("origin")
    if origin is not None:
        bare = not urlsplit(origin.strip()).path  # an Origin is scheme://host[:port]
        if bare and origin_of(origin) in origins:
            return None
        return f"from origin {origin[:200]!r}"
    fetch = headers.get("sec-fetch-site")
    if fetch is not None and fetch.strip().lower() in SAME_SITE_FETCHES:
        return None
    return f"Sec-Fetch-Site {fetch[:50]!r}" if fetch else "with neither Origin nor Sec-Fetch-Site"


def accept_language(header: str | None) -> str:
    """The supported language the client prefers most (by q), else English."""
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate((header or "").split(",")):
        tag, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if tag and 0.0 < q <= 1.0:
            ranked.append((-q, position, tag.replace("_", "-")))
    preferred = [tag for _q, _position, tag in sorted(ranked)]
    found = Locale.negotiate(preferred, SUPPORTED_LOCALES, sep="-", aliases={})
    return found.language if found else FALLBACK_LOCALE


def render_pages(templates_dir: Path, site: str) -> dict[tuple[str, str], str]:
    """Every page in every language, rendered once: no page holds anything per request.

    Raises ``InputError``/``RenderError`` naming the template or catalog at fault.
    """
    pages: dict[tuple[str, str], str] = {}
    for lang in SUPPORTED_LOCALES:
        env = template_environment(templates_dir, autoescape=True)
        env.install_gettext_translations(  # type: ignore[attr-defined]
            load_translations(templates_dir, lang), newstyle=True
        )
        catalog = None if lang == FALLBACK_LOCALE else catalog_path(templates_dir, lang)
        for page, name in [("confirm", CONFIRM_PAGE)] + [(n, NOTICE_PAGE) for n in NOTICES]:
            try:
                html = env.get_template(name).render(lang=lang, site=site, notice=page)
            except jinja2.TemplateNotFound as exc:
                message = "is missing: statusmail serve renders its pages from it"
                missing = exc.name if isinstance(exc.name, str) else name
                raise InputError([Problem(templates_dir / missing, None, message)]) from exc
            except jinja2.TemplateSyntaxError as exc:
                where = exc.filename or templates_dir / name
                raise InputError(
                    [Problem(where, exc.lineno, exc.message or "syntax error")]
                ) from exc
            except jinja2.TemplateError as exc:
                raise InputError([Problem(templates_dir / name, None, str(exc))]) from exc
            except (KeyError, ValueError, TypeError) as exc:  # a %-format in gettext
                raise render_error(exc, templates_dir / name, catalog) from exc
            pages[lang, page] = html
    return pages


class LedgerAccess:
    """How serve reaches the ledger for a request. On PostgreSQL, through a few
    connections kept for the life of the process (``LedgerPool``, opened and closed with
    this object as a context manager): connecting for each request answered a third to a
    sixth of SQLite's requests. A SQLite file is opened for each request (0.4-0.7 ms of
    CPU): a fresh open notices a ledger deleted or replaced under serve, and a GET never
    creates the file."""

    def __init__(self, target: Path | str) -> None:
        self.target = target
        self.pool = LedgerPool(str(target), "serve") if is_url(target) else None

    def __enter__(self) -> LedgerAccess:
        if self.pool is not None:
            self.pool.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.pool is not None:
            self.pool.close()

    def run(self, work: Callable[[Ledger], T], *, readonly: bool = False, repeat: bool = True) -> T:
        """``work`` on the ledger; on PostgreSQL, with ``repeat``, it may run twice (see
        ``LedgerPool.run``)."""
        if self.pool is not None:
            return self.pool.run(work, write=not readonly, repeat=repeat)
        with Ledger(self.target, readonly=readonly) as ledger:
            return work(ledger)

    def problem(self) -> str | None:
        """Why the ledger does not answer, for ``/readyz``; None when it does."""
        return self.pool.problem() if self.pool is not None else ledger_problem(self.target)


def ledger_locale(ledgers: LedgerAccess, address: str) -> str | None:
    """The locale the ledger last recorded for ``address`` (read only), or None."""
    if not ledger_exists(ledgers.target):
        return None
    try:
        return normalize_locale(
            ledgers.run(lambda ledger: ledger.last_locale(address), readonly=True)
        )
    except LedgerError:
        return None


def ledger_preference(ledgers: LedgerAccess, address: str) -> Preference | None:
    """What ``address`` chose on the preferences page (read only), or None."""
    if not ledger_exists(ledgers.target):
        return None

    def read(ledger: Ledger) -> Preference | None:
        return ledger.preference(address) if ledger.schema_version() >= 3 else None

    try:
        return ledgers.run(read, readonly=True)
    except LedgerError:
        return None


def is_one_click(content_type: str, body: bytes) -> bool:
    """Whether the body says ``List-Unsubscribe=One-Click`` (urlencoded or multipart)."""
    if content_type.split(";", 1)[0].strip().lower() == "multipart/form-data":
        head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        if not message.is_multipart():
            return False
        for part in message.walk():
            name = part.get_param("name", header="content-disposition")
            value = part.get_payload(decode=True)
            if name == "List-Unsubscribe" and isinstance(value, bytes):
                return value.strip() == b"One-Click"
        return False
    try:
        fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=16)
    except ValueError:
        return False
    return "One-Click" in fields.get("List-Unsubscribe", [])


async def read_body(request: Request) -> bytes | None:
    """The request body, or None when it is larger than ``MAX_BODY``."""
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > MAX_BODY:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return None
    return bytes(body)


def make_app(
    config: Config,
    keys: Keyring,
    registry: CollectorRegistry | None = None,
    extra_routes: Sequence[BaseRoute] = (),
    *,
    ledgers: LedgerAccess,
) -> Starlette:
    """The app: health and metrics, ``extra_routes`` (fixed paths, such as webhooks),
    then the unsubscribe and preferences pages on each of their paths, reaching the
    ledger through ``ledgers``."""
    pages = render_pages(config.paths.templates, config.sender.name)
    registry = registry or new_registry()
    counted = UnsubscribeMetrics(registry)
    form = preferences_page(config)
    for lang in SUPPORTED_LOCALES:  # a broken template stops serve from starting
        form.render(lang, Choice(lang, frozenset(config.topics or ())))

    def page(lang: str, key: str, status: int) -> Response:
        headers = {**SECURITY_HEADERS, "Content-Language": lang}
        return HTMLResponse(pages[lang, key], status_code=status, headers=headers)

    def address_of(request: Request) -> str | None:
        token = request.path_params.get("token", "")
        if not isinstance(token, str) or len(token) > MAX_TOKEN:
            return None
        return verify_unsubscribe_token(keys, token)

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

    async def http_error(request: Request, exc: Exception) -> Response:
        lang = accept_language(request.headers.get("accept-language"))
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        response = page(lang, {404: "not_found", 405: "method"}.get(status, "error"), status)
        if isinstance(exc, HTTPException) and exc.headers:
            response.headers.update(exc.headers)
        return response

    preferences = _preferences_endpoint(config, keys, form, page, ledgers)
    app = Starlette(
        # The fixed paths first (health, metrics, extra_routes): an unsubscribe path of
        # /{token} must not take /metrics for a token.
        routes=[
            *routes(registry, ready=ledgers.problem),
            *extra_routes,
            *(Route(path, endpoint, methods=["GET", "POST"]) for path in route_paths(config)),
            *(
                Route(path, preferences, methods=["GET", "POST"])
                for path in preferences_paths(config)
            ),
        ],
        exception_handlers={HTTPException: http_error},
    )
    app.router.redirect_slashes = False
    return app


def _preferences_endpoint(
    config: Config,
    keys: Keyring,
    form: PreferencesPage,
    page: Callable[[str, str, int], Response],
    ledgers: LedgerAccess,
) -> Callable[[Request], Awaitable[Response]]:
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
            address = verify_preferences_token(keys, token)
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
            html = form.render(shown_in, choice, saved=saved, form_token=form_token(keys, token))
            return respond(shown_in, html, status)

        if request.method != "POST":
            return show(lang, initial_choice(stored, lang, declared))
        body = await read_body(request)
        if body is None:
            return page(lang, "too_large", 413)
        refused = cross_site(request.headers, origins)
        if refused is None and not verify_form_token(keys, posted_form_token(body), token):
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
        return show(chosen.locale, chosen, saved=True)

    return endpoint


async def _serve(server: uvicorn.Server, sockets: list[Any]) -> None:
    """uvicorn's own ``serve``, with systemd told when it listens, and the heartbeat that
    feeds systemd's watchdog (``WatchdogSec=``) from the serving loop."""
    heartbeat = Heartbeat()

    async def ready() -> None:
        while not server.started:
            await asyncio.sleep(0.05)
        notify("READY=1")

    tasks = [asyncio.create_task(heartbeat.beat()), asyncio.create_task(ready())]
    try:
        await server.serve(sockets=sockets)
    finally:
        notify("STOPPING=1")
        for task in tasks:
            task.cancel()


def _webhook_routes(config: Config, ledgers: LedgerAccess) -> list[BaseRoute]:
    """The configured providers' webhooks (their parsers imported only when some are),
    recording through serve's own ledger access. Never repeated on a broken connection:
    a report is not applied twice; the provider retries on the 503."""
    if not config.webhooks.served:
        return []
    from statusmail.feedback import loop as feedback
    from statusmail.feedback import webhooks

    def apply(config: Config, reports: Sequence[feedback.ProviderReport]) -> feedback.PassReport:
        return ledgers.run(
            lambda ledger: feedback.apply_reports(config, reports, ledger=ledger), repeat=False
        )

    return list(webhooks.routes(config, apply=apply))


def run_server(config: Config, host: str, port: int, *, dev_secret: bool = False) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit code (0).

    The endpoint never runs on the published development secret unless asked to
    (``--insecure-dev-secret``): anyone could forge tokens with it.
    """
    keys, is_dev = config.keyring()
    short = secret_length_problem(config, keys, is_dev)
    if short is not None:
        raise ConfigError([short])
    if is_dev and not dev_secret:
        raise ConfigError(
            [
                Problem(
                    f"${config.unsubscribe.secret_env}",
                    None,
                    "is not set: the unsubscribe endpoint needs the real secret "
                    "(--insecure-dev-secret serves the development one, for local trials)",
                )
            ]
        )
    if is_dev:
        log.warning(
            "serving with the development unsubscribe secret: for local trials only",
            extra={"event": "dev_secret"},
        )
    ledgers = LedgerAccess(config.paths.ledger)
    app = make_app(config, keys, extra_routes=_webhook_routes(config, ledgers), ledgers=ledgers)
    sock = listen(host, port)
    server = uvicorn_server(app, host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    log.info(
        "unsubscribe endpoint on http://%s:%d%s (and /metrics, /healthz, /readyz)",
        bound_host,
        bound_port,
        route_path(config),
        extra={"event": "listening", "address": f"{bound_host}:{bound_port}"},
    )
    # uvicorn re-raises a caught signal after shutdown, to the handler it found: make that
    # handler its own, so a signal means a clean stop (exit 0) before, during and after.
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, server.handle_exit)
    try:
        with sock, ledgers:
            asyncio.run(_serve(server, [sock]))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
