"""The gettext catalogs as rendering uses them: where each locale's ``.po`` file is, the
jinja2 environment statusmail renders with, a catalog compiled in memory (a stale
``.mo`` is never used), a ``.po`` file read so that every error is located
(``PoFile``), and a rendering error told as the template line and catalog at fault.
What ``check`` finds wrong in the catalogs is in ``catalog_gaps``.
"""

from __future__ import annotations

import gettext
import io
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.runtime
from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import PoFileError, PoFileParser
from babel.support import NullTranslations, Translations
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from statusmail.errors import Problem, RenderError
from statusmail.project.locales import FALLBACK_LOCALE

CATALOG_DOMAIN = "messages"

# One line of a .po file that is not a comment: an optional keyword, then a C string.
_PO_LINE = re.compile(
    rb"(?:(?P<keyword>msgctxt|msgid|msgid_plural|msgstr(?:\[(?P<form>\d+)\])?)[ \t]+)?"
    rb'"(?:[^"\\]|\\.)*"'
)
_GETTEXT_FUNCTIONS = frozenset({"gettext", "ngettext", "pgettext", "npgettext"})


class CatalogError(RenderError):
    """A catalog cannot be used; ``problem`` says where and why."""

    def __init__(self, problem: Problem) -> None:
        self.located = problem
        super().__init__(problem=problem)


def catalog_path(templates_dir: Path, locale: str) -> Path:
    return templates_dir / "locale" / locale / "LC_MESSAGES" / f"{CATALOG_DOMAIN}.po"


class _SharedBytecode(jinja2.BytecodeCache):
    """Compiled templates shared by every environment of the process: a template compiles
    once, not once per environment (``check`` and the dry run make one per entry, a
    watcher one per reload). Jinja keeps the source's checksum with the code, so an edited
    template compiles anew. One per ``autoescape`` setting, which the compiled code holds."""

    def __init__(self) -> None:
        self._code: dict[str, bytes] = {}

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        code = self._code.get(bucket.key)
        if code is not None:
            bucket.bytecode_from_string(code)

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        self._code[bucket.key] = bucket.bytecode_to_string()


_COMPILED = {False: _SharedBytecode(), True: _SharedBytecode()}


MAX_REPEAT = 100_000  # the longest string or list a template may make by ``*``


class _Sandbox(ImmutableSandboxedEnvironment):
    """Templates are the project's files, changed by whoever edits a pull request and
    rendered by CI and by the sending host: they may not reach Python's internals (a
    template ran commands and read the environment's secrets into the CI preview:
    review), nor make endless work (``range`` is capped by the sandbox, ``*`` and
    ``**`` here)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(
        self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any
    ) -> Any:
        if operator == "*":
            sequence, count = (left, right) if isinstance(right, int) else (right, left)
            repeated = isinstance(sequence, (str, list, tuple)) and isinstance(count, int)
            if repeated and count > MAX_REPEAT:
                raise SecurityError(f"a template may repeat a value {MAX_REPEAT} times at most")
        elif operator == "**" and isinstance(right, (int, float)) and abs(right) > 64:
            raise SecurityError("a template may raise to a power of at most 64")
        return super().call_binop(context, operator, left, right)


class _ProjectLoader(jinja2.FileSystemLoader):
    """The project's templates folder, and nothing a link in it points to outside it
    (a link to /etc/passwd was rendered into the CI preview: review)."""

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        source, filename, uptodate = super().get_source(environment, template)
        root = Path(self.searchpath[0]).resolve()
        if not Path(filename).resolve().is_relative_to(root):
            raise jinja2.TemplateNotFound(template, f"{template} leads out of {root}")
        return source, filename, uptodate


def template_environment(templates_dir: Path, *, autoescape: bool) -> jinja2.Environment:
    """A sandboxed jinja2 environment with the i18n extension, set up as statusmail
    renders; its compiled templates shared with the process's other environments."""
    return _Sandbox(
        loader=_ProjectLoader(templates_dir),
        undefined=jinja2.StrictUndefined,
        autoescape=autoescape,
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,
        bytecode_cache=_COMPILED[autoescape],
    )


def load_translations(templates_dir: Path, locale: str) -> NullTranslations:
    """Compile the ``.po`` catalog in memory, so a stale ``.mo`` can never be used.

    Raises ``CatalogError`` (a ``RenderError``) naming ``file:line`` if it cannot be read.
    """
    if locale == FALLBACK_LOCALE:
        return NullTranslations()
    path = catalog_path(templates_dir, locale)
    po = PoFile(path, locale)
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
        else format_error(exc)
    )
    source = f"a translation from {catalog}" if catalog else "the text"
    message = f"cannot fill in {source}: {detail}"
    return RenderError(problem=Problem(where, line, message, code="render-error"))


# -- reading a .po file -----------------------------------------------------------------


class PoFile:
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


def format_error(exc: Exception) -> str:
    return f"{exc} (a literal % is written %%)"
