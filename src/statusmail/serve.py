"""The one-click unsubscribe endpoint (RFC 8058) that ``List-Unsubscribe`` points to.

``GET`` only shows a confirmation page (link scanners fetch URLs); ``POST`` with
``List-Unsubscribe=One-Click`` and a valid token suppresses the address at once. The
answers never tell whether an address is (still) subscribed, and nothing logs addresses
or tokens.
"""

from __future__ import annotations

import email.parser
import email.policy
import html
import logging
import signal
import socket
import sqlite3
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from statusmail.config import Config
from statusmail.errors import ConfigError, LedgerError, Problem, StatusmailError
from statusmail.ledger import Ledger
from statusmail.locales import FALLBACK_LOCALE, normalize_locale
from statusmail.tokens import verify_unsubscribe_token

log = logging.getLogger(__name__)

MAX_BODY = 4096  # the one-click body is 26 bytes; a multipart one a few hundred
MAX_TOKEN = 512
CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}

STRINGS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Status updates",
        "confirm": "Unsubscribe from status updates?",
        "button": "Unsubscribe",
        "done": "You are unsubscribed. You will get no more status updates.",
        "invalid": "This unsubscribe link is not valid. Please use the link from a recent "
        "status update.",
        "too_large": "The request is too large.",
        "not_found": "Page not found.",
        "method": "This request is not supported.",
        "error": "Something went wrong. Please try again later.",
    },
    "ru": {
        "title": "Уведомления о работе сервиса",
        "confirm": "Отписаться от уведомлений о работе сервиса?",
        "button": "Отписаться",
        "done": "Вы отписались. Уведомления о работе сервиса больше не придут.",
        "invalid": "Эта ссылка для отписки недействительна. Воспользуйтесь ссылкой "
        "из недавнего письма.",
        "too_large": "Слишком большой запрос.",
        "not_found": "Страница не найдена.",
        "method": "Такой запрос не поддерживается.",
        "error": "Что-то пошло не так. Попробуйте ещё раз позже.",
    },
}

BODY_STYLE = (
    "font-family: system-ui, sans-serif; font-size: 18px; line-height: 1.5; color: #222;"
    " background: #fff; max-width: 32rem; margin: 4rem auto; padding: 0 1rem;"
)
BUTTON_STYLE = (
    "font: inherit; padding: 0.5rem 1.5rem; border: 0; border-radius: 4px;"
    " background: #1a5fb4; color: #fff; cursor: pointer;"
)


class ServeError(StatusmailError):
    """The endpoint cannot start (e.g. the port is taken)."""


def route_path(config: Config) -> str:
    """The path of ``unsubscribe.url``, with ``{token}`` as the path parameter."""
    path = unquote(urlsplit(config.unsubscribe.url).path)
    rest = path.replace("{token}", "", 1)
    if not path.startswith("/") or "{token}" not in path or "{" in rest or "}" in rest:
        message = "'unsubscribe.url': serve needs {token} exactly once in the URL's path"
        raise ConfigError([Problem(config.path, None, message)])
    return path


def accept_language(header: str | None) -> str:
    """The supported language the client prefers most (by q), else English."""
    best, best_q = FALLBACK_LOCALE, 0.0
    for item in (header or "").split(","):
        tag, _, params = item.partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        locale = normalize_locale(tag)
        if locale and q > best_q:
            best, best_q = locale, q
    return best


def ledger_locale(path: Path, address: str) -> str | None:
    """The locale the ledger last recorded for ``address`` (read only), or None."""
    if not path.is_file():
        return None
    try:
        db = sqlite3.connect(path, timeout=5)
        try:
            db.execute("PRAGMA query_only = ON")
            # entries is small: probe the (entry_id, address) key once per entry.
            row = db.execute(
                "SELECT d.locale FROM entries AS e CROSS JOIN deliveries AS d"
                " ON d.entry_id = e.entry_id AND d.address = ? WHERE d.locale != ''"
                " ORDER BY e.selected_at DESC, d.rowid DESC LIMIT 1",
                (address,),
            ).fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return normalize_locale(row[0]) if row else None


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


