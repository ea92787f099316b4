"""What ``serve`` and ``watch`` tell the machinery that keeps them running.

``/metrics`` (Prometheus), ``/healthz`` (the process is alive) and ``/readyz`` (it can do
its work: the ledger answers, and whatever the service adds), as routes both mount; a
listening socket that fails with ``host:port``; uvicorn in a thread of its own for
``watch --metrics-port``; and systemd's notify protocol (``READY=1``, ``WATCHDOG=1``),
driven by a heartbeat of the event loop, so a hung loop is noticed and restarted.

The HTTP parts import starlette, uvicorn and prometheus-client when first used: a
``watch`` without ``--metrics-port`` never needs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from statusmail.errors import LedgerError, StatusmailError
from statusmail.ledger import Ledger

if TYPE_CHECKING:
    import uvicorn
    from prometheus_client import CollectorRegistry
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

METRICS_PATH, HEALTH_PATH, READY_PATH = "/metrics", "/healthz", "/readyz"
NO_STORE = {"Cache-Control": "no-store"}

Check = Callable[[], str | None]  # None when all is well, else a short reason


class Standby(str):
    """What a standby watcher's readiness check returns: it is well and waits for the
    leadership, so ``/readyz`` answers 429 "standby: <why>" (the code HashiCorp's Vault
    answers for a standby, and Consul's checks count as a warning, not a failure), set
    apart from 200 (leading) and 503 (cannot work)."""


class ServeError(StatusmailError):
    """An endpoint cannot start (e.g. the port is taken)."""


def listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        server = socket.create_server((host, port), family=family)
        # asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
        # create_server leaves it 0: every kept-alive response (behind nginx, all of
        # them) then waited ~40 ms for the peer's delayed ACK.
        return socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, server.detach())
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc}") from exc


def ledger_problem(target: Path | str) -> str | None:
    """Why the ledger does not answer, or None when it does.

    Opening it read-only reads its schema version: a cheap read that fails on a file
    that is not a ledger, is unreadable, or is newer than this code. A ledger not made
    yet is fine while its folder is there: the first write makes it.
    """
    if isinstance(target, Path) and not target.exists() and not target.is_symlink():
        if target.parent.is_dir():
            return None
        return f"{target.parent}: the ledger's folder is missing"
    try:
        Ledger(target, readonly=True).close()
    except LedgerError as exc:
        return str(exc)
    return None


def routes(registry: CollectorRegistry, *, ready: Check, alive: Check | None = None) -> list[Route]:
    """``/metrics``, ``/healthz`` and ``/readyz``; an unhealthy or unready answer is 503
    with its reason on one line (a ``Standby`` is 429). The checks run in a worker
    thread (they may read the ledger), never in the event loop."""
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    from statusmail.metrics import CONTENT_TYPE, exposition

    def metrics(_request: Request) -> Response:
        return Response(exposition(registry), media_type=CONTENT_TYPE, headers=NO_STORE)

    def answer(problem: str | None, word: str) -> Response:
        if problem is None:
            return PlainTextResponse("ok\n", headers=NO_STORE)
        if isinstance(problem, Standby):
            return PlainTextResponse(f"standby: {problem}\n", status_code=429, headers=NO_STORE)
        return PlainTextResponse(f"{word}: {problem}\n", status_code=503, headers=NO_STORE)

    def healthz(_request: Request) -> Response:
        return answer(alive() if alive else None, "unhealthy")

    def readyz(_request: Request) -> Response:
        return answer(ready(), "unready")

    return [
        Route(METRICS_PATH, metrics, methods=["GET"]),
        Route(HEALTH_PATH, healthz, methods=["GET"]),
        Route(READY_PATH, readyz, methods=["GET"]),
    ]


def uvicorn_server(app: Starlette, host: str, port: int) -> uvicorn.Server:
    import uvicorn

    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            log_config=None,  # our handlers (text or JSON) take uvicorn's lines too
            access_log=False,
            server_header=False,
            lifespan="off",
        )
    )


STOP_WITHIN = 0.2  # seconds a stopping metrics server gets to finish what it answers
# (uvicorn looks at should_exit every 0.1 s; a scrape still in flight is cut short)


class BackgroundServer:
    """An app served by uvicorn in a thread of its own (``watch --metrics-port``): a
    scrape never waits on the service's event loop, so it can tell when that loop hangs."""

    def __init__(self, app: Starlette, sock: socket.socket) -> None:
        host, port = sock.getsockname()[:2]
        self.address = f"{host}:{port}"
        self._sock = sock
        self._server = uvicorn_server(app, host, port)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="metrics", daemon=True
        )

    def start(self) -> BackgroundServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: a request still being answered (a /readyz that waits on a
        database that does not answer, up to its connect timeout) is left to its daemon
        thread, not waited for: it held the process's exit by up to ten seconds."""
        self._server.should_exit = True
        self._thread.join(timeout=STOP_WITHIN)
        self._sock.close()


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Tell systemd ``message`` (sd_notify(3)) when it asked (``$NOTIFY_SOCKET``)."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address.startswith(("/", "@")):
        return False
    target = "\0" + address[1:] if address.startswith("@") else address
    with (
        contextlib.suppress(OSError),
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock,
    ):
        # Never blocking: a supervisor that reads late (its queue full) must not stop
        # the event loop that the watchdog messages come from.
        sock.sendto(message.encode(), socket.MSG_DONTWAIT, target)
        return True
    return False


class Heartbeat:
    """The event loop's pulse: ``beat()`` runs as a task of the loop it watches.

    Under systemd with ``WatchdogSec=`` it sends ``WATCHDOG=1`` at a third of the
    watchdog's period; ``problem()`` tells ``/healthz`` when the loop missed beats for
    ``stale_after`` seconds (a synchronous step, like staging a huge list, may hold the
    loop for a while: the limit is generous).
    """

    def __init__(self, stale_after: float = 300.0, environ: Mapping[str, str] | None = None):
        env = os.environ if environ is None else environ
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        for_us = (
            usec.isascii()
            and usec.isdigit()
            and int(usec) > 0
            and (not pid or pid == str(os.getpid()))
        )
        self.watchdog = int(usec) / 1e6 if for_us else None
        self.interval = min(1.0, self.watchdog / 3) if self.watchdog else 1.0
        self.stale_after = stale_after
        self.environ = env
        self.last = time.monotonic()

    async def beat(self) -> None:
        while True:
            self.last = time.monotonic()
            if self.watchdog:
                notify("WATCHDOG=1", self.environ)
            await asyncio.sleep(self.interval)

    def problem(self) -> str | None:
        silent = time.monotonic() - self.last
        if silent > self.stale_after:
            return f"the event loop has not run for {silent:.0f}s"
        return None
