"""Translation gaps: `statusmail check` names each one as `file:line: message`, never a
traceback, on a copy of the sample project with one thing broken."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from conftest import REPO, UPDATE, invoke, problem_lines
from editing import line_of, replace_in
from statusmail.content.catalog_gaps import catalog_problems
from statusmail.content.render import Renderer
from statusmail.errors import RenderError
from statusmail.project.entries import find_entry
from statusmail.project.regions import load_regions

PO = "templates/locale/ru/LC_MESSAGES/messages.po"
TEXT = "templates/message.txt.j2"
HTML = "templates/message.html.j2"

# A plural use, added to a copy of the text template, and its Russian catalog entry.
PLURAL_USE = (
    "{% trans count=3 %}This notice has one follow-up.{% pluralize %}"
    "This notice has {{ count }} follow-ups.{% endtrans %}\n"
)
PLURAL_ENTRY = """
#, python-format
msgid "This notice has one follow-up."
msgid_plural "This notice has %(count)s follow-ups."
msgstr[0] "У этого уведомления %(count)s дополнение."
msgstr[1] "У этого уведомления %(count)s дополнения."
msgstr[2] "У этого уведомления %(count)s дополнений."
"""


def check(project: Path) -> list[str]:
    """The problem lines of a failing `statusmail check`."""
    result = invoke(project, "check")
    assert result.exit_code == 1, result.output
    return problem_lines(result.output)


def files(project: Path) -> tuple[Path, Path, Path]:
    root = project.parent
    return root / PO, root / TEXT, root / HTML


def sample_renderer(project: Path) -> Renderer:
    regions = load_regions(project.parent / "regions.yaml")
    return Renderer(project.parent / "templates", regions, "StartMail")


def add_plural(project: Path, entry: str = PLURAL_ENTRY) -> int:
    """Add the plural use and ``entry`` to the copy; returns the entry's msgid line."""
    po, text, _html = files(project)
    replace_in(text, "{{ body_text.rstrip() }}\n", "{{ body_text.rstrip() }}\n" + PLURAL_USE)
    po.write_text(po.read_text(encoding="utf-8") + entry, encoding="utf-8")
    return line_of(po, 'msgid "This notice has one follow-up."')


# -- the sample -------------------------------------------------------------------------


def test_sample_has_no_catalog_problems() -> None:
    assert catalog_problems(REPO / "templates") == []


def test_messages_pot_is_what_extraction_gives(tmp_path: Path) -> None:
    """The committed template is up to date with every template, pages included."""
    fresh = tmp_path / "messages.pot"
    pybabel = [sys.executable, "-m", "babel.messages.frontend"]
    subprocess.run(  # as the README runs it
        [*pybabel, "extract", "-F", "babel.cfg", "-o", str(fresh), "--sort-output", "."],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=60,
    )

    def messages(path: Path) -> list[tuple[object, list[tuple[str, int | None]]]]:
        with path.open("rb") as handle:
            return [(m.id, sorted(m.locations)) for m in read_po(handle) if m.id]

    committed = messages(REPO / "templates/messages.pot")
    assert committed == messages(fresh)
    assert "Unsubscribe from status updates?" in [msgid for msgid, _ in committed]


def test_a_complete_russian_plural_passes_and_renders(project: Path) -> None:
    add_plural(project)
    result = invoke(project, "check")
    assert result.exit_code == 0, result.output
    renderer = sample_renderer(project)
    entry = find_entry(project.parent / "updates", UPDATE)
    ru = renderer.render(entry, renderer.variant_key(entry, "ru", None, ""), "", "https://x")
    en = renderer.render(entry, renderer.variant_key(entry, "en", None, ""), "", "https://x")
    assert "У\u00a0этого уведомления 3\u00a0дополнения." in ru.text
    assert "This notice has 3 follow-ups." in en.text


def test_unsubscribe_page_strings_are_checked_too(project: Path) -> None:
    po, _text, _html = files(project)
    replace_in(po, 'msgstr "Страница не найдена."', 'msgstr ""')
    line = line_of(po, 'msgid "Page not found."')
    assert check(project) == [f"{po}:{line}: 'Page not found.' is untranslated"]


# -- plurals ----------------------------------------------------------------------------


def test_empty_plural_form(project: Path) -> None:
    line = add_plural(
        project,
        PLURAL_ENTRY.replace(
            'msgstr[2] "У этого уведомления %(count)s дополнений."', 'msgstr[2] ""'
        ),
    )
    po, _text, _html = files(project)
    assert check(project) == [
        f"{po}:{line}: 'This notice has one follow-up.' is untranslated in msgstr[2] "
        "(ru has 3 plural forms)"
    ]


