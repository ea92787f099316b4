"""Nothing leaves before the audience is known good (issue 21): the lists are imported,
and so validated whole, before anything is selected, and every rule about the entry as
a whole (content for each language of its audience, the shrink guard, an empty
audience) is decided before the first message. A problem at row 15,001 of 20,000 exits
1 with nothing recorded and nothing sent, and ``watch`` says it once."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import BLOCK, CSV_HEADER, UPDATE, invoke, outbox_count
from delivery_helpers import add_subscribers, ledger_rows
from editing import replace_in

ROWS = 20_000
LATE = 15_000  # row 15,001 of the list: line 15,002 of its file


def twenty_thousand(project: Path, late: str) -> Path:
    """The subscribers become 20,000 readers in Belarus who read English, with ``late``
    as row 15,001."""
    folder = project.parent / "subscribers"
    for old in folder.iterdir():
        old.unlink()
    rows = [f"reader{i}@example.org,Reader {i},en,BY,service-status,active\n" for i in range(ROWS)]
    rows[LATE] = late
    path = folder / "everyone.csv"
    path.write_text(CSV_HEADER + "".join(rows), encoding="utf-8")
    return path


def refused_whole(project: Path, says: str) -> None:
    """``send --yes`` exits 1 saying ``says``, and ``watch --once`` says it once: nothing
    recorded, nothing in the outbox."""
    sent = invoke(project, "send", UPDATE, "--yes", "--rate", "0")
    assert sent.exit_code == 1, sent.stderr
    assert says in sent.stderr
    watched = invoke(project, "watch", "--once")
    assert watched.stderr.count(says) == 1, watched.stderr
    assert ledger_rows(project) == {}
    assert outbox_count(project) == 0


def test_a_quoted_row_with_the_wrong_field_count_at_row_15001_sends_nobody(
    project: Path,
) -> None:
    late = '"reader15000@example.org","Reader","en","BY","service-status"\n'  # 5 fields of 6
    path = twenty_thousand(project, late)
    refused_whole(project, f"{path}:{LATE + 2}: expected 6 fields")


def test_a_late_russian_reader_of_an_english_only_entry_sends_nobody(project: Path) -> None:
    replace_in(project.parent / "updates" / f"{BLOCK}.yaml", "status: ready", "status: draft")
    entry = project.parent / "updates" / f"{UPDATE}.yaml"
    text = entry.read_text(encoding="utf-8")
    entry.write_text(text[: text.index("\n  ru:\n") + 1], encoding="utf-8")  # English only
    twenty_thousand(project, "reader15000@example.org,Читатель,ru,RU,service-status,active\n")
    refused_whole(project, "subscribers in the audience read ru")


@pytest.mark.parametrize("how", ["rows turned invalid", "a narrowed audience"])
def test_dropping_pending_recipients_is_refused_before_anything_is_sent(
    project: Path, how: str
) -> None:
    addresses = add_subscribers(project, 40)
    first = invoke(project, "send", UPDATE, "--yes", "--rate", "0", "--limit", "5")
    assert first.exit_code == 4, first.stderr
    if how == "rows turned invalid":
        generated = project.parent / "subscribers" / "generated.csv"
        for address in addresses[10:30]:
            replace_in(generated, f"{address},", f"{address.split('@')[0]}@,")
    else:
        entry = project.parent / "updates" / f"{UPDATE}.yaml"
        replace_in(entry, "[RU, BY, KZ]", "[BY, KZ]")
    before, sent = ledger_rows(project), outbox_count(project)
    # (a narrowed audience is an edit of the entry too: accepted, to reach the guard)
    refused = invoke(project, "send", UPDATE, "--yes", "--rate", "0", "--accept-edit")
    assert refused.exit_code == 1, refused.stderr  # not 4 after delivering to the rest
    assert "are no longer in the list or the audience" in refused.stderr
    assert "--accept-removals" in refused.stderr
    assert ledger_rows(project) == before and outbox_count(project) == sent


def test_readers_leaving_the_topic_on_the_page_never_hold_the_resume(project: Path) -> None:
    """A reader's own choice on the preferences page is theirs, as an unsubscribe is:
    counted as rows gone from the list, two of nine pending held the resume for
    everyone (send exit 1, watch 'not sent until its files are fixed'), blaming files
    that had not changed."""
    from statusmail.domain import Preference
    from statusmail.ledger import Ledger

    first = invoke(project, "send", UPDATE, "--yes", "--rate", "0", "--limit", "5")
    assert first.exit_code == 4, first.stderr
    pending = sorted(a for a, row in ledger_rows(project).items() if row["status"] == "pending")
    leaving = pending[:2]  # 2 of 9: over max_removed_share (10 %)
    with Ledger(project.parent / "statusmail.db") as ledger:
        for address in leaving:
            ledger.set_preference(address, Preference(topics=frozenset({"product-news"})))
    resumed = invoke(project, "send", UPDATE, "--yes", "--rate", "0")
    assert resumed.exit_code == 0, resumed.stderr
    status = {a: row["status"] for a, row in ledger_rows(project).items()}
    assert {a for a, s in status.items() if s == "skipped"} == set(leaving)
    assert "pending" not in status.values()


def test_accept_removals_with_no_list_files_is_a_clear_error(project: Path) -> None:
    folder = project.parent / "subscribers"
    for old in folder.iterdir():
        old.unlink()
    result = invoke(project, "send", UPDATE, "--yes", "--accept-removals")
    assert result.exit_code == 1
    assert f"{folder}: no subscriber files (.csv, .yaml or .yml) in this folder" in result.stderr
    assert "no such table" not in result.stderr
    assert outbox_count(project) == 0


def test_a_resume_of_an_unchanged_list_delivers_the_queue_as_it_stands(project: Path) -> None:
    add_subscribers(project, 20)
    first = invoke(project, "send", UPDATE, "--yes", "--rate", "0", "--limit", "5")
    assert first.exit_code == 4, first.stderr
    resumed = invoke(project, "send", UPDATE, "--yes", "--rate", "0", "-v")
    assert resumed.exit_code == 0, resumed.stderr
    assert "delivering the queue as it stands" in resumed.stderr
    assert outbox_count(project) == 14 + 20
