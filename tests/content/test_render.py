"""Rendering: the per-variant cache gives exactly what rendering from scratch gives."""

from __future__ import annotations

import binascii
import email.policy
import re
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest

from statusmail.content.message import MessageFactory
from statusmail.content.render import Renderer, local_date
from statusmail.domain import Recipient
from statusmail.project.config import load_config
from statusmail.project.entries import find_entry
from statusmail.project.regions import load_regions
from statusmail.project.selection import select
from statusmail.project.tokens import Keyring

HOSTILE_NAMES = [
    "<script>alert(1)</script>",
    'Eve "the" O\'Hacker & Co',
    "Мария <b>Иванова</b>",
    "%(name)s {{ name }} {% raw %}",
    "Ann\u00a0Lee",
]


def sample(project: Path, entry_id: str) -> tuple[Renderer, MessageFactory, list[Recipient]]:
    config = load_config(project)
    entry = find_entry(config.paths.updates, entry_id)
    regions = load_regions(config.paths.regions)
    renderer = Renderer(config.paths.templates, regions, config.sender.name)
    factory = MessageFactory(config, entry, renderer, Keyring(b"test-secret"))
    recipients = [
        r
        for r in select(entry, config.paths.subscribers, config.default_locale_by_region)
        if isinstance(r, Recipient)  # select() yields no Inactive unless asked
    ]
    return renderer, factory, recipients


@pytest.mark.parametrize("entry_id", ["update-2020-04-21", "block-2020-01-23"])
def test_cached_variants_equal_rendering_from_scratch(project: Path, entry_id: str) -> None:
    renderer, factory, recipients = sample(project, entry_id)
    assert recipients
    extra = [
        Recipient(f"h{i}@example.org", f"h{i}@example.org", f"h{i}@example.org", name, locale, "RU")
        for i, name in enumerate(HOSTILE_NAMES)
        for locale in ("en", "ru")
    ]
    seen_variants = set()
    for recipient in recipients + extra:
        key = renderer.variant_key(
            factory.entry, recipient.locale, recipient.region, recipient.name
        )
        seen_variants.add(key)
        url = factory.unsubscribe_url(recipient.address)
        cached = renderer.render(factory.entry, key, recipient.name, url)
        scratch = Renderer(renderer.templates_dir, renderer.regions, renderer.sender_name)
        fresh = scratch.render_from_scratch(factory.entry, key, recipient.name, url)
        assert cached == fresh, recipient.address
    # the cache really is per variant, not per recipient
    assert len(renderer._variants) == len(seen_variants) < len(recipients + extra)


def test_names_are_escaped_in_html_and_never_become_markup(project: Path) -> None:
    _renderer, factory, _ = sample(project, "update-2020-04-21")
    for name in HOSTILE_NAMES[:3]:
        recipient = Recipient("x@example.org", "x@example.org", "x@example.org", name, "en", "RU")
        built = factory.build(recipient)
        html = built.rendered.html
        assert "<script>" not in html and "<b>Иванова</b>" not in html
        assert "&lt;" in html or "&#34;" in html or "&amp;" in html
        parsed = message_from_bytes(built.envelope.data, policy=email.policy.default)
        assert parsed["To"].addresses[0].display_name == name


def test_russian_and_english_dates() -> None:
    import datetime as dt

    # no-break spaces: the day stays with its month, the year with «г.»
    assert local_date(dt.date(2020, 4, 21), "ru") == "21\u00a0апреля 2020\u00a0г."
    assert local_date(dt.date(2020, 6, 3), "ru") == "3\u00a0июня 2020\u00a0г."
    assert local_date(dt.date(2020, 4, 21), "en") == "April\u00a021,\u00a02020"


def test_text_and_html_say_the_same_thing(project: Path) -> None:
    """Above the footer (whose unsubscribe line differs by design), the words match."""
    import html as html_lib
    import re

    _, factory, recipients = sample(project, "update-2020-04-21")
    for recipient in recipients:
        rendered = factory.build(recipient).rendered
        text_body = rendered.text.split("\n-- \n", 1)[0]
        html_body = rendered.html.split("<hr", 1)[0].split("<body", 1)[1].split(">", 1)[1]
        html_words = set(re.findall(r"\w{3,}", html_lib.unescape(html_body)))
        text_words = set(re.findall(r"\w{3,}", text_body))
        assert text_words <= html_words, text_words - html_words
        html_visible = set(
            re.findall(r"\w{3,}", html_lib.unescape(re.sub(r"<[^>]+>", " ", html_body)))
        )
        assert html_visible <= text_words, html_visible - text_words


