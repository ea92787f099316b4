"""What changed since a git ref: check --changed-since and send --dry-run
--all-changed-since, in a real repository built here (issue 15)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import invoke
from editing import replace_in
from git_helpers import commit, git, require_git, sample_repo

UPDATE = "update-2020-04-21"
BLOCK = "block-2020-01-23"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """The sample project as the root of a git repository, committed; returns its config."""
    return sample_repo(tmp_path / "repo")


def previewed(folder: Path) -> list[str]:
    """The entries with a preview gallery under ``folder``."""
    return sorted(p.parent.name for p in folder.glob("*/index.html"))


def preview_changed(config: Path, ref: str, *extra: str) -> tuple[list[str], str]:
    out = config.parent / "ci-previews"
    result = invoke(
        config, "send", "--dry-run", "--all-changed-since", ref, "--preview-dir", str(out), *extra
    )
    assert result.exit_code == 0, result.output
    return previewed(out), result.output


def test_an_edited_entry_alone_is_previewed(repo: Path) -> None:
    replace_in(repo.parent / "updates" / f"{UPDATE}.yaml", "date: 2020-04-21", "date: 2020-04-22")
    commit(repo.parent, "the update goes out a day later")
    entries, said = preview_changed(repo, "HEAD~1")
    assert entries == [UPDATE]
    assert "entries: update-2020-04-21" in said
    assert f"{UPDATE} (dry run, status ready): 14 recipients, 14 rendered" in said


def test_a_changed_template_previews_every_entry(repo: Path) -> None:
    template = repo.parent / "templates" / "message.txt.j2"
    template.write_text(template.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    commit(repo.parent, "a template changed")
    entries, said = preview_changed(repo, "HEAD~1")
    assert entries == [BLOCK, UPDATE]
    assert "every entry's messages are affected" in said


@pytest.mark.parametrize(
    ("path", "old", "new"),
    [
        ("regions.yaml", "Russia", "the Russian Federation"),
        ("statusmail.yaml", "rate: 20", "rate: 10"),
        ("templates/locale/ru/LC_MESSAGES/messages.po", "Страница не найдена.", "Нет страницы."),
    ],
)
def test_what_every_entry_uses_previews_every_entry(
    repo: Path, path: str, old: str, new: str
) -> None:
    text = (repo.parent / path).read_text(encoding="utf-8")
    (repo.parent / path).write_text(text.replace(old, new, 1), encoding="utf-8")
    commit(repo.parent, f"{path} changed")
    assert preview_changed(repo, "HEAD~1")[0] == [BLOCK, UPDATE]


def test_subscribers_only_preview_nothing_but_are_reported(repo: Path) -> None:
    main = repo.parent / "subscribers" / "main.csv"
    main.write_text(
        main.read_text(encoding="utf-8") + "new.reader@example.org,,en,US,service-status,active\n",
        encoding="utf-8",
    )
    entries, said = preview_changed(repo, "HEAD")  # not committed: the working tree counts
    assert entries == []
    assert "subscribers: subscribers/main.csv" in said and "no entry to preview" in said
    report = json.loads(invoke(repo, "check", "--json", "--changed-since", "HEAD").stdout)
    assert report["changed"]["subscribers"] == ["subscribers/main.csv"]
    assert report["changed"]["entries"] == [] and report["changed"]["every_entry"] is False


def test_a_new_untracked_entry_counts_as_changed(repo: Path) -> None:
    updates = repo.parent / "updates"
    text = (updates / f"{UPDATE}.yaml").read_text(encoding="utf-8")
    (updates / "update-2020-05-01.yaml").write_text(
        text.replace(f"id: {UPDATE}", "id: update-2020-05-01"), encoding="utf-8"
    )
    assert preview_changed(repo, "HEAD")[0] == ["update-2020-05-01"]


def test_check_reports_what_changed_in_every_format(repo: Path) -> None:
    replace_in(repo.parent / "updates" / f"{UPDATE}.yaml", "status: ready", "status: draft")
    replace_in(repo.parent / "templates" / "message.html.j2", "<html", "<html ")
    commit(repo.parent, "two changes")

    text = invoke(repo, "check", "--changed-since", "HEAD~1")
    assert text.exit_code == 0, text.output
    assert "changed since HEAD~1:\n  entries: update-2020-04-21\n" in text.output
    assert "  templates: templates/message.html.j2\n" in text.output

    report = json.loads(invoke(repo, "check", "--json", "--changed-since", "HEAD~1").stdout)
    assert report["ok"] is True
    changed = report["changed"]
    assert changed["since"] == "HEAD~1" and changed["entries"] == [UPDATE]
    assert changed["templates"] == ["templates/message.html.j2"] and changed["every_entry"]

    listed = json.loads(
        invoke(repo, "check", "--format", "json", "--changed-since", "HEAD~1").stdout
    )
    notices = {(one["file"], one["code"]) for one in listed if one["severity"] == "notice"}
    assert notices == {
        (f"updates/{UPDATE}.yaml", "changed"),
        ("templates/message.html.j2", "changed"),
    }

    github = invoke(repo, "check", "--format", "github", "--changed-since", "HEAD~1").stdout
    assert f"::notice file=updates/{UPDATE}.yaml,title=statusmail::entry {UPDATE} changed" in github

    junit = invoke(repo, "check", "--format", "junit", "--changed-since", "HEAD~1").stdout
    assert '<property name="changed.entries" value="update-2020-04-21" />' in junit
    assert '<property name="changed.every_entry" value="true" />' in junit


def test_an_unknown_ref_is_a_clear_error(repo: Path) -> None:
    for args in (
        ("check", "--changed-since", "no-such-branch"),
        ("send", "--dry-run", "--all-changed-since", "no-such-branch"),
    ):
        result = invoke(repo, *args)
        assert result.exit_code == 1
        assert result.stderr.strip() == (
            f"error: git knows no commit 'no-such-branch' in {repo.parent.resolve()}"
        )


def test_outside_a_repository_is_a_clear_error(project: Path) -> None:
    require_git()  # without git the error says that instead
    init_check = invoke(project, "check", "--changed-since", "HEAD")
    assert init_check.exit_code == 1
    assert init_check.output.startswith(
        f"error: {project.parent} is not in a git repository, so it cannot be compared with 'HEAD'"
    )


def test_a_shallow_clone_is_named(repo: Path, tmp_path: Path) -> None:
    commit(repo.parent, "a second commit")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{repo.parent}", str(clone))
    result = invoke(clone / "statusmail.yaml", "check", "--changed-since", "HEAD~1")
    assert result.exit_code == 1
    assert "this clone is shallow" in result.output and "fetch-depth: 0" in result.output


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("send",), "Missing argument 'ID'"),
        (("send", "--dry-run"), "Missing argument 'ID'"),
        (("send", UPDATE, "--dry-run", "--all-changed-since", "HEAD"), "not both"),
        (("send", "--all-changed-since", "HEAD"), "--all-changed-since goes with --dry-run"),
        (("send", UPDATE, "--summary", "s.md"), "--summary goes with --dry-run"),
    ],
)
def test_usage_errors(repo: Path, args: tuple[str, ...], said: str) -> None:
    result = invoke(repo, *args)
    assert result.exit_code == 2
    assert said in result.stderr


def test_one_entry_that_cannot_be_previewed_leaves_the_others(repo: Path) -> None:
    replace_in(repo.parent / "updates" / f"{UPDATE}.yaml", f"thread: {BLOCK}", "thread: gone")
    replace_in(repo.parent / "regions.yaml", "{en: Russia,", "{en: Russian Federation,")
    commit(repo.parent, "regions changed, and the update lost its thread")
    out = repo.parent / "ci-previews"
    result = invoke(
        repo,
        *("send", "--dry-run", "--all-changed-since", "HEAD~1", "--json"),
        *("--preview-dir", str(out), "--summary", str(out / "SUMMARY.md")),
    )
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["changed"]["every_entry"] and report["changed"]["entries"] == [UPDATE]
    assert report["summary"] == str(out / "SUMMARY.md")
    by_id = {one["entry"]: one for one in report["entries"]}
    assert by_id[BLOCK]["previewed"] is True and by_id[BLOCK]["selected"] > 0
    assert by_id[UPDATE]["previewed"] is False
    assert any("thread 'gone' names no entry" in p for p in by_id[UPDATE]["problems"])
    assert previewed(out) == [BLOCK]


def test_a_broken_subscriber_row_is_reported_per_entry_with_the_summary(repo: Path) -> None:
    """A list row with a field too many stops every entry's dry run; the CI preview
    still writes its summary and says so for each entry, rather than ending at once."""
    with (repo.parent / "subscribers" / "main.csv").open("a", encoding="utf-8") as handle:
        handle.write("late.comer@example.org,Late Comer,en,RU,,active,extra\n")
    replace_in(repo.parent / "updates" / f"{UPDATE}.yaml", "date: 2020-04-21", "date: 2020-04-22")
    commit(repo.parent, "a row with a field too many, and the update a day later")
    out = repo.parent / "ci-previews"
    result = invoke(
        repo,
        *("send", "--dry-run", "--all-changed-since", "HEAD~1"),
        *("--preview-dir", str(out), "--summary", str(out / "SUMMARY.md")),
    )
    assert result.exit_code == 1, result.output
    summary = (out / "SUMMARY.md").read_text(encoding="utf-8")
    assert f"{UPDATE}: not previewed" in result.output
    assert UPDATE in summary and "main.csv" in summary and "fields" in summary


def test_odd_names_and_links_out_of_the_repository_are_no_traceback(
    repo: Path, tmp_path: Path
) -> None:
    """An entry file whose name is not UTF-8 (git gives it undecoded), and templates
    made a link to a folder beside the repository: both are previewed or reported."""
    shared = tmp_path / "shared-templates"
    templates = repo.parent / "templates"
    templates.rename(shared)
    templates.symlink_to(shared, target_is_directory=True)
    text = (repo.parent / "updates" / f"{UPDATE}.yaml").read_bytes()
    (repo.parent / "updates" / os.fsdecode(b"caf\xe9.yaml")).write_bytes(text)
    commit(repo.parent, "templates shared, and an entry named in Latin-1")
    out = repo.parent / "ci-previews"
    result = invoke(
        repo,
        *("send", "--dry-run", "--all-changed-since", "HEAD~1"),
        *("--preview-dir", str(out), "--summary", str(out / "SUMMARY.md")),
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code == 1, result.output  # the odd entry cannot be previewed
    assert previewed(out) == sorted([BLOCK, UPDATE])
    summary = (out / "SUMMARY.md").read_text(encoding="utf-8")
    assert "entries: caf?" in summary  # (what could not be written as UTF-8)
