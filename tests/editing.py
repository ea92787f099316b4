"""Editing sample files in tests, knowing which line an edit landed on."""

from __future__ import annotations

from pathlib import Path


def replace_in(path: Path, old: str, new: str) -> int:
    """Replace ``old`` (which must occur once) and return the 1-based line it was on."""
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    line = text[: text.index(old)].count("\n") + 1
    path.write_text(text.replace(old, new), encoding="utf-8")
    return line


def line_of(path: Path, needle: str) -> int:
    """The 1-based line of ``needle``, which must occur once."""
    text = path.read_text(encoding="utf-8")
    assert text.count(needle) == 1, needle
    return text[: text.index(needle)].count("\n") + 1


def refresh_sources(entry: Path) -> None:
    """Mark every translation of ``entry`` as made from its current English block (what
    a translator does after re-reading it), so a test that edits the English on purpose
    is not failed for a stale translation."""
    from statusmail.project.entries import load_entry, source_hash

    current = source_hash(load_entry(entry).content["en"])
    lines = entry.read_text(encoding="utf-8").split("\n")
    entry.write_text(
        "\n".join(
            f"    source: {current}" if line.startswith("    source: ") else line for line in lines
        ),
        encoding="utf-8",
    )
