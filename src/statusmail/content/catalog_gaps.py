"""Every translation gap ``check`` must catch before a reader does.

A gap is an untranslated, fuzzy or missing string (or one left as its msgid, unless the
translator marked it ``# loan``); a translation in another language; a plural form left
empty, or more forms than the locale has; a translation whose ``%(name)s`` placeholders
are not the msgid's; a ``.po`` file Babel cannot read; and fixed text in a template
outside ``_()``/``{% trans %}``, between tags or in an attribute a reader sees (found by
``fixed_text``). An entry
no template uses any more is a warning. Each is a ``Problem`` located as ``file:line``.
"""

from __future__ import annotations

import gettext
import hashlib
from collections import Counter
from pathlib import Path

import jinja2
import jinja2.ext
from babel.messages.catalog import Catalog, Message, TranslationError
from babel.messages.checkers import num_plurals, python_format
from babel.messages.extract import extract_from_dir
from babel.messages.plurals import get_plural

from statusmail.content.catalog import CatalogError, PoFile, catalog_path, format_error
from statusmail.content.fixed_text import template_problems
from statusmail.errors import Problem
from statusmail.project.language import language_problem, words
from statusmail.project.locales import FALLBACK_LOCALE, SUPPORTED_LOCALES

# A translator comment (``# loan``) above an entry whose msgstr is its msgid on purpose.
LOAN_COMMENT = "loan"

# Extraction parses the templates as they are rendered (trim_blocks, lstrip_blocks, newstyle
# gettext: see template_environment and render.py), so it finds the msgids rendering looks up.
EXTRACT_OPTIONS = {
    "extensions": "jinja2.ext.i18n",
    "silent": "false",
    "trim_blocks": "true",
    "lstrip_blocks": "true",
    "newstyle_gettext": "true",
}


# Templates folders found clean, by content: every run checks its templates again for each
# entry it prepares (watch, a CI review of many entries, a test suite's copies of the
# sample), and extracting them costs tens of milliseconds each time.
_CLEAN: set[str] = set()


