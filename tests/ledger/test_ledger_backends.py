"""The ledger contract, the same on both engines: each test runs on a SQLite file and on
a schema of the real PostgreSQL server."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import SECRET, clean_environ, command, invoke, outbox_count, outbox_messages, wait_for
from delivery_helpers import add_subscribers
from statusmail.domain import DeliveryStatus, Outcome, Recipient, short_source
from statusmail.errors import LedgerError, SchemaTooNew
from statusmail.ledger import SCHEMA_VERSION, Ledger, StagedRow, copy_ledger, store
from statusmail.ledger.events import TOKENS_KEPT_PAST_STALE
from statusmail.ledger.queue import LocalQueue

ENTRY = "update-2020-04-21"
ENV = {"STATUSMAIL_UNSUBSCRIBE_SECRET": SECRET}


def recipient(i: int) -> Recipient:
    address = f"r{i:03d}@example.org"
    return Recipient(address, address, address, f"R {i}", "en", "NL")


def queued(ledger: Ledger, count: int) -> int:
    """An entry whose selection of ``count`` recipients is complete; its generation."""
    generation = ledger.begin_selection(ENTRY, "digest")
    ledger.reset_staging()
    ledger.stage(StagedRow.selected(recipient(i)) for i in range(count))
    ledger.enqueue(ENTRY, generation)
    ledger.finish_selection(ENTRY, generation, count, skip_removed=True)
    return generation


def use_ledger(config: Path, target: str | Path) -> dict[str, str]:
    """The environment that points ``config``'s runs at ``target``."""
    return {**ENV, "STATUSMAIL_LEDGER": str(target)}


# -- the schema --------------------------------------------------------------------------


def test_processes_opening_a_new_ledger_at_once_migrate_it_once(ledger_target: str | Path) -> None:
    """Several senders started together on an empty database: one migrates, the others
    wait for it and find the schema done (none fails on the version already recorded)."""
    errors: list[Exception] = []

    def open_one() -> None:
        try:
            Ledger(ledger_target).close()
        except Exception as exc:  # collected: the assertion below shows them
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    with Ledger(ledger_target) as ledger:
        rows = ledger.database.execute("SELECT version FROM schema_version ORDER BY version")
    assert [row[0] for row in rows] == list(range(1, SCHEMA_VERSION + 1))


def test_migrations_apply_once_and_a_newer_schema_is_refused(ledger_target: str | Path) -> None:
    with Ledger(ledger_target) as ledger:
        assert ledger.schema_version() == SCHEMA_VERSION
        assert ledger.migrate() == SCHEMA_VERSION  # nothing left to do
        with ledger.transaction():
            ledger.database.execute(
                "INSERT INTO schema_version VALUES (:n, 'later')", {"n": SCHEMA_VERSION + 1}
            )
    with pytest.raises(LedgerError, match=f"newer than this statusmail knows \\({SCHEMA_VERSION}"):
        Ledger(ledger_target)


def test_ledger_migrate_command(project: Path, ledger_target: str | Path) -> None:
    result = invoke(project, "ledger", "migrate", env=use_ledger(project, ledger_target))
    assert result.exit_code == 0, result.stderr
    assert f"schema version {SCHEMA_VERSION}" in result.stdout + result.stderr


# -- the queue ---------------------------------------------------------------------------


def test_claims_are_exclusive_leased_and_handed_back(ledger_target: str | Path) -> None:
    with Ledger(ledger_target) as one, Ledger(ledger_target) as two:
        generation = queued(one, 10)
        first = one.claim(ENTRY, generation, "w1", 4, lease=60)
        second = two.claim(ENTRY, generation, "w2", 4, lease=60)
        assert [r.address for r in first] == [recipient(i).address for i in range(4)]
        assert [r.address for r in second] == [recipient(i).address for i in range(4, 8)]
        assert all(r.row for r in first + second)  # the order number return paths name
        # a lease that ran out: another worker takes what the first one held
        one.renew(ENTRY, "w1", lease=-1)
        third = two.claim(ENTRY, generation, "w3", 10, lease=60)
        assert {r.address for r in third} == {r.address for r in first} | {
            recipient(8).address,
            recipient(9).address,
        }
        # handed back: free for anyone at once
        two.release(ENTRY, "w3")
        assert len(one.claim(ENTRY, generation, "w4", 10, lease=60)) == 6
        assert one.remaining(ENTRY, generation) == 10


