"""The gettext catalogs, and every translation gap ``check`` must catch before a reader does.

A gap is an untranslated, fuzzy or missing string (or one left as its msgid, unless the
translator marked it ``# loan``); a translation in another language; a plural form left
empty, or more forms than the locale has; a translation whose ``%(name)s`` placeholders
are not the msgid's; a ``.po`` file Babel cannot read; and fixed text in a template
outside ``_()``/``{% trans %}``, between tags or in an attribute a reader sees. An entry
no template uses any more is a warning. Each is a ``Problem`` located as ``file:line``.
"""

from __future__ import annotations

import gettext
import io
import re
from collections import Counter
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import jinja2
import jinja2.ext
from babel.messages.catalog import Catalog, Message, TranslationError
from babel.messages.checkers import num_plurals, python_format
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.plurals import get_plural
from babel.messages.pofile import PoFileError, PoFileParser
from babel.support import NullTranslations, Translations
from jinja2 import nodes

from statusmail.errors import Problem, RenderError
from statusmail.project.language import BRAND_WORDS, language_problem, words
from statusmail.project.locales import FALLBACK_LOCALE, SUPPORTED_LOCALES

CATALOG_DOMAIN = "messages"

# Words a template may show untranslated: names, not language.
UNTRANSLATED_WORDS = BRAND_WORDS
# A translator comment (``# loan``) above an entry whose msgstr is its msgid on purpose.
LOAN_COMMENT = "loan"
# Attributes whose text a reader sees or hears (a screen reader reads aria-label).
_SHOWN_ATTRIBUTES = ("alt", "title", "aria-label", "placeholder")

# Extraction parses the templates as they are rendered (trim_blocks, lstrip_blocks, newstyle
# gettext: see template_environment and render.py), so it finds the msgids rendering looks up.
EXTRACT_OPTIONS = {
    "extensions": "jinja2.ext.i18n",
    "silent": "false",
    "trim_blocks": "true",
    "lstrip_blocks": "true",
    "newstyle_gettext": "true",
}

# One line of a .po file that is not a comment: an optional keyword, then a C string.
_PO_LINE = re.compile(
    rb"(?:(?P<keyword>msgctxt|msgid|msgid_plural|msgstr(?:\[(?P<form>\d+)\])?)[ \t]+)?"
    rb'"(?:[^"\\]|\\.)*"'
)
_WORD = re.compile(r"[^\W\d_]+")  # letters of any script
_GETTEXT_FUNCTIONS = frozenset({"gettext", "ngettext", "pgettext", "npgettext"})


class CatalogError(RenderError):
    """A catalog cannot be used; ``problem`` says where and why."""

    def __init__(self, problem: Problem) -> None:
        self.located = problem
        super().__init__(problem=problem)


def catalog_path(templates_dir: Path, locale: str) -> Path:
    return templates_dir / "locale" / locale / "LC_MESSAGES" / f"{CATALOG_DOMAIN}.po"


