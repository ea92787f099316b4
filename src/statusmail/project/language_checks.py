"""Each text is in its language: an entry's translations (made from the current
English, stating its numbers and dates) and the config's topic names; and where in its
file a line of a YAML value stands (``line_in``), for the problems that point into one."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from statusmail.domain import Content, Entry
from statusmail.errors import Problem
from statusmail.project.config import Config
from statusmail.project.entries import source_hash
from statusmail.project.language import dates, language_problem, spell_date
from statusmail.project.locales import FALLBACK_LOCALE

_CYRILLIC = re.compile(r"[А-Яа-яЁё]")
_NUMBER = re.compile(r"\d+")
# Link targets, autolinks, bare URLs and addresses hold digits that are not facts.
_NOT_PROSE = re.compile(r"\]\([^)]*\)|<[^>\s]+>|https?://\S+|\S+@\S+")


def topic_name_problems(config: Config) -> list[Problem]:
    """The preferences page names each topic in the reader's language: in that language."""
    problems: list[Problem] = []
    for topic, names in sorted(config.topic_names.items()):
        for locale, text in sorted(names.items()):
            found = language_problem(text, locale)
            if found is not None:
                line = line_in(config.path, config.line("topic_names"), f"{topic}:", 0)
                message = f"the {locale} name of topic {topic!r}: {found[1]}"
                problems.append(Problem(config.path, line, message, code="wrong-language"))
    return problems


def _numbers(*texts: str) -> Counter[str]:
    found: Counter[str] = Counter()
    for text in texts:
        found.update(n.lstrip("0") or "0" for n in _NUMBER.findall(_NOT_PROSE.sub(" ", text)))
    return found


def line_in(path: Path | str, line: int | None, text: str, offset: int) -> int | None:
    """The file line holding line ``offset`` of ``text``, a value whose key is on
    ``line``: the first line from there that holds its start (YAML indents a value, and
    may fold it); ``line`` when none does."""
    wanted = text.split("\n")[offset].strip()[:40]
    if line is None or not wanted:
        return line
    try:
        lines = Path(path).read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError):
        return line
    return next((n for n in range(line, len(lines) + 1) if wanted in lines[n - 1]), line)


def translation_problems(entry: Entry) -> list[Problem]:
    """Each text is in its language, paragraph by paragraph; each translation is made
    from the current English and states the same numbers and dates."""
    problems: list[Problem] = []
    english = entry.content.get(FALLBACK_LOCALE)
    for locale, content in entry.content.items():

        def at(key: str, locale: str = locale) -> int | None:
            return entry.line(f"content.{locale}.{key}") or entry.line(f"content.{locale}")

        for key in ("subject", "summary", "body"):
            text = getattr(content, key)
            if locale == "ru" and not _CYRILLIC.search(text):
                problems.append(
                    Problem(
                        entry.where,
                        at(key),
                        f"the ru {key} has no Cyrillic letter: is it still in English?",
                        code="not-cyrillic",
                    )
                )
                continue
            found = language_problem(text, locale)
            if found is not None:
                problems.append(
                    Problem(
                        entry.where,
                        line_in(entry.where, at(key), text, found[0]),
                        f"the {locale} {key}: {found[1]}",
                        code="wrong-language",
                    )
                )
        if english is None or locale == FALLBACK_LOCALE:
            continue
        current = source_hash(english)
        if content.source is None:
            problems.append(
                Problem(
                    entry.where,
                    entry.line(f"content.{locale}"),
                    f"the {locale} block has no 'source:'; once it matches the English, "
                    f"add source: {current}",
                    warning=True,
                    code="missing-source",
                )
            )
        elif content.source != current:
            problems.append(
                Problem(
                    entry.where,
                    at("source"),
                    f"the English changed since this {locale} translation was made "
                    f"(source: {content.source}, English now {current}); update the "
                    f"translation, then set source: {current}",
                    # A draft is work in progress: said, but it still previews and checks.
                    warning=not entry.ready,
                    code="stale-translation",
                )
            )
        ours = _numbers(english.subject, english.summary, english.body)
        theirs = _numbers(content.subject, content.summary, content.body)
        if set(ours) != set(theirs):
            only_en = sorted(set(ours) - set(theirs), key=int)
            only_other = sorted(set(theirs) - set(ours), key=int)
            said = []
            if only_en:
                said.append(f"only in en: {', '.join(only_en)}")
            if only_other:
                said.append(f"only in {locale}: {', '.join(only_other)}")
            problems.append(
                Problem(
                    entry.where,
                    entry.line(f"content.{locale}"),
                    f"the numbers in en and {locale} differ ({'; '.join(said)})",
                    code="numbers-differ",
                )
            )
        else:  # the same digits: a month changed in one language only is caught here
            problems += _date_problems(entry, english, content, locale)
    return problems


def _date_problems(entry: Entry, english: Content, content: Content, locale: str) -> list[Problem]:
    """Each text of a translation states the English's dates, compared as dates."""
    problems: list[Problem] = []
    for key in ("subject", "summary", "body"):
        en_dates = dates(getattr(english, key), FALLBACK_LOCALE)
        their_dates = dates(getattr(content, key), locale)
        if en_dates == their_dates:
            continue
        differ = ((FALLBACK_LOCALE, en_dates - their_dates), (locale, their_dates - en_dates))
        told = [
            f"only in {where}: {', '.join(spell_date(*d) for d in sorted(only))}"
            for where, only in differ
            if only
        ]
        problems.append(
            Problem(
                entry.where,
                entry.line(f"content.{locale}.{key}") or entry.line(f"content.{locale}"),
                f"the dates in the en and {locale} {key} differ ({'; '.join(told)})",
                code="dates-differ",
            )
        )
    return problems
