"""Outlook for Windows gets a card it can lay out, in every HTML part of every variant.

Outlook for Windows renders HTML with Word, which ignores ``max-width`` and a
``<div>``'s padding. The HTML part of each variant (the dry-run previews' ``.eml``
files of every sample entry) must therefore hold its card in an ``<!--[if mso]>`` table
of a fixed width, which every other client reads as a comment, and put the access block's
padding on a table cell. tests/content/test_layout_browser.py shows the markup changes nothing
in Chromium.
"""

from __future__ import annotations

import re

import pytest
from bs4 import BeautifulSoup, Comment, Tag

from conftest import SAMPLE_ENTRIES, copy_sample, dry_run, parse_message, part_text

# What Word alone reads: the opening of the fixed-width table around the card, and its end.
MSO_OPENING = re.compile(r"\[if mso\]>\s*(?P<table><table\b[^>]*>)\s*<tr>\s*<td>\s*<!\[endif\]")
MSO_CLOSING = re.compile(r"\[if mso\]>\s*</td>\s*</tr>\s*</table>\s*<!\[endif\]")
CARD_WIDTH = "600"


@pytest.fixture(scope="module")
def html_parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BeautifulSoup]:
    """The parsed HTML part of every variant of every sample entry, by ``entry/variant``."""
    root = tmp_path_factory.mktemp("outlook")
    config = copy_sample(root / "sample")
    parts: dict[str, BeautifulSoup] = {}
    for entry in SAMPLE_ENTRIES:
        dry_run(config, entry, root)
        for eml in sorted((root / entry).glob("*.eml")):
            html = part_text(parse_message(eml.read_bytes()), "html")
            parts[f"{entry}/{eml.stem}"] = BeautifulSoup(html, "html.parser")
    assert parts
    return parts


def comments(soup: BeautifulSoup, pattern: re.Pattern[str]) -> list[tuple[Comment, re.Match[str]]]:
    """The comments that are ``pattern`` whole, each with its match."""
    found = []
    for comment in soup.find_all(string=lambda text: isinstance(text, Comment)):
        assert isinstance(comment, Comment)
        match = pattern.fullmatch(comment.strip())
        if match:
            found.append((comment, match))
    return found


def style_of(tag: Tag) -> dict[str, str]:
    declarations = (part.partition(":") for part in str(tag.get("style", "")).split(";"))
    return {name.strip(): value.strip() for name, _, value in declarations if value}


def test_the_card_sits_in_a_fixed_width_mso_table(html_parts: dict[str, BeautifulSoup]) -> None:
    problems = []
    for name, soup in html_parts.items():
        opening, closing = comments(soup, MSO_OPENING), comments(soup, MSO_CLOSING)
        if len(opening) != 1 or len(closing) != 1:
            problems.append(f"{name}: {len(opening)} MSO table openings, {len(closing)} closings")
            continue
        (start, match), (end, _) = opening[0], closing[0]
        table = BeautifulSoup(match["table"], "html.parser").table
        assert table is not None
        if table.get("width") != CARD_WIDTH or style_of(table).get("width") != f"{CARD_WIDTH}px":
            problems.append(f"{name}: the MSO table is not {CARD_WIDTH} px wide: {table}")
        # the card (the max-width table) is what the two comments enclose
        cards = soup.find_all(style=re.compile(r"max-width:\s*600px"))
        inside = [
            sibling
            for sibling in start.find_next_siblings()
            if sibling in end.find_previous_siblings()
        ]
        if len(cards) != 1 or inside != cards:
            problems.append(f"{name}: the MSO table holds {inside!r:.80}, not the card")
    assert not problems, "\n".join(problems)


def test_no_box_relies_on_a_divs_padding(html_parts: dict[str, BeautifulSoup]) -> None:
    """Word drops a ``<div>``'s padding; the access block's padding is on a table cell."""
    problems = [
        f"{name}: padding on a <div>: {str(div)[:120]}"
        for name, soup in html_parts.items()
        for div in soup.find_all("div")
        if any(key.startswith("padding") for key in style_of(div))
    ]
    assert not problems, "\n".join(problems)
    with_access = {name for name in html_parts if name.endswith("-RU")}
    assert with_access, "no variant with RU's access block"
    for name in with_access:
        heading = html_parts[name].find("h2")
        assert heading is not None, name
        cell = heading.parent
        assert isinstance(cell, Tag) and cell.name == "td", f"{name}: {cell}"
        style = style_of(cell)
        assert style.get("padding") and style.get("background-color"), f"{name}: {style}"
