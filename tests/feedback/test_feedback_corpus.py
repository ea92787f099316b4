"""The classifier and ``statusmail feedback`` against the corpus of real-world formats.

Every message in ``tests/feedback_corpus/`` has its expected outcome in ``index.yaml``.
The sample project is sent the April update first (maildir transport, with the return
path configured), so the return-path tokens, Message-IDs and unsubscribe tokens in the
corpus are the ones the messages really carried.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import copy_sample, invoke
from feedback_helpers import (
    CORPUS,
    SECRET,
    UPDATE,
    corpus_index,
    deliver,
    fill,
    ledger_dump,
    new_files,
    processed_files,
    query,
    summary,
)
from statusmail.feedback.classified import ReturnPath, Verdict
from statusmail.feedback.classify import classify

INDEX = corpus_index()
ENV = {"STATUSMAIL_UNSUBSCRIBE_SECRET": SECRET}
HANDLED = {name for name, e in INDEX.items() if e["outcome"] != "untouched"}
APPLIED = ("hard", "soft", "complaint", "unsubscribe")  # proven, and acted on


def send_update(config: Path) -> None:
    result = invoke(config, "send", UPDATE, "--yes", "--rate", "0", env=ENV)
    assert result.exit_code == 0, result.stderr


@pytest.fixture(scope="module")
def sent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, bytes]]]:
    """The sample project after the April update went out, and the corpus filled in."""
    config = copy_sample(tmp_path_factory.mktemp("corpus") / "project")
    send_update(config)
    yield config, {name: fill((CORPUS / name).read_bytes(), config) for name in INDEX}


@pytest.fixture
def project_sent(project: Path) -> tuple[Path, dict[str, bytes]]:
    send_update(project)
    return project, {name: fill((CORPUS / name).read_bytes(), project) for name in INDEX}


def test_the_index_names_every_corpus_file_and_the_issue_s_kinds() -> None:
    files = {p.name for p in CORPUS.glob("*.eml")}
    assert files == set(INDEX)
    shapes = " ".join(str(e["shape"]) for e in INDEX.values())
    for source in ("Postfix", "Exim", "Office 365", "Gmail", "Yandex", "Mail.Ru", "Yahoo"):
        assert source in shapes, source
    verdicts = {e["verdict"] for e in INDEX.values()}
    assert verdicts == {v.value for v in Verdict}
    assert any("Russian" in str(e["shape"]) and e["verdict"] == "bounce" for e in INDEX.values())
    assert {"vacation-outlook-en.eml", "vacation-ru.eml", "unrelated-question.eml"} <= files


@pytest.mark.parametrize("name", sorted(INDEX))
def test_the_classifier_reads_each_message(sent: tuple[Path, dict[str, bytes]], name: str) -> None:
    expected = INDEX[name]
    found = classify(sent[1][name], ReturnPath.of("bounces@startmail.example"))
    assert found.verdict.value == expected["verdict"], found.why
    kind = expected.get("kind", expected["outcome"])
    if kind in ("hard", "soft"):
        mine = [f for f in found.failures if (f.address or "").lower() == expected["address"]]
        assert mine, found.failures
        assert mine[0].hard is (kind == "hard")
        assert mine[0].code == expected["code"]
        assert mine[0].cause.value == expected["cause"]
        assert mine[0].diagnostic
    if expected["outcome"] == "complaint":
        assert found.feedback_type == "abuse"
        assert found.clues.return_path_tokens or found.clues.unsubscribe_tokens
    for key in ("feedback_type", "reporter"):
        if key in expected:
            assert getattr(found, key) == expected[key]
    if "addresses" in expected:
        assert list(found.clues.addresses) == expected["addresses"]
    if found.verdict is Verdict.FORWARDED:
        assert not found.failures  # nothing in it to act on


def outcomes(names: set[str], kind: str) -> list[str]:
    """The corpus messages among ``names`` whose expected outcome is ``kind``."""
    return sorted(n for n in names if INDEX[n]["outcome"] == kind)


def addresses(names: list[str]) -> set[str]:
    return {INDEX[n]["address"] for n in names}


@pytest.mark.timeout(120)
def test_feedback_acts_on_the_corpus_and_leaves_the_rest_alone(
    project_sent: tuple[Path, dict[str, bytes]],
) -> None:
    config, filled = project_sent
    box = config.parent / "bounces"
    names = {deliver(box, data).name: name for name, data in filled.items()}
    before = new_files(box)

    result = invoke(config, "feedback", "--json", "--show-addresses", env=ENV)
    assert result.exit_code == 0, result.stderr
    payload = summary(result.stdout)
    assert payload["read"] == len(INDEX)
    assert payload["handled"] == len(HANDLED)

    def said(kind: str, state: str, entry: str | None, address: str, code: str | None) -> Any:
        return (kind, state, entry, address, code if kind in ("hard", "soft") else None)

    events = Counter(
        said(e["kind"], e["state"], e["entry"], e["address"], e["code"]) for e in payload["events"]
    )
    expected_events = Counter(
        said(
            e.get("kind", e["outcome"]),
            "applied" if e["outcome"] in APPLIED else e["outcome"],
            e.get("entry"),
            e.get("address", "-"),  # a forged token names nobody
            e.get("code"),
        )
        for e in (INDEX[n] for n in HANDLED)
    )
    assert events == expected_events
    assert payload["unverified"] == len(outcomes(HANDLED, "unverified"))
    assert payload["forged"] == len(outcomes(HANDLED, "forged"))
    hard = outcomes(HANDLED, "hard")
    assert (payload["hard"], payload["soft"]) == (len(hard), len(outcomes(HANDLED, "soft")))
    assert payload["complaints"] == len(outcomes(HANDLED, "complaint"))
    assert payload["unsubscribes"] == len(outcomes(HANDLED, "unsubscribe"))
    assert payload["auto_replies"] == sum(e["verdict"] == "auto-reply" for e in INDEX.values())

    # handled messages moved to .processed, byte for byte; the rest untouched in new/
    left = new_files(box)
    assert {names[n] for n in left} == set(INDEX) - HANDLED
    assert all(left[n] == before[n] for n in left)
    moved = processed_files(box)
    assert sorted(n.split(":2,")[0] for n in moved) == sorted(
        n for n, name in names.items() if name in HANDLED
    )
    assert all(n.endswith(":2,S") for n in moved)

    # the ledger: suppressions with their reasons, rows turned bounced or complained
    reasons = dict(query(config, "SELECT address, reason FROM suppressions"))
    applied = [n for n in HANDLED if INDEX[n]["outcome"] in APPLIED]
    for name in sorted(HANDLED - set(applied)):  # applied to nobody
        address = INDEX[name].get("address")
        if address is not None and address not in addresses(applied):
            assert address not in reasons, name
    for name in applied:
        expected = INDEX[name]
        address = expected["address"]
        if expected["outcome"] == "soft":
            assert address not in reasons  # one soft bounce scores; it does not suppress
        else:
            assert (
                reasons[address]
                == {
                    "hard": "bounced",
                    "complaint": "complained",
                    "unsubscribe": "unsubscribed",
                }[expected["outcome"]]
            )
    rows = dict(query(config, "SELECT address, status FROM deliveries WHERE entry_id = ?", UPDATE))
    assert rows["ivan.smirnov@example.com"] == "bounced"
    assert rows["alexander.kozlov@example.com"] == "complained"
    assert rows["olga.kuznetsova@example.net"] == "sent"  # delayed: scored only
    assert rows["hanna.sidarenka@example.net"] == "sent"  # unsubscribed later: still sent
    assert len(query(config, "SELECT * FROM bounce_scores")) == len(outcomes(HANDLED, "soft"))

    status = json.loads(invoke(config, "status", UPDATE, "--json", env=ENV).stdout)
    complained = addresses(outcomes(HANDLED, "complaint"))
    assert (status["bounced"], status["complained"]) == (len(addresses(hard)), len(complained))
    assert status["sent"] + status["bounced"] + status["complained"] == 14

    listed = json.loads(invoke(config, "suppress", "list", "--json", env=ENV).stdout)
    ivan = next(row for row in listed if row["email"] == "ivan.smirnov@example.com")
    assert (ivan["reason"], ivan["code"]) == ("bounced", "5.1.1")
    assert ivan["reported_at"].startswith("2020-04-21")
    assert "User unknown" in ivan["detail"]

    # a second pass reads what is left and changes nothing
    dump = ledger_dump(config)
    again = invoke(config, "feedback", "--json", env=ENV)
    assert again.exit_code == 0, again.stderr
    second = summary(again.stdout)
    assert (second["read"], second["handled"], second["events"]) == (
        len(INDEX) - len(HANDLED),
        0,
        [],
    )
    assert ledger_dump(config) == dump
    assert new_files(box) == left


def test_a_report_delivered_twice_counts_once(project_sent: tuple[Path, dict[str, bytes]]) -> None:
    config, filled = project_sent
    box = config.parent / "bounces"
    deliver(box, filled["postfix-delayed.eml"])
    first = summary(invoke(config, "feedback", "--json", env=ENV).stdout)
    assert first["soft"] == 1
    deliver(box, filled["postfix-delayed.eml"])  # the same report, once more
    second = summary(invoke(config, "feedback", "--json", env=ENV).stdout)
    assert (second["handled"], second["soft"], second["already_recorded"]) == (1, 0, 1)
    assert [e["effect"] for e in second["events"]] == ["already recorded"]
    assert len(query(config, "SELECT * FROM feedback_events")) == 1
    assert len(processed_files(box)) == 2  # handled both times: out of the inbox


def test_a_dry_run_shows_the_pass_and_changes_nothing(
    project_sent: tuple[Path, dict[str, bytes]],
) -> None:
    config, filled = project_sent
    box = config.parent / "bounces"
    for data in filled.values():
        deliver(box, data)
    before, dump = new_files(box), ledger_dump(config)
    result = invoke(config, "feedback", "--dry-run", "--json", env=ENV)
    assert result.exit_code == 0, result.stderr
    payload = summary(result.stdout)
    assert payload["dry_run"] is True and payload["handled"] == len(HANDLED)
    assert all(e["effect"].startswith("would be ") for e in payload["events"])
    named = [e["address"] for e in payload["events"] if e["address"] != "-"]  # "-": nobody
    assert named and all("***@" in a for a in named)  # masked by default
    assert new_files(box) == before and not processed_files(box)
    assert ledger_dump(config) == dump
    text = invoke(config, "feedback", "--dry-run", env=ENV)
    assert text.exit_code == 0
    assert f"dry run: read {len(INDEX)} message(s)" in text.stdout
    assert "ivan.smirnov" not in text.stdout + text.stderr  # addresses masked in the output
