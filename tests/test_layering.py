"""The layering is in the imports, and import-linter's contracts (pyproject.toml) keep it:
storage imports nothing of rendering or the command line, selection and rendering use no
storage, and ``watch`` and the commands are peers over one pipeline."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def lint_imports() -> subprocess.CompletedProcess[str]:
    tool = Path(sys.executable).with_name("lint-imports")
    if not tool.exists() and shutil.which("lint-imports") is None:
        pytest.fail("import-linter is not installed (pip install -e '.[test]')")
    return subprocess.run(
        [str(tool) if tool.exists() else "lint-imports", "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_import_contracts_are_kept() -> None:
    result = lint_imports()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8 kept, 0 broken" in result.stdout


def test_every_package_says_what_it_holds_and_may_import() -> None:
    """Each subpackage's docstring is its boundary in words: what it may import and what
    imports it (the contracts in pyproject.toml enforce the words)."""
    packages = [p for p in (REPO / "src" / "statusmail").iterdir() if (p / "__init__.py").exists()]
    assert len(packages) >= 7, packages
    for package in packages:
        doc = (package / "__init__.py").read_text(encoding="utf-8")
        assert doc.startswith('"""'), package
        assert "May import" in doc or "may import" in doc, package
        assert "Imported by" in doc or "imports it" in doc, package


def test_the_top_level_holds_only_what_ties_the_packages() -> None:
    top = sorted(p.name for p in (REPO / "src" / "statusmail").iterdir() if p.suffix == ".py")
    assert len(top) <= 12, top


def test_the_pipeline_is_the_only_way_to_send() -> None:
    """``send`` and ``watch`` both go through ``pipeline.start`` and ``pipeline.finish``;
    neither builds messages or talks to the ledger's queue on its own."""
    for name in ("commands/sending.py", "watch.py"):
        source = (REPO / "src" / "statusmail" / name).read_text(encoding="utf-8")
        assert "pipeline.start(" in source and "pipeline.finish(" in source, name
        for private in ("MessageFactory", "Engine(", ".enqueue(", ".stage("):
            assert private not in source, f"{name} uses {private} directly"


def test_a_broken_layer_is_caught(tmp_path: Path) -> None:
    """The contracts bite: the ledger importing the renderer breaks the first one."""
    shutil.copytree(REPO / "src", tmp_path / "src")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    ledger = tmp_path / "src" / "statusmail" / "ledger" / "store.py"
    ledger.write_text(
        ledger.read_text(encoding="utf-8").replace(
            "from statusmail.errors import LedgerError",
            "from statusmail.errors import LedgerError\n"
            "from statusmail.content import render  # noqa",
        ),
        encoding="utf-8",
    )
    tool = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(tool), "--no-cache"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(tmp_path / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1, result.stdout
    assert "statusmail.ledger.store -> statusmail.content.render" in result.stdout
