"""Whether a text a reader sees is in its language, and the dates it states.

``check`` holds every text to these rules wherever it is written (entries, the catalog,
``regions.yaml``, templates): each paragraph of a Russian text is Russian and each one of
an English text English, names and addresses aside (brands, and beside words of its own
a capitalized word in the other script: a VPN, WireGuard); and a translation states the
same dates as the English, compared as dates (month names from Babel's locale data).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from functools import cache

from babel.dates import get_month_names

# Names, not language: a text in any language may hold them as they are.
BRAND_WORDS = frozenset({"StartMail", "Tor", "Gmail"})

# Addresses, link targets, code and placeholders say nothing of a text's language.
_NOT_WORDS = re.compile(
    r"\]\([^)]*\)"  # a Markdown link's target
    r"|<[^>\s]+>"  # an autolink
    r"|`[^`]*`"  # inline code
    r"|(?:https?|mailto|tel|ftp):[^\s<>()\[\]]+|www\.\S+"  # a URL
    r"|\S+@\S+"  # an address
    r"|%\([^)]*\)[a-z]"  # a %(name)s placeholder
    r"|\{[^}]*\}",  # a {token} placeholder
    re.IGNORECASE,
)
_WORD = re.compile(r"[^\W\d_]+")
_CYRILLIC = re.compile(r"[Ѐ-ӿ]")
_LATIN = re.compile(r"[A-Za-zÀ-ɏ]")
_SCRIPTS = {"ru": _CYRILLIC, "en": _LATIN}
_LANGUAGE_NAMES = {"ru": "Russian", "en": "English"}
# A new block starts at a blank line, a list item or a heading.
_BLOCK_START = re.compile(r"^\s*(?:[-*+]\s|\d+[.)]\s|#)")


def paragraphs(text: str) -> Iterator[tuple[int, str]]:
    """(line offset in ``text``, the paragraph): blocks split at blank lines, list items
    and headings, so that one item in the other language is seen among many."""
    start, lines = 0, list[str]()
    for offset, line in enumerate(text.split("\n")):
        if not line.strip() or (_BLOCK_START.match(line) and lines):
            if lines:
                yield start, "\n".join(lines)
            lines = []
        if line.strip():
            if not lines:
                start = offset
            lines.append(line)
    if lines:
        yield start, "\n".join(lines)


def words(text: str) -> list[str]:
    """The words of ``text`` that say which language it is in."""
    return [w for w in _WORD.findall(_NOT_WORDS.sub(" ", text)) if w not in BRAND_WORDS]


def foreign_words(text: str, locale: str) -> tuple[int, int] | None:
    """(words in ``locale``'s script, words in another) if ``text`` does not read as
    ``locale``: a third or more of its words in another script, capitalized ones aside
    when it has words in its own; None if it does (or has no words, or ``locale`` is
    one these rules do not know)."""
    script = _SCRIPTS.get(locale)
    if script is None:
        return None
    found = words(text)
    own = sum(1 for w in found if script.search(w))
    foreign = [
        w for w in found if not script.search(w) and any(s.search(w) for s in _SCRIPTS.values())
    ]
    # Beside words of its own, a capitalized word in another script is a name (a VPN,
    # WireGuard, Psiphon in a Russian sentence), not a sentence in the other language.
    other = sum(1 for w in foreign if not (own and w[0].isupper()))
    if other and 3 * other >= own + other:
        return own, other
    return None


def language_problem(text: str, locale: str) -> tuple[int, str] | None:
    """The first paragraph of ``text`` not in ``locale``: (its line offset, a message
    quoting its start); None when every paragraph is."""
    for offset, paragraph in paragraphs(text):
        if foreign_words(paragraph, locale) is not None:
            shown = " ".join(paragraph.split())
            shown = shown if len(shown) <= 50 else shown[:47] + "..."
            return offset, f"{shown!r} is not in {_LANGUAGE_NAMES.get(locale, locale)}"
    return None


# -- dates ------------------------------------------------------------------------------


@cache
def _date_patterns(locale: str) -> tuple[re.Pattern[str], dict[str, int]]:
    """A pattern for "3 June", "June 3", "3 июня" in ``locale`` and the month of each
    name Babel knows (wide and abbreviated, in running text and standing alone)."""
    months: dict[str, int] = {}
    for width in ("wide", "abbreviated"):
        for context in ("format", "stand-alone"):
            for number, name in get_month_names(width, context, locale).items():
                months[name.lower().rstrip(".")] = number
    names = "|".join(sorted(map(re.escape, months), key=len, reverse=True))
    pattern = re.compile(
        rf"\b(?:(?P<day>\d{{1,2}})(?:st|nd|rd|th)?\s+(?P<month>{names})"
        rf"|(?P<month2>{names})\.?\s+(?P<day2>\d{{1,2}})(?:st|nd|rd|th)?)\b",
        re.IGNORECASE,
    )
    return pattern, months


def dates(text: str, locale: str) -> Counter[tuple[int, int]]:
    """The (month, day) of every date ``text`` states in ``locale``."""
    pattern, months = _date_patterns(locale)
    found: Counter[tuple[int, int]] = Counter()
    for match in pattern.finditer(text):
        day = int(match["day"] or match["day2"])
        month = months[(match["month"] or match["month2"]).lower()]
        if 1 <= day <= 31:
            found[(month, day)] += 1
    return found


def spell_date(month: int, day: int) -> str:
    return f"{get_month_names('wide', 'format', 'en')[month]} {day}"
