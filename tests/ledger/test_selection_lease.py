"""A paused sender blocks nobody (issue 20): the selection of an entry is leased like the
claims. Its generation is the lease's fencing token: a selector whose lease ran out and
was taken over writes nothing more (the ledger on both engines), and a sender stopped
while selecting is taken over by another, which finishes the entry (real PostgreSQL)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import SECRET_ENV, invoke, outbox_count, wait_for
from ops_helpers import process_state
from postgres_helpers import ENTRY, SAMPLE, configure, query, recipient_of, senders
from smtp_server import RecordingServer
from statusmail import pipeline
from statusmail.domain import ExitCode, Recipient
from statusmail.ledger import Ledger, StagedRow
from statusmail.ledger.staging import SelectionLost
from statusmail.pipeline import Prepared
from statusmail.project.config import load_config
from statusmail.project.subscribers import count_rows


def rows(first: int, count: int) -> list[StagedRow]:
    addresses = [f"r{i:03d}@example.org" for i in range(first, first + count)]
    return [StagedRow.selected(Recipient(a, a, a, "R", "en", "NL")) for a in addresses]


def deliveries(ledger: Ledger) -> dict[str, tuple[str, int]]:
    """(status, selection) of every row of the entry, by address."""
    found = ledger.database.execute(
        "SELECT address, status, selection FROM deliveries WHERE entry_id = :e", {"e": ENTRY}
    )
    return {address: (status, int(selection)) for address, status, selection in found}


def test_a_selection_taken_over_fences_its_old_selector(ledger_target: str | Path) -> None:
    """The first selector enqueues a batch and stands still past its lease; a second one
    takes the selection over and re-selects. The first one's next batch and its end of
    the selection (which would skip every row the second one stamped) change nothing,
    and its release leaves the second one's lease alone."""
    with Ledger(ledger_target) as old, Ledger(ledger_target) as new:
        taken = old.take_selection(ENTRY, "digest", "old", lease=60)
        assert taken is not None
        assert new.take_selection(ENTRY, "digest", "new", lease=60) is None  # its lease runs
        old.reset_staging()
        old.stage(rows(0, 3))
        after, _ = old.enqueue(ENTRY, taken, lease=-1)  # ... and runs out
        assert new.selection_leased(ENTRY) is False

        generation = new.take_selection(ENTRY, "digest", "new", lease=60)
        assert generation is not None and generation > taken
        new.reset_staging()
        new.stage(rows(0, 2))
        new.enqueue(ENTRY, generation, lease=60)

        old.stage(rows(3, 2))
        with pytest.raises(SelectionLost):
            old.enqueue(ENTRY, taken, after, lease=60)
        with pytest.raises(SelectionLost):
            old.finish_selection(ENTRY, taken, 5, skip_removed=True)
        old.release_selection(ENTRY, taken)
        assert new.selection_leased(ENTRY) is True
        # Nothing of the old selection's second batch, nothing skipped: the rows the new
        # one stamped stay pending; the one only the old one chose waits for its end.
        assert deliveries(new) == {
            "r000@example.org": ("pending", generation),
            "r001@example.org": ("pending", generation),
            "r002@example.org": ("pending", taken),
        }
        assert new.queue_state(ENTRY) == (generation, 0)

        new.finish_selection(ENTRY, generation, 2, skip_removed=True)
        assert new.queue_state(ENTRY) == (generation, generation)
        assert new.selection_leased(ENTRY) is False  # over: a later run selects afresh
        assert {status for status, _ in deliveries(new).values()} == {"pending", "skipped"}
        assert deliveries(new)["r002@example.org"][0] == "skipped"


def test_a_takeover_is_not_held_up_by_a_selector_stalled_inside_a_write(postgres: str) -> None:
    """A selector standing still inside a write of its selection holds the entry's row
    locked (until the server ends that write, past its lease): a sender looking for a
    selection to take over is not held up by it (no wait, no lock timeout), and takes
    it over once that write has ended."""
    import psycopg

    with Ledger(postgres) as old, Ledger(postgres) as new:
        taken = old.take_selection(ENTRY, "digest", "old", -1)  # its lease has run out
        assert taken is not None
        with psycopg.connect(postgres) as stalled:  # the write, as its sender left it
            stalled.execute("SELECT 1 FROM entries WHERE entry_id = %s FOR UPDATE", (ENTRY,))
            assert new.take_selection(ENTRY, "digest", "new", 60) is None
            stalled.rollback()  # what the server does after idle_in_transaction_session_timeout
        generation = new.take_selection(ENTRY, "digest", "new", 60)
        assert generation is not None and generation > taken