def test_plural_entry_left_untranslated(project: Path) -> None:
    entry = PLURAL_ENTRY.split("msgstr[0]")[0] + 'msgstr[0] ""\nmsgstr[1] ""\nmsgstr[2] ""\n'
    line = add_plural(project, entry)
    po, _text, _html = files(project)
    assert check(project) == [f"{po}:{line}: 'This notice has one follow-up.' is untranslated"]


def test_missing_plural_form(project: Path) -> None:
    line = add_plural(project, PLURAL_ENTRY.split("msgstr[2]")[0])
    po, _text, _html = files(project)
    assert check(project) == [
        f"{po}:{line}: 'This notice has one follow-up.' is untranslated in msgstr[2] "
        "(ru has 3 plural forms)"
    ]


def test_more_plural_forms_than_the_locale_has(project: Path) -> None:
    add_plural(
        project, PLURAL_ENTRY + 'msgstr[3] "У этого уведомления %(count)s "\n"дополнений."\n'
    )
    po, _text, _html = files(project)
    line = line_of(po, "msgstr[3]")
    assert check(project) == [
        f"{po}:{line}: msgstr[3]: the catalog has only 3 plural forms, msgstr[0] to msgstr[2]"
    ]


def test_plural_forms_header_with_the_wrong_number_of_forms(project: Path) -> None:
    add_plural(project, PLURAL_ENTRY.split("msgstr[2]")[0])
    po, _text, _html = files(project)
    line = replace_in(po, '"Plural-Forms: nplurals=3;', '"Plural-Forms: nplurals=2;')
    assert check(project) == [
        f"{po}:{line}: Plural-Forms says nplurals=2, but ru has 3 plural forms"
    ]


def test_plural_forms_header_with_another_rule(project: Path) -> None:
    po, _text, _html = files(project)
    replace_in(
        po, "(n % 100 < 12 || n % 100 > 14) ? 1 : 2", "(n % 100 < 12 || n % 100 > 14) ? 2 : 1"
    )
    line = line_of(po, '"Plural-Forms:')
    problems = check(project)
    assert len(problems) == 1
    assert problems[0].startswith(
        f"{po}:{line}: Plural-Forms picks form 1 for n=0, but ru needs form 2 (n % 10 == 1"
    )


# -- placeholders -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msgid", "old", "new", "problem"),
    [
        (
            "Hello, %(name)s,",
            '"Здравствуйте, %(name)s!"',
            '"Здравствуйте!"',
            "the translation drops %(name)s",
        ),
        (
            "Status update from %(sender)s, %(date)s",
            '"Уведомление о работе сервиса %(sender)s от %(date)s"',
            '"Уведомление о работе сервиса %(sender)s"',
            "the translation drops %(date)s",
        ),
        (
            "Hello, %(name)s,",
            '"Здравствуйте, %(name)s!"',
            '"Здравствуйте, %(nmae)s!"',
            "the translation has %(nmae)s, which the msgid does not have, and drops %(name)s",
        ),
        (
            "Hello, %(name)s,",
            '"Здравствуйте, %(name)s!"',
            '"Здравствуйте, %(name)s! Скидка 100%"',
            "the translation is not a valid %-format: incomplete format "
            "(a literal % is written %%)",
        ),
        (
            "Hello, %(name)s,",
            '"Здравствуйте, %(name)s!"',
            '"Здравствуйте, %(name)d!"',
            "incompatible format for placeholder 'name': 'd' and 's' are not compatible",
        ),
    ],
    ids=["drops-name", "drops-date", "unknown-nmae", "bare-percent", "type"],
)
def test_placeholders_must_be_the_msgids(
    project: Path, msgid: str, old: str, new: str, problem: str
) -> None:
    po, _text, _html = files(project)
    replace_in(po, old, new)
    line = line_of(po, f'msgid "{msgid}"')
    assert check(project) == [f"{po}:{line}: {msgid!r}: {problem}"]


def test_plural_form_with_an_unknown_placeholder(project: Path) -> None:
    line = add_plural(project, PLURAL_ENTRY.replace("%(count)s дополнения", "%(cuont)s дополнения"))
    po, _text, _html = files(project)
    assert check(project) == [
        f"{po}:{line}: 'This notice has one follow-up.': msgstr[1] has %(cuont)s, which the "
        "msgid does not have, and drops %(count)s"
    ]


def test_dry_run_with_an_unknown_placeholder(project: Path, tmp_path: Path) -> None:
    po, _text, _html = files(project)
    replace_in(po, '"Здравствуйте, %(name)s!"', '"Здравствуйте, %(nmae)s!"')
    line = line_of(po, 'msgid "Hello, %(name)s,"')
    result = invoke(project, "send", UPDATE, "--dry-run", "--preview-dir", str(tmp_path / "p"))
    assert result.exit_code == 1
    assert f"{po}:{line}: 'Hello, %(name)s,': the translation has %(nmae)s" in result.output


