"""Names as people expect them (issue 25, item 8): a name written "Last, First" is
greeted given name first under ``name_order: given_first``, ``check`` says how many
names that turns round, and the plain-text greeting wraps like every other line.

The sample project, with a list as a CRM exports it, is sent once into its Maildir
outbox and the messages are read back as a mail client would."""

from __future__ import annotations

import re
from email.message import EmailMessage
from pathlib import Path

import pytest

from conftest import (
    CSV_HEADER,
    UPDATE,
    copy_sample,
    invoke,
    outbox_messages,
    part_text,
    problem_lines,
    recipient,
)
from editing import line_of, replace_in
from statusmail.content.render import TEXT_WIDTH, Renderer
from statusmail.project.config import load_config
from statusmail.project.entries import find_entry
from statusmail.project.regions import load_regions
from statusmail.project.subscriber_rows import given_name_first

PETROVA = "petrova@example.org"
LONG = "long.name@example.org"
# 200 characters (the longest name kept), with a word far longer than a line's rest.
LONG_NAME = ("Maximiliane Konstantinopolitanische-Wiederherstellungsgesellschaft " * 4)[:200]
NOTE = re.compile(r"^note: (\d+) subscriber names? written \"Last, First\" greeted (.+)$", re.M)


def use_crm_list(config: Path, *, order: str | None) -> None:
    """A second subscriber file, as a CRM exports names; and ``name_order``."""
    rows = (
        f'{PETROVA},"Петрова, Анна",ru,RU,service-status,active\n'
        f"{LONG},{LONG_NAME},en,BY,service-status,active\n"
    )
    (config.parent / "subscribers" / "crm.csv").write_text(CSV_HEADER + rows, encoding="utf-8")
    if order is not None:
        replace_in(config, "\nname_order: as_written\n", f"\nname_order: {order}\n")


@pytest.fixture(scope="module")
def sent(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, EmailMessage]]:
    config = copy_sample(tmp_path_factory.mktemp("names") / "project")
    use_crm_list(config, order="given_first")
    result = invoke(config, "send", UPDATE, "--yes", "--rate", "0")
    assert result.exit_code == 0, result.output
    return config, {recipient(m): m for m in outbox_messages(config)}


def greeting_lines(text: str) -> list[str]:
    """The plain-text part's greeting: its lines before the first blank one."""
    return text.split("\n\n", 1)[0].splitlines()


@pytest.mark.parametrize(
    ("written", "greeted"),
    [
        ("Петрова, Анна", "Анна Петрова"),
        ("de Vries, Jan", "Jan de Vries"),
        ("O'Brien, Seán", "Seán O'Brien"),
        ("Smith-Jones, Mary J.", "Mary J. Smith-Jones"),
    ],
)
def test_a_last_first_name_is_turned_round(written: str, greeted: str) -> None:
    assert given_name_first(written) == greeted


@pytest.mark.parametrize(
    "written",
    ["Анна Петрова", "Grace O'Connor, PhD", "Acme, Inc.", "Smith, John, Jr", "Room 4, Ann", ","],
)
def test_anything_else_stays_as_written(written: str) -> None:
    assert given_name_first(written) is None


def test_petrova_anna_is_greeted_anna_petrova_in_both_parts(
    sent: tuple[Path, dict[str, EmailMessage]],
) -> None:
    _, messages = sent
    message = messages[PETROVA]
    assert greeting_lines(part_text(message, "plain")) == ["Здравствуйте, Анна Петрова!"]
    assert ">Здравствуйте, Анна Петрова!</p>" in part_text(message, "html")
    assert message["To"].addresses[0].display_name == "Петрова, Анна"  # the address book's


def test_a_200_character_name_wraps_at_spaces_within_78_columns(
    sent: tuple[Path, dict[str, EmailMessage]],
) -> None:
    config, messages = sent
    assert len(LONG_NAME) == 200
    text = part_text(messages[LONG], "plain")
    lines = greeting_lines(text)
    assert len(lines) > 1 and all(len(line) <= TEXT_WIDTH for line in lines), lines
    # Only spaces became line breaks: every word whole, in order.
    assert " ".join(lines).split(" ") == f"Hello, {LONG_NAME},".split(" ")
    # ... exactly as the template's wordwrap renders the name from scratch.
    loaded = load_config(config)
    renderer = Renderer(
        loaded.paths.templates, load_regions(loaded.paths.regions), loaded.sender.name
    )
    entry = find_entry(loaded.paths.updates, UPDATE)
    key = renderer.variant_key(entry, "en", "BY", LONG_NAME)
    scratch = renderer.render_from_scratch(entry, key, LONG_NAME, "u", "p").text
    assert greeting_lines(scratch) == lines


def test_check_says_how_many_names_it_turns_round(tmp_path: Path) -> None:
    config = copy_sample(tmp_path / "project")
    before = invoke(config, "check")
    assert before.exit_code == 0, before.output
    [(count, how)] = NOTE.findall(before.output)
    assert how.startswith("as written")

    use_crm_list(config, order="given_first")  # one more "Last, First" name, turned round
    after = invoke(config, "check")
    assert after.exit_code == 0, after.output  # a note, never a problem
    assert NOTE.findall(after.output) == [(str(int(count) + 1), "given name first (name_order)")]


def test_an_unknown_name_order_fails_check_at_its_line(tmp_path: Path) -> None:
    config = copy_sample(tmp_path / "project")
    assert load_config(config).name_order == "as_written"  # the default
    use_crm_list(config, order="last_first")
    line = line_of(config, "name_order: last_first")
    result = invoke(config, "check")
    assert result.exit_code == 1
    assert problem_lines(result.output) == [
        f"{config}:{line}: 'name_order' is 'last_first'; expected one of as_written, given_first"
    ]
