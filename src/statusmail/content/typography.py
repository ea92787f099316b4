"""No-break spaces where a line must not break, for messages read on narrow phone screens.

The only change ever made is an ordinary space (U+0020) turning into a no-break space
(U+00A0), so replacing the added U+00A0 by spaces gives the input back, and applying the
rules twice changes nothing more. In a Markdown token stream a ``softbreak`` (a line end
in the source) that must not break becomes a ``text`` token holding U+00A0.

Russian (``ru``):

- a one- or two-letter word binds to the word after it (``в\u00a0России``,
  ``В\u00a02020 году``, ``и\u00a0письма``), at any case and at a sentence start;
- the enclitic particles ли, ль, же, ж, бы, б are the exception: they lean on the word
  *before* them (``знаете\u00a0ли вы``, ``если\u00a0бы``) and do not bind forward, so they
  never start a line and never dangle at a line end ahead of a word they do not belong to;
- a number binds to the word after it (``3\u00a0июня``, ``2020\u00a0года``,
  ``23\u00a0января 2020\u00a0года``), and ``г.``/``гг.`` to whatever precedes it;
- an em dash binds to the word before it (``слово\u00a0— слово``);
- a number's digit groups stay together (``10\u00a0000``), ``№`` binds to its number
  (``№\u00a0149-ФЗ``), and ``т.\u00a0д.``, ``т.\u00a0е.``, ``т.\u00a0п.`` stay whole.

English (``en``): a month name binds to its day, and the day to the year after a comma
(``June\u00a03,\u00a02020``, ``April\u00a027``). Nothing else changes.

URLs, email addresses and domain names (with whatever is written against them up to the
next space), code spans and autolinks are opaque: nothing inside them changes, and the
rules do not look into them. A short word may bind to one from before
(``на\u00a0support@…``), but the space *after* one always stays ordinary: readers' mail
clients linkify plain-text addresses and do not all agree on whether U+00A0 ends one.

Other locales are left unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from markdown_it.token import Token

from statusmail.project.locales import normalize_locale

NBSP = "\u00a0"
_OPAQUE = "\ufffc"  # stands in for a URL, an address or a code span while the rules run

_SPACE = "[ \u00a0]"  # rules match either, so a second pass finds what the first did
_OPENERS = "(«„“\"'‘\\[{"
_WORD_START = rf"(?<![^\s{_OPENERS}])"  # at the start, or after a space or an opener
_PARTICLES = "ли|ль|же|ж|бы|б"

_RU_RULES = (
    # a one- or two-letter word, unless it is a particle, binds to what follows
    re.compile(
        rf"{_WORD_START}(?!(?:{_PARTICLES}){_SPACE})[а-яё]{{1,2}}({_SPACE})(?=\S)",
        re.IGNORECASE,
    ),
    # a particle binds to the word before it
    re.compile(rf"(?<=[\w»”)\]])({_SPACE})(?:{_PARTICLES})(?![\w-])", re.IGNORECASE),
    # a number (1, 2020, 1,5, 12:00, 2019–2020) binds to the word after it
    re.compile(rf"{_WORD_START}\d+(?:[.,:–-]\d+)*({_SPACE})(?=[^\W\d_])"),
    # г. and гг. (year, years) bind to what precedes them
    re.compile(rf"(?<=[^\s{_OPAQUE}])({_SPACE})гг?\.(?!\w)"),
    # an em dash binds to the word before it
    re.compile(rf"(?<=[^\s{_OPAQUE}])({_SPACE})—"),
    # a number's digit groups stay together (10 000, 1 000 000)
    re.compile(rf"(?<=\d)({_SPACE})(?=\d{{3}}(?!\d))"),
    # № binds to its number
    re.compile(rf"№({_SPACE})(?=\d)"),
    # т. д., т. е., т. п. stay whole
    re.compile(rf"{_WORD_START}т\.({_SPACE})(?=[дпе]\.)", re.IGNORECASE),
)

_MONTHS = (
    "January|February|March|April|May|June|July|August|September|October|November|December"
    "|(?:Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept?|Oct|Nov|Dec)\\.?"
)
_EN_RULES = (
    re.compile(
        rf"\b(?:{_MONTHS})({_SPACE})\d{{1,2}}(?:st|nd|rd|th)?(?!\w)(?:,({_SPACE})\d{{4}}(?!\w))?"
    ),
)

_RULES: dict[str, tuple[re.Pattern[str], ...]] = {"ru": _RU_RULES, "en": _EN_RULES}

# A run of non-space characters that holds a URL, an email address or a domain name is
# opaque as a whole: cheaper than finding the address's exact ends, and just as safe.
_RUN = re.compile(r"\S+")
_ADDRESS_SIGN = re.compile(r"://|@|www\.|mailto:|[\w-]\.(?:[a-z]{2,}|рф)\b", re.IGNORECASE)

_LINK_TEXT_IS_ADDRESS = ("autolink", "linkify")


def typeset(text: str, locale: str) -> str:
    """``text`` with no-break spaces where the ``locale``'s rules want them."""
    rules = _RULES.get(normalize_locale(locale) or "")
    if not rules:
        return text
    chars = list(text)
    for i in _bound_spaces(text, rules):
        chars[i] = NBSP
    return "".join(chars)


