"""The ready-made pipelines in contrib/ci run as written (issues 15 and 24).

Each file is parsed as YAML and its shell lines run as the platform runs them: on GitHub
each step's ``run`` in ``bash -e``, with the workflow's and the step's ``env`` and their
``${{ }}`` expressions evaluated against the event; on GitLab a job's script lines in one
``bash -e -o pipefail``, with the file's variables and the predefined ones, once the job's
``rules`` say that it runs. ``statusmail`` on the PATH is this checkout's (the install step
runs in tests/ci/test_wheel.py, which installs the built wheel with it).

The scratch repository: the sample project (BASE) on main, then a branch, ``feature``, of
two commits that each change one entry, while main gets a commit of its own that changes
nothing statusmail reads. A pipeline that compares with the last commit previews one entry;
these must preview both. Where only the commit compared with is the point (a pull request,
a new branch, a branch pipeline, a first pipeline), a stand-in records the ``statusmail``
command line instead of running it; the real runs (a push, a merge request) take about a
second each.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, clean_environ, copy_sample
from editing import replace_in
from git_helpers import commit, git, init_repo

PIPELINES = REPO / "contrib" / "ci"
UPDATE = "update-2020-04-21"
BLOCK = "block-2020-01-23"
BOTH = sorted([UPDATE, BLOCK])
ZEROS = "0" * 40  # the "before" GitHub and GitLab give for a push that made the branch


@dataclass
class Repo:
    path: Path
    base: str  # the sample: where feature leaves main
    main: str  # main's own commit after it
    bin: Path  # holds the ``statusmail`` the pipelines run

    def head(self) -> str:
        return git(self.path, "rev-parse", "HEAD").strip()

    def record_instead(self) -> None:
        """From now on ``statusmail`` only records its command line."""
        recorded = shlex.quote(str(self.bin / "recorded"))
        script = f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {recorded}\n"
        (self.bin / "statusmail").write_text(script, encoding="utf-8")

    def compared_with(self) -> str:
        """The commit the recorded ``send --dry-run --all-changed-since`` names."""
        args = (self.bin / "recorded").read_text(encoding="utf-8").splitlines()
        assert args[:2] == ["send", "--dry-run"], args
        return args[args.index("--all-changed-since") + 1]

    def previewed(self) -> list[str]:
        return sorted(p.parent.name for p in (self.path / "previews").glob("*/index.html"))


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    path = copy_sample(tmp_path / "repo").parent
    init_repo(path)
    git(path, "branch", "-M", "main")
    base = git(path, "rev-parse", "HEAD").strip()
    (path / "NOTES.txt").write_text("nothing statusmail reads\n", encoding="utf-8")
    commit(path, "main moves on")
    main = git(path, "rev-parse", "HEAD").strip()
    git(path, "checkout", "-q", "-b", "feature", base)
    replace_in(path / "updates" / f"{UPDATE}.yaml", "date: 2020-04-21", "date: 2020-04-22")
    commit(path, "the update goes out a day later")
    replace_in(path / "updates" / f"{BLOCK}.yaml", "date: 2020-01-23", "date: 2020-01-24")
    commit(path, "the block notice is dated the next day")
    git(path, "remote", "add", "origin", str(path))  # a CI clone fetches main from it
    bin = tmp_path / "bin"
    bin.mkdir()
    wrapper = bin / "statusmail"
    wrapper.write_text(
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m statusmail "$@"\n', encoding="utf-8"
    )
    wrapper.chmod(0o755)
    return Repo(path, base, main, bin)


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((PIPELINES / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def shell(
    script: str, repo: Repo, *options: str, env: Mapping[str, str], exit_code: int = 0
) -> str:
    """A pipeline's script in bash, in the repository, as a runner runs it; its output."""
    result = subprocess.run(
        ["bash", *options, "-c", script],
        cwd=repo.path,
        env=clean_environ(PATH=f"{repo.bin}{os.pathsep}{os.environ.get('PATH', '')}", **env),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == exit_code, f"{script}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def empty_commit(repo: Repo, sha: str) -> bool:
    empty_tree = git(repo.path, "hash-object", "-t", "tree", os.devnull).strip()
    return git(repo.path, "rev-parse", f"{sha}^{{tree}}").strip() == empty_tree


# -- GitHub Actions ----------------------------------------------------------------------


def expression(value: object, context: dict[str, Any]) -> str:
    """A value with ``${{ a.b || c.d }}`` as GitHub evaluates it (the forms the file uses)."""
    text = str(value)
    match = re.fullmatch(r"\$\{\{(.*)\}\}", text.strip())
    if match is None:
        assert "${{" not in text, text
        return text
    found: Any = None
    for alternative in match.group(1).split("||"):
        assert re.fullmatch(r"\s*[\w.]+\s*", alternative), alternative
        found = context
        for key in alternative.strip().split("."):
            found = found.get(key) if isinstance(found, dict) else None
        if found:
            break
    return str(found or "")


def github_steps() -> dict[str, dict[str, Any]]:
    (job,) = load("github-actions.yml")["jobs"].values()
    return {str(s.get("name") or s.get("uses")): s for s in job["steps"]}


def run_github(
    step: str, repo: Repo, event: dict[str, Any], *, exit_code: int = 0, **env: str
) -> str:
    """One step's ``run`` in ``bash -e`` (GitHub's default shell), with its ``env``."""
    context = {"github": {"event": event}, "vars": {}}
    found = github_steps()[step]
    variables = {k: expression(v, context) for k, v in load("github-actions.yml")["env"].items()}
    variables |= {k: expression(v, context) for k, v in found.get("env", {}).items()}
    return shell(str(found["run"]), repo, "-e", env=variables | env, exit_code=exit_code)


def push(repo: Repo, before: str) -> dict[str, Any]:
    """The event of a push of feature, as GitHub gives it."""
    return {"before": before, "after": repo.head(), "repository": {"default_branch": "main"}}


def test_github_actions_on_a_push_previews_every_commit_of_it(repo: Repo, tmp_path: Path) -> None:
    steps = github_steps()
    assert steps["actions/checkout@v4"]["with"]["fetch-depth"] == 0  # the base must be there
    step_summary = tmp_path / "step-summary.md"
    event = push(repo, before=repo.base)

    check = run_github("Check", repo, event, GITHUB_STEP_SUMMARY=str(step_summary))
    assert check.startswith("::warning file=statusmail.yaml,line=")
    run_github("Preview what changed", repo, event, GITHUB_STEP_SUMMARY=str(step_summary))

    kept = repo.path / steps["Keep the previews and the summary"]["with"]["path"]
    assert repo.previewed() == BOTH
    summary = (kept / "SUMMARY.md").read_text(encoding="utf-8")
    assert f"## {UPDATE} (2020-04-22, ready)" in summary
    assert f"## {BLOCK} (2020-01-24, ready)" in summary
    assert step_summary.read_text(encoding="utf-8") == summary + "\n"


def github_commands(log: str) -> list[str]:
    """The workflow commands GitHub runs from a step's log: its lines that start with
    "::", but none from ``::stop-commands::TOKEN`` until ``::TOKEN::``."""
    commands: list[str] = []
    stopped: str | None = None
    for line in log.replace("\r", "\n").split("\n"):
        if stopped is not None:
            stopped = None if line == f"::{stopped}::" else stopped
        elif line.startswith("::stop-commands::"):
            stopped = line.removeprefix("::stop-commands::")
        elif line.startswith("::"):
            commands.append(line)
    return commands


def test_github_actions_preview_runs_no_command_a_change_writes(repo: Repo) -> None:
    """A pull request chooses its files' names (and its entries' text), which the preview
    prints; a line of them must never run as a workflow command (an annotation forged on
    any file, or ``::stop-commands::`` hiding the real ones)."""
    forged = "::error file=statusmail.yaml,line=1::forged by a file name"
    text = (repo.path / "updates" / f"{UPDATE}.yaml").read_text(encoding="utf-8")
    (repo.path / "updates" / f"x\n{forged}\n.yaml").write_text(text, encoding="utf-8")
    commit(repo.path, "a file name that would forge an annotation")
    # (exit 1: that entry cannot be previewed, which it says)
    log = run_github("Preview what changed", repo, push(repo, before=repo.base), exit_code=1)
    assert f"\n{forged}\n" in log  # the preview printed the name as it is
    assert github_commands(log) == []


def test_github_actions_compare_a_pull_request_with_its_base(repo: Repo) -> None:
    # actions/checkout checks out the pull request merged into its base branch.
    git(repo.path, "checkout", "-q", "--detach", repo.main)
    git(repo.path, "merge", "-q", "--no-ff", "-m", "merge feature", "feature")
    repo.record_instead()
    run_github("Preview what changed", repo, {"pull_request": {"base": {"sha": repo.main}}})
    assert repo.compared_with() == repo.main


def test_github_actions_compare_a_new_branch_with_where_it_left_main(repo: Repo) -> None:
    repo.record_instead()
    run_github("Preview what changed", repo, push(repo, before=ZEROS))
    assert repo.compared_with() == repo.base
    # A force push: the "before" is a commit the clone does not have.
    run_github("Preview what changed", repo, push(repo, before="1" * 40))
    assert repo.compared_with() == repo.base
    # main itself made by the push: nothing before it, so everything is new.
    git(repo.path, "checkout", "-q", "main")
    run_github("Preview what changed", repo, push(repo, before=ZEROS))
    assert empty_commit(repo, repo.compared_with())


# -- GitLab CI/CD ------------------------------------------------------------------------


def gitlab_jobs() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every job with its template (``extends``) merged in."""
    data = load("gitlab-ci.yml")
    for name, job in data.items():
        if isinstance(job, dict) and "script" in job and not name.startswith("."):
            yield name, {**data.get(job.get("extends", ""), {}), **job}


def condition(text: str, variables: dict[str, str]) -> bool:
    """``$VAR`` (set, not empty) or ``$VAR == "value"``: the forms the file uses."""
    match = re.fullmatch(r'\s*\$(\w+)\s*(?:==\s*"([^"]*)"\s*)?', text)
    assert match is not None, text
    value = variables.get(match.group(1), "")
    return value == match.group(2) if match.group(2) is not None else bool(value)


def gitlab_runs(job: dict[str, Any], variables: dict[str, str]) -> bool:
    """Whether the job's ``rules`` put it in a pipeline with these predefined variables."""
    for rule in job["rules"]:
        if all(condition(part, variables) for part in str(rule["if"]).split("&&")):
            return str(rule.get("when", "on_success")) != "never"
    return False


def run_gitlab(repo: Repo, predefined: dict[str, str], only: str = "") -> list[str]:
    """The jobs the rules let run (or only one of them), each job's script lines in one
    shell, as the runner runs them; their names."""
    variables = {k: str(v) for k, v in load("gitlab-ci.yml")["variables"].items()}
    ran = []
    for name, job in gitlab_jobs():
        if gitlab_runs(job, predefined) and name.startswith(only):
            script = "\n".join(str(line) for line in job["script"])
            shell(script, repo, "-e", "-o", "pipefail", env=variables | predefined)
            ran.append(name)
    return ran


BRANCH_PIPELINE = {"CI_PIPELINE_SOURCE": "push", "CI_DEFAULT_BRANCH": "main"}


def test_gitlab_ci_in_a_merge_request_previews_every_commit_of_it(repo: Repo) -> None:
    assert str(load("gitlab-ci.yml")["variables"]["GIT_DEPTH"]) == "0"
    jobs = dict(gitlab_jobs())
    merge_request = {
        "CI_PIPELINE_SOURCE": "merge_request_event",
        "CI_DEFAULT_BRANCH": "main",
        "CI_MERGE_REQUEST_DIFF_BASE_SHA": repo.base,
        "CI_COMMIT_BEFORE_SHA": ZEROS,  # as GitLab gives it in a merge request pipeline
    }
    assert run_gitlab(repo, merge_request) == ["statusmail-check", "statusmail-preview"]

    report = repo.path / jobs["statusmail-check"]["artifacts"]["reports"]["junit"]
    suites = ET.parse(report).getroot()
    assert suites.tag == "testsuites" and suites.get("failures") == "0"
    assert len(list(suites.iter("testcase"))) > 5

    (kept,) = [repo.path / p for p in jobs["statusmail-preview"]["artifacts"]["paths"]]
    assert repo.previewed() == BOTH
    summary = (kept / "SUMMARY.md").read_text(encoding="utf-8")
    assert f"## {UPDATE} (2020-04-22, ready)" in summary
    assert f"## {BLOCK} (2020-01-24, ready)" in summary


def test_gitlab_ci_runs_in_a_branch_pipeline_unless_a_merge_request_does(repo: Repo) -> None:
    branch = {**BRANCH_PIPELINE, "CI_COMMIT_BRANCH": "feature"}
    for _, job in gitlab_jobs():
        assert gitlab_runs(job, branch)
        assert not gitlab_runs(job, {**branch, "CI_OPEN_MERGE_REQUESTS": "group/project!1"})
        assert not gitlab_runs(job, {**BRANCH_PIPELINE, "CI_COMMIT_TAG": "v1.0"})

    repo.record_instead()
    ran = run_gitlab(repo, {**branch, "CI_COMMIT_BEFORE_SHA": repo.base}, "statusmail-preview")
    assert ran == ["statusmail-preview"]
    assert repo.compared_with() == repo.base
    run_gitlab(repo, {**branch, "CI_COMMIT_BEFORE_SHA": ZEROS}, "statusmail-preview")
    assert repo.compared_with() == repo.base  # a new branch: where it left main


def test_gitlab_ci_with_nothing_before_previews_every_entry(repo: Repo) -> None:
    # A new repository's first pipeline: "before" is all zeros, there is no main to fetch.
    git(repo.path, "remote", "remove", "origin")
    first = {**BRANCH_PIPELINE, "CI_COMMIT_BRANCH": "main", "CI_COMMIT_BEFORE_SHA": ZEROS}
    assert run_gitlab(repo, first, "statusmail-preview") == ["statusmail-preview"]
    assert repo.previewed() == BOTH
    summary = (repo.path / "previews" / "SUMMARY.md").read_text(encoding="utf-8")
    assert "statusmail.yaml" in summary  # compared with nothing: every file is new
