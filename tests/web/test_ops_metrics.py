"""Metrics and health of the running services (issues 13 and 20): ``serve`` after real
HTTP unsubscribes and ``watch --metrics-port`` during real sends to aiosmtpd, scraped over
HTTP; the counters match the ledger, every series the README documents is there from the
start, a finished entry leaves no series behind, and /readyz turns unready when the
ledger is made unreadable or the relay is down."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO, SECRET, free_port, http_request, port_open, wait_for
from delivery_helpers import add_subscribers, point_at, suppressed
from editing import replace_in
from ops_helpers import (
    NotifySocket,
    Samples,
    Service,
    break_ledger,
    ledger_count,
    scrape,
    selection_complete,
    serve_process,
    stop,
    value,
)
from smtp_server import RecordingServer
from statusmail import metrics
from statusmail.project.tokens import Keyring, unsubscribe_token

ONE_CLICK = {"Content-Type": "application/x-www-form-urlencoded"}
BLOCK, UPDATE = "block-2020-01-23", "update-2020-04-21"


def sending(samples: Samples) -> bool:
    """Whether an entry is being sent (its info gauge is absent while nothing is)."""
    return any(name == "statusmail_sending_entry_info" for name, _ in samples)


def unsubscribe_path(address: str) -> str:
    return "/status/unsubscribe/" + unsubscribe_token(Keyring(SECRET.encode()), address)


def post(port: int, path: str, body: bytes = b"List-Unsubscribe=One-Click") -> int:
    status, _ = http_request(port, "POST", path, body, ONE_CLICK).pair()
    return status


def requests(samples: Samples, outcome: str) -> float | None:
    return value(samples, "statusmail_unsubscribe_requests_total", outcome=outcome)


def messages(samples: Samples, outcome: str, reply_class: str) -> float | None:
    return value(samples, "statusmail_messages_total", outcome=outcome, reply_class=reply_class)


def documented(service: str) -> dict[str, bool]:
    """The README's metrics table: each statusmail_* series ``service`` (watch or serve)
    exposes, and whether it is labelled by ``entry`` (so absent until an entry runs)."""
    section = REPO.joinpath("README.md").read_text(encoding="utf-8").split("### Metrics")[1]
    rows = re.findall(r"^\| `(statusmail_\w+)` \|([^\n]*)\| ([a-z]+)[^|\n]* \|$", section, re.M)
    return {
        name: "`entry`" in middle for name, middle, source in rows if source in (service, "both")
    }


def check_documented(port: int, service: str) -> None:
    """Every documented series of ``service`` is in a scrape of ``port``; each counter not
    labelled by entry is there at 0, as a fresh process has it."""
    body = http_request(port, "GET", "/metrics").body
    families = {f.name: f for f in text_string_to_metric_families(body)}
    expected = documented(service)
    assert expected, "no metric documented for " + service
    for name, by_entry in expected.items():
        family = families.get(name) or families.get(name.removesuffix("_total"))
        assert family is not None, f"{name} is documented but not exposed by {service}"
        if not by_entry:
            assert family.samples, f"{name} has no series at the start"
        if family.type == "counter":
            assert {sample.value for sample in family.samples} <= {0.0}, family


def test_serve_counts_unsubscribes_as_the_ledger_records_them(project: Path) -> None:
    people = [f"reader{i}@example.org" for i in range(3)]
    with serve_process(project) as (port, _process):
        check_documented(port, "serve")
        first = scrape(port)
        assert {requests(first, o) for o in ("done", "invalid", "bad_request", "error")} == {0.0}
        for address in people:
            assert post(port, unsubscribe_path(address)) == 200
        assert post(port, unsubscribe_path(people[0])) == 200  # twice: still one suppression
        assert post(port, "/status/unsubscribe/not-a-token") == 400
        assert post(port, unsubscribe_path("x@example.org"), b"List-Unsubscribe=Maybe") == 400
        assert post(port, unsubscribe_path("y@example.org"), b"x" * 5000) == 413
        assert http_request(port, "GET", unsubscribe_path("z@example.org")).status == 200

        samples = scrape(port)
        recorded = ledger_count(
            project, "SELECT COUNT(*) FROM suppressions WHERE reason = 'unsubscribed'"
        )
        assert recorded == len(people) == len(suppressed(project))
        assert requests(samples, "done") == len(people) + 1  # requests, not addresses
        assert requests(samples, "invalid") == 1
        assert requests(samples, "bad_request") == 2
        assert requests(samples, "error") == 0
        # the usual process metrics, from this process
        assert (value(samples, "process_resident_memory_bytes") or 0) > 0
        assert (value(samples, "process_start_time_seconds") or 0) > time.time() - 600
        assert any(name == "python_info" for name, _ in samples)
        # no address, no token in any label
        for _name, labels in samples:
            assert not any("@" in v or len(v) > 40 for _k, v in labels)


@pytest.mark.parametrize("how", ["garbage", "directory"])
def test_serve_is_unready_while_the_ledger_cannot_be_read(project: Path, how: str) -> None:
    with serve_process(project) as (port, _process):
        assert http_request(port, "GET", "/readyz").pair() == (200, "ok\n")  # no ledger yet: fine
        assert post(port, unsubscribe_path("reader@example.org")) == 200
        assert http_request(port, "GET", "/readyz").pair() == (200, "ok\n")

        break_ledger(project, how)
        status, body = http_request(port, "GET", "/readyz").pair()
        assert status == 503
        assert body.startswith("unready: ") and "statusmail.db: cannot open the ledger" in body
        assert http_request(port, "GET", "/healthz").pair() == (200, "ok\n")  # alive all the same
        assert post(port, unsubscribe_path("other@example.org")) == 503
        assert requests(scrape(port), "error") == 1

        # repaired (a fresh ledger made by the next unsubscribe): ready again
        ledger = project.parent / "statusmail.db"
        ledger.rmdir() if ledger.is_dir() else ledger.unlink()
        assert post(port, unsubscribe_path("other@example.org")) == 200
        assert http_request(port, "GET", "/readyz").pair() == (200, "ok\n")
        assert set(suppressed(project)) == {"other@example.org"}


def watch(config: Path, metrics_port: int, *, env: dict[str, str] | None = None) -> Service:
    return Service(
        config,
        "watch",
        "--poll-interval",
        "0.2",
        "--retry-after",
        "0.2",
        "--metrics-port",
        str(metrics_port),
        env=env,
    )


def metrics_up(port: int, service: Service) -> bool:
    if service.process.poll() is not None:
        service.stop()  # raises with the log
    return port_open(port) and http_request(port, "GET", "/healthz").status == 200


@pytest.mark.timeout(120)
def test_watch_metrics_during_a_send_match_the_ledger(project: Path) -> None:
    added = add_subscribers(project, 100)  # they get both entries
    refused = added[3]
    started = time.time()
    with RecordingServer(
        fail_data_every=7,  # 451 to every 7th DATA: retried
        reject_rcpt={refused: "550 5.1.1 User unknown"},  # failed for good, and suppressed
        data_delay=0.02,
    ) as server:
        point_at(project, server.port)
        port = free_port()
        service = watch(project, port)
        try:
            wait_for(lambda: metrics_up(port, service), what="the metrics port")

            # During the send of the second entry: the metrics show what the ledger
            # recorded, never more (a count goes up only after its commit).
            def mid_send() -> Samples | None:
                # Once the selection is complete the ledger's pending count only falls
                # (while it streams, it also rises): read the metrics after that.
                if not selection_complete(project, UPDATE):
                    return None
                samples = scrape(port)
                sending = value(samples, "statusmail_sending_entry_info", entry=UPDATE)
                pending = value(samples, "statusmail_recipients_pending", entry=UPDATE)
                return samples if sending == 1 and pending is not None and pending < 100 else None

            during = wait_for(mid_send, timeout=60, what="the second entry's send")
            recorded = ledger_count(project, "SELECT COUNT(*) FROM deliveries WHERE status='sent'")
            assert 18 < (messages(during, "sent", "2xx") or 0) <= recorded
            pending_now = ledger_count(
                project,
                "SELECT COUNT(*) FROM deliveries WHERE status='pending' AND entry_id=?",
                UPDATE,
            )
            assert pending_now <= (
                value(during, "statusmail_recipients_pending", entry=UPDATE) or 0
            )
            assert value(during, "statusmail_sending_entry_info", entry=BLOCK) is None

            # After it: every counter equals the ledger's count, and the finished
            # entries' pending series are gone (nobody waits for them).
            def idle() -> Samples | None:
                samples = scrape(port)
                pending = any(name == "statusmail_recipients_pending" for name, _ in samples)
                return None if pending or sending(samples) else samples

            after = wait_for(idle, timeout=60, what="both entries to finish")
            sent = ledger_count(project, "SELECT COUNT(*) FROM deliveries WHERE status='sent'")
            failed = ledger_count(
                project, "SELECT COUNT(*) FROM deliveries WHERE status='failed' AND code=550"
            )
            retries = ledger_count(
                project,
                "SELECT SUM(attempts) - COUNT(*) FROM deliveries WHERE status IN ('sent','failed')",
            )
            assert sent == len(server.messages) == 18 + 14 + 2 * 100 - 2
            assert messages(after, "sent", "2xx") == sent
            assert failed == 1  # the second entry skips the address that bounced
            assert messages(after, "failed", "5xx") == failed
            assert {messages(after, "failed", c) for c in ("4xx", "network", "local")} == {0}
            assert retries == server.data_commands // 7 > 0
            assert messages(after, "retried", "4xx") == retries
            assert messages(after, "retried", "network") == 0
            assert value(after, "statusmail_relay_up") == 1
            assert value(after, "statusmail_relay_connection_errors_total") == 0
            last = value(after, "statusmail_last_accepted_timestamp_seconds") or 0
            assert started < last <= time.time()

            assert http_request(port, "GET", "/healthz").pair() == (200, "ok\n")
            assert http_request(port, "GET", "/readyz").pair() == (200, "ok\n")
            break_ledger(project, "directory")
            status, body = http_request(port, "GET", "/readyz").pair()
            assert status == 503 and "statusmail.db: cannot open the ledger" in body, body
            # the watcher stays up, says why once, and is alive all the same
            problem = service.wait_for_event("ledger_error")
            assert problem["level"] == "error"
            assert "nothing is sent until it can be read" in problem["message"]
            assert http_request(port, "GET", "/healthz").pair() == (200, "ok\n")
            assert http_request(port, "GET", "/readyz").status == 503
        finally:
            log = service.stop()
    assert log.count('"ledger_error"') == 1


@pytest.mark.timeout(120)
def unready_for(port: int, service: Service) -> str:
    """Once ``service``'s /readyz on ``port`` answers 503: its reason."""
    wait_for(lambda: metrics_up(port, service), what="the metrics port")

    def unready() -> tuple[int, str] | None:
        answer = http_request(port, "GET", "/readyz")
        return answer.pair() if answer.status == 503 else None

    return wait_for(unready, timeout=30, what="/readyz to turn unready")[1]