def test_rendering_names_the_template_and_catalog(project: Path) -> None:
    """Without check in front, a translation the template cannot fill is a RenderError."""
    po, text, _html = files(project)
    replace_in(po, '"Здравствуйте, %(name)s!"', '"Здравствуйте, %(nmae)s!"')
    renderer = sample_renderer(project)
    entry = find_entry(project.parent / "updates", UPDATE)
    with pytest.raises(RenderError) as caught:
        renderer.variant(entry, renderer.variant_key(entry, "ru", None, "Ann"))
    line = line_of(text, '{{ _("Hello, %(name)s,", name=name)|wordwrap(')
    assert str(caught.value) == (
        f"{text}:{line}: cannot fill in a translation from {po}: it uses %(nmae)s, which the "
        "template does not pass"
    )
    # the English variant has no catalog: it renders
    assert renderer.variant(entry, renderer.variant_key(entry, "en", None, "Ann")).text


# -- broken catalog files ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        (
            'msgstr "Отписаться"',
            'msgstr "Отписаться',
            "invalid catalog: expected a keyword (msgid, msgstr…) and a quoted string, or a "
            "quoted string continuing the one above",
        ),
        (
            'msgstr "Отписаться"',
            "msgstr Отписаться",
            "invalid catalog: expected a keyword (msgid, msgstr…) and a quoted string, or a "
            "quoted string continuing the one above",
        ),
        (
            'msgstr "Отписаться"',
            "#-#-#-#-#  conflict  #-#-#-#-#",
            "invalid catalog: cannot parse po file with conflicts",
        ),
    ],
    ids=["unterminated", "unquoted", "conflict"],
)
def test_broken_catalog_is_located(project: Path, old: str, new: str, problem: str) -> None:
    po, _text, _html = files(project)
    line = replace_in(po, old, new)
    assert check(project) == [f"{po}:{line}: {problem}"]


def test_msgid_without_msgstr(project: Path) -> None:
    po, _text, _html = files(project)
    replace_in(po, 'msgstr "Отписаться"\n', "")
    line = line_of(po, 'msgid "Unsubscribe"')
    assert check(project) == [
        f"{po}:{line}: invalid catalog: missing msgstr for msgid 'Unsubscribe'"
    ]


def test_catalog_that_is_not_utf8(project: Path) -> None:
    po, _text, _html = files(project)
    line = line_of(po, 'msgstr "Отписаться"')
    data = po.read_bytes().replace('"Отписаться"'.encode(), b'"\xff\xfe"')
    po.write_bytes(data)
    assert check(project) == [f"{po}:{line}: invalid catalog: not utf-8 text (invalid start byte)"]


def test_broken_catalog_when_rendering(project: Path) -> None:
    po, _text, _html = files(project)
    line = replace_in(po, 'msgstr "Отписаться"', "msgstr Отписаться")
    renderer = sample_renderer(project)
    entry = find_entry(project.parent / "updates", UPDATE)
    with pytest.raises(RenderError, match=rf"^{po}:{line}: invalid catalog: expected a keyword"):
        renderer.variant(entry, renderer.variant_key(entry, "ru", None, "Ann"))


# -- fixed text in templates ------------------------------------------------------------


def test_fixed_text_outside_gettext(project: Path) -> None:
    _po, text, html = files(project)
    html_line = replace_in(
        html,
        "{{ body_html }}\n",
        "{{ body_html }}\n<p style='margin: 0;'><a href=\"{{ unsubscribe_url }}\" "
        "title='x'>Read more</a> &amp;&nbsp;<!-- a comment -->StartMail</p>\n",
    )
    text_line = replace_in(text, "-- \n", "-- \nС уважением, {{ sender_name }}\n")
    assert check(project) == [
        f"{html}:{html_line + 1}: fixed text 'Read more' is not translatable: wrap it in _()",
        f"{text}:{text_line + 1}: fixed text 'С уважением, …' is not translatable: wrap it in _()",
    ]


def test_brand_names_and_markup_alone_are_fine(project: Path) -> None:
    _po, _text, html = files(project)
    replace_in(
        html,
        "{{ body_html }}\n",
        "{{ body_html }}\n<p class='brand' title=\"StartMail\">StartMail &middot; Tor</p>\n"
        "<!-- Read more --><style>p { color: red; }</style>\n",
    )
    result = invoke(project, "check")
    assert result.exit_code == 0, result.output


def test_template_syntax_error_is_located(project: Path) -> None:
    _po, text, _html = files(project)
    line = replace_in(text, "{% endif %}\n\n-- ", "{% endfi %}\n\n-- ")
    problems = check(project)
    assert len(problems) == 1
    assert problems[0].startswith(f"{text}:{line}: ")
