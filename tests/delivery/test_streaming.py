"""A long list (issue 14): the selection streams into the ledger while delivery runs, so
the first message leaves before the list has been read from the ledger's import; SIGINT
at any point of a million-row import ends the run within a second, exit 4, with the
ledger whole."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest

from conftest import CSV_HEADER, UPDATE, Running, outbox_count, spawn, wait_for
from import_helpers import seeded_list
from ops_helpers import ledger_count, selection_complete


def long_list(project: Path, rows: int) -> None:
    """The project's subscribers become ``rows`` readers in Russia, all selected by UPDATE."""
    folder = project.parent / "subscribers"
    for old in folder.iterdir():
        old.unlink()
    with (folder / "everyone.csv").open("w", encoding="utf-8") as handle:
        handle.write(CSV_HEADER)
        handle.writelines(
            f"reader{i}@example.org,Читатель {i},ru,RU,service-status,active\n" for i in range(rows)
        )


def interrupt(process: Running) -> None:
    """SIGINT: the run must end within a second, exit 4, without a traceback."""
    stopped = time.monotonic()
    code = process.stop(signal.SIGINT, timeout=10)
    took = time.monotonic() - stopped
    assert code == 4, process.stderr
    assert took < 1.0, f"{took:.2f} s after SIGINT"
    assert "Traceback" not in process.stderr


def assert_whole(project: Path) -> None:
    """The ledger after a stop: intact, and what it calls sent is what the outbox holds."""
    db = sqlite3.connect(project.parent / "statusmail.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'deliveries'").fetchone():
            # stopped before its first migration committed (it is one transaction):
            # a ledger with no schema, which every command reads as never used
            assert outbox_count(project) == 0
            return
        sent = db.execute("SELECT COUNT(*) FROM deliveries WHERE status = 'sent'").fetchone()[0]
        claimed = db.execute(
            "SELECT COUNT(*) FROM deliveries WHERE claimed_by IS NOT NULL"
        ).fetchone()[0]
    finally:
        db.close()
    assert sent == outbox_count(project)
    assert claimed == 0  # what was taken and not sent went back


@pytest.mark.timeout(90)
def test_the_first_message_leaves_while_the_list_is_still_being_read(project: Path) -> None:
    # Imported already (issue 21: a changed list is imported, and so validated whole,
    # before anything is sent); what streams is the selection from the import.
    seeded_list(project, 100_000)
    with spawn(project, "send", UPDATE, "--yes", "--rate", "0") as process:
        wait_for(lambda: outbox_count(project) > 0, timeout=60, what="the first message")
        # the proof is the order, not a time: the selection has not finished yet
        assert not selection_complete(project, UPDATE)
        interrupt(process)
    assert_whole(project)
    # what the run left is pending, and a re-run would take it from there
    assert ledger_count(project, "SELECT COUNT(*) FROM deliveries WHERE status = 'pending'") > 0


@pytest.mark.timeout(90)
def test_sigint_half_a_second_into_a_million_row_import(project: Path) -> None:
    long_list(project, 1_000_000)
    with spawn(project, "send", UPDATE, "--yes", "--rate", "0") as process:
        process.wait_until_catching(signal.SIGINT)  # the program's first line ran
        time.sleep(0.5)  # the point is the timing of the signal, not readiness
        assert process.process.poll() is None, process.stderr
        interrupt(process)
    assert "SIGINT" in process.stderr
    if (project.parent / "statusmail.db").exists():
        assert_whole(project)
