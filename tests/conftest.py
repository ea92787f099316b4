"""Shared fixtures: a fresh copy of the sample project in a temporary folder."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE_FILES = ("statusmail.yaml", "regions.yaml")
SAMPLE_DIRS = ("updates", "subscribers", "templates")


def copy_sample(dest: Path) -> Path:
    """Copy the repo's sample project to ``dest``; returns the config path."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in SAMPLE_FILES:
        shutil.copy(REPO / name, dest / name)
    for name in SAMPLE_DIRS:
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("*.mo"))
    return dest / "statusmail.yaml"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The sample project in a temporary folder; returns its config path."""
    return copy_sample(tmp_path / "project")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests never see the caller's statusmail settings."""
    for name in (
        "STATUSMAIL_CONFIG",
        "STATUSMAIL_TRANSPORT",
        "STATUSMAIL_SMTP_HOST",
        "STATUSMAIL_SMTP_PORT",
        "STATUSMAIL_SMTP_SECURITY",
        "STATUSMAIL_SMTP_PASSWORD",
        "STATUSMAIL_UNSUBSCRIBE_SECRET",
    ):
        monkeypatch.delenv(name, raising=False)
    yield
