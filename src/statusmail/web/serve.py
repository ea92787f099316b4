"""``statusmail serve``: one process answering the one-click unsubscribe and the
preferences pages (``endpoints``) on each of their paths (``urls``), the providers'
webhooks when some are configured, and ``/metrics``, ``/healthz`` and ``/readyz`` (see
``health``) on the same port; a reverse proxy forwards only the unsubscribe and
preferences paths. The fixed pages come from ``templates/pages/`` and the messages'
gettext catalog, rendered once per app in every language (``pages``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Sequence
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from statusmail.errors import ConfigError, Problem
from statusmail.metrics import UnsubscribeMetrics, new_registry
from statusmail.project.config import Config
from statusmail.project.locales import SUPPORTED_LOCALES
from statusmail.project.secrets import secret_length_problem
from statusmail.project.tokens import Keyring
from statusmail.web.endpoints import SECURITY_HEADERS, preferences_endpoint, unsubscribe_endpoint
from statusmail.web.health import Heartbeat, ServeError, listen, notify, routes, uvicorn_server
from statusmail.web.ledger_access import LedgerAccess
from statusmail.web.pages import Choice, accept_language, preferences_page, render_pages
from statusmail.web.served_keys import ServedKeys
from statusmail.web.urls import preferences_paths, route_path, route_paths

log = logging.getLogger(__name__)

__all__ = ["LedgerAccess", "ServeError", "make_app", "run_server"]


def make_app(
    config: Config,
    keys: Keyring | ServedKeys,
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

    served = keys if isinstance(keys, ServedKeys) else ServedKeys(keys)
    preferences = preferences_endpoint(config, served, form, page, ledgers)
    unsubscribe = unsubscribe_endpoint(served, ledgers, page, counted)

    async def http_error(request: Request, exc: Exception) -> Response:
        lang = accept_language(request.headers.get("accept-language"))
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        response = page(lang, {404: "not_found", 405: "method"}.get(status, "error"), status)
        if isinstance(exc, HTTPException) and exc.headers:
            response.headers.update(exc.headers)
        return response

    app = Starlette(
        # The fixed paths first (health, metrics, extra_routes): an unsubscribe path of
        # /{token} must not take /metrics for a token.
        routes=[
            *routes(registry, ready=ledgers.problem),
            *extra_routes,
            *(Route(path, unsubscribe, methods=["GET", "POST"]) for path in route_paths(config)),
            *(
                Route(path, preferences, methods=["GET", "POST"])
                for path in preferences_paths(config)
            ),
        ],
        exception_handlers={HTTPException: http_error},
    )
    app.router.redirect_slashes = False
    return app


async def _serve(server: uvicorn.Server, sockets: list[Any], served: ServedKeys) -> None:
    """uvicorn's own ``serve``, with systemd told when it listens, the heartbeat that
    feeds systemd's watchdog (``WatchdogSec=``) from the serving loop, and SIGHUP, as for
    watch, reading the secrets again (it ended serve silently, and systemd's
    ``Restart=on-failure`` took that for a clean exit). The loop runs the handler between
    requests: run inside a reading the tokens' refusal began, it waited for itself."""
    heartbeat = Heartbeat()
    loop = asyncio.get_running_loop()
    hangup = threading.current_thread() is threading.main_thread()
    if hangup:
        loop.add_signal_handler(signal.SIGHUP, _reread, served)

    async def ready() -> None:
        while not server.started:
            await asyncio.sleep(0.05)
        notify("READY=1")

    tasks = [asyncio.create_task(heartbeat.beat()), asyncio.create_task(ready())]
    try:
        await server.serve(sockets=sockets)
    finally:
        notify("STOPPING=1")
        if hangup:
            loop.remove_signal_handler(signal.SIGHUP)
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

    def apply(
        config: Config,
        reports: Sequence[feedback.ProviderReport],
        token: feedback.WebhookToken | None,
    ) -> feedback.PassReport:
        return ledgers.run(
            lambda ledger: feedback.apply_reports(config, reports, token, ledger=ledger),
            repeat=False,
        )

    return list(webhooks.routes(config, apply=apply))


def _keyring(config: Config) -> tuple[Keyring, bool]:
    """The token keys serve may use: secrets too weak to trust are a ``ConfigError``."""
    keys, is_dev = config.keyring()
    short = secret_length_problem(config, keys, is_dev)
    if short is not None:
        raise ConfigError([short])
    return keys, is_dev


def _reread(served: ServedKeys) -> None:
    log.info("SIGHUP: reading the unsubscribe secrets again", extra={"event": "reload"})
    if not served.reload():
        log.info("the unsubscribe secrets are unchanged", extra={"event": "secrets_unchanged"})


def run_server(config: Config, host: str, port: int, *, dev_secret: bool = False) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit code (0).

    The endpoint never runs on the published development secret unless asked to
    (``--insecure-dev-secret``): anyone could forge tokens with it.
    """
    keys, is_dev = _keyring(config)
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
    served = ServedKeys(keys, None if is_dev else lambda: _keyring(config)[0])
    app = make_app(config, served, extra_routes=_webhook_routes(config, ledgers), ledgers=ledgers)
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
            asyncio.run(_serve(server, [sock], served))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