def test_watch_is_unready_while_the_relay_is_down_and_something_waits(project: Path) -> None:
    relay = free_port()
    point_at(project, relay)
    port = free_port()
    service = watch(project, port)
    try:
        reason = unready_for(port, service)
        assert f"the relay 127.0.0.1:{relay} was unreachable" in reason
        assert "1 entry waits" in reason
        samples = scrape(port)
        assert value(samples, "statusmail_relay_up") == 0
        assert (value(samples, "statusmail_relay_connection_errors_total") or 0) >= 2
        waiting = ledger_count(
            project, "SELECT COUNT(*) FROM deliveries WHERE status='pending' AND entry_id=?", BLOCK
        )
        assert value(samples, "statusmail_recipients_pending", entry=BLOCK) == waiting == 18
        assert http_request(port, "GET", "/healthz").pair() == (200, "ok\n")

        with RecordingServer(port=relay) as server:
            wait_for(lambda: len(server.messages) == 18 + 14, timeout=60, what="the sends")
            wait_for(
                lambda: http_request(port, "GET", "/readyz").pair() == (200, "ok\n"),
                what="/readyz to turn ready",
            )

            # the last message's outcome is counted when its run ends, which may be a
            # moment after the relay has it and /readyz turned ready
            def ended() -> Samples | None:
                samples = scrape(port)
                return None if sending(samples) else samples

            samples = wait_for(ended, what="the runs to end")
            assert value(samples, "statusmail_relay_up") == 1
            assert messages(samples, "sent", "2xx") == 18 + 14
    finally:
        service.stop()