def template_environment(templates_dir: Path, *, autoescape: bool) -> jinja2.Environment:
    """A jinja2 environment with the i18n extension, set up as statusmail renders."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        undefined=jinja2.StrictUndefined,
        autoescape=autoescape,
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,
    )


def load_translations(templates_dir: Path, locale: str) -> NullTranslations:
    """Compile the ``.po`` catalog in memory, so a stale ``.mo`` can never be used.

    Raises ``CatalogError`` (a ``RenderError``) naming ``file:line`` if it cannot be read.
    """
    if locale == FALLBACK_LOCALE:
        return NullTranslations()
    path = catalog_path(templates_dir, locale)
    po = _PoFile(path, locale)
    try:
        gettext.c2py(po.catalog.plural_expr)
    except ValueError as exc:
        raise CatalogError(
            Problem(
                path,
                po.plural_forms_line,
                f"invalid Plural-Forms rule: {exc}",
                code="plural-form",
            )
        ) from exc
    buffer = io.BytesIO()
    write_mo(buffer, po.catalog, use_fuzzy=False)
    buffer.seek(0)
    return Translations(buffer, domain=CATALOG_DOMAIN)


def render_error(exc: Exception, template: Path, catalog: Path | None) -> RenderError:
    """``exc`` (KeyError, ValueError, TypeError) raised while rendering ``template``,
    as a ``RenderError`` naming the template line and, for a translation, the catalog."""
    where, line, in_gettext = str(template), None, False
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        # jinja2 rewrites the traceback: a template's frames hold the exception in globals.
        if "__jinja_exception__" in tb.tb_frame.f_globals:
            where, line = code.co_filename, tb.tb_lineno
        elif code.co_name in _GETTEXT_FUNCTIONS and code.co_filename == jinja2.ext.__file__:
            in_gettext = True
        tb = tb.tb_next
    if not in_gettext:
        message = str(exc) if isinstance(exc, jinja2.TemplateError) else repr(exc)
        return RenderError(problem=Problem(where, line, message, code="render-error"))
    detail = (
        f"it uses %({exc.args[0]})s, which the template does not pass"
        if isinstance(exc, KeyError)
        else _format_error(exc)
    )
    source = f"a translation from {catalog}" if catalog else "the text"
    message = f"cannot fill in {source}: {detail}"
    return RenderError(problem=Problem(where, line, message, code="render-error"))


def catalog_problems(templates_dir: Path) -> list[Problem]:
    """Everything wrong with the templates' translatable text and every catalog."""
    problems, syntax_ok = template_problems(templates_dir)
    if not syntax_ok:
        return problems
    used: dict[str, tuple[str, int, str | None]] = {}  # msgid → file, line, msgid_plural
    try:
        for filename, lineno, message, _comments, _context in extract_from_dir(
            templates_dir,
            method_map=[("**.j2", "jinja2")],
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


# -- reading a .po file -----------------------------------------------------------------


class _PoFile:
    """A ``.po`` file read by Babel's parser, fed line by line so that every error is
    located, and refusing what Babel would misread silently (an unquoted string) or
    stop on (more plural forms than the catalog has: noted in ``problems``, skipped)."""

    def __init__(self, path: Path, locale: str) -> None:
        self.path = path
        self.catalog = Catalog(locale=locale, domain=CATALOG_DOMAIN)
        self.line = 0
        self.plural_forms_line: int | None = None
        self.problems: list[Problem] = []
        try:
            PoFileParser(self.catalog, abort_invalid=True).parse(self._lines())
        except CatalogError:
            raise
        except OSError as exc:
            message = f"cannot read the {locale} catalog: {exc.strerror}"
            raise CatalogError(Problem(path, None, message, code="unreadable-file")) from exc
        except PoFileError as exc:
            reason = str(exc).rsplit(" on ", 1)[0]
            message = f"invalid catalog: {reason}"
            raise CatalogError(
                Problem(path, exc.lineno + 1, message, code="catalog-syntax")
            ) from exc
        except UnicodeDecodeError as exc:
            message = f"invalid catalog: not {self.catalog.charset} text ({exc.reason})"
            raise CatalogError(Problem(path, self.line, message, code="catalog-syntax")) from exc
        except Exception as exc:  # Babel raises several kinds on a broken file
            message = f"invalid catalog: {exc}"
            raise CatalogError(
                Problem(path, self.line or None, message, code="catalog-syntax")
            ) from exc

    def _lines(self) -> Iterator[bytes]:
        skipping = False
        with self.path.open("rb") as handle:
            for self.line, raw in enumerate(handle, 1):
                text = raw.strip()
                if not text or text.startswith(b"#"):
                    yield raw
                    continue
                match = _PO_LINE.fullmatch(text)
                if match is None:
                    raise CatalogError(
                        Problem(
                            self.path,
                            self.line,
                            "invalid catalog: expected a keyword (msgid, msgstr…) and a "
                            "quoted string, or a quoted string continuing the one above",
                            code="catalog-syntax",
                        )
                    )
                if match["keyword"]:
                    skipping = False
                if text.startswith(b'"Plural-Forms:'):
                    self.plural_forms_line = self.line
                form = int(match["form"] or -1)
                if form >= self.catalog.num_plurals:
                    n = self.catalog.num_plurals
                    self.problems.append(
                        Problem(
                            self.path,
                            self.line,
                            f"msgstr[{form}]: the catalog has only {n} plural forms, "
                            f"msgstr[0] to msgstr[{n - 1}]",
                            code="plural-form",
                        )
                    )
                    skipping = True  # with the lines continuing its string
                if not skipping:
                    yield raw


# -- checking one catalog -----------------------------------------------------------------


def _locale_problems(
    templates_dir: Path, locale: str, used: dict[str, tuple[str, int, str | None]]
) -> list[Problem]:
    path = catalog_path(templates_dir, locale)
    if not path.is_file():
        return [Problem(path, None, f"the {locale} catalog is missing", code="missing-catalog")]
    try:
        po = _PoFile(path, locale)
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


def _plural_rule_problems(po: _PoFile, locale: str) -> list[Problem]:
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
            found.append(f"{where} is not a valid %-format: {_format_error(exc)}")
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


def _format_error(exc: Exception) -> str:
    return f"{exc} (a literal % is written %%)"


def _spell(names: list[str]) -> str:
    return ", ".join(f"%({name})s" for name in names)


def _forms(string: object) -> tuple[str, ...]:
    if isinstance(string, tuple | list):
        return tuple(str(text or "") for text in string)
    return (str(string or ""),)


def _msgid(message: Message) -> str:
    return _forms(message.id)[0]


# -- fixed text in templates ---------------------------------------------------------------


def template_problems(templates_dir: Path) -> tuple[list[Problem], bool]:
    """Syntax errors and untranslatable fixed text in every ``*.j2`` under
    ``templates_dir``; the flag is False when a template could not be parsed."""
    env = template_environment(templates_dir, autoescape=False)
    problems: list[Problem] = []
    syntax_ok = True
    for path in sorted(templates_dir.rglob("*.j2")):
        try:
            tree = env.parse(path.read_text(encoding="utf-8"), path.name, str(path))
        except (OSError, UnicodeDecodeError) as exc:
            message = f"cannot read the template: {exc}"
            problems.append(Problem(path, None, message, code="unreadable-file"))
            syntax_ok = False
        except jinja2.TemplateSyntaxError as exc:
            message = exc.message or "syntax error"
            problems.append(Problem(path, exc.lineno, message, code="template-syntax"))
            syntax_ok = False
        else:
            problems += fixed_text_problems(tree, path)
    return problems, syntax_ok


class _TextFinder(HTMLParser):
    """The text between tags, and the attributes a reader sees (``alt``, ``title``,
    ``aria-label``, ``placeholder``); other attributes, comments, entities, the DOCTYPE
    and the content of <script> and <style> are left out."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.runs: list[tuple[int, str]] = []  # line, text
        self.attributes: list[tuple[int, str, str]] = []  # line, name, value
        self._hidden: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._hidden = tag
        for name, value in attrs:
            # A one-letter value ("x" on a close button) is a symbol, not language.
            if name in _SHOWN_ATTRIBUTES and any(len(w) > 1 for w in _WORD.findall(value or "")):
                self.attributes.append((self.getpos()[0], name, value or ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == self._hidden:
            self._hidden = None

    def handle_data(self, data: str) -> None:
        if self._hidden is None:
            self.runs.append((self.getpos()[0], data))


def fixed_text_problems(tree: nodes.Template, path: Path) -> list[Problem]:
    """Letters in a template's fixed parts (``TemplateData``) outside tags: text that
    no catalog can translate. Text inside ``_()`` or ``{% trans %}`` is no TemplateData."""
    # Rebuild the fixed parts in source order on their own lines, "…" standing for each
    # expression or tag between them, so that a tag split by ``{{ }}`` stays one tag.
    pieces: list[str] = []
    line = 1
    for node in sorted(tree.find_all(nodes.TemplateData), key=lambda n: n.lineno):
        gap = "…" if pieces else ""
        pieces.append("\n" * max(node.lineno - line, 0) + gap + node.data)
        line = max(line, node.lineno) + node.data.count("\n")
    finder = _TextFinder()
    finder.feed("".join(pieces))
    finder.close()
    found = [
        (start + offset, text, "")
        for start, data in finder.runs
        for offset, text in enumerate(data.split("\n"))
    ] + [(line, value, f" in its {name} attribute") for line, name, value in finder.attributes]
    problems = []
    for line, text, where in sorted(found, key=lambda item: item[0]):
        if any(word not in UNTRANSLATED_WORDS for word in _WORD.findall(text)):
            shown = " ".join(text.split())
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            problems.append(
                Problem(
                    path,
                    line,
                    f"fixed text {shown!r}{where} is not translatable: wrap it in _()",
                    code="fixed-text",
                )
            )
    return problems