def test_message_id_is_stable_and_threads_to_the_block_notice(project: Path) -> None:
    _, update, recipients = sample(project, "update-2020-04-21")
    _, block, _ = sample(project, "block-2020-01-23")
    recipient = recipients[0]
    first = message_from_bytes(update.build(recipient).envelope.data, policy=email.policy.default)
    again = message_from_bytes(update.build(recipient).envelope.data, policy=email.policy.default)
    notice = message_from_bytes(block.build(recipient).envelope.data, policy=email.policy.default)
    assert first["Message-ID"] == again["Message-ID"]
    assert first["In-Reply-To"] == notice["Message-ID"] == first["References"]
    assert notice["In-Reply-To"] is None
    assert recipient.address not in first["Message-ID"]


def test_subject_with_many_cyrillic_words_keeps_its_spaces(project: Path) -> None:
    _renderer, factory, recipients = sample(project, "update-2020-04-21")
    russian = next(r for r in recipients if r.locale == "ru")
    parsed = message_from_bytes(factory.build(russian).envelope.data, policy=email.policy.default)
    # every space survives the header encoding; those after short words do not break
    assert parsed["Subject"] == "Новости о\u00a0блокировке в\u00a0России: поданы две жалобы"
    assert parsed["Subject"].replace("\u00a0", " ") == factory.entry.content["ru"].subject
    raw_headers = factory.build(russian).envelope.data.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 998 for line in raw_headers.split(b"\r\n"))
    assert raw_headers.isascii()


def test_encoding_per_line_equals_encoding_the_whole_part(project: Path) -> None:
    """The cached parts (quoted-printable line by line, base64 by stretch) are
    byte-identical to encoding each recipient's whole part from scratch, and decode to
    the rendered text."""
    from statusmail.content.parts import _b64, _canonical, _qp

    _, factory, recipients = sample(project, "update-2020-04-21")
    extra = [
        Recipient(f"h{i}@example.org", f"h{i}@example.org", f"h{i}@example.org", name, "ru", "RU")
        for i, name in enumerate([*HOSTILE_NAMES, "Очень Длинное Имя " * 8, ""])
    ]
    for recipient in recipients + extra:
        built = factory.build(recipient)
        rendered = built.rendered
        data = built.envelope.data
        parsed = message_from_bytes(data, policy=email.policy.default)
        plain, html = parsed.get_body(("plain",)), parsed.get_body(("html",))
        assert plain is not None and html is not None
        # (the parser keeps the wire's CRLF line endings in decoded content)
        assert plain.get_content().replace("\r\n", "\n") == rendered.text
        assert html.get_content().replace("\r\n", "\n") == rendered.html
        for part, text in ((plain, rendered.text), (html, rendered.html)):
            # the whole part, encoded at once, in the encoding the part chose
            if part["Content-Transfer-Encoding"] == "base64":
                assert _b64(_canonical(text)) in data
            else:
                assert part["Content-Transfer-Encoding"] == "quoted-printable"
                assert _qp(text) in data
        if recipient.name:
            assert parsed["To"].addresses[0].display_name == recipient.name
        assert all(len(line) <= 998 for line in data.split(b"\r\n"))


def test_no_line_starts_with_a_dot_and_line_endings_are_crlf(project: Path) -> None:
    """So SMTP can send the bytes as they are (no dot-stuffing, no re-normalizing)."""
    from statusmail.content.parts import _qp
    from statusmail.delivery.pipelining import wire_ready

    _, factory, _ = sample(project, "update-2020-04-21")
    dotted = Recipient("d@example.org", "d@example.org", "d@example.org", ".Dot", "en", None)
    data = factory.build(dotted).envelope.data
    assert wire_ready(data)
    encoded = _qp(".start\n..two\n.\nend.\n")
    assert encoded == b"=2Estart\r\n=2E.two\r\n=2E\r\nend.\r\n"
    assert binascii.a2b_qp(encoded.replace(b"\r\n", b"\n")) == b".start\n..two\n.\nend.\n"
    assert not wire_ready(b"a\r\n.b\r\n") and not wire_ready(b"a\nb\r\n")


