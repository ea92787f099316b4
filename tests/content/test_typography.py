"""Typography: no-break spaces for Russian prepositions, numbers and dashes, English dates."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from typing import Any

import jinja2
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from markdown_it.token import Token

from conftest import REPO
from statusmail.content.typography import NBSP, typeset, typeset_tokens

md = MarkdownIt("commonmark")


def unbound(text: str) -> str:
    return text.replace(NBSP, " ")


def only_spaces_bound(before: str, after: str) -> bool:
    """``after`` is ``before`` with some ordinary spaces turned into U+00A0, nothing else."""
    return len(before) == len(after) and all(
        a == b or (a == " " and b == NBSP) for a, b in zip(before, after, strict=True)
    )


def inline_text(tokens: list[Token]) -> str:
    """A plain-text rendering of the inline content: what the reader of the text part sees."""
    parts: list[str] = []
    for token in tokens:
        if token.type != "inline":
            continue
        for child in token.children or []:
            if child.type in ("text", "code_inline"):
                parts.append(child.content)
            elif child.type == "softbreak":
                parts.append(" ")
            elif child.type == "hardbreak":
                parts.append("\n")
        parts.append("\n\n")
    return "".join(parts)


def typeset_markdown(source: str, locale: str) -> list[Token]:
    tokens = md.parse(source)
    typeset_tokens(tokens, locale)
    return tokens


# --- Russian, rule by rule ---------------------------------------------------------------

SHORT_WORDS = [
    *"вскоуиая",
    *("на", "по", "за", "из", "до", "от", "не", "ни", "во", "со", "ко", "об", "но", "да"),
    *("он", "мы", "их", "ее", "её"),
]


@pytest.mark.parametrize("word", SHORT_WORDS)
def test_a_short_word_binds_to_the_next(word: str) -> None:
    assert typeset(f"слово {word} слово", "ru") == f"слово {word}{NBSP}слово"


@pytest.mark.parametrize("word", ["В", "На", "НЕ", "Из"])
def test_a_short_word_binds_at_any_case_and_at_a_sentence_start(word: str) -> None:
    assert typeset(f"{word} 2020 году", "ru") == f"{word}{NBSP}2020{NBSP}году"
    assert typeset(f"Всё. {word} доме", "ru") == f"Всё. {word}{NBSP}доме"


def test_a_short_word_after_an_opening_quote_or_bracket_binds() -> None:
    assert typeset("«В России» (и не только)", "ru") == f"«В{NBSP}России» (и{NBSP}не{NBSP}только)"


def test_a_run_of_short_words_binds_each() -> None:
    assert typeset("и в то же время", "ru") == f"и{NBSP}в{NBSP}то{NBSP}же время"


def test_longer_words_and_parts_of_words_are_left_alone() -> None:
    for text in (
        "Это тот сервис",
        "IP-адреса наших серверов",
        "из-за блокировки",
        "по-русски тоже",
    ):
        assert typeset(text, "ru") == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("знаете ли вы", f"знаете{NBSP}ли вы"),
        ("если бы мы знали", f"если{NBSP}бы мы{NBSP}знали"),
        ("что же делать", f"что{NBSP}же делать"),
        ("кто ж знал", f"кто{NBSP}ж знал"),
        ("было ль это", f"было{NBSP}ль это"),
        ("Ли вы?", "Ли вы?"),  # nothing before it to lean on
    ],
)
def test_particles_bind_to_the_word_before_not_after(text: str, expected: str) -> None:
    assert typeset(text, "ru") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3 июня", f"3{NBSP}июня"),
        ("2020 г.", f"2020{NBSP}г."),
        ("27 апреля", f"27{NBSP}апреля"),
        ("23 января 2020 года", f"23{NBSP}января 2020{NBSP}года"),
        ("тысячи: 1,5 тысячи", f"тысячи: 1,5{NBSP}тысячи"),
        ("в 2019–2020 гг.", f"в{NBSP}2019–2020{NBSP}гг."),
        ("10 GB", f"10{NBSP}GB"),
        ("в 12:00 по Москве", f"в{NBSP}12:00{NBSP}по{NBSP}Москве"),
        ("более 10 000 человек", f"более 10{NBSP}000{NBSP}человек"),
        ("1 000 000 писем", f"1{NBSP}000{NBSP}000{NBSP}писем"),
        ("закон № 149-ФЗ", f"закон №{NBSP}149-ФЗ"),
        ("письма, жалобы и т. д.", f"письма, жалобы и{NBSP}т.{NBSP}д."),
        ("т. е. всё", f"т.{NBSP}е. всё"),
        ("в 2019, 2020", f"в{NBSP}2019, 2020"),  # a year is no digit group
    ],
)
def test_a_number_binds_to_the_word_after(text: str, expected: str) -> None:
    assert typeset(text, "ru") == expected


def test_a_number_before_punctuation_or_another_number_stays_breakable() -> None:
    for text in ("в 2020, когда", "1 2 3", "CVE 2020 - слово"):
        assert unbound(typeset(text, "ru")) == text
    assert typeset("шаг 2 3 раза", "ru") == f"шаг 2 3{NBSP}раза"


def test_year_abbreviation_binds_to_what_precedes_it() -> None:
    # the long date Babel gives for ru, with CLDR's narrow no-break space made plain
    assert typeset("21 апреля 2020 г.", "ru") == f"21{NBSP}апреля 2020{NBSP}г."
    assert typeset("XIX–XX гг.", "ru") == f"XIX–XX{NBSP}гг."


def test_an_em_dash_binds_to_the_word_before() -> None:
    assert typeset("слово — слово", "ru") == f"слово{NBSP}— слово"
    assert typeset("Подробнее — в нашем блоге", "ru") == f"Подробнее{NBSP}— в{NBSP}нашем блоге"
    # a dash opening a line (dialogue) has nothing before it
    assert typeset("— Привет", "ru") == "— Привет"
    # hyphens and en dashes are not em dashes
    assert typeset("слово - слово – слово", "ru") == "слово - слово – слово"


@pytest.mark.parametrize("locale", ["ru", "ru_RU", "ru-RU", "RU"])
def test_russian_locale_spellings(locale: str) -> None:
    assert typeset("В России", locale) == f"В{NBSP}России"


@pytest.mark.parametrize("locale", ["de", "", "xx", "fr_FR"])
def test_unknown_locales_are_left_unchanged(locale: str) -> None:
    text = "В России 3 июня — June 3, 2020"
    assert typeset(text, locale) == text
    tokens = typeset_markdown("В\nРоссии 3\nиюня", locale)
    assert tokens == md.parse("В\nРоссии 3\nиюня")


def test_addresses_are_never_changed_and_the_space_after_them_stays_ordinary() -> None:
    text = (
        "Блог: https://www.startmail.example/blog/a-b и пишите на support@startmail.example"
        " — или на mirror.startmail.example/в — или www.startmail.example же"
    )
    out = typeset(text, "ru")
    for address in (
        "https://www.startmail.example/blog/a-b ",
        "support@startmail.example ",
        "mirror.startmail.example/в ",
        "www.startmail.example ",
    ):
        assert address in out
    # a short word still binds *to* an address
    assert f"на{NBSP}support@startmail.example" in out


def test_an_address_written_with_cyrillic_is_an_address_too() -> None:
    text = "сайт почта.рф и адрес ящик@почта.рф — вот"
    assert typeset(text, "ru") == f"сайт почта.рф и{NBSP}адрес ящик@почта.рф — вот"


# --- English --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("June 3", f"June{NBSP}3"),
        ("April 27", f"April{NBSP}27"),
        ("on June 3, 2020.", f"on June{NBSP}3,{NBSP}2020."),
        ("Since January 23, 2020, the", f"Since January{NBSP}23,{NBSP}2020, the"),
        ("Dec. 27, 2019", f"Dec.{NBSP}27,{NBSP}2019"),
        ("Sept 3rd", f"Sept{NBSP}3rd"),
    ],
)
def test_english_dates_do_not_break(text: str, expected: str) -> None:
    assert typeset(text, "en") == expected


@pytest.mark.parametrize(
    "text",
    [
        "in May 2020",  # no day
        "May I go to a place in 3 days",  # no Russian rules in English
        "June 123",
        "June 3a",
        "A word — a word",
        "the june 3 meeting",  # not a month name
    ],
)
def test_english_leaves_everything_else_alone(text: str) -> None:
    assert typeset(text, "en") == text


def test_spaces_already_bound_count_as_spaces() -> None:
    assert typeset(f"June{NBSP}3, 2020", "en") == f"June{NBSP}3,{NBSP}2020"
    assert typeset(f"23{NBSP}января 2020 года", "ru") == f"23{NBSP}января 2020{NBSP}года"


def test_russian_rules_do_not_apply_to_english_and_back() -> None:
    assert typeset("В России", "en") == "В России"
    assert typeset("June 3", "ru") == "June 3"


# --- the sample entries --------------------------------------------------------------------


def sample_content() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path in sorted((REPO / "updates").glob("*.yaml")):
        entry = yaml.safe_load(path.read_text(encoding="utf-8"))
        for locale, content in entry["content"].items():
            yield path.name, locale, content


def test_sample_russian_entries() -> None:
    texts = {
        name: (
            typeset(content["subject"], "ru"),
            typeset(content["summary"], "ru"),
            inline_text(typeset_markdown(content["body"], "ru")),
        )
        for name, locale, content in sample_content()
        if locale == "ru"
    }
    subject, summary, body = texts["block-2020-01-23.yaml"]
    assert subject == f"StartMail заблокирован в{NBSP}России"
    assert summary.startswith(f"С{NBSP}23{NBSP}января 2020{NBSP}года ")
    assert f"Подробнее{NBSP}— в{NBSP}нашем блоге" in body
    # "доступ\nк StartMail на территории" is wrapped in the source
    assert f"доступ к{NBSP}StartMail на{NBSP}территории" in body
    assert f"21{NBSP}января 2020{NBSP}года" in body
    assert f"27{NBSP}декабря 2019{NBSP}года" in body

    _, summary, body = texts["update-2020-04-21.yaml"]
    assert f"заседание{NBSP}— 3{NBSP}июня 2020{NBSP}года" in summary
    assert f"первую{NBSP}— на{NBSP}административный" in body
    assert f"вторую{NBSP}— на{NBSP}внесение" in body
    assert f"с{NBSP}27{NBSP}апреля" in body
    # "внесли\nв реестр": the short word opens a source line
    assert f"внесли в{NBSP}реестр" in body


def test_sample_english_entries_change_only_inside_dates() -> None:
    dates = {
        f"January{NBSP}23,{NBSP}2020",
        f"January{NBSP}21,{NBSP}2020",
        f"December{NBSP}27,{NBSP}2019",
        f"June{NBSP}3,{NBSP}2020",
        f"April{NBSP}27",
    }
    for name, locale, content in sample_content():
        if locale != "en":
            continue
        source = inline_text(md.parse(content["body"])) + content["summary"] + content["subject"]
        out = (
            inline_text(typeset_markdown(content["body"], "en"))
            + typeset(content["summary"], "en")
            + typeset(content["subject"], "en")
        )
        assert only_spaces_bound(source, out), name
        found = {date for date in dates if date in out}
        assert found, name
        assert out.count(NBSP) == sum(out.count(d) * d.count(NBSP) for d in found), name


def test_sample_region_instructions_bind_across_source_line_ends() -> None:
    regions = yaml.safe_load((REPO / "regions.yaml").read_text(encoding="utf-8"))
    source = regions["RU"]["access"]["ru"]
    assert "нам на\n[support@" in source
    tokens = typeset_markdown(source, "ru")
    html = md.renderer.render(tokens, md.options, {})
    text = inline_text(tokens)
    assert f"нам на{NBSP}support@startmail.example" in text
    assert f"у{NBSP}вас не{NBSP}открывается" in html
    assert (
        f'на{NBSP}<a href="mailto:support@startmail.example">support@startmail.example</a>' in html
    )
    # code spans and autolinks come through untouched
    [onion] = re.findall(r"http://[a-z0-9]+\.onion", source)
    assert f"<code>{onion}</code>" in html
    assert '<a href="https://startmail-ru.test/">https://startmail-ru.test/</a> и' in html


# --- token streams -----------------------------------------------------------------------


def children(tokens: list[Token]) -> list[Token]:
    return [child for token in tokens if token.type == "inline" for child in token.children or []]


def test_softbreaks_after_short_words_numbers_and_before_dashes_become_no_break_text() -> None:
    tokens = typeset_markdown(
        "ящик и письма в\nбезопасности 3\nиюня, слово\n— слово и\n`код`", "ru"
    )
    kinds = [(c.type, c.content) for c in children(tokens)]
    assert kinds == [
        ("text", f"ящик и{NBSP}письма в"),
        ("text", NBSP),
        ("text", "безопасности 3"),
        ("text", NBSP),
        ("text", "июня, слово"),
        ("text", NBSP),
        ("text", "— слово и"),
        ("text", NBSP),  # a short word binds to a code span after it
        ("code_inline", "код"),
    ]


def test_a_softbreak_with_nothing_to_bind_stays_and_a_hard_break_always_stays() -> None:
    tokens = typeset_markdown("слово\nслово в  \nтексте", "ru")
    assert [c.type for c in children(tokens)] == ["text", "softbreak", "text", "hardbreak", "text"]


def test_code_spans_autolinks_and_attributes_are_never_touched() -> None:
    source = (
        "Код `в тексте — 3 июня` и <https://x.example/в> и "
        '[в блоге](<https://x.example/в тексте> "в тексте")'
        " и <a@b.example> — и `x`\nи <made-up:в> же"
    )
    before = children(md.parse(source))
    after = children(typeset_markdown(source, "ru"))
    code = [c.content for c in after if c.type == "code_inline"]
    assert code == ["в тексте — 3 июня", "x"]
    for old, new in zip(before, after, strict=True):
        assert new.attrs == old.attrs
    rendered = md.renderer.render(typeset_markdown(source, "ru"), md.options, {})
    assert '<a href="https://x.example/%D0%B2">https://x.example/в</a> и' in rendered
    assert '<a href="mailto:a@b.example">a@b.example</a> — и' in rendered
    assert '<a href="made-up:%D0%B2">made-up:в</a> же' in rendered
    assert 'title="в тексте"' in rendered
    assert f">в{NBSP}блоге</a>" in rendered


# --- wrapping keeps bound words together -----------------------------------------------------


def russian_paragraphs() -> list[str]:
    """The Russian sample bodies as the plain-text part holds them, one string a paragraph."""
    paragraphs = []
    for _, locale, content in sample_content():
        if locale == "ru":
            text = inline_text(typeset_markdown(content["body"], "ru"))
            paragraphs += [p for p in text.split("\n\n") if p]
    return paragraphs


def bound_pairs(text: str) -> list[str]:
    """Each U+00A0 with the words either side (a hyphen ends a word: lines may break there)."""
    return re.findall(rf"(?=([^\s\-]*{NBSP}[^\s\-]*))", text)


def test_the_sample_paragraphs_have_bound_pairs() -> None:
    pairs = [pair for p in russian_paragraphs() for pair in bound_pairs(p)]
    assert len(pairs) > 30
    assert f"3{NBSP}июня" in pairs


@settings(max_examples=60, deadline=None)
@given(width=st.integers(min_value=20, max_value=78), data=st.data())
def test_textwrap_and_jinja_wordwrap_never_break_at_a_no_break_space(
    width: int, data: st.DataObject
) -> None:
    paragraph = data.draw(st.sampled_from(russian_paragraphs()))
    env = jinja2.Environment(autoescape=False)
    ours = "{{ t|wordwrap(w, break_long_words=False, break_on_hyphens=False) }}"
    wrapped = {
        "textwrap.fill": textwrap.fill(
            paragraph, width=width, break_long_words=False, break_on_hyphens=False
        ),
        "jinja2 wordwrap": env.from_string(ours).render(t=paragraph, w=width),
    }
    for how, result in wrapped.items():
        lines = result.split("\n")
        assert len(lines) > 1 or len(paragraph) <= width, how
        # every line break took the place of an ordinary space
        assert " ".join(lines) == paragraph, how
        for line in lines:
            assert not line.startswith(NBSP) and not line.endswith(NBSP), how

    # jinja's defaults also break at hyphens and cut words longer than the line; a bound
    # pair still never straddles a line break as long as the pair fits on a line
    longest = max(len(chunk) for chunk in re.split(r"[ \-]", paragraph))
    default = env.from_string("{{ t|wordwrap(w) }}").render(t=paragraph, w=max(width, longest))
    lines = default.split("\n")
    for pair in bound_pairs(paragraph):
        assert any(pair in line for line in lines), pair


# --- properties --------------------------------------------------------------------------

URLS = st.builds(
    lambda scheme, host, path: f"{scheme}{host}{path}",
    st.sampled_from(["https://", "http://", "ftp://", "www.", "mailto:"]),
    st.sampled_from(["www.startmail.example", "x.example", "почта.рф", "a-b.example"]),
    st.text(alphabet="abz-_~%?=&#/.,:;вфя—0123456789", max_size=20).map(lambda s: "/" + s),
)
EMAILS = st.builds(
    lambda local, domain: f"{local}@{domain}",
    st.text(alphabet="abcxyz.+_-вя0123456789", min_size=1, max_size=10),
    st.sampled_from(["startmail.example", "x.example", "почта.рф", "a-b.c-d.example"]),
)
ADDRESSES = st.one_of(URLS, EMAILS)

WORDS = st.sampled_from(
    [
        "в", "В", "на", "ко", "и", "ли", "же", "бы", "б",
        "3", "23", "2020", "1,5", "12:00", "июня", "года", "г.", "гг.", "слово", "StartMail",
        "June", "April", "Dec.", "May", "3rd", "—",
    ]
)  # fmt: skip
FRAGMENTS = st.one_of(
    WORDS,
    st.sampled_from([
        "–", "-", ",", ".", ":", "«", "»", "(", ")", "[", "]",
        " ", " ", " ", "  ", "\n", "\t", NBSP,
        "https://www.startmail.example/blog/a-b", "support@startmail.example",
        "mirror.startmail.example",
    ]),
)  # fmt: skip


def joined(pieces: st.SearchStrategy[str], gaps: list[str]) -> st.SearchStrategy[str]:
    """Pieces, each followed by one of ``gaps``."""
    pairs = st.tuples(pieces, st.sampled_from(gaps))
    return st.lists(pairs, min_size=1, max_size=40).map(lambda ps: "".join(p + g for p, g in ps))


TEXTS = st.one_of(
    joined(WORDS, [" "]),  # prose, where most rules fire
    joined(st.one_of(FRAGMENTS, st.text(max_size=4)), [" ", " ", "", "\n", NBSP]),
)
LOCALES = st.sampled_from(["ru", "en", "ru_RU", "de"])


@given(text=TEXTS, locale=LOCALES)
def test_typeset_is_idempotent(text: str, locale: str) -> None:
    once = typeset(text, locale)
    assert typeset(once, locale) == once


@given(text=TEXTS, locale=LOCALES)
def test_typeset_only_turns_spaces_into_no_break_spaces(text: str, locale: str) -> None:
    out = typeset(text, locale)
    assert only_spaces_bound(text, out)
    if NBSP not in text:
        assert unbound(out) == text


@given(
    before=TEXTS,
    address=ADDRESSES,
    after=TEXTS,
    gaps=st.tuples(st.sampled_from(["", " ", "\n"]), st.sampled_from(["", " ", ", ", " — "])),
    locale=LOCALES,
)
def test_addresses_and_the_space_after_them_are_untouched(
    before: str, address: str, after: str, gaps: tuple[str, str], locale: str
) -> None:
    text = before + gaps[0] + address + gaps[1] + after
    start = len(before + gaps[0])
    end = start + len(address)
    out = typeset(text, locale)
    assert out[start:end] == address
    assert out[end : end + 1] == text[end : end + 1]


MARKDOWN_FRAGMENTS = st.sampled_from(
    [
        "`", "``", "`в тексте`", "`3 июня`", "*", "**", "_", "[", "]", "](", ")", "<", ">",
        "<https://x.example/в>", "<a@b.example>", "<made-up:в>", "[в блоге](https://x.example)",
        "[в](<https://x.example/в тексте> \"в тексте\")", "\n", "\n\n", "  \n", "\\\n",
        "- ", "1. ", "> ", "# ", "    ", "```\nв коде\n```", "&nbsp;", "&amp;", "\\", "!",
        "![в](x.png)", "<b>в</b>",
    ]
)  # fmt: skip
MARKDOWN = joined(
    st.one_of(MARKDOWN_FRAGMENTS, FRAGMENTS, FRAGMENTS, FRAGMENTS, st.text(max_size=4)),
    [" ", " ", "\n", "\n", ""],
)


@given(source=MARKDOWN, locale=LOCALES)
def test_token_streams_change_only_text_and_softbreaks(source: str, locale: str) -> None:
    before = md.parse(source)
    after = md.parse(source)
    typeset_tokens(after, locale)
    assert len(after) == len(before)
    for old_block, new_block in zip(before, after, strict=True):
        assert (new_block.type, new_block.content, new_block.attrs) == (
            old_block.type,
            old_block.content,
            old_block.attrs,
        )
        old_children, new_children = old_block.children or [], new_block.children or []
        assert len(new_children) == len(old_children)
        in_autolink = False
        for old, new in zip(old_children, new_children, strict=True):
            assert new.attrs == old.attrs
            if old.type == "link_open":
                in_autolink = old.markup == "autolink"
            if old.type == "softbreak" and new.type == "text":
                assert new.content == NBSP
            elif old.type == "text" and not in_autolink:
                assert new.type == "text"
                assert only_spaces_bound(old.content, new.content)
            else:
                assert (new.type, new.content, new.markup) == (old.type, old.content, old.markup)
            if old.type == "link_close":
                in_autolink = False


@given(source=MARKDOWN, locale=LOCALES)
def test_typeset_tokens_is_idempotent_and_agrees_with_typeset(source: str, locale: str) -> None:
    once = typeset_markdown(source, locale)
    snapshot = [(c.type, c.content) for c in children(once)]
    typeset_tokens(once, locale)
    assert [(c.type, c.content) for c in children(once)] == snapshot
    # a paragraph of plain text gets the same spaces bound either way
    for token in once:
        if token.type == "inline" and all(c.type == "text" for c in token.children or []):
            text = "".join(c.content for c in token.children or [])
            assert typeset(text, locale) == text