def _content_key(templates_dir: Path) -> str | None:
    """A digest of every file under ``templates_dir`` (its name there and its bytes)."""
    digest = hashlib.sha256()
    try:
        for path in sorted(p for p in templates_dir.rglob("*") if p.is_file()):
            name = path.relative_to(templates_dir).as_posix().encode()
            digest.update(name + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    except OSError:
        return None
    return digest.hexdigest()


def catalog_problems(templates_dir: Path) -> list[Problem]:
    """Everything wrong with the templates' translatable text and every catalog."""
    key = _content_key(templates_dir)
    if key is not None and key in _CLEAN:
        return []
    problems = _catalog_problems(templates_dir)
    if key is not None and not problems:
        _CLEAN.add(key)
    return problems


def _catalog_problems(templates_dir: Path) -> list[Problem]:
    problems, syntax_ok = template_problems(templates_dir)
    if not syntax_ok:
        return problems
    used: dict[str, tuple[str, int, str | None]] = {}  # msgid → file, line, msgid_plural
    try:
        for filename, lineno, message, _comments, _context in extract_from_dir(
            templates_dir,
            # The extractor by its path: Babel before 2.16 found "jinja2" only through
            # pkg_resources, which a venv without setuptools lacks (a traceback)
            method_map=[("**.j2", "jinja2.ext:babel_extract")],
            options_map={"**.j2": EXTRACT_OPTIONS},
        ):
            msgid, plural = (message, None) if isinstance(message, str) else message[:2]
            used.setdefault(msgid, (filename, lineno, plural))
    except jinja2.TemplateSyntaxError as exc:
        where = exc.filename or templates_dir
        return [Problem(where, exc.lineno, exc.message or "syntax error", code="template-syntax")]
    for locale in SUPPORTED_LOCALES:
        if locale != FALLBACK_LOCALE:
            problems += _locale_problems(templates_dir, locale, used)
    return problems


# -- checking one catalog -----------------------------------------------------------------


def _locale_problems(
    templates_dir: Path, locale: str, used: dict[str, tuple[str, int, str | None]]
) -> list[Problem]:
    path = catalog_path(templates_dir, locale)
    if not path.is_file():
        return [Problem(path, None, f"the {locale} catalog is missing", code="missing-catalog")]
    try:
        po = PoFile(path, locale)
    except CatalogError as exc:
        return [exc.located]
    catalog = po.catalog
    problems = po.problems + _plural_rule_problems(po, locale)
    for msgid, (filename, lineno, plural) in sorted(used.items()):
        found = catalog.get(msgid)
        if found is None:
            problems.append(
                Problem(
                    path,
                    None,
                    f"{msgid!r} (used at {templates_dir / filename}:{lineno}) is not in "
                    f"the catalog; run pybabel extract and update",
                    code="catalog-outdated",
                )
            )
            continue
        line = found.lineno or None
        forms = _forms(found.string)
        ids = _forms(found.id)
        if plural != (ids[1] if len(ids) > 1 else None):
            message = (
                f"{msgid!r} (used at {templates_dir / filename}:{lineno}) has other plural "
                "forms in the catalog; run pybabel extract and update"
            )
            problems.append(Problem(path, line, message, code="catalog-outdated"))
        elif found.fuzzy and any(forms):
            problems.append(Problem(path, line, f"{msgid!r} is fuzzy", code="fuzzy"))
        elif not any(forms):
            problems.append(Problem(path, line, f"{msgid!r} is untranslated", code="untranslated"))
        elif not all(forms):
            empty = ", ".join(f"msgstr[{i}]" for i, text in enumerate(forms) if not text)
            message = (
                f"{msgid!r} is untranslated in {empty} "
                f"({locale} has {catalog.num_plurals} plural forms)"
            )
            problems.append(Problem(path, line, message, code="untranslated"))
        else:
            problems += _language_problems(path, found, locale)
    for entry in catalog:
        if entry.id and _msgid(entry) not in used:
            message = (
                f"{_msgid(entry)!r} is in the catalog but no template uses it any more: "
                "remove it (pybabel update marks it obsolete)"
            )
            problems.append(
                Problem(path, entry.lineno or None, message, warning=True, code="catalog-unused")
            )
    single = _single_valued_forms(catalog)
    for entry in catalog:
        if entry.id and not entry.fuzzy:
            for text in _placeholder_problems(entry, catalog, single):
                message = f"{_msgid(entry)!r}: {text}"
                problems.append(
                    Problem(path, entry.lineno or None, message, code="placeholder-mismatch")
                )
    return sorted(problems, key=lambda p: p.line or 0)


def _language_problems(path: Path, message: Message, locale: str) -> list[Problem]:
    """A translation is in its language: not the msgid copied (unless the translator
    marked it ``# loan``), and no text in another language."""
    line = message.lineno or None
    ids, forms = _forms(message.id), _forms(message.string)
    if forms[0] == ids[0] and words(ids[0]):
        if LOAN_COMMENT in (comment.strip() for comment in message.user_comments):
            return []
        text = (
            f"{ids[0]!r} is translated as itself: translate it, or mark a deliberate loan "
            f"with a '# {LOAN_COMMENT}' translator comment above it"
        )
        return [Problem(path, line, text, code="untranslated")]
    for index, form in enumerate(forms):
        found = language_problem(form, locale)
        if found is not None:
            where = f"msgstr[{index}]" if message.pluralizable else "the translation"
            text = f"{ids[0]!r}: {where} {found[1]}"
            return [Problem(path, line, text, code="wrong-language")]
    return []


def _plural_rule_problems(po: PoFile, locale: str) -> list[Problem]:
    """The Plural-Forms header must agree with the locale's plural rule."""
    catalog, line = po.catalog, po.plural_forms_line
    expected = get_plural(locale)
    try:
        rule = gettext.c2py(catalog.plural_expr)
    except ValueError as exc:
        message = f"invalid Plural-Forms rule: {exc}"
        return [Problem(po.path, line, message, code="plural-form")]
    if catalog.num_plurals != expected.num_plurals:
        message = (
            f"Plural-Forms says nplurals={catalog.num_plurals}, but {locale} has "
            f"{expected.num_plurals} plural forms"
        )
        return [Problem(po.path, line, message, code="plural-form")]
    reference = gettext.c2py(expected.plural_expr)
    for n in range(1000):
        if rule(n) != reference(n):
            message = (
                f"Plural-Forms picks form {rule(n)} for n={n}, but {locale} needs "
                f"form {reference(n)} ({expected.plural_expr})"
            )
            return [Problem(po.path, line, message, code="plural-form")]
    return []


def _single_valued_forms(catalog: Catalog) -> set[int]:
    """Plural forms used for one number only (like English "one"): these may leave out
    the count, as msgfmt -c allows."""
    try:
        rule = gettext.c2py(catalog.plural_expr)
    except ValueError:
        return set()  # reported by _plural_rule_problems
    uses = Counter(rule(n) for n in range(1000))
    return {form for form, count in uses.items() if count == 1}


class _Names(dict[str, object]):
    """A mapping that has every key, noting which ones a %-format asks for."""

    def __missing__(self, key: str) -> object:
        self[key] = 0
        return 0


def placeholders(text: str) -> set[str]:
    """The names ``text % mapping`` reads, as jinja2's newstyle gettext formats every
    string; ValueError or TypeError if ``text`` is not a valid %-format."""
    names = _Names()
    text % names
    return set(names)


def _placeholder_problems(message: Message, catalog: Catalog, single: set[int]) -> list[str]:
    """A translation needs exactly the msgid's placeholders (a form used for one number
    may leave out what the singular msgid leaves out); Babel's checkers then compare the
    number of plural forms and the conversion types."""
    ids = _forms(message.id)
    try:
        wanted = [placeholders(text) for text in ids]
    except (ValueError, TypeError):
        return []  # the msgid itself is wrong: rendering the templates reports it
    allowed, required = set().union(*wanted), wanted[-1]
    found: list[str] = []
    for index, text in enumerate(_forms(message.string)):
        if not text:
            continue
        where = f"msgstr[{index}]" if message.pluralizable else "the translation"
        try:
            names = placeholders(text)
        except (ValueError, TypeError) as exc:
            found.append(f"{where} is not a valid %-format: {format_error(exc)}")
            continue
        needed = required - allowed.difference(wanted[0]) if index in single else required
        extra, missing = sorted(names - allowed), sorted(needed - names)
        parts = []
        if extra:
            parts.append(f"has {_spell(extra)}, which the msgid does not have")
        if missing:
            parts.append(f"drops {_spell(missing)}")
        if parts:
            found.append(f"{where} {', and '.join(parts)}")
    # Babel compares a plural's msgstr[0] with the singular msgid only, which refuses a
    # count the singular lacks (Russian needs it in msgstr[0]): types for plain ones only.
    checkers = (num_plurals,) if message.pluralizable else (num_plurals, python_format)
    for checker in checkers if not found else ():
        try:
            checker(catalog, message)
        except TranslationError as exc:
            found.append(str(exc))
    return found


def _spell(names: list[str]) -> str:
    return ", ".join(f"%({name})s" for name in names)


def _forms(string: object) -> tuple[str, ...]:
    if isinstance(string, tuple | list):
        return tuple(str(text or "") for text in string)
    return (str(string or ""),)


def _msgid(message: Message) -> str:
    return _forms(message.id)[0]