def test_one_row_per_recipient_and_outcomes_recorded(ledger_target: str | Path) -> None:
    with Ledger(ledger_target) as ledger:
        generation = queued(ledger, 5)
        queued(ledger, 5)  # selected again: still one row each
        assert ledger.counts(ENTRY)["pending"] == 5
        taken = ledger.claim(ENTRY, generation + 1, "w", 5, lease=60)
        ledger.record(
            ENTRY,
            [
                Outcome(r.address, DeliveryStatus.SENT, 1, 250, None, f"<{i}@x>")
                for i, r in enumerate(taken)
            ],
        )
        assert ledger.counts(ENTRY) == {"pending": 0, "sent": 5, "failed": 0, "skipped": 0}
        assert ledger.remaining(ENTRY, generation + 1) == 0
        assert ledger.delivery_by_message_id("<3@x>") == (ENTRY, recipient(3).address)
        assert ledger.delivery_by_row(taken[2].row or 0) == (ENTRY, recipient(2).address)


def test_suppression_is_respected_by_every_claim(ledger_target: str | Path) -> None:
    with Ledger(ledger_target) as ledger:
        generation = queued(ledger, 4)
        assert ledger.suppress(recipient(1).address, "unsubscribed", "one-click")
        assert not ledger.suppress(recipient(1).address, "manual")  # the first reason stays
        taken = ledger.claim(ENTRY, generation, "w", 10, lease=60)
        assert recipient(1).address not in {r.address for r in taken}
        assert ledger.suppression_of(recipient(1).address) == "unsubscribed"
        assert ledger.skip_suppressed(ENTRY) == 1


def test_the_shared_rate_limit_spaces_slots(ledger_target: str | Path) -> None:
    with Ledger(ledger_target) as one, Ledger(ledger_target) as two:
        waits = [ledger.take_slot("send", 0.5) for ledger in (one, two, one, two)]
    # slot n starts n half-seconds after the first, whoever asks
    for n, wait in enumerate(waits):
        assert wait == pytest.approx(0.5 * n, abs=0.2), waits


# -- whole runs --------------------------------------------------------------------------


def test_send_and_resend_on_either_engine(project: Path, ledger_target: str | Path) -> None:
    env = use_ledger(project, ledger_target)
    first = invoke(project, "send", ENTRY, "--yes", "--rate", "0", "--json", env=env)
    assert first.exit_code == 0, first.stderr
    assert json.loads(first.stdout)["counts"]["sent"] == 14
    again = invoke(project, "send", ENTRY, "--yes", "--rate", "0", "--json", env=env)
    assert again.exit_code == 0 and json.loads(again.stdout)["this_run"]["sent"] == 0
    assert len(outbox_messages(project)) == 14
    invoke(project, "suppress", "add", "anna.petrova@example.org", env=env)
    block = invoke(project, "send", "block-2020-01-23", "--yes", "--rate", "0", "--json", env=env)
    assert block.exit_code == 0, block.stderr
    to = [str(m["To"].addresses[0].addr_spec).lower() for m in outbox_messages(project)]
    assert to.count("anna.petrova@example.org") == 1  # April's, not January's


