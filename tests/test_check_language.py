"""`statusmail check` as the translator's and editor's last line (issue 25, items 1-5).

Each test plants one mistake a reader would see in a copy of the sample project and runs
``check`` in this process (conftest's ``invoke``): it exits 1 naming the mistake's
``file:line``, and nothing else. A mistake that fails before rendering costs little; the
one that needs the messages built (a link readers in Russia get) renders them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import UPDATE, invoke, problem_lines
from editing import line_of, refresh_sources, replace_in
from statusmail.content.catalog_gaps import catalog_problems
from statusmail.project.regions import link_hosts, load_regions, registrable_domain
from statusmail.validation import region_problems

PO = "templates/locale/ru/LC_MESSAGES/messages.po"
MIRROR = '"https://www.startmail.example/": "https://startmail-ru.test/"'


def check(project: Path) -> list[str]:
    """The problem lines of a failing ``check`` (the run must exit 1)."""
    result = invoke(project, "check")
    assert result.exit_code == 1, result.output
    return problem_lines(result.output)


def entry_file(project: Path) -> Path:
    return project.parent / "updates" / f"{UPDATE}.yaml"


# -- the catalog ---------------------------------------------------------------------


def test_english_msgstr_short_is_refused(project: Path) -> None:
    po = project.parent / PO
    replace_in(po, 'msgstr "Отписаться"\n', 'msgstr "Unsubscribe"\n')
    line = line_of(po, 'msgid "Unsubscribe"\n')
    assert check(project) == [
        f"{po}:{line}: 'Unsubscribe' is translated as itself: translate it, or mark a "
        "deliberate loan with a '# loan' translator comment above it"
    ]


def test_english_msgstr_long_is_refused(project: Path) -> None:
    po = project.parent / PO
    replace_in(
        po,
        '"Вы получили это письмо, потому что подписались на уведомления о работе "\n'
        '"сервиса %(sender)s."\n',
        '"You get this message because you signed up for status updates from "\n"%(sender)s."\n',
    )
    line = line_of(po, 'msgid ""\n"You are receiving this')
    (found,) = check(project)
    assert found.startswith(f"{po}:{line}: 'You are receiving this because"), found
    assert "the translation 'You get this message because" in found, found
    assert found.endswith("' is not in Russian"), found


def test_a_deliberate_loan_is_marked_in_the_catalog(project: Path) -> None:
    po = project.parent / PO
    replace_in(po, 'msgid "Topics"\nmsgstr "Темы"\n', 'msgid "Topics"\nmsgstr "Topics"\n')
    templates = project.parent / "templates"
    assert [p.code for p in catalog_problems(templates)] == ["untranslated"]
    replace_in(
        po,
        '#: templates/pages/preferences.html.j2:18\nmsgid "Topics"',
        '# loan\n#: templates/pages/preferences.html.j2:18\nmsgid "Topics"',
    )
    assert catalog_problems(templates) == []


def test_an_entry_no_template_uses_is_a_warning_at_its_line(project: Path) -> None:
    po = project.parent / PO
    with po.open("a", encoding="utf-8") as handle:
        handle.write('\nmsgid "Read the full story"\nmsgstr "Читать полностью"\n')
    line = line_of(po, 'msgid "Read the full story"')
    result = invoke(project, "check")
    assert result.exit_code == 0, result.output  # a warning: nothing a reader sees is wrong
    assert problem_lines(result.output) == []
    warning = (
        f"{po}:{line}: warning: 'Read the full story' is in the catalog but no template "
        "uses it any more"
    )
    assert warning in result.output, result.output


# -- templates -----------------------------------------------------------------------------


@pytest.mark.parametrize("attribute", ["alt", "title", "aria-label"])
def test_fixed_text_in_an_attribute_is_found(project: Path, attribute: str) -> None:
    html = project.parent / "templates" / "message.html.j2"
    line = replace_in(
        html,
        "{{ body_html }}\n",
        "{{ body_html }}\n"
        f'<span {attribute}="Read the blog">{{{{ _("Unsubscribe") }}}}</span>\n',
    )
    assert check(project) == [
        f"{html}:{line + 1}: fixed text 'Read the blog' in its {attribute} attribute is not "
        "translatable: wrap it in _()"
    ]


def test_an_english_topic_name_in_russian_is_refused(project: Path) -> None:
    replace_in(project, "ru: Новости StartMail}", "ru: Product news}")
    line = line_of(project, "  product-news: {en:")
    assert check(project) == [
        f"{project}:{line}: the ru name of topic 'product-news': 'Product news' is not in Russian"
    ]


# -- regions.yaml ----------------------------------------------------------------------------


def test_english_region_heading_in_russian_is_refused(project: Path) -> None:
    regions = project.parent / "regions.yaml"
    line = replace_in(
        regions,
        "ru: Как пользоваться StartMail из России",
        "ru: How to use StartMail from Russia",
    )
    assert check(project) == [
        f"{regions}:{line}: RU's ru heading: 'How to use StartMail from Russia' is not in Russian"
    ]


def test_english_access_text_in_russian_is_refused(project: Path) -> None:
    regions = project.parent / "regions.yaml"
    text = regions.read_text(encoding="utf-8")
    first = "      Если ни один способ не помогает"
    start, end = text.index(first), text.index("\nBY:\n")
    line = line_of(regions, first)
    english = "      If neither works, write to support@startmail.example and tell us.\n"
    regions.write_text(text[:start] + english + text[end + 1 :], encoding="utf-8")
    (found,) = check(project)
    assert found.startswith(f"{regions}:{line}: RU's ru access text: 'If neither works,"), found
    assert found.endswith("is not in Russian"), found


def test_a_rewrite_to_an_http_mirror_is_refused_once(project: Path) -> None:
    regions = project.parent / "regions.yaml"
    line = replace_in(
        regions, MIRROR, '"https://www.startmail.example/": "http://startmail-ru.test/"'
    )
    # Only the rewrite: the region stays, so the entries naming RU get no "unknown region".
    assert check(project) == [
        f"{regions}:{line}: 'https://www.startmail.example/' is rewritten to "
        "'http://startmail-ru.test/': a rewrite target must be https (one-click "
        "unsubscribe needs it, and readers behind the block must not browse in clear text)"
    ]


@pytest.mark.parametrize(
    "target", ["https://startmail.example/", "https://mirror.startmail.example/"]
)
def test_a_rewrite_onto_the_blocked_domain_is_refused(project: Path, target: str) -> None:
    regions = project.parent / "regions.yaml"
    line = replace_in(regions, MIRROR, f'"https://www.startmail.example/": "{target}"')
    assert check(project) == [
        f"{regions}:{line}: 'https://www.startmail.example/' is rewritten to "
        f"'{target}', on startmail.example, a domain RU blocks: a mirror needs another "
        "registrable domain"
    ]


def test_an_onion_rewrite_may_be_http(project: Path) -> None:
    """Tor encrypts and authenticates an onion service end to end: no https needed."""
    regions = project.parent / "regions.yaml"
    onion = "http://startmailexampleplaceholderonionaddressnotarealsiteamfqd.onion/"
    replace_in(regions, MIRROR, f'"https://www.startmail.example/": "{onion}"')
    found = region_problems(load_regions(regions))
    assert found == []
    replace_in(regions, onion, "http://startmail-ru.test/")
    assert [p.code for p in region_problems(load_regions(regions))] == ["bad-value"]


def test_unreadable_regions_file_is_said_once(project: Path) -> None:
    regions = project.parent / "regions.yaml"
    line = replace_in(regions, "BY:\n", "BY: [\n")
    (found,) = check(project)  # not also three "unknown region" lines per entry
    assert found.startswith(f"{regions}:"), found
    assert "invalid YAML" in found and int(found.split(":")[1]) >= line, found


# -- links readers in Russia get ------------------------------------------------------------


def test_registrable_domains_from_the_shipped_list() -> None:
    assert {
        host: registrable_domain(host)
        for host in (
            "www.startmail.example",
            "MIRROR.startmail.example.",
            "news.bbc.co.uk",
            "a.b.xn--p1ai",
            "x.y.city.kawasaki.jp",
            "192.0.2.1",
        )
    } == {
        "www.startmail.example": "startmail.example",
        "MIRROR.startmail.example.": "startmail.example",
        "news.bbc.co.uk": "bbc.co.uk",  # the rules for co.uk come from the shipped list
        "a.b.xn--p1ai": "b.xn--p1ai",  # .рф, spelt in ASCII
        "x.y.city.kawasaki.jp": "city.kawasaki.jp",  # *.kawasaki.jp, but !city.kawasaki.jp
        "192.0.2.1": "192.0.2.1",
    }
    text = (
        'see <a href="HTTPS://Startmail.Example/x">, http://a.example:8080/ and mailto:b@c.example'
    )
    assert link_hosts(text) == {"startmail.example", "a.example"}


def test_a_body_link_to_the_blocked_apex_is_refused(project: Path) -> None:
    entry = entry_file(project)
    text = entry.read_text(encoding="utf-8")
    ru_start = text.index("\n  ru:\n")
    link = "https://www.startmail.example/blog/"
    at = text.index(link, ru_start)
    entry.write_text(
        text[:at] + "https://startmail.example/blog/" + text[at + len(link) :], encoding="utf-8"
    )
    ru_line = line_of(entry, "  ru:\n")
    advice = "write it as https://www.startmail.example/… so that regions.yaml's links rewrite it"
    assert check(project) == [
        f"{entry}:{ru_line}: readers in RU still get a link to startmail.example in its "
        f"{part} part (ru · RU access): {advice}"
        for part in ("text", "HTML")
    ]


# -- entries -----------------------------------------------------------------------------------


def test_a_month_changed_in_one_language_only_is_refused(project: Path) -> None:
    entry = entry_file(project)
    replace_in(entry, "заседание — 3 июня 2020 года.", "заседание — 3 июля 2020 года.")
    line = line_of(entry, '    summary: "«Роскомсвобода»')
    assert check(project) == [
        f"{entry}:{line}: the dates in the en and ru summary differ "
        "(only in en: June 3; only in ru: July 3)"
    ]


def test_an_english_paragraph_in_a_russian_body_is_refused(project: Path) -> None:
    entry = entry_file(project)
    line = replace_in(
        entry,
        "      Спасибо за терпение и поддержку!\n",
        "      Thank you for your patience and support.\n",
    )
    assert check(project) == [
        f"{entry}:{line}: the ru body: 'Thank you for your patience and support.' is not in Russian"
    ]


def test_a_russian_paragraph_in_an_english_body_is_refused(project: Path) -> None:
    entry = entry_file(project)
    line = replace_in(
        entry,
        "      Thank you for your patience and support.\n",
        "      Спасибо за терпение и поддержку!\n",
    )
    refresh_sources(entry)  # the translator has seen the change: only the language is wrong
    assert check(project) == [
        f"{entry}:{line}: the en body: 'Спасибо за терпение и поддержку!' is not in English"
    ]


def test_a_russian_subject_with_one_cyrillic_word_is_refused(project: Path) -> None:
    entry = entry_file(project)
    subject = "Update on the block in Russia: две appeals filed"
    line = replace_in(
        entry,
        'subject: "Новости о блокировке в России: поданы две жалобы"',
        f'subject: "{subject}"',
    )
    assert check(project) == [f"{entry}:{line}: the ru subject: {subject!r} is not in Russian"]


def test_a_russian_sentence_naming_latin_products_is_russian(project: Path) -> None:
    """Acronyms and product names in a Russian sentence are names: the access tools a
    reader in Russia is told about are named in Latin letters, and were a third of
    the words of a correct item, which ``check`` refused and ``send`` would not send."""
    entry = entry_file(project)
    replace_in(
        entry,
        "      Спасибо за терпение и поддержку!\n",
        "      - **VPN:** подключитесь через VPN (WireGuard, OpenVPN, Psiphon).\n",
    )
    result = invoke(project, "check")
    assert result.exit_code == 0, result.output
    replace_in(entry, "через VPN", "through a VPN")  # lower-case English is still English
    (found,) = check(project)
    assert found.endswith("is not in Russian"), found