def test_a_template_compiles_once_a_process_and_again_when_edited(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renderers of one project share the compiled templates (check and the dry run make
    one per entry); an edited template is compiled anew and renders as edited."""
    import jinja2

    compiled: list[str | None] = []
    compile_ = jinja2.Environment.compile

    def counted(self: jinja2.Environment, source: str, name: str | None, *rest: Any) -> Any:
        compiled.append(name)
        return compile_(self, source, name, *rest)

    monkeypatch.setattr(jinja2.Environment, "compile", counted)
    config = load_config(project)
    entry = find_entry(config.paths.updates, "update-2020-04-21")

    def texts() -> list[str]:
        renderer = Renderer(config.paths.templates, load_regions(config.paths.regions), "S")
        return [renderer.variant(entry, key).text for key in renderer.variant_keys(entry)]

    first = texts()
    assert "message.txt.j2" in compiled
    compiled.clear()
    assert texts() == first
    assert compiled == []  # nothing compiled again
    template = config.paths.templates / "message.txt.j2"
    template.write_text(template.read_text(encoding="utf-8") + "EDITED\n", encoding="utf-8")
    edited = texts()
    assert compiled == ["message.txt.j2"]
    assert all(text.rstrip().endswith("EDITED") for text in edited)


@pytest.mark.parametrize("start", [0, 1, 3, 10])
def test_an_ordered_list_is_numbered_alike_in_both_parts(start: int) -> None:
    """The text part numbers its items as the HTML part's <ol start> shows them: a list
    starting at 0 went 1, 2 in the text beside 0, 1 in the HTML."""
    from statusmail.content.markdown import to_html, to_text

    source = f"{start}. first item\n{start + 1}. second item\n\n- a bullet\n"
    html = str(to_html(source))
    shown = re.search(r'<ol(?: start="(\d+)")?', html)
    assert shown is not None
    first = int(shown.group(1) or 1)
    assert first == start
    text = to_text(source)
    assert f"{start}. first item\n{start + 1}. second item" in text
    assert "- a bullet" in text


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        (
            "о [Роскомнадзоре](https://ru.wikipedia.org/wiki/Роскомнадзор)",
            "о Роскомнадзоре <https://ru.wikipedia.org/wiki/Роскомнадзор>",
        ),
        (
            "откройте <https://ru.wikipedia.org/wiki/Роскомнадзор>.",
            "откройте https://ru.wikipedia.org/wiki/Роскомнадзор.",
        ),
        ("зеркало: <https://стартмейл.рф/>", "зеркало: https://стартмейл.рф/"),
    ],
)
def test_the_text_part_spells_a_link_as_a_reader_types_it(source: str, shown: str) -> None:
    """The text part showed a Cyrillic link as its href spells it (%D0%A0%D0%BE…, a line
    of 109 columns) and an autolink twice; the HTML part's href stays encoded."""
    from statusmail.content.markdown import to_html, to_text

    assert to_text(source, "ru").replace("\n", " ").replace("\u00a0", " ").strip() == shown
    assert "%D0%A0%D0%BE" in str(to_html(source)) or "xn--" in str(to_html(source))


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        (
            "the [PDF](https://status.example/docs/Appeal%20of%20April%2021.pdf)",
            "the PDF <https://status.example/docs/Appeal%20of%20April%2021.pdf>",
        ),
        (
            "search <https://status.example/search?q=%3Eblock%3C>",
            "search https://status.example/search?q=%3Eblock%3C",
        ),
        (
            "the [form](https://status.example/f?x=%22a%22)",
            "the form <https://status.example/f?x=%22a%22>",
        ),
    ],
)
def test_a_link_that_decoded_would_break_is_spelled_as_written(source: str, shown: str) -> None:
    """Decoded, ``Appeal%20of%20April%2021.pdf`` became ``Appeal of April 21.pdf`` and
    ``q=%3Eblock%3C`` became ``q=>block<``: a mail client linked only up to the space or
    the bracket, so the link did not open (and the dry run's preview showed the same)."""
    from statusmail.content.markdown import to_text

    assert to_text(source, "en").replace("\n", " ").strip() == shown


def test_an_item_s_later_paragraph_keeps_its_indent_in_the_text_part() -> None:
    """Flush left, "more on b" read as outside the list, where the HTML part shows it
    inside item b (review)."""
    from statusmail.content.markdown import to_text

    source = "Intro.\n\n- item a\n- item b\n\n  more on b\n\n- item c\n\nAfter."
    assert to_text(source, "en") == (
        "Intro.\n\n- item a\n- item b\n\n  more on b\n\n- item c\n\nAfter.\n"
    )