@pytest.mark.timeout(90)
def test_killed_and_resumed_misses_nobody(project: Path, ledger_target: str | Path) -> None:
    addresses = add_subscribers(project, 150)
    data = yaml.safe_load(project.read_text(encoding="utf-8"))
    data["sending"] = {"rate": 150, "concurrency": 3, "lease": 1}
    project.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    env = use_ledger(project, ledger_target)
    process = subprocess.Popen(
        command(project, "send", ENTRY, "--yes"),
        env=clean_environ(**env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: outbox_count(project) >= 40, what="the first messages")
    finally:  # killed whatever happened: never left running into the next tests
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    time.sleep(1.1)  # the killed run's leases running out is what this tests
    resumed = invoke(project, "send", ENTRY, "--yes", "--rate", "0", env=env)
    assert resumed.exit_code == 0, resumed.stderr
    messages = outbox_messages(project)
    to = [str(m["To"].addresses[0].addr_spec).lower() for m in messages]
    assert set(to) >= set(addresses)  # nobody missed
    assert len(to) - len(set(to)) <= 3  # duplicates: at most what was in flight
    ids: dict[str, str] = {}
    for address, message in zip(to, messages, strict=True):
        assert ids.setdefault(address, message["Message-ID"]) == message["Message-ID"]


def test_ledger_copy_keeps_every_row(project: Path, postgres: str) -> None:
    env = {**ENV}
    assert invoke(project, "send", ENTRY, "--yes", "--rate", "0", env=env).exit_code == 0
    invoke(project, "suppress", "add", "someone@example.org", env=env)
    fresh = time.time() + 300
    with Ledger(project.parent / "statusmail.db") as source:  # a Mailgun token taken
        assert source.take_webhook_token("mailgun", "1700000000abc", fresh, time.time())
    copied = invoke(project, "ledger", "copy", "--to", postgres, env=env)
    assert copied.exit_code == 0, copied.stderr
    assert "every count equal" in copied.stdout
    lines = dict(line.split("\t", 1) for line in copied.stdout.splitlines() if "\t" in line)
    assert lines["deliveries"] == "14\t14" and lines["suppressions"] == "1\t1"
    assert lines["webhook_tokens"] == "1\t1"
    with Ledger(postgres) as copy:  # a replay after the move is still one
        assert not copy.take_webhook_token("mailgun", "1700000000abc", fresh, time.time())
    with (
        Ledger(project.parent / "statusmail.db", readonly=True) as source,
        Ledger(postgres) as copy,
    ):
        assert copy.counts(ENTRY) == source.counts(ENTRY)
        assert copy.suppressions() == source.suppressions()
        # the order numbers survive (return paths name rows by them) and new rows follow
        row = source.delivery_by_message_id(
            str(source.database.execute("SELECT message_id FROM deliveries LIMIT 1")[0][0])
        )
        assert row is not None and copy.delivery_by_message_id(
            str(copy.database.execute("SELECT message_id FROM deliveries LIMIT 1")[0][0])
        )
    again = invoke(project, "ledger", "copy", "--to", postgres, env=env)
    assert again.exit_code == 1 and "cannot copy into a ledger that has rows" in again.stderr
    with Ledger(postgres) as copy, Ledger(postgres) as other:
        generation = copy.begin_selection("later", "d")
        copy.reset_staging()
        copy.stage([StagedRow.selected(recipient(1))])
        copy.enqueue("later", generation)
        assert other.counts("later")["pending"] == 1


def test_copy_needs_an_empty_target(tmp_path: Path) -> None:
    with Ledger(tmp_path / "a.db") as a, Ledger(tmp_path / "b.db") as b:
        queued(b, 1)
        with pytest.raises(LedgerError, match="has rows"):
            copy_ledger(a, b)
    Ledger(tmp_path / "c.db").close()
    # a driver's error on either side is a LedgerError naming both, not a traceback
    refused = pytest.raises(LedgerError, match=r"c\.db: cannot copy .*b\.db here: .*readonly")
    with Ledger(tmp_path / "b.db") as b, Ledger(tmp_path / "c.db", readonly=True) as c, refused:
        copy_ledger(b, c)


def test_copy_refuses_while_a_send_holds_recipients(tmp_path: Path) -> None:
    """A send going on during a copy recorded outcomes the copy had passed by: they
    were pending in the copy and sent again from it."""
    with Ledger(tmp_path / "a.db") as a, Ledger(tmp_path / "b.db") as b:
        queued(a, 3)
        a.database.execute(
            "UPDATE deliveries SET claimed_by = 'host:1:x', lease_until = :until"
            " WHERE address = :a",
            {"until": time.time() + 60, "a": recipient(1).address},
        )
        with pytest.raises(LedgerError, match="while a send holds 1 of its recipients"):
            copy_ledger(a, b)
        assert not any(b.counts(ENTRY).values())
        a.database.execute("UPDATE deliveries SET lease_until = :past", {"past": time.time() - 1})
        assert copy_ledger(a, b)["deliveries"] == (3, 3)  # a lease run out holds nobody


def test_copy_keeps_what_postgresql_cannot_hold_as_it_can(tmp_path: Path, postgres: str) -> None:
    """A ledger written before outside text was kept printable can hold a NUL, and one
    written before long report ids were digested a 3,000-character id: PostgreSQL
    refuses both, and the whole copy failed."""
    long_id = "<" + secrets.token_hex(1500) + "@relay.test>"
    with Ledger(tmp_path / "old.db") as old:
        queued(old, 1)
        old.database.execute(
            "INSERT INTO feedback_events (received_at, event_at, entry_id, address, kind,"
            " code, diagnostic, source, suppressed, cause, state, domain) VALUES"
            " ('2020-04-22T00:00:00+00:00', '2020-04-22T00:00:00+00:00', NULL,"
            " 'x@example.org', 'hard', '5.1.1', :d, :s, 0, 'unknown', 'unverified',"
            " 'example.org')",
            {"d": "550 no\x00such user", "s": long_id},
        )
        with Ledger(postgres) as new:
            assert copy_ledger(old, new)["feedback_events"] == (1, 1)
            ((diagnostic, source),) = new.database.execute(
                "SELECT diagnostic, source FROM feedback_events"
            )
    assert diagnostic == "550 no\\x00such user"
    assert source == short_source(long_id) and len(source) < 100


def test_a_transaction_that_loses_a_deadlock_runs_again(postgres: str) -> None:
    """A real deadlock on the server: another session holds the second row and then
    wants the first, which ``record`` holds. PostgreSQL ends ``record``'s transaction
    (its deadlock_timeout is the shorter, so it finds the deadlock); ``record`` runs
    again once the rival is through, and every outcome is recorded."""
    import psycopg

    with Ledger(postgres) as ledger:
        queued(ledger, 2)
        first, second = (recipient(i).address for i in range(2))
        rival = psycopg.connect(postgres, autocommit=True)
        rival.execute("SET deadlock_timeout = '5s'")
        ledger.database.execute("SET deadlock_timeout = '100ms'")
        rival_error: list[Exception] = []

        def rival_transaction() -> None:
            try:
                with rival.transaction():
                    rival.execute(
                        "UPDATE deliveries SET detail = 'rival' WHERE address = %s", [second]
                    )
                    held.set()
                    wait_for(lambda: waiting(postgres), what="record to wait for a lock")
                    rival.execute(
                        "UPDATE deliveries SET detail = 'rival' WHERE address = %s", [first]
                    )
            except psycopg.Error as exc:
                rival_error.append(exc)

        held = threading.Event()
        thread = threading.Thread(target=rival_transaction)
        thread.start()
        assert held.wait(10)
        outcomes = [
            Outcome(a, DeliveryStatus.SENT, 1, message_id=f"<{a}>") for a in (first, second)
        ]
        ledger.record(ENTRY, outcomes)
        thread.join(10)
        rival.close()
        statuses = ledger.database.execute(
            "SELECT status FROM deliveries WHERE entry_id = :e", {"e": ENTRY}
        )
    assert [row[0] for row in statuses] == ["sent", "sent"]
    assert rival_error == []  # the rival went through; record was the victim, and retried


def waiting(url: str) -> bool:
    """Some session of this database waits for a row lock."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT COUNT(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'"
        ).fetchall()
    return bool(rows[0][0])


def test_a_webhook_token_is_taken_once_until_it_is_stale_or_given_back(
    ledger_target: str | Path,
) -> None:
    """Two connections stand for two web hosts on one ledger."""
    with Ledger(ledger_target) as one, Ledger(ledger_target) as two:
        assert one.take_webhook_token("mailgun", "1700000000abc", 1000.0, now=900.0)
        assert not two.take_webhook_token("mailgun", "1700000000abc", 1000.0, now=950.0)
        assert two.take_webhook_token("sendgrid", "1700000000abc", 1000.0, now=950.0)
        two.give_back_webhook_token("mailgun", "1700000000abc")
        assert one.take_webhook_token("mailgun", "1700000000abc", 1000.0, now=960.0)
        # once stale it is no longer taken, and an hour after (another host's clock may
        # be behind) the next take of anything clears it away
        assert not two.take_webhook_token("mailgun", "1700000000abc", 1000.0, now=1001.0)
        assert one.take_webhook_token("mailgun", "1700000300def", 1300.0, now=1001.0)
        assert one.database.execute("SELECT COUNT(*) FROM webhook_tokens")[0][0] == 3
        later = 1000.0 + TOKENS_KEPT_PAST_STALE + 1
        assert one.take_webhook_token("mailgun", "1700003700ghi", later + 300, now=later)
        rows = one.database.execute("SELECT provider, token FROM webhook_tokens ORDER BY token")
    # (def, fresh until 1300, has not been stale for an hour yet)
    assert [tuple(row) for row in rows] == [
        ("mailgun", "1700000300def"),
        ("mailgun", "1700003700ghi"),
    ]


def test_the_shared_rate_limit_s_failure_is_a_ledger_error_naming_the_ledger(
    tmp_path: Path,
) -> None:
    """Not the driver's own error (a traceback past pipeline.finish)."""
    path = tmp_path / "statusmail.db"
    Ledger(path).close()
    with Ledger(path, readonly=True) as ledger:  # every write refused by SQLite
        queue = LocalQueue(ledger, "e", lease=5, thread=None, shared=True)
        with pytest.raises(LedgerError, match=r"statusmail\.db.*cannot take slots of the rate"):
            asyncio.run(queue.take_slots(0.1, 4))


def test_a_server_s_error_is_said_in_one_line(postgres: str) -> None:
    """libpq's messages run over several lines (LINE 1: the statement, a caret): a
    LedgerError is one line, as every error statusmail prints."""
    with Ledger(postgres) as ledger:
        ledger.database.execute("DROP TABLE suppressions", {})
        with pytest.raises(LedgerError) as raised:
            ledger.suppressed()
    said = str(raised.value)
    assert "\n" not in said and 'relation "suppressions" does not exist' in said, said


def test_an_address_s_own_row_replaces_its_unreadable_row_in_the_staging(
    ledger_target: str | Path,
) -> None:
    """Row problems are staged first; the first readable row of the address wins."""
    one = recipient(1)
    with Ledger(ledger_target) as ledger:
        ledger.reset_staging()
        ledger.stage([StagedRow("invalid", one.address, detail="status 'actve' is not …")])
        ledger.stage([StagedRow.selected(one), StagedRow("invalid", one.address, detail="x")])
        rows = ledger.database.execute("SELECT address, kind FROM staged", {})
    assert [tuple(row) for row in rows] == [(one.address, "selected")]


def test_a_process_opening_a_ledger_another_is_upgrading_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An upgrade of a long ledger takes longer than the 2 s a writer waits for the
    lock: every serve, watch or send started meanwhile failed ("database is locked").
    Here the upgrading process is stood for by a writer holding the lock for 3 s."""
    path = tmp_path / "statusmail.db"
    with monkeypatch.context() as before:
        before.setattr(store, "SCHEMA_VERSION", SCHEMA_VERSION - 1)
        Ledger(path).close()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    releasing = threading.Timer(3.0, holder.execute, ("COMMIT",))
    releasing.start()
    started = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING, logger="statusmail"), Ledger(path) as ledger:
            assert ledger.schema_version() == SCHEMA_VERSION
    finally:
        releasing.join()
        holder.close()
    assert time.monotonic() - started >= 2.5
    assert any("upgrading the ledger" in r.getMessage() for r in caplog.records)


def test_reports_never_create_nor_migrate_a_ledger(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """suppress list/export and prefs list/export are reports: they created the SQLite
    file when there was none, and migrated an older one (which a read-only mount or a
    read-only database role then refused)."""
    path = project.parent / "statusmail.db"
    for report in (
        ("suppress", "list"),
        ("suppress", "export"),
        ("prefs", "list"),
        ("prefs", "export"),
        ("suppress", "show", "someone@example.org"),
        ("suppress", "remove", "--reason", "bounced", "--dry-run"),
    ):
        result = invoke(project, *report, env=ENV)
        assert result.exit_code == 0, (report, result.output)
        assert not path.exists(), report
    with monkeypatch.context() as before:
        before.setattr(store, "SCHEMA_VERSION", SCHEMA_VERSION - 1)
        Ledger(path).close()
    for report in (("suppress", "list"), ("suppress", "export"), ("prefs", "export")):
        assert invoke(project, *report, env=ENV).exit_code == 0, report
        with Ledger(path, readonly=True) as ledger:
            assert ledger.schema_version() == SCHEMA_VERSION - 1, report


def test_status_and_list_read_a_server_database_with_no_schema_yet(
    project: Path, postgres: str
) -> None:
    """A new PostgreSQL database counts as a ledger (a server always does): status and
    list failed on it ("relation entries does not exist"), where a missing file reads
    as nothing sent."""
    env = {**ENV, "STATUSMAIL_LEDGER": postgres}
    status = invoke(project, "status", ENTRY, "--json", env=env)
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["sent"] == 0
    listed = invoke(project, "list", "--json", env=env)
    assert listed.exit_code == 0, listed.output
    assert {row["progress"] for row in json.loads(listed.stdout)} == {"not sent"}
    with Ledger(postgres, readonly=True) as ledger:
        assert ledger.schema_version() == 0  # still nothing made there


def test_a_ledger_a_newer_statusmail_upgraded_while_this_one_waited_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two hosts upgrading at once, the other one newer: this one waited for its
    migration, then found the schema newer than it knows and reported success on it
    (`ledger migrate` exit 0, "schema version 15" on a version 16: review)."""
    path = tmp_path / "statusmail.db"
    with monkeypatch.context() as before:
        before.setattr(store, "SCHEMA_VERSION", SCHEMA_VERSION - 1)
        Ledger(path).close()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # the newer statusmail, migrating
    for number in (SCHEMA_VERSION, SCHEMA_VERSION + 1):
        holder.execute("INSERT INTO schema_version VALUES (?, 'later')", (number,))
    releasing = threading.Timer(1.0, holder.execute, ("COMMIT",))
    releasing.start()
    newer = f"version {SCHEMA_VERSION + 1}, newer than this statusmail knows \\({SCHEMA_VERSION}"
    try:
        with pytest.raises(SchemaTooNew, match=newer):
            Ledger(path)
    finally:
        releasing.join()
        holder.close()
