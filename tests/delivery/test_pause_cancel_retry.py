"""Pause, cancel and retry (issue 24): ``statusmail pause ID`` stops a running send within
a second, those in flight finished and nothing lost; ``resume`` and a send finish with
everyone exactly once; ``cancel`` makes the rest ``cancelled``, never sent; ``retry
--failed`` (or ``--code``) re-queues exactly the failed recipients, never a suppressed one."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from conftest import (
    BLOCK_AUDIENCE,
    SECRET_ENV,
    UPDATE,
    UPDATE_AUDIENCE,
    copy_sample,
    invoke,
    outbox_count,
    outbox_messages,
    recipient,
    wait_for,
)
from delivery_helpers import add_subscribers, ledger_rows, point_at, send
from smtp_server import RecordingServer
from statusmail import watch
from statusmail.delivery import controls, intake, stream
from statusmail.ledger import Ledger
from statusmail.project.config import load_config
from statusmail.project.subscriber_rows import RowProblem, Subscriber

AUDIENCE = 1_514  # the 1,500 generated and the sample's 14


TO = re.compile(rb"^To: ([^\r\n]*)", re.MULTILINE)


@pytest.fixture
def big(tmp_path: Path) -> Iterator[Path]:
    """The sample with 1,500 more subscribers, in memory where Linux has /dev/shm: each
    message is fsync'ed into the Maildir, and on a busy disk 1,500 fsyncs take seconds."""
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() else tmp_path
    try:
        config = copy_sample(folder / "project")
        add_subscribers(config, 1_500)
        yield config
    finally:
        if folder != tmp_path:
            shutil.rmtree(folder)


def outbox_recipients(config: Path) -> Counter[bytes]:
    """The To: header of each message in the outbox, counted (a cheap look: 1,500
    messages parsed in full would take seconds)."""
    found: Counter[bytes] = Counter()
    for path in (config.parent / "outbox" / "new").iterdir():
        to = TO.search(path.read_bytes())
        assert to is not None, path
        found[to[1]] += 1
    return found


def statuses(config: Path) -> Counter[str]:
    return Counter(row["status"] for row in ledger_rows(config).values())


def in_background(config: Path, when_sent: int, act: str) -> tuple[threading.Thread, list[float]]:
    """Once ``when_sent`` messages are in the outbox, ``act`` (pause or cancel) the entry
    as ``statusmail pause`` does, from another thread; the list gets the moment (epoch)."""
    moments: list[float] = []

    def run() -> None:
        wait_for(lambda: outbox_count(config) >= when_sent, timeout=20, what="the first messages")
        moments.append(time.time())
        getattr(controls, act)(load_config(config), UPDATE, Console(file=io.StringIO()))

    thread = threading.Thread(target=run)
    thread.start()
    return thread, moments


def last_written(config: Path) -> float:
    return max(path.stat().st_mtime for path in (config.parent / "outbox" / "new").iterdir())


def test_pause_stops_a_running_send_within_a_second_and_resume_finishes_everyone_once(
    big: Path,
) -> None:
    project = big
    thread, moments = in_background(project, 100, "pause")
    # about 3 s unpaused: paused at 100, it sends at most 500 more within the second
    code, report, _ = send(project, UPDATE, "--rate", "500")
    thread.join()
    assert code == 4 and "paused" in report["stopped"]
    assert last_written(project) - moments[0] < 1.0  # no message began after a second
    counts = statuses(project)
    sent = outbox_recipients(project)
    assert counts["sent"] == sum(sent.values()) == len(sent) < AUDIENCE / 2
    assert counts["sent"] + counts["pending"] == AUDIENCE  # nothing lost, nothing failed

    status = json.loads(invoke(project, "status", UPDATE, "--json").stdout)
    assert status["control"]["state"] == "paused"
    listed = {row["id"]: row for row in json.loads(invoke(project, "list", "--json").stdout)}
    assert listed[UPDATE]["progress"].endswith("(paused)")

    resumed = invoke(project, "resume", UPDATE)
    assert resumed.exit_code == 0 and "resumed" in resumed.stdout
    code, report, err = send(project, UPDATE, "--rate", "0")
    assert code == 0, err
    everyone = outbox_recipients(project)
    assert len(everyone) == AUDIENCE and set(everyone.values()) == {1}
    assert statuses(project) == {"sent": AUDIENCE}


