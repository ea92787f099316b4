"""Real SMTP delivery against aiosmtpd with faults injected on purpose (issue 3)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from aiosmtpd.smtp import Envelope

from conftest import (
    SECRET_ENV,
    UPDATE,
    UPDATE_AUDIENCE,
    closed_port,
    invoke,
    outbox_messages,
    recipient,
    spawn,
    wait_for,
)
from delivery_helpers import add_subscribers, ledger_rows, point_at, send, suppressed
from editing import replace_in
from smtp_server import RecordingServer, make_test_ca
from statusmail.ledger import FeedbackEvent, Ledger
from statusmail.ledger.base import now_iso

GENERATED = 150  # subscribers added where a run must be stopped halfway through


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one at a time"])
def test_plain_delivery_reuses_connections(project: Path, pipelining: bool) -> None:
    with RecordingServer(pipelining=pipelining) as server:
        point_at(project, server.port, concurrency=2)
        code, report, stderr = send(project)
        assert code == 0, stderr
        counts = server.count_by_recipient()
        assert len(counts) == UPDATE_AUDIENCE and set(counts.values()) == {1}
        assert server.connections == 2  # two long-lived connections, many messages each
        assert report["counts"]["sent"] == UPDATE_AUDIENCE
        # IDN domains go out in punycode; each message has exactly one recipient
        assert "maria@xn--e1afmkfd.xn--80akhbyknj4f" in counts
        assert all(len(m.rcpt_tos) == 1 for m in server.messages)
        rows = ledger_rows(project)
        for message in server.messages:
            address = (
                message.rcpt_tos[0]
                .lower()
                .replace("xn--e1afmkfd.xn--80akhbyknj4f", "пример.испытание")
            )
            assert rows[address]["message_id"] == message.message["Message-ID"]


def test_451_on_a_share_of_data_ends_with_everyone_delivered_once(project: Path) -> None:
    # Every third DATA is refused, but never the same recipient twice in a row: with a
    # plain "every third", two connections in step could refuse one recipient on all of
    # its 5 attempts (it happened in a full run on a busy machine).
    refused_last: set[str] = set()

    def every_third(n: int, envelope: Envelope) -> str | None:
        rcpt = envelope.rcpt_tos[0]
        if n % 3 == 0 and rcpt not in refused_last:
            refused_last.add(rcpt)
            return "451 4.3.0 Try again later"
        refused_last.discard(rcpt)
        return None

    with RecordingServer(data_reply=every_third) as server:
        point_at(project, server.port)
        code, _report, stderr = send(project)
        assert code == 0, stderr
        counts = server.count_by_recipient()
        assert len(counts) == UPDATE_AUDIENCE and set(counts.values()) == {1}
        rows = ledger_rows(project)
        attempts = Counter(row["attempts"] for row in rows.values())
        assert attempts[1] < UPDATE_AUDIENCE and sum(attempts.values()) == UPDATE_AUDIENCE
        assert server.data_commands == sum(row["attempts"] for row in rows.values())


def test_550_fails_at_once_exits_3_and_suppresses_unknown_users(project: Path) -> None:
    unknown = "ivan.smirnov@example.com"
    policy = "olga.kuznetsova@example.net"
    with RecordingServer(
        reject_rcpt={unknown: "550 5.1.1 User unknown", policy: "554 5.7.1 Message refused"}
    ) as server:
        point_at(project, server.port)
        code, report, stderr = send(project)
        assert code == 3, stderr
        assert report["counts"] == {
            "sent": UPDATE_AUDIENCE - 2,
            "failed": 2,
            "pending": 0,
            "skipped": 0,
        }
        rows = ledger_rows(project)
        assert rows[unknown]["status"] == "failed" and rows[unknown]["attempts"] == 1
        assert rows[unknown]["code"] == 550 and "User unknown" in rows[unknown]["detail"]
        assert rows[policy]["code"] == 554 and rows[policy]["attempts"] == 1
        assert unknown not in server.count_by_recipient()
        assert suppressed(project) == {unknown: "bounced"}, stderr
        # the next entry skips the bounced address but still tries the policy refusal
        server.reject_rcpt = {}
        code, _, stderr = send(project, "block-2020-01-23")
        assert code == 0, stderr
        block = ledger_rows(project, "block-2020-01-23")
        assert unknown not in block and policy in block
        # status reports the failures, masked
        status = invoke(project, "status", "update-2020-04-21")
        assert "i***@example.com" in status.stdout and unknown not in status.stdout
        # a re-run has nothing to send and exits 3 as before; its text says why (it said
        # only "already sent": review)
        again = invoke(project, "send", "update-2020-04-21", "--yes", env=SECRET_ENV)
        assert again.exit_code == 3, again.output
        assert "2 failed for good: statusmail status update-2020-04-21 --failed" in again.stdout


@pytest.mark.parametrize("reply", ["421 4.3.2 Closing", None])
def test_hangups_reconnect_and_finish(project: Path, reply: str | None) -> None:
    with RecordingServer(hangup_after=3, hangup_reply=reply) as server:
        point_at(project, server.port, concurrency=2)
        code, _report, stderr = send(project)
        assert code == 0, stderr
        counts = server.count_by_recipient()
        assert len(counts) == UPDATE_AUDIENCE and set(counts.values()) == {1}
        assert server.connections > 2


def test_slow_reply_is_retried_not_hung(project: Path) -> None:
    # the first DATA reply comes after the client's 0.3 s timeout (the message may have
    # been kept: the retry is the second copy the README allows)
    with RecordingServer(data_delay=lambda n: 1.0 if n == 1 else 0.0) as server:
        point_at(project, server.port, concurrency=1, timeout=0.3)
        started = time.monotonic()
        code, _report, stderr = send(project)
        assert time.monotonic() - started < 20
        assert code == 0, stderr
        rows = ledger_rows(project)
        assert all(row["status"] == "sent" for row in rows.values())
        assert sum(row["attempts"] for row in rows.values()) == UPDATE_AUDIENCE + 1
        counts = server.count_by_recipient()
        assert set(counts) == {m.rcpt_tos[0] for m in server.messages}
        assert len(counts) == UPDATE_AUDIENCE


def test_starttls_and_auth(project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = make_test_ca(tmp_path)
    with RecordingServer(
        tls_context=ca.server_context, auth=("status", "s3cret"), require_tls=True
    ) as server:
        point_at(project, server.port, security="starttls", username="status", ca_file=ca.ca_file)
        monkeypatch.setenv("STATUSMAIL_SMTP_PASSWORD", "s3cret")
        code, _, stderr = send(project)
        assert code == 0, stderr
        assert len(server.count_by_recipient()) == UPDATE_AUDIENCE

        monkeypatch.setenv("STATUSMAIL_SMTP_PASSWORD", "wrong")
        code, _, stderr = send(project, "block-2020-01-23")
        assert code == 1
        assert f"127.0.0.1:{server.port}" in stderr
        rows = ledger_rows(project, "block-2020-01-23")
        assert rows and {row["status"] for row in rows.values()} == {"pending"}


def test_unreachable_server_exits_1_and_marks_nothing_failed(project: Path) -> None:
    with closed_port() as port:
        point_at(project, port)
        code, report, stderr = send(project)
    assert code == 1
    assert f"127.0.0.1:{port}" in stderr
    # --json says why too (its "errors" were empty: review)
    assert any(f"127.0.0.1:{port}" in error for error in report["errors"]), report
    assert {row["status"] for row in ledger_rows(project).values()} == {"pending"}


def test_failure_threshold_stops_the_run_with_exit_4(project: Path) -> None:
    add_subscribers(project, 80)
    with RecordingServer(data_reply=lambda n, env: "554 5.7.1 Rejected") as server:
        point_at(project, server.port, concurrency=2, stop_after_failures=0.2)
        code, report, stderr = send(project)
        assert code == 4, stderr
        counts = report["counts"]
        assert counts["failed"] >= 20 and counts["pending"] > 0
        assert counts["failed"] + counts["pending"] == 80 + UPDATE_AUDIENCE
        assert "Re-run to continue" in stderr or report["stopped"]


def test_hourly_cap_stops_and_counts_what_the_ledger_already_sent(project: Path) -> None:
    with RecordingServer() as server:
        point_at(project, server.port, concurrency=1, max_per_hour=5)
        code, report, _ = send(project)
        assert code == 4 and report["counts"]["sent"] == 5
        assert "hourly" in report["stopped"]
        code, report, _ = send(project)  # same hour: the ledger says 5 went out already
        assert code == 4 and report["counts"]["sent"] == 5
        assert len(server.messages) == 5
        # Two of them bounce and one draws a complaint, read back within the hour: the
        # relay accepted them all the same, and they still count (they gave back their
        # slots: three more went out).
        went = [a for a, row in ledger_rows(project).items() if row["status"] == "sent"]
        with Ledger(project.parent / "statusmail.db") as ledger:
            ledger.record_feedback(
                FeedbackEvent(
                    kind,
                    address,
                    UPDATE,
                    "5.1.1",
                    "read back",
                    f"<report-{n}@relay.test>",
                    now_iso(),
                    evidence="read back",
                    mark=mark,
                )
                for n, (address, kind, mark) in enumerate(
                    zip(
                        went[:3],
                        ("hard", "hard", "complaint"),
                        ("bounced", "bounced", "complained"),
                        strict=True,
                    )
                )
            )
        assert Counter(row["status"] for row in ledger_rows(project).values())["sent"] == 2
        code, report, _ = send(project)
        assert code == 4 and "hourly" in report["stopped"]
        assert len(server.messages) == 5


def test_relay_down_mid_run_leaves_recipients_pending_not_failed(project: Path) -> None:
    server = RecordingServer()

    def go_down(n: int, envelope: object) -> str | None:
        if n == 5:  # the relay shuts down: this reply is its last word
            server.stop_listening()  # a reconnect must not find it still there
            threading.Thread(target=server.stop).start()
            return "421 4.3.2 Service shutting down"
        return None

    server.data_reply = go_down
    server.start()
    point_at(project, server.port, concurrency=1, max_attempts=3)
    code, report, stderr = send(project)
    assert code == 4, stderr
    assert "unreachable" in report["stopped"]
    statuses = Counter(row["status"] for row in ledger_rows(project).values())
    assert statuses == {"sent": 4, "pending": UPDATE_AUDIENCE - 4}
    with RecordingServer() as again:  # the relay is back (here: on another port)
        point_at(project, again.port, concurrency=1, max_attempts=3)
        code, report, stderr = send(project)
        assert code == 0, stderr
        delivered = Counter(server.count_by_recipient()) + again.count_by_recipient()
        assert len(delivered) == UPDATE_AUDIENCE and set(delivered.values()) == {1}


def test_relay_gone_in_the_middle_of_a_last_attempt_fails_nobody(project: Path) -> None:
    """The relay stops listening, then drops the connection in a DATA without a word: the
    recipient in hand was on its one attempt (max_attempts 1), but the relay went away,
    not the recipient: pending, no attempt charged, as when it cannot be reached."""
    server = RecordingServer(hangup_after=4, hangup_reply=None)

    def last_one(n: int, envelope: object) -> str | None:
        if n == 4:  # accepted, and no connection is taken after it
            server.stop_listening()
        return None

    server.data_reply = last_one
    server.start()
    try:
        point_at(project, server.port, concurrency=1, max_attempts=1)
        code, report, stderr = send(project)
    finally:
        server.stop()
    assert code == 4, stderr
    assert "unreachable" in report["stopped"]
    rows = ledger_rows(project).values()
    assert Counter(row["status"] for row in rows) == {"sent": 4, "pending": UPDATE_AUDIENCE - 4}
    assert {row["attempts"] for row in rows if row["status"] == "pending"} == {0}


def test_second_send_of_the_same_entry_refuses(project: Path) -> None:
    add_subscribers(project, 200)
    with RecordingServer() as server:
        point_at(project, server.port, rate=50, concurrency=1)
        with spawn(project, "send", "update-2020-04-21", "--yes", env=SECRET_ENV) as first:
            wait_for(lambda: len(server.messages) >= 3, what="the first run to be sending")
            code, _, stderr = send(project)
            assert code == 1
            assert "another statusmail run" in stderr
            first.stop()


def test_sigkill_mid_run_then_rerun_misses_nobody(project: Path) -> None:
    addresses = add_subscribers(project, GENERATED)
    concurrency = 3
    with RecordingServer() as server:
        point_at(project, server.port, rate=200, concurrency=concurrency)
        with spawn(project, "send", "update-2020-04-21", "--yes", env=SECRET_ENV) as process:
            wait_for(lambda: len(server.messages) >= 60, what="60 messages")
            os.kill(process.pid, signal.SIGKILL)
            assert process.finish() == -signal.SIGKILL
        delivered_before = len(server.messages)
        assert delivered_before < GENERATED + UPDATE_AUDIENCE
        code, _report, stderr = send(project, "update-2020-04-21", "--rate", "0")
        assert code == 0, stderr
        counts = server.count_by_recipient()
        assert set(addresses) <= set(counts)
        assert len(counts) == GENERATED + UPDATE_AUDIENCE
        duplicates = sum(n - 1 for n in counts.values())
        assert duplicates <= concurrency
        # a duplicate is the same message: same Message-ID
        ids: dict[str, set[str]] = {}
        for message in server.messages:
            ids.setdefault(message.rcpt_tos[0], set()).add(message.message["Message-ID"])
        assert all(len(v) == 1 for v in ids.values())


def test_sigterm_stops_cleanly_with_exit_4_and_no_duplicates(project: Path) -> None:
    add_subscribers(project, GENERATED)
    with RecordingServer() as server:
        point_at(project, server.port, rate=100, concurrency=3)
        with spawn(project, "send", "update-2020-04-21", "--yes", env=SECRET_ENV) as process:
            wait_for(lambda: len(server.messages) >= 30, what="30 messages")
            assert process.stop(signal.SIGTERM) == 4, process.stderr
        rows = ledger_rows(project)
        sent = {a for a, r in rows.items() if r["status"] == "sent"}
        assert len(sent) == len(server.messages)  # everything accepted was recorded
        assert {r["status"] for r in rows.values()} == {"sent", "pending"}
        code, _, stderr = send(project, "update-2020-04-21", "--rate", "0")
        assert code == 0, stderr
        counts = server.count_by_recipient()
        assert len(counts) == GENERATED + UPDATE_AUDIENCE and set(counts.values()) == {1}


def test_logs_mask_addresses_unless_asked(project: Path) -> None:
    with RecordingServer(
        reject_rcpt={"kate.morozova@example.com": "550 5.1.1 User unknown"}
    ) as server:
        point_at(project, server.port)
        code, _, stderr = send(project)
        assert code == 3
        assert "k***@example.com" in stderr and "kate.morozova@example.com" not in stderr
        assert "anna.petrova" not in stderr.lower()


def test_an_entry_changed_between_its_runs_is_not_finished_in_another_version(
    project: Path,
) -> None:
    """A run stopped after 4, the entry edited, a re-run: 4 got the old text and 10 the
    new, without a word, and the next send said the change "reached nobody" (review).
    Any change of the file counts: statusmail cannot tell which ones a reader sees."""
    code, _, _ = send(project, UPDATE, "--rate", "0", "--limit", "4")
    assert code == 4
    entry = project.parent / "updates" / f"{UPDATE}.yaml"
    text = entry.read_text(encoding="utf-8")
    entry.write_text(
        text.replace("Спасибо за терпение и поддержку!", "Благодарим за терпение и поддержку!"),
        encoding="utf-8",
    )
    again = invoke(project, "send", UPDATE, "--yes", "--rate", "0", env=SECRET_ENV)
    assert again.exit_code == 1, again.output
    assert f"{entry}: {UPDATE} changed since it began going out: 4 recipients got it" in (
        again.output
    )
    assert "--accept-edit" in again.output and "Traceback" not in again.output
    assert len(list((project.parent / "outbox" / "new").iterdir())) == 4
    code, report, _ = send(project, UPDATE, "--rate", "0", "--accept-edit")
    assert code == 0, report
    messages = outbox_messages(project)
    assert len(messages) == UPDATE_AUDIENCE
    assert Counter(recipient(m) for m in messages).most_common(1)[0][1] == 1
    done = invoke(project, "send", UPDATE, "--yes", env=SECRET_ENV)
    assert "was already sent" in done.output and "changed since" not in done.output


def test_a_message_the_relay_may_have_kept_is_sent_twice_at_most(project: Path) -> None:
    """A relay that takes the whole message, then closes without a reply: nobody can
    tell whether it kept it. The README allows a second copy; each was sent
    max_attempts times (5 copies of every message, a review's relay saw), and each
    recipient then marked failed 'connection lost'."""
    with RecordingServer(hangup_after=0, hangup_reply=None) as server:
        point_at(project, server.port)  # (retries 0.01 s apart)
        result = invoke(project, "send", UPDATE, "--yes", "--rate", "0", env=SECRET_ENV)
        assert server.data_commands == 2 * UPDATE_AUDIENCE, server.data_commands
    assert result.exit_code == 3, result.output
    rows = ledger_rows(project)
    assert {row["status"] for row in rows.values()} == {"failed"}
    assert all(row["attempts"] == 2 for row in rows.values()), rows
    assert all("may have been accepted" in row["detail"] for row in rows.values())


def test_retries_wait_at_least_as_long_as_the_backoff_says(project: Path) -> None:
    """retry_initial before the second attempt, doubling: 0.1, 0.2, 0.4, 0.8 s here.
    Jitter drawn from 0 up made the waits anything below those, so a greylisting relay
    (450 on every RCPT) saw five attempts within a few seconds with the sample's 1 s
    and the recipient failed for good, its attempts spent (review)."""
    greylisted = "anna.petrova@example.org"
    with RecordingServer(reject_rcpt={greylisted: "450 4.2.0 Greylisted, try later"}) as server:
        point_at(project, server.port, retry_initial=0.1, retry_max=60)
        started = time.monotonic()
        result = invoke(project, "send", UPDATE, "--yes", "--rate", "0", env=SECRET_ENV)
        took = time.monotonic() - started
    assert result.exit_code == 3, result.output
    assert ledger_rows(project)[greylisted]["attempts"] == 5
    assert took >= 0.1 + 0.2 + 0.4 + 0.8, took


def test_a_relay_refusing_the_sender_stops_the_run_failing_nobody(project: Path) -> None:
    """553 at MAIL FROM (the relay will not take our return path): every recipient was
    marked failed for good, exit 3, though none was to blame (review)."""
    with RecordingServer(reject_mail="553 5.7.1 Sender address rejected") as server:
        point_at(project, server.port)
        result = invoke(project, "send", UPDATE, "--yes", "--rate", "0", env=SECRET_ENV)
    assert result.exit_code == 4, result.output
    said = "the relay cannot take it (553 5.7.1 Sender address rejected (reply to MAIL from"
    assert f"{said} 127.0.0.1:{server.port})" in result.output
    assert "Fix the relay or the project's addresses, then re-run to continue." in result.output
    assert {row["status"] for row in ledger_rows(project).values()} == {"pending"}
    assert all(row["attempts"] == 0 for row in ledger_rows(project).values())


def test_a_relay_refusing_everyone_as_unknown_suppresses_nobody(project: Path) -> None:
    """A misconfigured relay answered Postfix's "User unknown in local recipient table"
    to every RCPT: each run stopped on failures (exit 4, "re-run to continue"), having
    suppressed its 20 or so for good, 20 more on every re-run; and the breaker, fed from
    the commits, let 27 to 36 fail before it tripped (review)."""
    add_subscribers(project, 200)
    unknown = "550 5.1.1 <x@example.net>: Recipient address rejected: User unknown in local"
    with RecordingServer(reject_every_rcpt=unknown + " recipient table") as server:
        point_at(project, server.port, stop_after_failures=0.2)
        result = invoke(project, "send", UPDATE, "--yes", "--rate", "0", env=SECRET_ENV)
    assert result.exit_code == 4, result.output
    assert "not suppressed: the relay took nothing else or the run stopped on failures" in (
        result.output
    )
    assert suppressed(project) == {}
    failed = [row for row in ledger_rows(project).values() if row["status"] == "failed"]
    assert 20 <= len(failed) <= 20 + 2  # the breaker's first look, and one per connection


def _edited_after_four(project: Path) -> Path:
    """The April update sent to 4, then its Russian text changed; returns the config."""
    code, _, _ = send(project, UPDATE, "--rate", "0", "--limit", "4")
    assert code == 4
    entry = project.parent / "updates" / f"{UPDATE}.yaml"
    replace_in(entry, "Спасибо за терпение и поддержку!", "Благодарим за терпение и поддержку!")
    return project


def test_accept_edit_answered_no_at_the_prompt_accepts_nothing(project: Path) -> None:
    """The declined run said "nothing was recorded", yet the ledger kept the new text as
    the entry's, and the next send without --accept-edit went on (review)."""
    from statusmail import pipeline
    from statusmail.project.config import load_config

    config = load_config(_edited_after_four(project))
    prepared = pipeline.prepare(config, pipeline.load(config, UPDATE))
    request = pipeline.Request(accept_edit=True, confirm=lambda *_: False)
    with pipeline.open_ledger(config, UPDATE) as held, pytest.raises(pipeline.Declined):
        pipeline.start(prepared, held, request)
    again = invoke(project, "send", UPDATE, "--yes", "--rate", "0", env=SECRET_ENV)
    assert again.exit_code == 1 and "changed since it began going out" in again.output


def test_a_sender_joining_another_s_selection_is_refused_an_edited_entry(
    project: Path, postgres: str
) -> None:
    """On PostgreSQL a second sender joining the selection another still held sent the
    new text beside the first's old one, without --accept-edit (review)."""
    from statusmail.ledger import Ledger

    env = {**SECRET_ENV, "STATUSMAIL_LEDGER": postgres}
    first = invoke(project, "send", UPDATE, "--yes", "--rate", "0", "--limit", "4", env=env)
    assert first.exit_code == 4, first.output
    replace_in(
        project.parent / "updates" / f"{UPDATE}.yaml",
        "Спасибо за терпение и поддержку!",
        "Благодарим за терпение и поддержку!",
    )
    with Ledger(postgres) as other:  # another sender's selection, its lease still running
        other.take_selection(UPDATE, "its digest", "other", 60)
    joined = invoke(project, "send", UPDATE, "--yes", "--rate", "0", env=env)
    assert joined.exit_code == 1, joined.output
    assert "changed since it began going out" in joined.output


def test_a_paused_run_still_suppresses_a_reader_the_relay_calls_unknown(project: Path) -> None:
    """Workers waiting for their slots when the run was paused handed their recipients
    back; the breaker counted those as failures, tripped, and held the one "user unknown"
    refusal as if the relay refused everyone (review)."""
    import io

    from rich.console import Console

    from statusmail.delivery import controls
    from statusmail.project.config import load_config

    unknown = add_subscribers(project, 200)[0]  # (the lists' first file: among the first)
    with RecordingServer(reject_rcpt={unknown: "550 5.1.1 User unknown"}) as server:
        point_at(project, server.port, rate=40, concurrency=20, stop_after_failures=0.2)

        def pause() -> None:
            wait_for(lambda: len(server.messages) >= 30, timeout=20, what="30 messages")
            controls.pause(load_config(project), UPDATE, Console(file=io.StringIO()))

        thread = threading.Thread(target=pause)
        thread.start()
        code, report, stderr = send(project, UPDATE)
        thread.join()
    assert code == 4 and "paused" in str(report["stopped"]), stderr
    assert "not suppressed" not in stderr
    assert suppressed(project) == {unknown: "bounced"}, stderr


def test_a_language_whose_message_is_over_the_relay_s_size_does_not_hold_the_others(
    project: Path,
) -> None:
    """One language's message over the relay's SIZE halted the whole run, the readers
    whose messages fit included, run after run (review). Those over it fail, saying why;
    the others are sent."""
    with RecordingServer(size_limit=10_000) as server:
        point_at(project, server.port)
        result = invoke(project, "send", UPDATE, "--yes", "--rate", "0", env=SECRET_ENV)
        sizes = [len(m.data) for m in server.messages]
    rows = ledger_rows(project).values()
    over = [row for row in rows if row["status"] == "failed"]
    assert sizes and over, "the sample's messages no longer straddle 10,000 octets"
    assert result.exit_code == 3, result.output
    assert max(sizes) <= 10_000 and len(sizes) + len(over) == UPDATE_AUDIENCE
    assert all("takes messages of at most 10,000 octets (SIZE)" in row["detail"] for row in over)
    assert {row["code"] for row in over} == {552}  # as a relay's 5.3.4 is: retry --code 552


def test_a_stop_that_cannot_wait_for_the_relay_says_what_was_recorded(project: Path) -> None:
    """A relay answering each message 3 s after its end: SIGTERM ends the run within a
    second, the unanswered message stays pending, and the run said only "interrupted by
    SIGTERM" (review)."""
    with RecordingServer(data_delay=3.0) as server:
        point_at(project, server.port, concurrency=1)
        with spawn(project, "send", UPDATE, "--yes", env=SECRET_ENV) as process:
            wait_for(lambda: server.data_commands >= 1, what="the first message's DATA")
            started = time.monotonic()
            assert process.stop(signal.SIGTERM) == 4, process.stderr
            assert time.monotonic() - started < 2
    said = process.stderr
    assert "interrupted by SIGTERM while delivering" in said, said
    assert f"recorded in all: pending {UPDATE_AUDIENCE} (statusmail status {UPDATE})" in said
    assert "Traceback" not in said


def test_a_message_the_relay_may_have_kept_is_not_tried_twice_more_after_a_stop(
    project: Path,
) -> None:
    """Its answer lost, the run stopped while waiting to try once more: the row went back
    to pending, and the next run tried it twice again (the relay kept 3 copies: review).
    It is recorded failed "may have been accepted" instead."""
    with RecordingServer(data_delay=1.0) as slow:
        point_at(project, slow.port, concurrency=1, timeout=0.3, retry_initial=5)
        with spawn(project, "send", UPDATE, "--yes", "--limit", "1", env=SECRET_ENV) as process:
            # its end written, the answer 1 s away, the client's timeout 0.3 s: stopped
            # now or in the wait for its one more try, it goes no further
            wait_for(lambda: slow.data_commands >= 1, what="the first message's DATA")
            assert process.stop(signal.SIGTERM) == 4, process.stderr
        assert slow.data_commands == 1
    [row] = [r for r in ledger_rows(project).values() if r["attempts"]]
    assert row["status"] == "failed" and "may have been accepted" in row["detail"], row
    with RecordingServer() as server:
        point_at(project, server.port)
        code, _, stderr = send(project, UPDATE)
        assert code == 3, stderr  # (the one recorded failed)
        assert len(server.messages) == UPDATE_AUDIENCE - 1


def test_a_short_run_the_relay_calls_everyone_unknown_in_suppresses_nobody(
    project: Path,
) -> None:
    """The sample's 14, too few to trip the breaker (it needs 20 outcomes): all 14 were
    suppressed for every later entry (review)."""
    with RecordingServer(reject_every_rcpt="550 5.1.1 User unknown") as server:
        point_at(project, server.port)
        result = invoke(project, "send", UPDATE, "--yes", "--rate", "0", env=SECRET_ENV)
    assert result.exit_code == 3, result.output
    assert f"{UPDATE_AUDIENCE} recipients refused as unknown, not suppressed" in result.output
    assert suppressed(project) == {}


def test_watch_once_with_an_entry_refused_as_changed_exits_4(project: Path) -> None:
    """Readers still pending, the entry refused until its text is settled: watch --once
    said 0, as if all were done (review)."""
    _edited_after_four(project)
    watched = invoke(project, "watch", "--once", "--rate", "0", env=SECRET_ENV)
    assert "changed since it began going out" in watched.output
    assert watched.exit_code == 4, watched.output
