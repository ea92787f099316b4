"""Corrections (issue 24): an entry with ``corrects: ID`` goes to exactly those ID went
out to, as the ledger recorded them, less later unsubscribes and suppressions; it is
threaded under ID and its subject starts with the language's "Correction: ". ``send``
of an entry already sent in full says so, and after an edit that the edit reached
nobody."""

from __future__ import annotations

import json
import shutil
from email.message import EmailMessage
from pathlib import Path

import pytest

from conftest import UPDATE, copy_sample, invoke, outbox_messages, recipient
from statusmail import pipeline
from statusmail.delivery import corrections
from statusmail.errors import Problem
from statusmail.project.config import load_config
from statusmail.project.entries import find_entry, load_entries

CORRECTION = "fix-2020-04-22"
SUPPRESSED = "anna.petrova@example.org"  # unsubscribed by the one-click link, say
UNSUBSCRIBED = "ivan.smirnov@example.com"  # marked unsubscribed in the list since
NEWCOMER = "new.reader@example.org"  # joined after UPDATE went out: never got it

ENTRY = f"""\
id: {CORRECTION}
date: 2020-04-22
status: ready
corrects: {UPDATE}
content:
  en:
    subject: "The hearing is on June 4"
    summary: "We gave the wrong date yesterday: the hearing is on June 4, 2020."
    body: "The preliminary hearing is on **June 4, 2020**, not June 3."
  ru:
    subject: "Заседание 4 июня"
    summary: "Вчера мы ошиблись датой: заседание 4 июня 2020 г."
    body: "Предварительное заседание состоится **4 июня 2020 г.**, а не 3 июня."
"""


def check_corrections(config: Path) -> tuple[list[Problem], list[str]]:
    """What ``check`` says of the project's corrections (the rest of check is not run)."""
    return corrections.check(load_config(config), load_entries(config.parent / "updates")[0])


def send(config: Path, entry_id: str) -> list[EmailMessage]:
    """Send ``entry_id``; the messages this run added to the outbox."""
    before = {str(m["Message-ID"]) for m in outbox_messages(config)}
    result = invoke(config, "send", entry_id, "--yes", "--rate", "0")
    assert result.exit_code == 0, result.output
    return [m for m in outbox_messages(config) if str(m["Message-ID"]) not in before]


