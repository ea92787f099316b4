"""Issue 24: an entry names whom it is for, `.yml` entries are read, an entry's file is
taken for its ID, and a draft's stale translation is a warning, not a refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import BLOCK, UPDATE, invoke
from editing import line_of, replace_in
from statusmail import pipeline
from statusmail.domain import Audience
from statusmail.errors import InputError
from statusmail.project.config import load_config
from statusmail.project.entries import entry_id_of, find_entry, load_entries, load_entry
from statusmail.project.regions import load_regions
from statusmail.project.subscriber_rows import Subscriber
from statusmail.project.subscribers import iter_subscribers
from statusmail.validation import entry_problems

TOPICS = "  topics: [service-status]\n"


def problems_of(config: Path, entry_id: str = UPDATE) -> list[str]:
    loaded = load_config(config)
    entry = find_entry(loaded.paths.updates, entry_id)
    regions = load_regions(loaded.paths.regions)
    found = entry_problems(entry, known_ids=[BLOCK, UPDATE], regions=regions, config=loaded)
    return [f"{p}" for p in found if not p.warning]


def test_an_audience_without_topics_is_refused_at_its_line(project: Path) -> None:
    path = project.parent / "updates" / f"{UPDATE}.yaml"
    audience = line_of(path, "audience:")
    replace_in(path, TOPICS, "")
    fix = "say which, as topics: [service-status], or send it to every subscriber with topics: all"
    assert problems_of(project) == [f"{path}:{audience}: the audience names no topics: {fix}"]
    with pytest.raises(InputError) as refused:  # send and the dry run refuse it too
        pipeline.prepare(load_config(project), load_entry(path), preview=True)
    assert [p.code for p in refused.value.problems] == ["missing-topics"]


def test_an_entry_without_an_audience_is_refused_too(project: Path) -> None:
    path = project.parent / "updates" / f"{BLOCK}.yaml"
    replace_in(path, "audience:\n" + TOPICS, "")
    assert [p.split(": ", 1)[1] for p in problems_of(project, BLOCK)] == [
        "the audience names no topics: say which, as topics: [service-status], or send it "
        "to every subscriber with topics: all"
    ]


def test_topics_all_is_for_every_subscriber_and_an_empty_list_for_nobody(project: Path) -> None:
    path = project.parent / "updates" / f"{BLOCK}.yaml"
    replace_in(path, "topics: [service-status]", "topics: all")
    entry = load_entry(path)
    assert entry.audience == Audience() and problems_of(project, BLOCK) == []
    assert entry.audience.matches("NL", frozenset({"product-news"}), "en")
    line = replace_in(path, "topics: all", "topics: []")
    with pytest.raises(InputError) as refused:
        load_entry(path)
    assert [(p.line, p.code) for p in refused.value.problems] == [(line, "missing-topics")]


def test_a_yml_entry_is_read_like_a_yaml_one(project: Path) -> None:
    updates = project.parent / "updates"
    (updates / f"{UPDATE}.yaml").rename(updates / f"{UPDATE}.yml")
    entries, problems = load_entries(updates)
    assert sorted(entries) == [BLOCK, UPDATE] and problems == []
    assert find_entry(updates, UPDATE).path == updates / f"{UPDATE}.yml"
    (updates / f"{BLOCK}.yml").write_bytes((updates / f"{BLOCK}.yaml").read_bytes())
    entries, problems = load_entries(updates)
    assert sorted(entries) == [UPDATE]
    message = f"{BLOCK}.yaml and {BLOCK}.yml are both entry '{BLOCK}': keep one"
    assert [(p.message, p.code) for p in problems] == [(message, "duplicate-entry")]
    with pytest.raises(InputError):
        find_entry(updates, BLOCK)


def test_a_yml_list_is_read_like_a_yaml_one(project: Path) -> None:
    folder = project.parent / "subscribers"
    before = sorted(s.key for s in iter_subscribers(folder) if isinstance(s, Subscriber))
    (folder / "more.yaml").rename(folder / "more.yml")
    after = sorted(s.key for s in iter_subscribers(folder) if isinstance(s, Subscriber))
    assert after == before and len(before) > 20


@pytest.mark.parametrize(
    ("given", "taken"),
    [
        (f"updates/{UPDATE}.yaml", UPDATE),
        (f"{UPDATE}.yml", UPDATE),
        (f"./updates/{UPDATE}", UPDATE),
        (UPDATE, UPDATE),
        ("v1.2-notice", "v1.2-notice"),  # a dot in an ID is no file ending
    ],
)
def test_an_entry_file_is_taken_for_its_id(given: str, taken: str) -> None:
    assert entry_id_of(given) == taken


def test_status_json_of_an_entry_file_not_sent_yet(project: Path) -> None:
    result = invoke(project, "status", f"updates/{UPDATE}.yaml", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)  # JSON although there is no ledger yet
    assert (report["entry"], report["known"], report["sent"], report["pending"]) == (
        UPDATE,
        False,
        0,
        0,
    )


def test_a_drafts_stale_translation_is_a_warning_until_it_is_ready(project: Path) -> None:
    path = project.parent / "updates" / f"{UPDATE}.yaml"
    replace_in(path, "Thank you for your patience", "Thank you all for your patience")
    replace_in(path, "status: ready", "status: draft")
    prepared = pipeline.prepare(load_config(project), load_entry(path), preview=True)
    assert [p.code for p in prepared.warnings] == ["stale-translation"]
    assert problems_of(project) == []
    replace_in(path, "status: draft", "status: ready")
    assert [p.split(": ", 1)[1][:40] for p in problems_of(project)] == [
        "the English changed since this ru transl"
    ]
