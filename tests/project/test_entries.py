"""``updates/<ID>.yaml``: loading, validation with ``file:line``, and cross-file checks."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from conftest import BLOCK, UPDATE
from editing import line_of, replace_in
from statusmail.domain import Audience, Content, Entry, EntryStatus
from statusmail.errors import InputError, Problem
from statusmail.project.config import load_config
from statusmail.project.entries import find_entry, load_entries, load_entry, source_hash
from statusmail.project.regions import Region, load_regions
from statusmail.validation import entry_problems


def errors(path: Path) -> list[str]:
    with pytest.raises(InputError) as info:
        load_entry(path)
    return [str(p) for p in info.value.problems]


@pytest.fixture
def updates(project: Path) -> Path:
    return project.parent / "updates"


# -- the sample entries --------------------------------------------------------------


def test_update_2020_04_21_loads(updates: Path) -> None:
    path = updates / f"{UPDATE}.yaml"
    entry = load_entry(path)
    assert entry.id == UPDATE
    assert entry.path == path
    assert entry.date == dt.date(2020, 4, 21)
    assert type(entry.date) is dt.date
    assert entry.status == "ready"
    assert entry.ready
    assert entry.thread == BLOCK
    assert entry.audience == Audience(
        regions=frozenset({"RU", "BY", "KZ"}), topics=frozenset({"service-status"}), locales=None
    )
    assert entry.access_instructions is True
    assert entry.send_at is None
    assert set(entry.content) == {"en", "ru"}
    assert entry.content["en"].subject == "Update on the block in Russia: two appeals filed"
    assert entry.content["ru"].subject == "Новости о блокировке в России: поданы две жалобы"
    assert entry.content["ru"].summary.startswith("«Роскомсвобода» подала")
    assert "June 3, 2020" in entry.content["en"].body
    assert "3 июня 2020 года" in entry.content["ru"].body
    # Markdown bodies keep their line structure, subjects are one line
    assert "\n\n" in entry.content["en"].body
    assert "\n" not in entry.content["ru"].subject
    assert entry.line("id") == 3
    assert entry.line("thread") == 6
    assert entry.line("audience") == 7
    assert entry.line("content") == 11
    assert entry.line("content.en") == 12
    assert entry.line("content.ru") == line_of(path, "  ru:\n")
    assert len(entry.digest) == 64


def test_block_2020_01_23_loads(updates: Path) -> None:
    entry = load_entry(updates / f"{BLOCK}.yaml")
    assert entry.id == BLOCK
    assert entry.date == dt.date(2020, 1, 23)
    assert entry.status == "ready"
    assert entry.thread is None
    # no regions key: every region
    assert entry.audience == Audience(regions=None, topics=frozenset({"service-status"}))
    assert entry.audience.matches("US", frozenset({"service-status"}), "en")
    assert not entry.audience.matches("RU", frozenset({"product-news"}), "ru")
    assert entry.access_instructions is True
    assert set(entry.content) == {"en", "ru"}
    assert entry.content["en"] == Content(
        subject="StartMail is blocked in Russia",
        summary="Access to StartMail from Russia has been restricted since January 23, 2020. "
        "We have not given the Russian authorities any information about our users.",
        body=entry.content["en"].body,
    )
    assert entry.content["ru"].subject == "StartMail заблокирован в России"
    assert entry.content["ru"].source == source_hash(entry.content["en"])


def test_load_entries_and_find_entry(updates: Path) -> None:
    entries, problems = load_entries(updates)
    assert problems == []
    assert sorted(entries) == [BLOCK, UPDATE]
    assert find_entry(updates, UPDATE) == entries[UPDATE]
    with pytest.raises(InputError) as info:
        find_entry(updates, "update-2020-04-22")
    (problem,) = info.value.problems
    assert problem.path == updates / "update-2020-04-22.yaml"
    assert f"entries: {BLOCK}, {UPDATE}" in problem.message


def test_load_entries_keeps_good_ones(updates: Path) -> None:
    line = replace_in(updates / f"{UPDATE}.yaml", "status: ready", "status: redy")
    entries, problems = load_entries(updates)
    assert sorted(entries) == [BLOCK]
    assert [str(p) for p in problems] == [
        f"{updates / f'{UPDATE}.yaml'}:{line}: status is 'redy'; expected draft or ready"
    ]


def test_load_entries_missing_folder(tmp_path: Path) -> None:
    entries, problems = load_entries(tmp_path / "nope")
    assert entries == {}
    assert [p.message for p in problems] == ["updates folder not found"]


def test_digest_follows_the_text(updates: Path) -> None:
    path = updates / f"{UPDATE}.yaml"
    before = load_entry(path).digest
    assert load_entry(path).digest == before
    replace_in(path, "Thank you for your patience and support.", "Thank you.")
    assert load_entry(path).digest != before


def test_draft_and_datetime_and_no_access(updates: Path) -> None:
    path = updates / f"{UPDATE}.yaml"
    replace_in(path, "status: ready", "status: draft")
    replace_in(
        path,
        "access_instructions: true",
        "access_instructions: false\nsend_at: 2020-04-21T09:30:00+03:00",
    )
    entry = load_entry(path)
    assert not entry.ready
    assert entry.access_instructions is False
    assert entry.send_at == dt.datetime(2020, 4, 21, 6, 30, tzinfo=dt.UTC)


def test_audience_locales_normalized(updates: Path) -> None:
    path = updates / f"{UPDATE}.yaml"
    replace_in(
        path, "  topics: [service-status]\n", "  topics: [service-status]\n  locales: [ru_RU, EN]\n"
    )
    entry = load_entry(path)
    assert entry.audience.locales == frozenset({"ru", "en"})


# -- load_entry errors, each with its line -------------------------------------------


def test_missing_en_block(updates: Path) -> None:
    path = updates / f"{UPDATE}.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: text.index("  en:\n")] + text[text.index("  ru:\n") :], encoding="utf-8")
    content_line = line_of(path, "content:\n")
    assert errors(path) == [
        f"{path}:{content_line}: content needs an 'en' block (the fallback language)"
    ]


def test_no_content_at_all(updates: Path) -> None:
    path = updates / f"{UPDATE}.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: text.index("content:\n")] + "content: {}\n", encoding="utf-8")
    content_line = line_of(path, "content: {}")
    assert errors(path) == [f"{path}:{content_line}: the entry has no content"]


@pytest.mark.parametrize(
    "subject",
    [
        '"Hi\\nBcc: x@example.org"',
        '"Hi\\r\\nBcc: x@example.org"',
        '"Hi\\rBcc: x@example.org"',
        "|\n      Hi\n      Bcc: x@example.org",
    ],
)
def test_multi_line_subject_refused(updates: Path, subject: str) -> None:
    path = updates / f"{UPDATE}.yaml"
    line = replace_in(
        path,
        'subject: "Update on the block in Russia: two appeals filed"',
        f"subject: {subject}",
    )
    assert errors(path) == [f"{path}:{line}: 'content.en.subject' must be one line of text"]


@pytest.mark.parametrize(
    ("key", "written", "char"),
    [
        ("subject", '"Hi\\x00there"', "U+0000"),
        ("summary", '"Soft\\vbreak from Word"', "U+000B"),
        ("body", '"Two lines\\nthen an escape \\e[31m"', "U+001B"),
        ("body", '"Not a character: \\uFFFE"', "U+FFFE"),
    ],
)
def test_a_character_no_text_may_hold_is_refused_where_it_is(
    updates: Path, key: str, written: str, char: str
) -> None:
    """No mail reader shows them, and the status site's Atom feed (XML) cannot hold them
    at all: one in an entry made every reader of the feed lose all of it."""
    path = updates / f"{UPDATE}.yaml"
    text = path.read_text(encoding="utf-8")
    start = text.index(f"    {key}:", text.index("  en:"))
    after = re.compile(r"\n    \w+:|\n  \w+:").search(text, start + 1)  # the next key
    assert after is not None
    end = after.start()
    path.write_text(text[:start] + f"    {key}: {written}" + text[end:], encoding="utf-8")
    line = text[:start].count("\n") + 1
    said = errors(path)
    assert said[0].startswith(f"{path}:{line}: 'content.en.{key}' holds {char}"), said


def test_multi_line_ru_summary_refused(updates: Path) -> None:
    path = updates / f"{UPDATE}.yaml"
    line = line_of(path, '    summary: "«Роскомсвобода»')
    replace_in(
        path,
        '    summary: "«Роскомсвобода» подала',
        '    summary: "Привет\\nBcc: x@example.org «Роскомсвобода» подала',
    )
    assert errors(path) == [f"{path}:{line}: 'content.ru.summary' must be one line of text"]


def test_unknown_key(updates: Path) -> None:
    path = updates / f"{UPDATE}.yaml"
    line = (
        replace_in(
            path, "access_instructions: true\n", "access_instructions: true\npriority: high\n"
        )
        + 1
    )
    assert errors(path) == [f"{path}:{line}: unknown key 'priority'"]


def test_unknown_key_in_content_block(updates: Path) -> None:
    path = updates / f"{UPDATE}.yaml"
    line = replace_in(
        path,
        '    subject: "Update on the block',
        '    preheader: x\n    subject: "Update on the block',
    )
    assert errors(path) == [f"{path}:{line}: unknown key 'content.en.preheader'"]


@pytest.mark.parametrize("value", ["April 21", "2020/04/21", "'2020-13-01'", "21.04.2020"])
def test_bad_date(updates: Path, value: str) -> None:
    path = updates / f"{UPDATE}.yaml"
    line = replace_in(path, "date: 2020-04-21", f"date: {value}")
    assert errors(path) == [f"{path}:{line}: 'date' must be a date (YYYY-MM-DD)"]


def test_missing_date_and_status(updates: Path) -> None:
    path = updates / f"{UPDATE}.yaml"
    replace_in(path, "date: 2020-04-21\nstatus: ready\n", "")
    got = errors(path)
    assert any("missing 'date'" in p for p in got)
    assert any("missing 'status'" in p for p in got)


def test_impossible_date(updates: Path) -> None:
    path = updates / f"{UPDATE}.yaml"
    line = replace_in(path, "date: 2020-04-21", "date: 2020-04-31")
    got = errors(path)
    assert len(got) == 1
    assert got[0].startswith(f"{path}:{line}: ")


def test_status_and_id(updates: Path) -> None:
    path = updates / f"{UPDATE}.yaml"
    id_line = replace_in(path, "id: update-2020-04-21", "id: update-2020-04-22")
    status_line = replace_in(path, "status: ready", "status: Ready")
    assert errors(path) == [
        f"{path}:{id_line}: id 'update-2020-04-22' does not match the file name "
        "'update-2020-04-21'",
        f"{path}:{status_line}: status is 'Ready'; expected draft or ready",
    ]


def test_bad_audience_values(updates: Path) -> None:
    path = updates / f"{UPDATE}.yaml"
    regions_line = replace_in(path, "regions: [RU, BY, KZ]", "regions: [ru, BY]")
    locales_line = (
        replace_in(
            path,
            "  topics: [service-status]\n",
            "  topics: [service-status]\n  locales: [ru, fr]\n",
        )
        + 1
    )
    assert errors(path) == [
        f"{path}:{regions_line}: region 'ru' is not an ISO 3166-1 alpha-2 code (like RU)",
        f"{path}:{locales_line}: locale 'fr' is not one of en, ru",
    ]


def test_content_locale_must_be_plain(updates: Path) -> None:
    path = updates / f"{UPDATE}.yaml"
    line = replace_in(path, "  ru:\n", "  ru_RU:\n")
    assert errors(path) == [f"{path}:{line}: content locale 'ru_RU': expected one of en, ru"]


def test_broken_yaml_has_line(updates: Path) -> None:
    path = updates / f"{UPDATE}.yaml"
    line = replace_in(path, "thread: block-2020-01-23", "thread: block-2020-01-23: again")
    (problem,) = errors(path)
    assert problem.startswith(f"{path}:{line}: invalid YAML")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("access_instructions: true", 'access_instructions: "false"'),
        ("access_instructions: true", "access_instructions: true\nsend_at: tomorrow morning"),
        ("thread: block-2020-01-23", "thread: [block-2020-01-23]"),
    ],
)
def test_bad_late_fields_are_reported(updates: Path, old: str, new: str) -> None:
    path = updates / f"{UPDATE}.yaml"
    replace_in(path, old, new)
    got = errors(path)
    assert len(got) == 1


@pytest.mark.parametrize("text", ["", "# a new entry, to be written\n", "- a list\n"])
def test_empty_or_non_mapping_entry_file(updates: Path, text: str) -> None:
    path = updates / "new-entry.yaml"
    path.write_text(text)
    got = errors(path)
    assert got
    assert all(p.startswith(str(path)) for p in got)


# -- cross_check ----------------------------------------------------------------------


@pytest.fixture
def regions(project: Path) -> dict[str, Region]:
    return load_regions(project.parent / "regions.yaml")


def cross_check(entry: Entry, known: object, regions: dict[str, Region]) -> list[Problem]:
    """The errors (not warnings) the shared validation finds in ``entry``."""
    config = load_config(Path(__file__).resolve().parents[2] / "statusmail.yaml")
    found = entry_problems(entry, known_ids=list(known), regions=regions, config=config)  # type: ignore[call-overload]
    return [p for p in found if not p.warning]


def test_cross_check_sample_is_clean(updates: Path, regions: dict[str, Region]) -> None:
    entries, _ = load_entries(updates)
    assert sorted(regions) == ["BY", "DE", "KZ", "NL", "RU", "US"]
    for entry in entries.values():
        assert cross_check(entry, entries, regions) == []


def test_cross_check_unknown_regions_and_thread(updates: Path, regions: dict[str, Region]) -> None:
    path = updates / f"{UPDATE}.yaml"
    replace_in(path, "regions: [RU, BY, KZ]", "regions: [XX, RU, UA]")
    thread_line = replace_in(path, "thread: block-2020-01-23", "thread: block-2020-01-24")
    entry = load_entry(path)
    got = [str(p) for p in cross_check(entry, [BLOCK, UPDATE], regions)]
    assert got == [
        f"{path}:7: unknown region 'UA' (not in regions)",
        f"{path}:7: unknown region 'XX' (not in regions)",
        f"{path}:{thread_line}: thread 'block-2020-01-24' names no entry",
    ]
    # the thread is fine once the entry it names exists
    got = [str(p) for p in cross_check(entry, [BLOCK, "block-2020-01-24"], regions)]
    assert all("thread" not in p for p in got)


def test_cross_check_audience_locale_without_content(
    tmp_path: Path, regions: dict[str, Region]
) -> None:
    path = tmp_path / "e.yaml"
    entry = Entry(
        "e",
        dt.date(2020, 1, 1),
        EntryStatus.READY,
        {"en": Content("s", "s", "b")},
        audience=Audience(locales=frozenset({"en", "ru"})),
        path=path,
        lines={"content": 9},
    )
    got = [str(p) for p in cross_check(entry, ["e"], regions)]
    assert got == [
        f"{path}:9: subscribers in the audience read ru but the entry has no content in it"
    ]
