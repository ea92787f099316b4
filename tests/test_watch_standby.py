"""Standby watchers that supervisors keep (issue 20): on the real PostgreSQL server, a
standby tells systemd ``READY=1`` and feeds its watchdog while it waits (at the shipped
unit's ``WatchdogSec=``), answers ``/healthz`` 200 and ``/readyz`` 429 "standby", and
exposes ``statusmail_watch_leader`` 0 while the leader's is 1; both survive their lock
connections ending, and the standby takes over when the leader is killed.

A PostgreSQL restart ends every client connection; the suite may not restart the shared
server (other tests use it), so the test does to the lock connections what a restart
does to them: ``pg_terminate_backend`` (each watcher names its lock connection
``statusmail watch <pid>`` in ``pg_stat_activity``)."""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path

import pytest

from conftest import free_port, http_request, wait_for
from ops_helpers import NotifySocket, Service, scrape, value
from postgres_helpers import query
from test_ops_units import unit_settings

# The shipped unit's watchdog (WatchdogSec=300: a beat every second)
WATCHDOG_SEC = int(unit_settings("statusmail-watch.service")["WatchdogSec"][0])
TAKEOVER = 1.0  # --takeover (its least): a standby looks for the lock every 0.33 s


def leading(port: int) -> float | None:
    return value(scrape(port), "statusmail_watch_leader")


def drain(notify: NotifySocket) -> None:
    """Read what the socket holds now: a full queue would drop the next message (the
    watcher never blocks on it, and the test reads only when it waits for one)."""
    notify.sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            notify.received.append(notify.sock.recv(4096).decode())


def count(service: Service, event: str) -> int:
    return service.events().count(event)


def wait_for_count(service: Service, event: str, wanted: int, timeout: float = 20) -> None:
    def arrived() -> bool:
        assert service.process.poll() is None, f"exited:\n{service.text}"
        return count(service, event) >= wanted

    try:
        wait_for(arrived, timeout=timeout, what=f"{wanted} {event} event(s)")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the log:\n{service.text}") from None


@pytest.mark.timeout(60)
def test_a_standby_is_healthy_survives_lost_lock_connections_and_takes_over(
    project: Path, postgres: str, tmp_path: Path
) -> None:
    for entry in (project.parent / "updates").glob("*.yaml"):
        entry.unlink()  # nothing to send: the test is about who leads
    ports = {"first": free_port(), "second": free_port()}
    sockets = {name: NotifySocket(tmp_path / f"notify-{name}") for name in ports}
    watchers: dict[str, Service] = {}
    try:
        for name in ports:  # started together: one leads, the other stands by
            env = {
                "STATUSMAIL_LEDGER": postgres,
                "NOTIFY_SOCKET": str(sockets[name].path),
                "WATCHDOG_USEC": str(WATCHDOG_SEC * 1_000_000),  # as systemd sets it
            }
            watchers[name] = Service(
                project,
                "watch",
                "--poll-interval",
                "0.2",
                "--takeover",
                str(TAKEOVER),
                "--metrics-port",
                str(ports[name]),
                env=env,
            )

        def elected() -> tuple[str, str] | None:
            """(the leader, the standby) once each said which it is."""
            said = {name: set(service.events()) for name, service in watchers.items()}
            leaders = [name for name in said if "watching" in said[name]]
            standbys = [name for name in said if "standby" in said[name]]
            return (leaders[0], standbys[0]) if len(leaders) == len(standbys) == 1 else None

        leader, standby = wait_for(elected, what="one leader and one standby")

        # The standby is healthy in every way a supervisor looks.
        sockets[standby].wait_for("READY=1")
        sockets[standby].wait_for("WATCHDOG=1", count=2)  # beats every second
        wait_for(lambda: leading(ports[standby]) == 0, what="the standby's metrics")
        assert http_request(ports[standby], "GET", "/healthz").pair() == (200, "ok\n")
        status, body = http_request(ports[standby], "GET", "/readyz").pair()
        assert (status, body.split(":")[0]) == (429, "standby"), body
        assert leading(ports[leader]) == 1
        assert http_request(ports[leader], "GET", "/readyz").pair() == (200, "ok\n")
        first, second = watchers.values()

        # What a server restart does to both lock connections: neither watcher exits,
        # both connect again, and exactly one leads.
        names = [f"statusmail watch {service.process.pid}" for service in (first, second)]
        ended = query(
            postgres,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = ANY(%s)",
            names,
        )
        assert ended == [(True,), (True,)]
        for service in (first, second):
            wait_for_count(service, "leadership_lost", 1)

        def one_leader() -> bool:
            """One leads (1), the other stands by again (0, and /readyz says so)."""
            gauges = {name: leading(port) for name, port in ports.items()}
            if sorted(gauge or 0 for gauge in gauges.values()) != [0, 1]:
                return False
            (waiting,) = (name for name, gauge in gauges.items() if not gauge)
            return http_request(ports[waiting], "GET", "/readyz").status == 429

        wait_for(one_leader, timeout=20, what="one leader again")
        assert first.process.poll() is None and second.process.poll() is None

        # The leader killed: the standby takes over within --takeover.
        leader, standby = ("first", "second") if leading(ports["first"]) else ("second", "first")
        taken = count(watchers[standby], "active")
        watchers[leader].process.send_signal(signal.SIGKILL)
        watchers[leader].wait(timeout=10)
        killed_at = time.monotonic()
        wait_for_count(watchers[standby], "active", taken + 1, timeout=10)
        assert time.monotonic() - killed_at <= TAKEOVER + 1.5
        wait_for(lambda: leading(ports[standby]) == 1, what="the new leader's metrics")

        # SIGTERM is honoured at once.
        drain(sockets[standby])
        stopped_at = time.monotonic()
        watchers[standby].stop()
        assert time.monotonic() - stopped_at < 2
        sockets[standby].wait_for("STOPPING=1")
    finally:
        for service in watchers.values():
            if service.process.poll() is None:
                service.process.kill()
                service.wait(timeout=10)
        for sock in sockets.values():
            sock.close()
