"""The subscriber lists held in the ledger (issue 21), on SQLite and PostgreSQL: imported
when their files change, a broken file refusing the whole import (the last good one
stays), row problems kept with their file:line; unchanged files are not read again; the
audience counted from the import's groups is what a selection would choose."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from conftest import CSV_HEADER, REPO, UPDATE
from statusmail.delivery import intake
from statusmail.domain import Audience, Preference
from statusmail.errors import LedgerError
from statusmail.ledger import Ledger
from statusmail.ledger.importing import import_lists
from statusmail.ledger.subscribers import (
    ImportRefused,
    current,
    pending_groups,
    preferences_stamp,
    read_groups,
    read_problems,
    read_subscribers,
    special_groups,
    still_there,
)
from statusmail.project import subscriber_rows, subscribers
from statusmail.project.entries import load_entry
from statusmail.project.selection import Inactive, count_audience, count_removals, select

GOOD = (
    CSV_HEADER
    + "a@example.org,A,en,NL,news,active\n"
    + "not-an-address,B,en,NL,news,active\n"
    + "c@example.org,C,ru,RU,news;status,active\n"
)
YAML = "- email: A@Example.org\n  locale: de\n- email: d@example.org\n  region: XX1\n"


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Each list file the code under test reads."""
    read: list[Path] = []
    real = subscribers.read_file

    def counting(path: Path, *args: subscriber_rows.Build) -> object:
        read.append(path)
        return real(path, *args)

    monkeypatch.setattr(subscribers, "read_file", counting)
    return read


def test_a_broken_file_refuses_the_whole_import_and_the_last_good_one_stays(
    ledger_target: str | Path, tmp_path: Path, reads: list[Path]
) -> None:
    folder = tmp_path / "subscribers"
    folder.mkdir()
    csv_file, yaml_file = folder / "a.csv", folder / "b.yaml"
    csv_file.write_text(GOOD, encoding="utf-8")
    yaml_file.write_text(YAML, encoding="utf-8")
    with Ledger(ledger_target) as ledger:
        first = import_lists(ledger, folder)
        assert first.changed and (first.subscribers, first.invalid, first.duplicates) == (2, 2, 1)
        assert [f"{p.path}:{p.line}" for p in read_problems(ledger, first.id)] == [
            f"{csv_file}:3",
            f"{yaml_file}:3",
        ]

        # A quoted row with the wrong number of fields, after good rows: refused whole.
        csv_file.write_text(GOOD + '"e@example.org","E","en"\n', encoding="utf-8")
        with pytest.raises(ImportRefused) as refused:
            import_lists(ledger, folder)
        assert str(refused.value).startswith(f"{csv_file}:5: expected 6 fields")
        assert "the last good import" in str(refused.value)
        kept = current(ledger)
        assert kept is not None and kept.id == first.id
        assert [s.email for s in read_subscribers(ledger, first.id)] == [
            "a@example.org",
            "c@example.org",
        ]

        # The same files again: the same refusal, without reading them.
        reads.clear()
        with pytest.raises(ImportRefused) as again:
            import_lists(ledger, folder)
        assert again.value.again and str(again.value) == str(refused.value)
        assert reads == []

        csv_file.write_text(GOOD.replace("not-an-address", "b@example.org"), encoding="utf-8")
        second = import_lists(ledger, folder)
        assert second.changed and second.id > first.id and second.subscribers == 3
        reads.clear()
        unchanged = import_lists(ledger, folder)
        assert not unchanged.changed and unchanged.id == second.id and reads == []