def test_cancel_leaves_the_rest_cancelled_and_a_later_send_sends_none_of_them(
    project: Path,
) -> None:
    thread, _ = in_background(project, 2, "cancel")
    code, report, stderr = send(project, UPDATE, "--rate", "10", "--concurrency", "1")
    thread.join()
    # nothing is left to continue: not 4, "re-run to continue", nor "the rest stay
    # pending" (review)
    assert code == 0 and "cancelled" in report["stopped"]
    assert "in-flight messages finish" in stderr and "stay pending" not in stderr
    counts = statuses(project)
    sent = {recipient(m) for m in outbox_messages(project)}
    assert counts["sent"] == len(sent) < 14 and counts["sent"] + counts["cancelled"] == 14
    assert not counts["pending"]

    again = invoke(project, "send", UPDATE, "--yes")
    assert again.exit_code == 0 and "was cancelled" in again.output
    assert {recipient(m) for m in outbox_messages(project)} == sent
    assert invoke(project, "resume", UPDATE).exit_code == 1  # a cancel is for good
    status = invoke(project, "status", UPDATE)
    assert "cancelled" in status.stdout
    assert (
        json.loads(invoke(project, "status", UPDATE, "--json").stdout)["cancelled"]
        == (counts["cancelled"])
    )


REFUSED = {
    "anna.petrova@example.org": "550 5.1.1 No such user",
    "ivan.smirnov@example.com": "552 5.2.2 Mailbox full",
    "olga.kuznetsova@example.net": "552 5.2.2 Mailbox full",
}


@pytest.mark.parametrize("act", ["cancel", "pause"])
def test_workers_waiting_for_their_slot_send_nothing_once_stopped(project: Path, act: str) -> None:
    """At a slow rate most workers wait for their slot of the rate limit: a cancel or a
    pause must stop them there, not let each send when its slot comes (seconds later)."""
    thread, moments = in_background(project, 2, act)
    started = time.time()
    code, report, _ = send(project, UPDATE, "--rate", "2", "--concurrency", "6")
    ended = time.time()
    thread.join()
    assert code == (4 if act == "pause" else 0) and act[:5] in report["stopped"]
    assert last_written(project) - moments[0] < 1.0  # nothing began a second after
    assert ended - moments[0] < 2.0, (ended - started, ended - moments[0])
    counts = statuses(project)
    left = "cancelled" if act == "cancel" else "pending"
    assert counts["sent"] == outbox_count(project) < 14
    assert counts["sent"] + counts[left] == 14


