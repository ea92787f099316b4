"""Fixed text in templates: letters outside ``_()`` and ``{% trans %}``, between tags or
in an attribute a reader sees, which no catalog can translate; and the templates'
syntax errors, found on the way."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import jinja2
from jinja2 import nodes

from statusmail.content.catalog import template_environment
from statusmail.errors import Problem
from statusmail.project.language import BRAND_WORDS

# Words a template may show untranslated: names, not language.
UNTRANSLATED_WORDS = BRAND_WORDS
# Attributes whose text a reader sees or hears (a screen reader reads aria-label).
_SHOWN_ATTRIBUTES = ("alt", "title", "aria-label", "placeholder")
_WORD = re.compile(r"[^\W\d_]+")  # letters of any script


def template_problems(templates_dir: Path) -> tuple[list[Problem], bool]:
    """Syntax errors and untranslatable fixed text in every ``*.j2`` under
    ``templates_dir``; the flag is False when a template could not be parsed."""
    env = template_environment(templates_dir, autoescape=False)
    problems: list[Problem] = []
    syntax_ok = True
    root = templates_dir.resolve()
    for path in sorted(templates_dir.rglob("*.j2")):
        if not path.resolve().is_relative_to(root):  # (its text is nobody's to show)
            message = f"leads out of {root}: a template must be a file of the folder"
            problems.append(Problem(path, None, message, code="unreadable-file"))
            syntax_ok = False
            continue
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
