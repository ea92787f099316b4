"""The group commit (issue 14): outcomes of many connections share one transaction, and
still no connection hands a message over while its previous one is unrecorded."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from aiosmtpd.smtp import Envelope

from delivery_helpers import add_subscribers, ledger_rows, point_at, send
from smtp_server import RecordingServer
from statusmail.delivery import engine as delivery
from statusmail.ledger import Ledger


def _unrecorded(project: Path, server: RecordingServer) -> list[str]:
    """Messages the relay has accepted whose rows the ledger does not yet show sent."""
    status = {
        row["ascii_email"] or row["email"]: row["status"] for row in ledger_rows(project).values()
    }
    return [m.rcpt_tos[0] for m in server.messages if status.get(m.rcpt_tos[0]) != "sent"]


@pytest.mark.parametrize("concurrency", [1, 4])
def test_no_message_is_handed_over_before_the_previous_one_on_its_connection_is_recorded(
    project: Path, concurrency: int
) -> None:
    """At the end of each DATA (when the relay takes the message), at most one accepted
    message per *other* connection may still be unrecorded: never this connection's."""
    add_subscribers(project, 120)
    seen: list[int] = []

    def check(_n: int, _envelope: Envelope) -> None:
        seen.append(len(_unrecorded(project, server)))

    with RecordingServer(data_reply=check) as server:
        point_at(project, server.port, concurrency=concurrency)
        code, report, stderr = send(project)
    assert code == 0, stderr
    assert report["counts"]["sent"] == len(server.messages) == len(seen) > 120
    assert max(seen) <= concurrency - 1, seen
    if concurrency > 1:
        assert max(seen) > 0  # the check can see an unrecorded message when there is one


def test_one_transaction_carries_the_outcomes_of_several_connections(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 8 connections a transaction carries several outcomes: the ledger waits until a
    connection needs its last outcome recorded, meanwhile the others finish theirs."""
    add_subscribers(project, 400)
    sizes: list[int] = []
    record = Ledger.record

    def counted(ledger: Ledger, entry_id: str, outcomes: list[object]) -> None:
        sizes.append(len(outcomes))
        record(ledger, entry_id, outcomes)  # type: ignore[arg-type]

    monkeypatch.setattr(Ledger, "record", counted)  # counts; the real record runs
    with RecordingServer() as server:
        point_at(project, server.port, concurrency=8)
        code, report, stderr = send(project)
    assert code == 0, stderr
    assert sum(sizes) == report["counts"]["sent"] == len(server.messages)
    # One transaction per outcome, or per loop turn, gives 1–2 on average.
    assert sum(sizes) / len(sizes) >= 3, sizes


def test_a_failed_commit_keeps_the_next_message_from_being_handed_over(project: Path) -> None:
    """The ledger file deleted after the relay took the third message: its outcome
    cannot be recorded, so the fourth message, already under way, never gets its end of
    DATA; the run stops with exit 4 naming the ledger."""
    add_subscribers(project, 40)
    ledger = project.parent / "statusmail.db"

    def delete_after_third(n: int, _envelope: Envelope) -> None:
        if n == 3:
            ledger.unlink()

    with RecordingServer(data_reply=delete_after_third) as server:
        point_at(project, server.port, concurrency=1)
        code, _report, stderr = send(project)
    assert code == 4, stderr
    assert "statusmail.db" in stderr and "deleted or replaced" in stderr
    assert len(server.messages) == 3
    assert server.data_commands == 3  # the fourth's DATA never ended
    assert not ledger_rows(project)  # (the file is gone; nothing else was written)


def test_a_send_ends_when_its_last_outcome_is_recorded(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The producer, waiting for this run's own last messages to be recorded, is woken
    by their commit: it does not sit out its poll interval (0.5 s at the end of every
    run before). With the interval made 30 s, only the wake-up can end the run in time."""
    monkeypatch.setattr(delivery, "POLL", 30.0)
    add_subscribers(project, 50)
    with RecordingServer() as server:
        point_at(project, server.port, concurrency=4)
        started = time.monotonic()
        code, report, stderr = send(project)
        took = time.monotonic() - started
    assert code == 0, stderr
    assert report["counts"]["sent"] == len(server.messages) == 64
    assert took < 15, took
