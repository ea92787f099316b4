"""The code stays ruff- and mypy-clean, tests included: the suite fails when it does not."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tomllib

import pytest

from conftest import REPO, missing


def run_tool(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(tool) is None:
        missing(f"{tool} is not installed (pip install -e '.[test]')")
    return subprocess.run(
        [sys.executable, "-m", tool, *args], cwd=REPO, capture_output=True, text=True, timeout=240
    )


def test_ruff_is_clean() -> None:
    result = run_tool("ruff", "check", "src", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(240)  # a cold cache (CI's fresh clone) checks everything from scratch
def test_mypy_is_clean() -> None:
    """``mypy`` as pyproject.toml sets it up: strict, over the code and the tests."""
    with (REPO / "pyproject.toml").open("rb") as handle:
        settings = tomllib.load(handle)["tool"]["mypy"]
    assert settings["strict"] is True
    assert {"src/statusmail", "tests"} <= set(settings["files"])
    # A fresh clone (as CI runs) has no cache: writing one nobody will read costs about a
    # fifth of the check. A checkout where mypy has run keeps using and updating its own.
    cold = not (REPO / ".mypy_cache").is_dir()
    result = run_tool("mypy", *(["--cache-dir", os.devnull] if cold else []))
    assert result.returncode == 0, result.stdout + result.stderr