def make_app(config: Config, secret: bytes) -> Starlette:
    ledger_path = config.paths.ledger
    site = config.sender.name

    def page(lang: str, key: str, status: int, *, form: bool = False) -> Response:
        text = STRINGS[lang]
        title = html.escape(f"{site}: {text['title']}" if site else text["title"])
        content = f"<p>{html.escape(text[key])}</p>"
        if form:
            content = (
                f"<h1 style='font-size: 1.5rem; font-weight: 600'>{html.escape(text[key])}</h1>"
                "<form method='post'><input type='hidden' name='List-Unsubscribe'"
                " value='One-Click'>"
                f"<button type='submit' style='{BUTTON_STYLE}'>"
                f"{html.escape(text['button'])}</button></form>"
            )
        document = (
            f"<!DOCTYPE html>\n<html lang='{lang}'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<meta name='robots' content='noindex'><title>{title}</title></head>"
            f"<body style='{BODY_STYLE}'><main>{content}</main></body></html>\n"
        )
        headers = {**SECURITY_HEADERS, "Content-Language": lang}
        return HTMLResponse(document, status_code=status, headers=headers)

    def address_of(request: Request) -> str | None:
        token = request.path_params.get("token", "")
        if not isinstance(token, str) or len(token) > MAX_TOKEN:
            return None
        return verify_unsubscribe_token(secret, token)

    async def language(request: Request, address: str | None) -> str:
        if address is not None:
            known = await run_in_threadpool(ledger_locale, ledger_path, address.lower())
            if known:
                return known
        return accept_language(request.headers.get("accept-language"))

    def unsubscribe(address: str) -> None:
        with Ledger(ledger_path) as ledger:
            ledger.suppress(address, "unsubscribed", "one-click")

    async def endpoint(request: Request) -> Response:
        return await (one_click if request.method == "POST" else confirm)(request)

    async def confirm(request: Request) -> Response:
        address = address_of(request)
        lang = await language(request, address)
        if address is None:
            return page(lang, "invalid", 400)
        return page(lang, "confirm", 200, form=True)

    async def one_click(request: Request) -> Response:
        address = address_of(request)
        if address is None:
            return page(accept_language(request.headers.get("accept-language")), "invalid", 400)
        body = await read_body(request)
        lang = await language(request, address)
        if body is None:
            return page(lang, "too_large", 413)
        if not is_one_click(request.headers.get("content-type", ""), body):
            return page(lang, "confirm", 400, form=True)
        try:
            await run_in_threadpool(unsubscribe, address)
        except (LedgerError, sqlite3.Error) as exc:
            log.error("cannot record an unsubscribe in the ledger: %s", exc)
            return page(lang, "error", 503)
        log.info("one-click unsubscribe recorded")
        return page(lang, "done", 200)

    async def http_error(request: Request, exc: Exception) -> Response:
        lang = accept_language(request.headers.get("accept-language"))
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        response = page(lang, {404: "not_found", 405: "method"}.get(status, "error"), status)
        if isinstance(exc, HTTPException) and exc.headers:
            response.headers.update(exc.headers)
        return response

    app = Starlette(
        routes=[Route(route_path(config), endpoint, methods=["GET", "POST"])],
        exception_handlers={HTTPException: http_error},
    )
    app.router.redirect_slashes = False
    return app


def listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc}") from exc


def run_server(config: Config, host: str, port: int, *, dev_secret: bool = False) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit code (0).

    The endpoint never runs on the published development secret unless asked to
    (``--insecure-dev-secret``): anyone could forge tokens with it.
    """
    secret, is_dev = config.unsubscribe_secret()
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
        log.warning("serving with the development unsubscribe secret: for local trials only")
    app = make_app(config, secret)
    sock = listen(host, port)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            server_header=False,
            lifespan="off",
        )
    )
    bound_host, bound_port = sock.getsockname()[:2]
    log.info("unsubscribe endpoint on http://%s:%d%s", bound_host, bound_port, route_path(config))
    # uvicorn re-raises a caught signal after shutdown, to the handler it found: make that
    # handler its own, so a signal means a clean stop (exit 0) before, during and after.
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, server.handle_exit)
    try:
        with sock:
            server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
