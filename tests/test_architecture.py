"""ARCHITECTURE.md is the map a newcomer reads first: every path it names exists, and it
stays short enough to read in two screens."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "ARCHITECTURE.md"
# `something.py`, `pkg/module.py`, `pkg/`, `tests/…`, `templates/`: what the page names
PATH = re.compile(r"`((?:[a-z_]+/)*[a-z_]+(?:\.py|\.md|/))`")


def named_paths() -> set[str]:
    return set(PATH.findall(DOC.read_text(encoding="utf-8")))


def exists(name: str) -> bool:
    return any((base / name).exists() for base in (REPO, REPO / "src" / "statusmail", REPO / "src"))


def test_every_path_architecture_md_names_exists() -> None:
    names = named_paths()
    assert len(names) >= 20, names  # the page names the places, not just the packages
    assert not sorted(n for n in names if not exists(n))


def test_every_package_is_on_the_map() -> None:
    text = DOC.read_text(encoding="utf-8")
    packages = [
        p.name for p in (REPO / "src" / "statusmail").iterdir() if (p / "__init__.py").exists()
    ]
    assert not [p for p in packages if f"`{p}/`" not in text]


def test_it_fits_in_about_two_screens() -> None:
    assert len(DOC.read_text(encoding="utf-8").splitlines()) <= 130


def test_the_readme_points_to_it() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "ARCHITECTURE.md" in readme[readme.index("## Layout") :]