def test_watch_is_unready_while_its_run_waits_for_a_relay_gone_mid_run(project: Path) -> None:
    """The relay went away while an entry was being sent: /readyz said ok until the run
    gave up and backed off (38 s), though the relay was down and readers waited."""
    port = free_port()
    server = RecordingServer().start()
    try:
        # (retries slow enough that the run outlasts the look at /readyz)
        point_at(project, server.port, rate=4, retry_initial=1.0, retry_max=2.0)
        service = watch(project, port)
        try:
            wait_for(lambda: len(server.messages) >= 2, what="the first messages")
            server.stop()  # gone, its connections with it
            reason = unready_for(port, service)
            assert "was unreachable" in reason and "1 entry waits" in reason, reason
            assert sending(scrape(port))  # still within the run
        finally:
            service.stop()
    finally:
        server.stop()


@pytest.mark.timeout(90)
def test_watch_tells_systemd_ready_and_feeds_its_watchdog(project: Path, tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify")
    try:
        with RecordingServer() as server:
            point_at(project, server.port)
            env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "600000"}
            service = Service(project, "watch", "--poll-interval", "0.2", env=env)
            try:
                notify.wait_for("READY=1")
                wait_for(lambda: len(server.messages) == 18 + 14, timeout=60, what="the sends")
                # the event loop beats every 0.2 s for a 0.6 s watchdog
                beats = notify.received.count("WATCHDOG=1")
                notify.wait_for("WATCHDOG=1", count=beats + 3)
            finally:
                service.stop()
        notify.wait_for("STOPPING=1")
    finally:
        notify.close()


