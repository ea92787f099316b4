"""A change CI previews controls the files of the project, links included: previews, the
summary and the run's locks are written only where they belong, and a file that is no
file is refused (a review found each of these writing or removing outside the project)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import SECRET, UPDATE, copy_sample, invoke
from git_helpers import commit, sample_repo
from statusmail.content.preview import SITE_PREVIEW

ENV = {"STATUSMAIL_UNSUBSCRIBE_SECRET": SECRET}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return sample_repo(tmp_path / "repo")


def precious(folder: Path) -> list[Path]:
    """Files someone else keeps in ``folder``."""
    made = [folder / "site" / "data" / "users.sqlite", folder / "README.txt", folder / "a.html"]
    for path in made:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("precious data\n", encoding="utf-8")
    return made


@pytest.mark.parametrize("linked", ["root", "entry", "site"])
def test_a_preview_folder_that_is_a_link_is_refused_and_its_target_kept(
    repo: Path, tmp_path: Path, linked: str
) -> None:
    """A change that commits previews/ID (or the folder itself, or ID/site) as a link:
    the dry run removed the target's site/ and its *.html and *.txt, and wrote there."""
    elsewhere = tmp_path / "elsewhere"
    kept = precious(elsewhere)
    root = repo.parent / "previews"
    link = {"root": root, "entry": root / UPDATE, "site": root / UPDATE / SITE_PREVIEW}[linked]
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(elsewhere, target_is_directory=True)
    (repo.parent / "updates" / f"{UPDATE}.yaml").touch()
    replace = (repo.parent / "updates" / f"{UPDATE}.yaml").read_text(encoding="utf-8")
    (repo.parent / "updates" / f"{UPDATE}.yaml").write_text(replace + "\n", encoding="utf-8")
    commit(repo.parent, "a change with a link")
    done = invoke(
        repo, "send", "--dry-run", "--all-changed-since", "HEAD~1", "--preview-dir", str(root),
        env=ENV,
    )  # fmt: skip
    assert done.exit_code != 0 and "is a link" in done.output, done.output
    assert all(path.read_text(encoding="utf-8") == "precious data\n" for path in kept)


def test_a_preview_folder_naming_the_project_s_own_folders_is_refused(repo: Path) -> None:
    """--preview-dir . with an entry whose id is "templates": the site preview removed
    the project's templates/site/."""
    entry = repo.parent / "updates" / "templates.yaml"
    entry.write_text(
        (repo.parent / "updates" / f"{UPDATE}.yaml")
        .read_text(encoding="utf-8")
        .replace(f"id: {UPDATE}", "id: templates"),
        encoding="utf-8",
    )
    commit(repo.parent, "an entry named templates")
    site_templates = sorted((repo.parent / "templates" / "site").rglob("*"))
    done = invoke(
        repo, "send", "--dry-run", "--all-changed-since", "HEAD~1", "--preview-dir",
        str(repo.parent), env=ENV,
    )  # fmt: skip
    assert done.exit_code != 0 and "project's own" in done.output, done.output
    assert sorted((repo.parent / "templates" / "site").rglob("*")) == site_templates


def test_the_summary_is_never_written_through_a_link(repo: Path, tmp_path: Path) -> None:
    victim = tmp_path / "config.ini"
    victim.write_text("precious config\n", encoding="utf-8")
    summary = repo.parent / "previews" / "SUMMARY.md"
    summary.parent.mkdir()
    summary.symlink_to(victim)
    done = invoke(
        repo, "send", UPDATE, "--dry-run", "--preview-dir", str(summary.parent), "--summary",
        str(summary), env=ENV,
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert victim.read_text(encoding="utf-8") == "precious config\n"
    assert not summary.is_symlink() and "statusmail" in summary.read_text(encoding="utf-8")


def test_a_run_lock_that_is_a_link_is_refused_and_its_target_kept(
    tmp_path: Path,
) -> None:
    config = copy_sample(tmp_path / "project")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious data\n", encoding="utf-8")
    (config.parent / f"statusmail.db.send-{UPDATE}.lock").symlink_to(victim)
    done = invoke(config, "send", UPDATE, "--yes", env=ENV)
    assert done.exit_code == 1 and "cannot create the run lock" in done.stderr, done.output
    assert victim.read_text(encoding="utf-8") == "precious data\n"


def test_an_input_that_is_no_regular_file_is_refused(tmp_path: Path) -> None:
    """regions.yaml linked to /dev/zero: its size is 0, and reading it ended in a
    MemoryError at 1.35 GB."""
    config = copy_sample(tmp_path / "project")
    regions = config.parent / "regions.yaml"
    regions.unlink()
    regions.symlink_to("/dev/zero")
    done = invoke(config, "check", env=ENV)
    assert done.exit_code == 1, done.output
    assert f"{regions}: is not a regular file" in done.output


def test_a_preview_folder_the_operator_links_elsewhere_is_fine(
    tmp_path: Path,
) -> None:
    """Only links the change can make are refused: --preview-dir itself, outside the
    project, may be a link (macOS's /tmp, an artifacts folder on a mounted volume)."""
    config = copy_sample(tmp_path / "project")
    (tmp_path / "real-artifacts").mkdir()
    (tmp_path / "artifacts").symlink_to(tmp_path / "real-artifacts")
    done = invoke(
        config, "send", UPDATE, "--dry-run", "--preview-dir", str(tmp_path / "artifacts"), env=ENV
    )
    assert done.exit_code == 0, done.output
    assert (tmp_path / "real-artifacts" / UPDATE / "index.html").is_file()
