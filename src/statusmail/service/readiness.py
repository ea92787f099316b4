"""The watcher's health, as the metrics thread asks for it: alive while its loop beats,
ready while the ledger answers and the relay was reachable at the last attempt (or
nothing waits for it), a standby healthy but not ready; and the endpoint that serves
``/metrics``, ``/healthz`` and ``/readyz``. ``Readiness`` is this part of
``watch.Watcher``."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry

from statusmail import metrics
from statusmail.project.config import Config
from statusmail.service.bookkeeping import Backoff
from statusmail.service.options import WatchOptions
from statusmail.web import health

log = logging.getLogger("statusmail.watch")


def relay_name(config: Config) -> str:
    return config.smtp.server if config.transport == "smtp" else config.transport


class Readiness:
    """``alive``, ``ready`` and the metrics endpoint of a watcher."""

    config: Config
    options: WatchOptions
    registry: CollectorRegistry
    metrics: metrics.DeliveryMetrics
    heartbeat: health.Heartbeat
    role: str
    _lock_problem: str | None
    _backoff: dict[str, Backoff]
    _sending: str | None

    # Called from the metrics thread: they only read attributes the loop replaces whole.

    def alive(self) -> str | None:
        return self.heartbeat.problem()

    def ready(self) -> str | None:
        if self._lock_problem is not None:
            return self._lock_problem
        problem = health.ledger_problem(self.config.paths.ledger)
        if problem is not None:
            return problem
        if self.role == "standby":
            return health.Standby(
                "another watcher leads on this ledger; this one takes over within "
                f"{self.options.takeover:g}s of its end"
            )
        # the entry being sent waits for the relay too, before its run gives up and
        # backs off (/readyz said ok for 38 s with the relay gone mid-run: review)
        waiting = len(set(self._backoff) | ({self._sending} if self._sending else set()))
        unfit = [b.reason for b in self._backoff.values() if b.relay_unfit]
        if unfit:  # reachable, and takes none of the project's messages: as bad as down
            return f"{relay_name(self.config)}: {unfit[0]}"
        if self.metrics.relay_reachable is False and waiting:
            return (
                f"the relay {relay_name(self.config)} was unreachable at the last attempt; "
                f"{waiting} entr{'y waits' if waiting == 1 else 'ies wait'} for it"
            )
        return None

    def _metrics_server(self) -> health.BackgroundServer | None:
        port = self.options.metrics_port
        if port is None:
            return None
        from starlette.applications import Starlette

        sock = health.listen(self.options.metrics_host, port)
        app = Starlette(routes=health.routes(self.registry, ready=self.ready, alive=self.alive))
        server = health.BackgroundServer(app, sock).start()
        log.info(
            "metrics and health on http://%s/metrics",
            server.address,
            extra={"event": "metrics_listening", "address": server.address},
        )
        return server
