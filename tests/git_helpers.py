"""A real git repository around a project, for the tests of what changed since a ref."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def require_git() -> None:
    """Skip when git is missing, saying so; under CI=true, fail instead."""
    if shutil.which("git") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("git is not installed, and CI must run the repository tests")
        pytest.skip("git is not installed: these tests build a real repository")


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo), "-c", "commit.gpgsign=false", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    return result.stdout


def init_repo(repo: Path) -> None:
    """``git init`` in ``repo`` with a local identity, and commit everything in it."""
    require_git()
    git(repo, "init", "-q")
    git(repo, "config", "user.name", "statusmail tests")
    git(repo, "config", "user.email", "tests@statusmail.example")
    commit(repo, "the sample project")


def commit(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)


def sample_repo(folder: Path) -> Path:
    """The sample project as the root of a git repository in ``folder``, committed;
    returns its config."""
    from conftest import copy_sample

    config = copy_sample(folder)
    init_repo(config.parent)
    return config