def test_a_sender_stopped_while_selecting_is_taken_over_and_writes_nothing_after(
    project: Path, postgres: str
) -> None:
    """The first sender takes the selection and stops (SIGSTOP) before its first batch,
    held there by a lock on the import's row problems, which its selection reads first
    (the lists were imported before, so nothing earlier in the run reads them). A second
    sender takes the selection over once the first one's lease ran out and sends
    everyone. Resumed
    (SIGCONT), the first one finds its selection taken over at its first write, says so
    once, and sends nobody anything."""
    import psycopg

    Ledger(postgres).close()  # the schema, before the lock below
    with (
        RecordingServer() as relay,
        psycopg.connect(postgres) as holder,
        psycopg.connect(postgres, autocommit=True) as watcher,
    ):
        addresses = configure(project, relay.port, 6, lease=1)
        imported = invoke(project, "import", env={"STATUSMAIL_LEDGER": postgres})
        assert imported.exit_code == 0, imported.stderr
        holder.execute("LOCK TABLE subscriber_problems IN ACCESS EXCLUSIVE MODE")
        (first,) = senders(project, postgres, 1, "send", ENTRY, "--yes")
        try:
            # Watched on a connection of its own, polled without reconnecting: a sender's
            # lock wait ends after 2 s (lock_timeout), which the stop must beat.
            waiting = wait_for(
                lambda: watcher.execute(
                    "SELECT query FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                    (holder.info.backend_pid,),
                ).fetchall(),
                what="the first sender to wait for the import's row problems",
            )
            assert "subscriber_problems" in waiting[0][0]
            # It selects: the lease is its own, nothing is enqueued yet.
            assert query(postgres, "SELECT selector IS NOT NULL FROM entries") == [(True,)]
            assert query(postgres, "SELECT COUNT(*) FROM deliveries") == [(0,)]
            ((stopped_at,),) = query(postgres, "SELECT generation FROM entries")
            os.kill(first.pid, signal.SIGSTOP)
            wait_for(lambda: process_state(first.pid) == "T", what="the first sender to stop")
            holder.rollback()  # its query goes on in the server; the sender stays stopped
            # The second sender runs in this process: its being a process is not the point.
            second = invoke(
                project, "send", ENTRY, "--yes", env={**SECRET_ENV, "STATUSMAIL_LEDGER": postgres}
            )
            assert second.exit_code == 0, second.stderr
            resumed = time.monotonic()
            first.send_signal(signal.SIGCONT)
            _, stderr = first.communicate(timeout=30)
        finally:
            if first.poll() is None:
                first.kill()
                first.communicate()
        messages = relay.messages
    assert first.returncode == 0 and "Traceback" not in stderr, stderr
    lost = [line for line in stderr.splitlines() if "selection is no longer this sender's" in line]
    assert len(lost) == 1 and "@" not in lost[0], stderr
    assert [recipient_of(m) for m in messages if m.at > resumed] == []
    counts = Counter(recipient_of(m) for m in messages)
    assert len(counts) == SAMPLE + len(addresses) and set(counts.values()) == {1}
    # the queue is the second sender's selection, whole: every row stamped with it, sent
    (generation, selected, selector), *_ = query(
        postgres, "SELECT generation, selected_generation, selector FROM entries"
    )
    assert generation > stopped_at and (selected, selector) == (generation, None)
    assert query(
        postgres, "SELECT status, selection, COUNT(*) FROM deliveries GROUP BY status, selection"
    ) == [("sent", generation, len(counts))]


def prepared_on(project: Path, postgres: str, monkeypatch: pytest.MonkeyPatch) -> Prepared:
    """The sample project's run of ENTRY on the ledger at ``postgres``, to its outbox,
    unpaced."""
    monkeypatch.setenv("STATUSMAIL_UNSUBSCRIBE_SECRET", SECRET_ENV["STATUSMAIL_UNSUBSCRIBE_SECRET"])
    monkeypatch.setenv("STATUSMAIL_LEDGER", postgres)
    config = load_config(project).with_overrides(rate=0)  # its pace is not the point
    return pipeline.prepare(config, pipeline.load(config, ENTRY))


def deliver(prepared: Prepared, held: pipeline.Held, started: pipeline.Started) -> pipeline.Report:
    """What ``send`` does once the run has started, in this process."""

    async def finish() -> pipeline.Report:
        transport = pipeline.make_transport(prepared.config)
        return await pipeline.finish(
            prepared, held, transport, pipeline.Request(), started, stop=asyncio.Event()
        )

    return asyncio.run(finish())


def test_a_run_that_lost_its_selection_and_takes_the_entry_s_over_counts_the_list_once(
    project: Path, postgres: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's selection is taken over by a sender that then stands still in its turn:
    the run gives its own up, waits while that one's lease runs, takes the selection over
    once it has run out, and sends everyone. The list is counted once: the next run's
    shrink guard compares the list with what this one recorded."""
    prepared = prepared_on(project, postgres, monkeypatch)
    with pipeline.open_ledger(prepared.config, ENTRY) as held:
        started = pipeline.start(prepared, held, pipeline.Request())
        assert started.stream is not None
        with Ledger(postgres) as other:  # takes it before this run streams a row
            taken = other.begin_selection(ENTRY, prepared.entry.digest, "other", 0.1)
        report = deliver(prepared, held, started)
    assert report.exit_code == ExitCode.OK and report.counts is not None
    assert report.counts["sent"] == outbox_count(project) > 0
    (generation, selected, list_rows), *_ = query(
        postgres, "SELECT generation, selected_generation, list_rows FROM entries"
    )
    assert generation > taken and selected == generation
    assert list_rows == count_rows(prepared.config.paths.subscribers)
