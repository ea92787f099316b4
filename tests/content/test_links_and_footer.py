"""Issue 24: link syntax Markdown shows as brackets is flagged at its line, and the
footer names the topic a reader gets the message for, in their language."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import BLOCK, REPO, UPDATE
from editing import line_of, replace_in
from statusmail.content import markdown
from statusmail.content.render import Renderer
from statusmail.domain import Audience
from statusmail.project.config import load_config
from statusmail.project.entries import load_entry
from statusmail.project.regions import load_regions
from statusmail.validation import entry_problems, region_problems


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("See [our blog] (https://x.example/a).", [("[our blog] (https://x.example/a)", "")]),
        ("See [blog](https://x.example/a b).", [("[blog](https://x.example/a b)", "a%20b")]),
        (
            "Read [the\nnotice]\n(mailto:s@x.example).",
            [("[the\nnotice]\n(mailto:s@x.example)", "")],
        ),
        ("Read [StartMail blocked in\nRussia](https://x.example/r).", []),
        ("[spaced](<https://x.example/a b>) and `[a] (https://x.example)`", []),
        ('arr[0] (see above), [x](https://x.example "a title")', []),
    ],
)
def test_link_syntax_that_shows_as_brackets(source: str, found: list[tuple[str, str]]) -> None:
    got = markdown.unrendered_links(source)
    assert [written for written, _ in got] == [written for written, _ in found]
    for (_, meant), (_, part) in zip(got, found, strict=True):
        assert "](" in meant and " (" not in meant and part in meant
        assert markdown.unrendered_links(meant) == [] and "<a " in markdown.to_html(meant)


def test_check_names_the_line_and_the_link_as_it_should_be(project: Path) -> None:
    path = project.parent / "updates" / f"{UPDATE}.yaml"
    replace_in(
        path, "[StartMail blocked in\n      Russia](", "[StartMail blocked in\n      Russia] ("
    )
    line = line_of(path, "      Russia] (")
    config = load_config(project)
    regions = load_regions(config.paths.regions)
    found = entry_problems(load_entry(path), known_ids=[BLOCK], regions=regions, config=config)
    (problem,) = [p for p in found if p.code == "unrendered-link"]
    assert (problem.line, problem.message) == (
        line - 1,
        "'[StartMail blocked in Russia] (https://www.startmail.example/blog/startmail-"
        "blocked-in-russia)' in the en body shows as brackets, not a link: write "
        "[StartMail blocked in Russia](https://www.startmail.example/blog/startmail-"
        "blocked-in-russia)",
    )


def test_a_regions_access_text_is_checked_too(project: Path) -> None:
    regions_file = project.parent / "regions.yaml"
    text = regions_file.read_text(encoding="utf-8")
    written = "[support@startmail.example](mailto:support@startmail.example)"
    regions_file.write_text(text.replace(written, written.replace("](", "] (")), "utf-8")
    found = region_problems(load_regions(regions_file))
    assert {p.code for p in found} == {"unrendered-link"}
    assert f"shows as brackets, not a link: write {written}" in found[0].message


def footer(entry_audience: Audience | None, locale: str) -> str:
    config = load_config(REPO / "statusmail.yaml")
    renderer = Renderer(
        REPO / "templates",
        load_regions(REPO / "regions.yaml"),
        "StartMail",
        topic_names=config.topic_names,
    )
    entry = load_entry(REPO / "updates" / f"{UPDATE}.yaml")
    if entry_audience is not None:
        entry = replace(entry, audience=entry_audience)
    rendered = renderer.render(entry, renderer.variant_key(entry, locale, None, ""), "", "u")
    assert " ".join(rendered.html.split()).count("you subscribed") <= 1
    return re.sub("[ \n]+", " ", rendered.text.split("\n-- \n")[1])  # no-break spaces stay


def test_the_footer_names_the_topic_in_the_readers_language() -> None:
    assert (
        "You are receiving this because you subscribed to “Service status and access” "
        "from StartMail." in footer(None, "en")
    )
    assert (
        "потому что подписались на\u00a0тему «Работа сервиса и\u00a0доступ к\u00a0нему» "
        "в\u00a0рассылке StartMail." in footer(None, "ru")
    )


def test_several_topics_are_listed_and_topics_all_keeps_the_general_sentence() -> None:
    several = footer(Audience(topics=frozenset({"service-status", "product-news"})), "en")
    assert (
        "subscribed to these topics from StartMail: Product news, Service status and "
        "access." in several
    )
    everyone = footer(Audience(), "en")
    assert "you subscribed to service status updates from StartMail." in everyone
