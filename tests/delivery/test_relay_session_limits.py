"""Per-session relay limits (issue 21, item 5): a relay that takes LIMIT messages per
session and answers "452 4.5.3 Too many recipients" after them. The refused recipient
goes again at once on a fresh session, uncharged; the limit is learnt from that reply
(or configured), and every connection starts a new session before it from then on."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import UPDATE_AUDIENCE, invoke
from delivery_helpers import add_subscribers, ledger_rows, point_at, send
from smtp_server import RecordingServer
from statusmail.delivery.smtp_replies import ends_session, names_session_limit

LIMIT = 5  # messages the relay takes per session
CONCURRENCY = 2


@pytest.fixture(scope="module")
def relay() -> Iterator[RecordingServer]:
    with RecordingServer(session_limit=LIMIT) as server:
        yield server


def limited(project: Path, relay: RecordingServer, recipients: int) -> int:
    """Give the sample's entry ``recipients`` in all and point the project at the relay
    (its counts cleared); returns the audience."""
    relay.clear()
    audience = UPDATE_AUDIENCE + len(add_subscribers(project, recipients - UPDATE_AUDIENCE))
    point_at(project, relay.port, concurrency=CONCURRENCY)
    return audience


def delivered_once_each(relay: RecordingServer, config: Path, audience: int) -> None:
    """Every recipient got one message, and the ledger says sent at the first attempt
    for each (a refusal for the session's sake charges nothing)."""
    counts = relay.count_by_recipient()
    assert len(counts) == audience and set(counts.values()) == {1}
    rows = ledger_rows(config).values()
    assert Counter((row["status"], row["attempts"]) for row in rows) == {("sent", 1): audience}


def test_the_limit_is_learnt_and_every_recipient_goes_in_one_run(
    project: Path, relay: RecordingServer
) -> None:
    audience = limited(project, relay, 200)
    code, report, stderr = send(project)
    assert code == 0, stderr
    assert report["counts"]["sent"] == audience and report["counts"]["failed"] == 0
    delivered_once_each(relay, project, audience)
    # Learnt at the first refusal of each connection at most (both may meet it at once);
    # after that every session ends before the relay's limit.
    assert 1 <= relay.session_limit_replies <= CONCURRENCY
    sizes = relay.session_sizes()
    assert max(sizes) == LIMIT and sum(sizes) == audience
    assert len(sizes) <= math.ceil(audience / LIMIT) + CONCURRENCY
    # and the next session opened at the end of each connection's last full one
    assert relay.connections <= len(sizes) + CONCURRENCY
    assert f"takes {LIMIT} message(s) per session" in stderr
    assert f"127.0.0.1:{relay.port}" in stderr


def test_a_configured_limit_starts_each_session_before_the_relay_refuses(
    project: Path, relay: RecordingServer
) -> None:
    audience = limited(project, relay, 40)
    per_session = LIMIT - 1
    data = yaml.safe_load(project.read_text(encoding="utf-8"))
    data["smtp"]["max_messages_per_connection"] = per_session
    project.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    code, report, stderr = send(project)
    assert code == 0, stderr
    assert report["counts"]["sent"] == audience
    delivered_once_each(relay, project, audience)
    assert relay.session_limit_replies == 0
    sizes = relay.session_sizes()
    assert max(sizes) == per_session and sum(sizes) == audience
    # full sessions only, but for each connection's last
    assert sum(size < per_session for size in sizes) <= CONCURRENCY


def test_a_relay_that_refuses_fresh_sessions_too_charges_every_attempt(project: Path) -> None:
    """A refusal in a session that has carried nothing is the recipient's ordinary
    transient failure: charged, retried on the same session, failed at max_attempts."""
    max_attempts = 2
    with RecordingServer(session_limit=0) as relay:
        point_at(project, relay.port, concurrency=CONCURRENCY, max_attempts=max_attempts)
        code, report, stderr = send(project)
        assert code == 3, stderr
        assert report["counts"]["failed"] == UPDATE_AUDIENCE
        rows = ledger_rows(project).values()
        outcomes = Counter((row["status"], row["attempts"], row["code"]) for row in rows)
        refusal = int(relay.session_limit_reply[:3])
        assert outcomes == {("failed", max_attempts, refusal): UPDATE_AUDIENCE}
        assert relay.messages == [] and relay.connections == CONCURRENCY
        assert relay.session_limit_replies == max_attempts * UPDATE_AUDIENCE


def test_a_limit_below_one_is_a_config_problem(project: Path) -> None:
    text = project.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    data["transport"] = "smtp"
    data["smtp"] = {"host": "127.0.0.1", "max_messages_per_connection": 0}
    project.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    line = next(
        number
        for number, content in enumerate(project.read_text(encoding="utf-8").splitlines(), 1)
        if "max_messages_per_connection" in content
    )
    result = invoke(project, "check")
    assert result.exit_code == 1
    assert (
        f"{project.name}:{line}: 'smtp.max_messages_per_connection' must be a whole number ≥ 1"
        in result.output
    )


@pytest.mark.parametrize(
    ("reply", "ends", "names_limit"),
    [
        ("452 4.5.3 Too many recipients", True, True),
        ("421 4.7.0 mx.test too many messages in this connection", True, True),
        ("451 4.7.1 Too many messages per session, reconnect", True, True),
        ("421 4.3.2 Service shutting down", True, False),
        ("452 4.2.2 Mailbox full", True, False),
        ("452 4.2.2 Mailbox full (too many messages)", True, False),  # the recipient's
        ("451 4.3.0 Try again later", False, False),
        ("550 5.5.3 Too many recipients", False, False),
    ],
)
def test_which_replies_end_a_session_and_which_teach_its_limit(
    reply: str, ends: bool, names_limit: bool
) -> None:
    code, text = int(reply[:3]), reply[4:]
    assert (ends_session(code, text), names_session_limit(code, text)) == (ends, names_limit)
