"""The ready-made pipelines in contrib/ci run as written (issue 15).

Each file is parsed as YAML; every command in it that starts with ``statusmail`` runs in
a shell, against the sample project in a real git repository whose last commit changed
one entry, with the config path put where the pipeline reads it (STATUSMAIL_CONFIG).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, clean_environ, copy_sample
from editing import replace_in
from git_helpers import commit, init_repo

PIPELINES = REPO / "contrib" / "ci"
UPDATE = "update-2020-04-21"


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((PIPELINES / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def commands(lines: list[str]) -> list[str]:
    return [
        line.strip()
        for block in lines
        for line in block.splitlines()
        if line.strip().startswith("statusmail ")
    ]


def github_steps(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for job in data["jobs"].values():
        yield from job["steps"]


def gitlab_jobs(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every job with its template (``extends``) merged in."""
    for name, job in data.items():
        if isinstance(job, dict) and "script" in job and not name.startswith("."):
            yield {**data.get(job.get("extends", ""), {}), **job}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """The sample at the root of a repository whose last commit changed one entry."""
    config = copy_sample(tmp_path / "repo")
    init_repo(config.parent)
    replace_in(config.parent / "updates" / f"{UPDATE}.yaml", "date: 2020-04-21", "date: 2020-04-22")
    commit(config.parent, "the update goes out a day later")
    return config


def run(line: str, config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """One pipeline line in a POSIX shell, statusmail being this checkout's."""
    line = line.replace("statusmail", f"{shlex.quote(sys.executable)} -m statusmail", 1)
    result = subprocess.run(
        ["sh", "-ec", line],
        cwd=config.parent,
        env=clean_environ(STATUSMAIL_CONFIG=str(config), **env),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, f"{line}\n{result.stderr}"
    return result


def test_github_actions(repo: Path, tmp_path: Path) -> None:
    data = load("github-actions.yml")
    assert "STATUSMAIL_CONFIG" in data["env"]
    steps = list(github_steps(data))
    checkout = next(s for s in steps if str(s.get("uses", "")).startswith("actions/checkout"))
    assert checkout["with"]["fetch-depth"] == 0  # the base commit must be there
    runs = [str(s["run"]) for s in steps if "run" in s]
    assert any("pip install statusmail" in r for r in runs)
    upload = next(s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact"))

    lines = commands(runs)
    assert [line.split()[1] for line in lines] == ["check", "send"]
    step_summary = tmp_path / "step-summary.md"
    check = run(lines[0], repo, GITHUB_STEP_SUMMARY=str(step_summary))
    assert "--format github" in lines[0]
    assert check.stdout.startswith("::warning file=statusmail.yaml,line=")
    run(lines[1], repo, GITHUB_STEP_SUMMARY=str(step_summary))

    kept = repo.parent / upload["with"]["path"]
    assert sorted(p.parent.name for p in kept.glob("*/index.html")) == [UPDATE]
    summary = (kept / "SUMMARY.md").read_text(encoding="utf-8")
    assert f"## {UPDATE} (2020-04-22, ready)" in summary
    assert step_summary.read_text(encoding="utf-8") == summary + "\n"


def test_gitlab_ci(repo: Path) -> None:
    data = load("gitlab-ci.yml")
    assert "STATUSMAIL_CONFIG" in data["variables"]
    assert str(data["variables"]["GIT_DEPTH"]) == "0"
    jobs = list(gitlab_jobs(data))
    assert all(any("pip install statusmail" in s for s in job["before_script"]) for job in jobs)

    lines = commands([line for job in jobs for line in job["script"]])
    assert [line.split()[1] for line in lines] == ["check", "send"]
    for line in lines:
        run(line, repo)

    (checking,) = [job for job in jobs if any("check" in s for s in job["script"])]
    report = repo.parent / checking["artifacts"]["reports"]["junit"]
    suites = ET.parse(report).getroot()
    assert suites.tag == "testsuites" and suites.get("failures") == "0"
    assert len(list(suites.iter("testcase"))) > 5

    (previewing,) = [job for job in jobs if any("send" in s for s in job["script"])]
    (kept,) = [repo.parent / p for p in previewing["artifacts"]["paths"]]
    assert sorted(p.parent.name for p in kept.glob("*/index.html")) == [UPDATE]
    assert (kept / "SUMMARY.md").is_file()