def test_the_audience_counted_from_the_import_is_what_select_chooses(
    ledger_target: str | Path, tmp_path: Path
) -> None:
    folder = tmp_path / "subscribers"
    folder.mkdir()
    (folder / "list.csv").write_text(
        CSV_HEADER
        + "a@example.org,A,en,NL,news,active\n"
        + "b@example.org,B,,RU,news,active\n"
        + "c@example.org,C,en,NL,news;status,active\n"
        + "d@example.org,D,en,NL,news,unsubscribed\n"
        + "e@example.org,E,de,NL,news,active\n"
        + "f@example.org,F,en,NL,news;status,active\n"
        + "g@example.org,G,en,NL,status,active\n",
        encoding="utf-8",
    )
    entry = dataclasses.replace(
        load_entry(REPO / "updates" / f"{UPDATE}.yaml"),
        audience=Audience(topics=frozenset({"news"})),
    )
    by_region, declared = {"RU": "ru"}, frozenset({"news", "status"})
    with Ledger(ledger_target) as ledger:
        imported = import_lists(ledger, folder)
        ledger.suppress("a@example.org", "manual")
        ledger.set_preference("c@example.org", Preference("ru", frozenset({"news"})))
        # f unticked news; g's page left news ticked, which adds nothing to the list's
        ledger.set_preference("f@example.org", Preference(topics=frozenset({"status"})))
        ledger.set_preference("g@example.org", Preference(topics=frozenset({"news", "status"})))
        counted = count_audience(
            entry,
            read_groups(ledger, imported.id),
            special_groups(ledger, imported.id),
            by_region,
            declared,
        )
        with ledger.preference_lookup() as preferences:
            chosen = [
                item
                for item in select(
                    entry,
                    read_subscribers(ledger, imported.id),
                    by_region,
                    ledger.suppressed(),
                    preferences=preferences,
                    declared_topics=declared,
                )
                if not isinstance(item, Inactive)
            ]
        assert counted.total == len(chosen) == 3  # b (ru by region), c (ru by preference), e
        assert counted.locales() == {item.locale for item in chosen} == {"en", "ru"}  # type: ignore[union-attr]

        stamp = "2020-01-01T00:00:00+00:00"
        for address in ("a@example.org", "b@example.org", "gone@example.org"):
            ledger.database.execute(
                "INSERT INTO deliveries (entry_id, address, email, locale, status, created_at,"
                " updated_at) VALUES (:e, :a, :a, 'en', 'pending', :t, :t)",
                {"e": entry.id, "a": address, "t": stamp},
            )
        pending = pending_groups(ledger, imported.id, entry.id)
        # a is suppressed (nothing may reach it: not a removal), b is chosen, gone is gone
        assert count_removals(entry, pending, by_region, declared) == 1


@pytest.mark.parametrize("few", [True, False])
def test_a_resume_reads_the_pending_recipients_first_then_the_rest_once(
    ledger_target: str | Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, few: bool
) -> None:
    folder = tmp_path / "subscribers"
    folder.mkdir()
    addresses = [f"r{i:02d}@example.org" for i in range(30)]
    rows = "".join(f"{a},R,en,NL,news,active\n" for a in addresses)
    (folder / "list.csv").write_text(CSV_HEADER + rows, encoding="utf-8")
    entry = load_entry(REPO / "updates" / f"{UPDATE}.yaml")
    monkeypatch.setattr(intake, "FEW_PENDING", 100 if few else 0)
    with Ledger(ledger_target) as ledger:
        imported = import_lists(ledger, folder)
        for address in addresses[25:]:  # a resume's pending recipients, at the list's end
            ledger.database.execute(
                "INSERT INTO deliveries (entry_id, address, email, locale, status, created_at,"
                " updated_at) VALUES (:e, :a, :a, 'en', 'pending', 'now', 'now')",
                {"e": entry.id, "a": address},
            )
        read = [item.email for item in intake.listed(ledger, imported, entry, pending=5)]
    assert read == addresses[25:] + addresses[:25]


