"""Issue 24's friction: a YAML mistake in an entry says what to do, on the right line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import UPDATE
from editing import line_of, replace_in
from statusmail.errors import InputError
from statusmail.project.entries import load_entry


@pytest.fixture
def entry(project: Path) -> Path:
    return project.parent / "updates" / f"{UPDATE}.yaml"


def only_problem(path: Path) -> str:
    with pytest.raises(InputError) as info:
        load_entry(path)
    (problem,) = info.value.problems
    return str(problem)


def test_a_value_with_a_colon_is_told_to_be_quoted(entry: Path) -> None:
    subject = "Update on the block in Russia: two appeals filed"
    line = replace_in(entry, f'subject: "{subject}"', f"subject: {subject}")
    assert only_problem(entry) == (
        f'{entry}:{line}: invalid YAML: a value holding ": " must be in quotes, or YAML '
        f'reads it as another key: write subject: "{subject}"'
    )


def test_a_key_indented_under_a_value_is_an_indentation_mistake(entry: Path) -> None:
    line = replace_in(entry, "thread: block", "  thread: block")
    assert only_problem(entry).startswith(
        f"{entry}:{line}: invalid YAML: 'thread' is indented 2 spaces, deeper than the line above"
    )


def test_a_tab_is_named(entry: Path) -> None:
    line = replace_in(entry, "access_instructions: true\n", "access_instructions: true\n\tx: 1\n")
    assert only_problem(entry) == (
        f"{entry}:{line + 1}: invalid YAML: a tab; YAML allows no tabs in indentation: "
        "indent with spaces"
    )


def test_bad_indentation_is_shown_on_the_line_that_went_wrong(entry: Path) -> None:
    # One space short: the line belongs to no block above it.
    line = replace_in(entry, '    summary: "Roskomsvoboda', '   summary: "Roskomsvoboda')
    assert only_problem(entry).startswith(
        f"{entry}:{line}: invalid YAML: the indentation goes wrong here (this line is "
        "indented 3 spaces"
    )


@pytest.mark.parametrize(
    ("old", "new", "told"),
    [
        # the parser gives up lines later, at the end of the file or at the next key
        ('subject: "Update on', 'subject: "Update on the block', "the quote opened on this line"),
        ("regions: [RU, BY, KZ]", "regions: [RU, BY, KZ", "the [ … ] opened on this line"),
        ("thread: block-2020-01-23", "thread block-2020-01-23", "has no colon"),
    ],
)
def test_the_line_is_where_the_mistake_is(entry: Path, old: str, new: str, told: str) -> None:
    line = replace_in(entry, old, new)
    if new.endswith("block"):  # the quote is left open: cut the rest of the subject
        text = entry.read_text(encoding="utf-8").replace(' in Russia: two appeals filed"', "")
        entry.write_text(text, encoding="utf-8")
    found = only_problem(entry)
    assert found.startswith(f"{entry}:{line}: invalid YAML: ") and told in found, found


def test_unquoted_yes_no_on_off_in_text_fields_say_to_quote_them(entry: Path) -> None:
    thread = replace_in(entry, "thread: block-2020-01-23", "thread: yes")
    regions = replace_in(entry, "regions: [RU, BY, KZ]", "regions: [RU, NO, KZ]")
    with pytest.raises(InputError) as info:
        load_entry(entry)
    assert [str(p) for p in info.value.problems] == [
        f"{entry}:{regions}: 'audience.regions': YAML reads an unquoted NO as false: write \"NO\"",
        f"{entry}:{thread}: 'thread' must be a string: YAML reads an unquoted yes as true: "
        'write "yes"',
    ]


def test_quoted_no_is_a_region(entry: Path) -> None:
    replace_in(entry, "regions: [RU, BY, KZ]", 'regions: [RU, "NO"]')
    assert load_entry(entry).audience.regions == frozenset({"RU", "NO"})


def test_a_windows_1251_entry_gets_an_encoding_hint(entry: Path) -> None:
    text = entry.read_text(encoding="utf-8")
    first_cyrillic = line_of(entry, '    subject: "Новости')
    entry.write_bytes(text.encode("cp1251"))
    assert only_problem(entry) == (
        f"{entry}:{first_cyrillic}: not valid UTF-8 (byte 0xcd): it reads as Windows-1251 "
        "(Cyrillic); save it as UTF-8 (in Notepad: Save As, Encoding: UTF-8)"
    )


@pytest.mark.parametrize("written", ["2020-04-21T09:30:00", "2020-04-21 09:30", "2020-04-21"])
def test_send_at_without_a_zone_names_the_zone_to_add(entry: Path, written: str) -> None:
    line = replace_in(entry, "status: ready\n", f"status: ready\nsend_at: {written}\n") + 1
    found = only_problem(entry)
    assert found.startswith(f"{entry}:{line}: 'send_at' 2020-04-21T") and "no time zone" in found
    assert "+03:00 (Moscow) or 2020-04-21T" in found and "Z (UTC)" in found


@pytest.mark.parametrize(("date", "offset"), [("2027-01-15", "+01:00"), ("2027-07-01", "+02:00")])
def test_send_at_without_a_zone_is_told_this_computer_s_offset_on_that_date(
    entry: Path, date: str, offset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In Berlin a July send_at is at +02:00 whatever today's offset is: the hint gave
    today's (+01:00 in December), and following it sent an hour late."""
    replace_in(entry, "status: ready\n", f"status: ready\nsend_at: {date}T09:00:00\n")
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        found = only_problem(entry)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert f"as {date}T09:00:00{offset} (this computer's zone)" in found, found


def test_send_at_with_a_zone_is_kept(entry: Path) -> None:
    replace_in(entry, "status: ready\n", "status: ready\nsend_at: 2020-04-21T09:30:00+03:00\n")
    send_at = load_entry(entry).send_at
    assert send_at is not None and send_at.isoformat() == "2020-04-21T09:30:00+03:00"


@pytest.mark.parametrize(
    ("new", "told"),
    [
        ("status: " + "9" * 5000, "invalid number '" + "9" * 40 + "…': 5000 digits"),
        ('status: !!int "abc"', "invalid number 'abc': invalid literal for int()"),
        ('status: !!float "x"', "invalid number 'x': could not convert string to float"),
    ],
)
def test_a_number_yaml_cannot_read_is_a_problem_at_its_line(
    entry: Path, new: str, told: str
) -> None:
    """PyYAML's int and float raise ValueError (Python's 4,300-digit limit, an explicit
    tag on text), which went out as a traceback from every command reading the file."""
    line = replace_in(entry, "status: ready", new)
    problem = only_problem(entry)
    assert problem.startswith(f"{entry}:{line}: invalid YAML: {told}"), problem


def test_a_key_of_the_mapping_s_own_overrides_one_it_merged(tmp_path: Path) -> None:
    """YAML's merge key: {<<: *base, name: …} is the usual way to vary one field of a
    shared block; it was refused as a duplicate key."""
    from statusmail.project.yamlfile import parse_yaml

    text = "base: &base {name: A, code: X}\nother: {<<: *base, name: B}\n"
    data = parse_yaml(text, tmp_path / "f.yaml")
    assert data["other"] == {"name": "B", "code": "X"}
    with pytest.raises(InputError) as info:
        parse_yaml("other: {name: B, name: C}\n", tmp_path / "f.yaml")
    assert "duplicate key 'name'" in str(info.value.problems[0])