def typeset_tokens(tokens: Sequence[Token], locale: str) -> None:
    """Apply :func:`typeset`'s rules in place to a markdown-it token stream.

    Only ``text`` children of ``inline`` tokens change, plus a ``softbreak`` that must not
    break, which becomes a ``text`` token holding U+00A0. Code spans, autolinks and
    attributes stay as they are.
    """
    rules = _RULES.get(normalize_locale(locale) or "")
    if not rules:
        return
    for token in tokens:
        if token.type == "inline" and token.children:
            _typeset_inline(token.children, rules)


def _typeset_inline(children: list[Token], rules: Sequence[re.Pattern[str]]) -> None:
    # The children are joined into one string so rules see across token edges (a word
    # at the end of one line and the word on the next); ``origin`` maps each character
    # back to (child index, offset in its content), -1 for a softbreak.
    text: list[str] = []
    origin: list[tuple[int, int] | None] = []
    in_address = False
    for index, child in enumerate(children):
        if child.type == "link_open":
            in_address = child.markup in _LINK_TEXT_IS_ADDRESS
        elif child.type == "link_close":
            in_address = False
        if child.type == "text" and not in_address:
            text.extend(child.content)
            origin.extend((index, offset) for offset in range(len(child.content)))
        elif child.type == "softbreak":
            text.append(" ")
            origin.append((index, -1))
        elif child.type == "hardbreak":
            text.append("\n")
            origin.append(None)
        elif child.nesting == 0:  # code spans, autolink text, images, raw HTML, …
            text.append(_OPAQUE)
            origin.append(None)
    edits: dict[int, list[int]] = {}
    for position in _bound_spaces("".join(text), rules):
        where = origin[position]
        if where is not None:
            edits.setdefault(where[0], []).append(where[1])
    for index, offsets in edits.items():
        child = children[index]
        if child.type == "softbreak":
            children[index] = Token("text", "", 0, level=child.level, content=NBSP)
        else:
            content = list(child.content)
            for offset in offsets:
                content[offset] = NBSP
            child.content = "".join(content)


def _bound_spaces(text: str, rules: Sequence[re.Pattern[str]]) -> set[int]:
    """Positions of the ordinary spaces in ``text`` that the rules turn into U+00A0."""
    masked = _RUN.sub(
        lambda m: _OPAQUE * len(m.group()) if _ADDRESS_SIGN.search(m.group()) else m.group(),
        text,
    )
    found: set[int] = set()
    for rule in rules:
        for match in rule.finditer(masked):
            for group in range(1, (rule.groups or 0) + 1):
                start = match.start(group)
                if start >= 0 and masked[start] == " ":
                    found.add(start)
    return found