def test_a_pause_ends_a_selection_reading_a_long_list_for_few(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list where the audience is a few among many: the first batch of the selection
    is a scan of most of the list, and the run's end waits for that thread. After the
    sample's rows, the list goes on (for up to 8 s) with readers outside the audience;
    the entry is paused while they are read."""
    real = intake.listed
    reading = threading.Event()

    def long_list(*args: Any, **kwargs: Any) -> Iterator[Subscriber | RowProblem]:
        yield from real(*args, **kwargs)
        until = time.monotonic() + 8
        n = 0
        while time.monotonic() < until:
            n += 1
            if n == 10_000:
                reading.set()
            email = f"far.away.{n}@example.org"
            yield Subscriber(email, email, "", "en", "US", frozenset(), "active", project, 1000 + n)

    monkeypatch.setattr(stream, "listed", long_list)
    paused: list[float] = []

    def pause() -> None:
        assert reading.wait(20)
        paused.append(time.monotonic())
        controls.pause(load_config(project), UPDATE, Console(file=io.StringIO()))

    thread = threading.Thread(target=pause)
    thread.start()
    code, report, _ = send(project, UPDATE, "--rate", "0")
    ended = time.monotonic()
    thread.join()
    assert code == 4 and "paused" in report["stopped"]
    assert ended - paused[0] < 2.0, ended - paused[0]
    assert statuses(project)["sent"] == outbox_count(project) == 0  # nothing was selected yet


def test_an_entry_whose_selection_did_not_end_is_not_complete_and_watch_ends_it(
    project: Path,
) -> None:
    """--limit or the hourly cap stopped a run once everyone queued so far was sent,
    while its selection still read a long list (a review's run: 1 reader, 300,000
    unsubscribed rows, then 50 more): nobody was pending, so the entry was marked
    complete, and watch never sent to the 50. Here the ledger is put in the state such
    a run leaves: a selection begun (a new generation) and never ended."""
    code, _, _ = send(project, UPDATE, "--rate", "0")
    assert code == 0
    db = sqlite3.connect(project.parent / "statusmail.db")
    with db:
        db.execute(
            "UPDATE entries SET generation = generation + 1, completed_at = NULL"
            " WHERE entry_id = ?",
            (UPDATE,),
        )
    with Ledger(project.parent / "statusmail.db") as ledger:
        assert ledger.mark_complete_if_done(UPDATE) is False
        state = ledger.entry_state(UPDATE)
        assert state is not None and state[1] is None
    with db:  # as statusmail before this marked it
        db.execute("UPDATE entries SET completed_at = '2026-12-07T00:00:00+00:00'")
    db.close()
    with Ledger(project.parent / "statusmail.db", readonly=True) as ledger:
        state = ledger.entry_state(UPDATE)
        assert state is not None and state[1] is None  # still not complete
    # status and list say the counts are of the selection so far, not of the lists
    said = invoke(project, "status", UPDATE, env=SECRET_ENV).output
    assert f"{UPDATE}: its selection stopped before the end of the lists" in said
    [row] = [r for r in json.loads(invoke(project, "list", "--json").stdout) if r["id"] == UPDATE]
    assert row["selection_unfinished"] is True and row["progress"] == "14/14+ (selecting)"
    watched = invoke(project, "watch", "--once", "--rate", "0", env=SECRET_ENV)
    assert watched.exit_code == 0, watched.output
    assert f"{UPDATE}: sent 0" in watched.output  # watch took it up, ended its selection
    with Ledger(project.parent / "statusmail.db", readonly=True) as ledger:
        assert ledger.selection_basis(UPDATE) is not None
    assert outbox_count(project) == UPDATE_AUDIENCE + BLOCK_AUDIENCE  # nobody twice
    status = json.loads(invoke(project, "status", UPDATE, "--json").stdout)
    assert status["selection_unfinished"] is False and status["complete"] is True


def test_a_cancel_while_the_selection_streams_leaves_nobody_pending(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The selection goes on adding batches until it sees the run's stop: those must
    end cancelled too, not pending in a cancelled entry."""
    real = intake.listed
    reading = threading.Event()

    def long_list(*args: Any, **kwargs: Any) -> Iterator[Subscriber | RowProblem]:
        yield from real(*args, **kwargs)
        for n in range(200_000):
            if n == 20_000:
                reading.set()
            email = f"reader.{n}@example.org"
            yield Subscriber(
                email,
                email,
                "",
                "ru",
                "RU",
                frozenset({"service-status"}),
                "active",
                project,
                1000 + n,
            )

    monkeypatch.setattr(stream, "listed", long_list)

    def cancel() -> None:
        assert reading.wait(30)
        controls.cancel(load_config(project), UPDATE, Console(file=io.StringIO()))

    thread = threading.Thread(target=cancel)
    thread.start()
    code, report, _ = send(project, UPDATE, "--rate", "200")
    thread.join()
    assert code == 0 and "cancelled" in report["stopped"]
    counts = statuses(project)
    assert counts["cancelled"] > 0 and not counts["pending"], counts


def test_retry_failed_resends_exactly_the_failed_ones_never_a_suppressed_one(
    project: Path,
) -> None:
    with RecordingServer(reject_rcpt=dict(REFUSED)) as server:
        point_at(project, server.port)
        code, _, err = send(project)
        assert code == 3, err
        assert statuses(project) == {"sent": 11, "failed": 3}

        server.reject_rcpt = {}  # the mailboxes are fixed now
        retried = invoke(project, "retry", UPDATE, "--code", "5.2.2")
        assert retried.exit_code == 0 and "2 failed recipient(s) of code 5.2.2" in retried.stdout
        code, _, err = send(project)
        assert code == 3, err  # the 5.1.1 one is still failed
        got = Counter(a.lower() for m in server.messages for a in m.rcpt_tos)
        assert len(got) == 13 and "anna.petrova@example.org" not in got  # the two, once more

        assert invoke(project, "suppress", "add", "anna.petrova@example.org").exit_code == 0
        retried = invoke(project, "retry", UPDATE, "--failed")
        assert retried.exit_code == 0 and "1 left failed: suppressed" in retried.stdout
        before = len(server.messages)
        code, _, err = send(project)
        assert len(server.messages) == before  # nothing to send: the suppressed stays failed
    assert set(got.values()) == {1}  # everyone sent exactly once
    assert ledger_rows(project)["anna.petrova@example.org"]["status"] == "failed"
    assert invoke(project, "retry", UPDATE, "--code", "5.x").exit_code == 2


def test_watch_leaves_a_paused_entry_saying_so_once_and_the_next_send_resumes_it(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert invoke(project, "pause", UPDATE).exit_code == 0  # before anything was sent
    watcher = watch.Watcher(load_config(project), watch.WatchOptions(poll_interval=0.1))
    with caplog.at_level(logging.INFO, logger="statusmail"):
        due = [e.id for e in watcher.due_entries()]
        assert UPDATE not in due and watcher.due_entries()  # the other entry is due
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{UPDATE}:")]
    assert len(said) == 1 and "paused" in said[0]

    code, _, err = send(project)
    assert code == 0 and "was paused" in err and "resumes it" in err
    assert statuses(project) == {"sent": 14}


def test_the_controls_state_on_either_engine(ledger_target: str | Path) -> None:
    """The SQL itself, on SQLite and PostgreSQL: a row a running sender holds is left to
    it; retry takes the failed rows of a code, never a suppressed address."""
    from statusmail.ledger import Ledger
    from statusmail.ledger import controls as ledger_controls

    rows = {
        "a@x.example": ("pending", None, None, None),
        "b@x.example": ("pending", None, None, "sender-1"),  # held, its lease running
        "c@x.example": ("failed", 552, "5.2.2 Mailbox full", None),
        "d@x.example": ("failed", 550, "5.1.1 No such user", None),
        "e@x.example": ("failed", 552, "5.2.2 Mailbox full", None),  # suppressed since
        "f@x.example": ("sent", 250, "2.0.0 Ok", None),
    }
    with Ledger(ledger_target) as ledger:
        ledger.database.execute(
            "INSERT INTO entries (entry_id, digest, selected_at, generation,"
            " selected_generation) VALUES ('e1', 'd', 'now', 1, 1)"
        )
        for address, (status, code, detail, holder) in rows.items():
            ledger.database.execute(
                "INSERT INTO deliveries (entry_id, address, email, locale, status, code,"
                " detail, selection, claimed_by, lease_until, created_at, updated_at)"
                " VALUES ('e1', :a, :a, 'en', :s, :c, :d, 1, :h, {now} + 60, 'now', 'now')",
                {"a": address, "s": status, "c": code, "d": detail, "h": holder},
            )
        ledger.suppress("e@x.example", "bounced")

        retried = ledger_controls.retry(ledger, "e1", "5.2.2")
        assert (retried.requeued, retried.suppressed, retried.unmatched) == (1, 1, 1)
        assert ledger_controls.pause(ledger, "e1").state == "paused"
        assert "paused" in (ledger_controls.stop_reason(ledger, "e1") or "")
        assert ledger_controls.resume(ledger, "e1") is not None
        assert ledger_controls.stop_reason(ledger, "e1") is None

        assert ledger_controls.cancel(ledger, "e1") == 2  # a and the retried c
        assert ledger_controls.held_by_senders(ledger, "e1") == 1
        ledger.release("e1", "sender-1")  # the sender stops and hands it back
        assert ledger_controls.cancel_pending(ledger, "e1") == 1
        assert ledger.counts("e1") == {
            "pending": 0,
            "sent": 1,
            "failed": 2,
            "skipped": 0,
            "cancelled": 3,
        }
        lifted = ledger_controls.resume(ledger, "e1")
        assert lifted is not None and lifted.state == "cancelled"  # and not lifted
        assert ledger_controls.stop_reason(ledger, "e1") is not None


def test_the_controls_answer_in_json_when_asked(project: Path) -> None:
    """The SPEC's common --json: pause, resume, cancel and retry refused it."""
    entry = "update-2020-04-21"

    def asked(*args: str) -> dict[str, Any]:
        result = invoke(project, *args, entry, "--json")
        document: dict[str, Any] = json.loads(result.stdout)
        assert document.get("exit_code", 0) == result.exit_code, result.output
        return document

    paused = asked("pause")
    assert (paused["ok"], paused["entry"], paused["state"]) == (True, entry, "paused")
    assert paused["message"].startswith(f"{entry} paused")
    assert asked("resume")["resumed"] is True
    assert asked("resume")["resumed"] is False  # not paused any more
    assert asked("cancel")["ok"] is True
    refused = asked("retry")
    assert refused["ok"] is False and refused["exit_code"] == 1
    assert "was cancelled" in refused["errors"][0]


def test_a_cancelled_entry_whose_selection_did_not_end_says_so_once(project: Path) -> None:
    """Cancelled, an entry whose selection stopped short still said "the next run selects
    the rest", and the cancel counted only the pending, not the readers never selected
    (review)."""
    code, _, _ = send(project, UPDATE, "--rate", "0", "--limit", "3")
    assert code == 4
    with sqlite3.connect(project.parent / "statusmail.db") as db:  # as a run cut short
        db.execute("UPDATE entries SET generation = generation + 1 WHERE entry_id = ?", (UPDATE,))
    cancelled = invoke(project, "cancel", UPDATE, env=SECRET_ENV).output
    assert "nor will the readers its selection had not reached yet" in cancelled
    said = invoke(project, "status", UPDATE, env=SECRET_ENV).output
    assert "selects the rest" not in said
    [row] = [r for r in json.loads(invoke(project, "list", "--json").stdout) if r["id"] == UPDATE]
    assert "(selecting)" not in row["progress"] and "(cancelled)" in row["progress"]