def test_serve_tells_systemd_ready_and_feeds_its_watchdog(project: Path, tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify")
    try:
        env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "300000"}
        with serve_process(project, env=env) as (port, process):
            notify.wait_for("READY=1")
            notify.wait_for("WATCHDOG=1", count=3)
            assert http_request(port, "GET", "/healthz").pair() == (200, "ok\n")
            stop(process)
        notify.wait_for("STOPPING=1")
    finally:
        notify.close()


def test_each_run_has_its_own_registry_and_feedback_kinds_stay_a_fixed_set() -> None:
    first = metrics.DeliveryMetrics(metrics.new_registry())
    second = metrics.DeliveryMetrics(metrics.new_registry())
    with metrics.use(first):
        metrics.feedback_event("complaint")
        metrics.feedback_event("hard")
        metrics.feedback_event("bounce")  # no kind: other
        metrics.feedback_event("Bounce from <anna@example.org>")  # not a kind: no text kept
        metrics.current().for_entry(UPDATE).sent()
    assert metrics.current() is not first  # outside use(): the unexposed default
    text = generate_latest(first.registry).decode()
    assert 'statusmail_feedback_events_total{kind="complaint"} 1.0' in text
    assert 'statusmail_feedback_events_total{kind="hard"} 1.0' in text
    assert 'statusmail_feedback_events_total{kind="other"} 2.0' in text
    assert "anna" not in text and "bounce" not in text
    assert 'statusmail_messages_total{outcome="sent",reply_class="2xx"} 1.0' in text
    untouched = generate_latest(second.registry).decode()
    assert 'statusmail_messages_total{outcome="sent",reply_class="2xx"} 0.0' in untouched
    for kind in metrics.FEEDBACK_KINDS:  # each kind there at 0, before the first
        assert f'statusmail_feedback_events_total{{kind="{kind}"}} 0.0' in untouched
    assert "process_start_time_seconds" in untouched


def pending_series(registry: CollectorRegistry) -> dict[str, float]:
    text = generate_latest(registry).decode()
    return {
        sample.labels["entry"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "statusmail_recipients_pending"
        for sample in family.samples
    }


def test_a_watcher_keeps_no_series_of_the_entries_it_finished() -> None:
    watched = metrics.DeliveryMetrics(metrics.new_registry())
    entries = [f"update-{n:04d}" for n in range(1000)]
    for entry in entries:
        watched.start_sending(entry, 2)
        run = watched.for_entry(entry)
        run.sent()
        run.skipped()
        watched.done_sending(entry, None)  # as watch does on the way out of any run...
        watched.done_sending(entry, 0)  # ...then with the ledger's count
    stopped = entries[-1] + "-stopped"  # a run that stopped with recipients waiting
    watched.start_sending(stopped, 5)
    watched.for_entry(stopped).sent()
    watched.done_sending(stopped, None)
    watched.done_sending(stopped, 4)
    assert pending_series(watched.registry) == {stopped: 4}
    assert "statusmail_sending_entry_info{" not in generate_latest(watched.registry).decode()


def test_a_fresh_watcher_exposes_every_documented_series(project: Path) -> None:
    for entry in (BLOCK, UPDATE):  # nothing to send: the scrape is of a process at rest
        replace_in(project.parent / "updates" / f"{entry}.yaml", "status: ready", "status: draft")
    port = free_port()
    service = watch(project, port)
    try:
        wait_for(lambda: metrics_up(port, service), what="the metrics port")
        check_documented(port, "watch")
    finally:
        service.stop()


def test_watch_is_unready_while_the_relay_cannot_take_the_project_s_messages(
    project: Path,
) -> None:
    """A relay refusing the sender: reachable, so /readyz said 200 ok while every run
    stopped with everyone pending (review)."""
    with RecordingServer(reject_mail="550 5.7.1 Sender not allowed") as server:
        point_at(project, server.port)
        port = free_port()
        service = watch(project, port)
        try:
            reason = unready_for(port, service)
            assert f"127.0.0.1:{server.port}: the relay cannot take it (550 5.7.1" in reason
        finally:
            service.stop()