@pytest.fixture(scope="module")
def sent_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample project after ``send UPDATE``: copied by each test (``sent``)."""
    config = copy_sample(tmp_path_factory.mktemp("sent") / "project")
    send(config, UPDATE)
    return config


@pytest.fixture
def sent(sent_once: Path, tmp_path: Path) -> Path:
    shutil.copytree(sent_once.parent, tmp_path / "project")
    return tmp_path / "project" / sent_once.name


def test_a_correction_goes_to_the_recorded_recipients_threaded_and_prefixed(
    sent: Path,
) -> None:
    project = sent
    originals = {recipient(m): m for m in outbox_messages(project)}
    lists = project.parent / "subscribers" / "main.csv"
    text = lists.read_text(encoding="utf-8")
    text = text.replace(f"{UNSUBSCRIBED},Иван Смирнов,ru-RU,RU,service-status,active", "")
    text += f"{UNSUBSCRIBED},Иван Смирнов,ru-RU,RU,service-status,unsubscribed\n"
    text += f"{NEWCOMER},New Reader,en,RU,service-status,active\n"
    lists.write_text(text, encoding="utf-8")
    assert invoke(project, "suppress", "add", SUPPRESSED).exit_code == 0
    (project.parent / "updates" / f"{CORRECTION}.yaml").write_text(ENTRY, encoding="utf-8")

    problems, notes = check_corrections(project)
    assert problems == []
    assert (
        f"{CORRECTION}: a correction of {UPDATE}, to 12 of the 14 it went out to (3 en, 9 ru)"
        in (notes)
    )
    config = load_config(project)
    prepared = pipeline.prepare(config, find_entry(config.paths.updates, CORRECTION))
    assert pipeline.dry_run(prepared).stats.total == 12
    assert corrections.dry_run_lines(config, prepared.entry, 12) == [
        f"correction of {UPDATE}: to 12 of the 14 it went out to (2 unsubscribed, "
        "suppressed or no longer in the lists since)"
    ]

    corrected = {recipient(m): m for m in send(project, CORRECTION)}
    assert set(corrected) == set(originals) - {SUPPRESSED, UNSUBSCRIBED}
    for address, message in corrected.items():
        parent = str(originals[address]["Message-ID"])
        assert str(message["In-Reply-To"]) == parent
        assert str(message["References"]) == parent
        prefix = "Исправление: " if message["Content-Language"] == "ru" else "Correction: "
        assert str(message["Subject"]).startswith(prefix), message["Subject"]


def test_a_resend_of_a_changed_sent_entry_says_the_change_reached_nobody(project: Path) -> None:
    # sent here, not copied from the module's project: a list moved to another folder is
    # imported again, and a run that imported lists since the entry went out selects again
    send(project, UPDATE)
    before = outbox_messages(project)
    again = invoke(project, "send", UPDATE, "--yes")
    assert again.exit_code == 0, again.output
    assert f"{UPDATE} was already sent: {len(before)} messages, the last on " in again.output
    assert "changed since it was sent" not in again.output
    path = project.parent / "updates" / f"{UPDATE}.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("June 3", "June 4"), "utf-8")
    edited = invoke(project, "send", UPDATE, "--yes", "--json")
    assert edited.exit_code == 0, edited.output
    assert json.loads(edited.stdout)["already_sent"] == {
        "sent": len(before),
        "last_sent_at": json.loads(edited.stdout)["already_sent"]["last_sent_at"],
        "completed_at": json.loads(edited.stdout)["already_sent"]["completed_at"],
        "changed": True,
    }
    said = invoke(project, "send", UPDATE, "--yes").output
    assert f"{UPDATE} changed since it was sent: the change reached nobody." in said
    assert f"'corrects: {UPDATE}'" in said
    assert len(outbox_messages(project)) == len(before)

    # A correction of an entry nobody received is an error in check.
    wrong = ENTRY.replace(f"corrects: {UPDATE}", "corrects: block-2020-01-23")
    (project.parent / "updates" / f"{CORRECTION}.yaml").write_text(wrong, encoding="utf-8")
    [problem], _ = check_corrections(project)
    assert (problem.line, problem.code) == (4, "correction-unsent")
    assert "corrects 'block-2020-01-23', which the ledger shows sent to nobody" in str(problem)


def test_lists_changed_since_with_nobody_new_still_say_already_sent(project: Path) -> None:
    """A change to the lists may bring someone new (the run selects again and sends to
    them: tests/delivery/test_rerun.py); when it brings nobody, the run says the entry
    was already sent, as when the lists are as they were."""
    send(project, UPDATE)
    before = outbox_messages(project)
    lists = project.parent / "subscribers" / "main.csv"
    with lists.open("a", encoding="utf-8") as f:
        f.write("gone.reader@example.org,Gone Reader,en,NL,service-status,unsubscribed\n")
    again = invoke(project, "send", UPDATE, "--yes")
    assert again.exit_code == 0, again.output
    assert f"{UPDATE} was already sent: {len(before)} messages" in again.output
    assert len(outbox_messages(project)) == len(before)


def test_a_topic_left_ticked_on_the_page_adds_nothing_to_a_finished_entry(
    project: Path,
) -> None:
    """The preferences page shows every topic ticked to every address, so a choice
    takes topics away and never adds one: a reader of product news only who saves the
    page with service status still ticked is not sent an entry on service status (the
    review: unticking one topic signed a reader up for the others)."""
    from statusmail.domain import Preference
    from statusmail.ledger import Ledger

    send(project, UPDATE)
    reader = "maxim.novikov@example.org"  # in the list for product-news only
    assert reader not in {recipient(m) for m in outbox_messages(project)}
    config = load_config(project)
    with Ledger(config.paths.ledger) as ledger:
        ledger.set_preference(reader, Preference(topics=frozenset({"service-status"})))
    assert send(project, UPDATE) == []


@pytest.mark.parametrize("how", ["send", "watch"])
def test_a_correction_sent_before_its_entry_finished_reaches_the_rest_too(
    project: Path, how: str
) -> None:
    """Corrected while the entry was still going out (a --limit, a pause, a relay that
    was down): the correction was complete after its first run, and those who got the
    entry afterwards never got the correction, by send or by watch."""
    (project.parent / "updates" / f"{CORRECTION}.yaml").write_text(ENTRY, encoding="utf-8")
    first = invoke(project, "send", UPDATE, "--yes", "--rate", "0", "--limit", "5")
    assert first.exit_code == 4, first.output
    assert len(send(project, CORRECTION)) == 5
    send(project, UPDATE)  # the rest of the entry
    if how == "send":
        send(project, CORRECTION)
    else:
        assert invoke(project, "watch", "--once").exit_code == 0
    messages = outbox_messages(project)
    got_entry = [recipient(m) for m in messages if UPDATE in str(m["Message-ID"])]
    got_fix = [recipient(m) for m in messages if CORRECTION in str(m["Message-ID"])]
    assert len(got_fix) == len(set(got_fix)) == len(got_entry)  # nobody twice, nobody left
    assert set(got_fix) == set(got_entry)