def test_a_ledger_busy_past_its_timeout_is_a_ledger_error(tmp_path: Path) -> None:
    """Another writer holds the SQLite ledger (a sender paused mid-batch): the import's
    own transaction gives up after the busy timeout as a LedgerError naming the ledger,
    which watch survives; the driver's own error was a traceback, and watch ended."""
    folder = tmp_path / "subscribers"
    folder.mkdir()
    (folder / "list.csv").write_text(GOOD, encoding="utf-8")
    path = tmp_path / "statusmail.db"
    Ledger(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with Ledger(path) as ledger, pytest.raises(LedgerError, match="cannot import the"):
            import_lists(ledger, folder)
    finally:
        holder.close()


def test_the_import_an_unfinished_selection_reads_is_kept_however_many_follow(
    tmp_path: Path,
) -> None:
    """Cleaning up kept only the current import and the last replaced one: three
    imports during a long send (watch picking up edits) deleted the one its selection
    was still reading, which then ended "complete" with part of the list."""
    folder = tmp_path / "subscribers"
    folder.mkdir()
    lines = [f"u{n}@example.net,U,ru,RU,status,active\n" for n in range(3)]

    def edit(n: int) -> None:
        (folder / "list.csv").write_text(CSV_HEADER + "".join(lines[: n + 1]), encoding="utf-8")

    edit(0)
    path = tmp_path / "statusmail.db"
    with Ledger(path) as ledger, Ledger(path) as other:
        read = import_lists(ledger, folder)
        generation = ledger.begin_selection(UPDATE, "d", "me", 30, imported=read.id)
        for n in (1, 2, 0):  # three more imports while the selection reads
            edit(n)
            import_lists(other, folder)
        assert still_there(other, read.id)
        assert [s.email for s in read_subscribers(ledger, read.id)] == ["u0@example.net"]
        # once the selection is complete, the next clean-up takes it
        ledger.finish_selection(UPDATE, generation, 1, skip_removed=True, basis="b")
        edit(2)
        import_lists(other, folder)
        assert not still_there(other, read.id)


def test_a_nul_in_an_unreadable_row_is_one_invalid_row_on_either_engine(
    tmp_path: Path, ledger_target: str | Path
) -> None:
    """The row's address as written is kept with its problem: PostgreSQL's text refuses
    a NUL, and the whole import failed, again on every run (SQLite took it)."""
    folder = tmp_path / "subscribers"
    folder.mkdir()
    (folder / "list.csv").write_text(
        CSV_HEADER
        + "a@example.org,A,en,NL,news,active\nbob@exa\x00mple.com,Bob,ru,RU,news,active\n",
        encoding="utf-8",
    )
    with Ledger(ledger_target) as ledger:
        imported = import_lists(ledger, folder)
        assert (imported.subscribers, imported.invalid) == (1, 1)
        [problem] = read_problems(ledger, imported.id)
    assert problem.line == 3 and "\x00" not in problem.email


def test_the_same_folder_spelled_another_way_is_not_imported_again(
    tmp_path: Path, reads: list[Path]
) -> None:
    """A link to the project, or a path with ``..``: two spellings of one folder took
    turns importing the whole list again (and the churn removed imports in use)."""
    folder = tmp_path / "project" / "subscribers"
    folder.mkdir(parents=True)
    (folder / "list.csv").write_text(GOOD, encoding="utf-8")
    (tmp_path / "link").symlink_to(tmp_path / "project", target_is_directory=True)
    with Ledger(tmp_path / "statusmail.db") as ledger:
        first = import_lists(ledger, folder)
        reads.clear()
        for spelled in (tmp_path / "link" / "subscribers", folder / ".." / "subscribers", folder):
            assert import_lists(ledger, spelled).id == first.id, spelled
        assert reads == []  # unchanged: nothing read


def test_every_choice_a_reader_makes_changes_what_a_resume_compares(
    ledger_target: str | Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stamp was the count and the latest time (to the second) of the preferences
    and lifts: a change to a stored choice in the same second, or saved by a web host
    whose clock is behind, left it as it was, and a resume delivered a stale queue."""
    from statusmail.ledger import preferences as stored_choices

    monkeypatch.setattr(stored_choices, "now_iso", lambda: "2026-01-01T00:00:00+00:00")
    with Ledger(ledger_target) as ledger:
        ledger.set_preference("viktor@example.org", Preference(topics=frozenset({"status"})))
        before = preferences_stamp(ledger)
        ledger.set_preference("viktor@example.org", Preference(topics=frozenset()))
        after = preferences_stamp(ledger)
        ledger.suppress("someone@example.org", "unsubscribed")
        ledger.lift(["someone@example.org"], "by hand")
        lifted = preferences_stamp(ledger)
    assert len({before, after, lifted}) == 3


def test_what_tools_leave_beside_the_lists_is_not_a_list(tmp_path: Path) -> None:
    """macOS's AppleDouble ``._main.csv`` (not CSV at all) and an office suite's lock
    file ``~$main.csv``: each refused the whole import, and every send with it."""
    folder = tmp_path / "subscribers"
    folder.mkdir()
    (folder / "main.csv").write_text(GOOD, encoding="utf-8")
    (folder / "._main.csv").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    (folder / "~$main.csv").write_bytes(b"\x0bsomeone   \x00\x00")
    with Ledger(tmp_path / "statusmail.db") as ledger:
        imported = import_lists(ledger, folder)
    assert (imported.subscribers, imported.invalid) == (2, 1)
