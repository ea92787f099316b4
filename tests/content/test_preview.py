"""The dry-run preview folder and its gallery: what a reviewer approves a send from."""

from __future__ import annotations

import re
from email.message import EmailMessage
from pathlib import Path

import pytest
from bs4 import BeautifulSoup, Tag

from conftest import BLOCK, SAMPLE_ENTRIES, UPDATE, dry_run, invoke, parse_message, part_text
from editing import replace_in
from statusmail.content.variants import PROBE_ADDRESS as PREVIEW_ADDRESS
from statusmail.content.variants import VariantKey

SUFFIXES = (".eml", ".html", ".txt")


def parse_eml(path: Path) -> EmailMessage:
    return parse_message(path.read_bytes())


def part(message: EmailMessage, subtype: str) -> str:
    return part_text(message, subtype).replace("\r\n", "\n")


def tag(node: object) -> Tag:
    assert isinstance(node, Tag), node
    return node


def words(element: Tag) -> str:
    return " ".join(element.get_text(" ").split())


def variant_labels(out_dir: Path) -> list[str]:
    return sorted(p.stem for p in out_dir.glob("*.eml"))


def key_of(label: str) -> VariantKey:
    locale, _, rest = label.partition("-")
    region, _, links = rest.partition("-")
    return VariantKey(locale, region or None, access=bool(region) and not links)


def test_labels_say_what_a_variant_is() -> None:
    assert VariantKey("ru", "RU", access=True).title == "ru · RU access"
    assert VariantKey("ru", "RU", access=False).title == "ru · RU links"
    assert VariantKey("en", None).title == "en · no access block"


def test_a_topic_label_is_file_safe_and_tells_topics_apart() -> None:
    """A topic's label goes into preview file names: what is not safe there is replaced,
    and two topics told apart only by the replaced characters keep apart labels."""
    assert VariantKey("en", topics=frozenset({"product-news"})).label == "en+product-news"
    slash = VariantKey("en", topics=frozenset({"a/b"})).label
    space = VariantKey("en", topics=frozenset({"a b"})).label
    assert slash != space
    for label in (slash, space):
        assert re.fullmatch(r"en\+a-b-[0-9a-f]{6}", label), label


@pytest.mark.timeout(60)
@pytest.mark.parametrize("entry_id", SAMPLE_ENTRIES)
def test_gallery_shows_every_variant_whole(project: Path, tmp_path: Path, entry_id: str) -> None:
    out = tmp_path / "previews" / entry_id
    report = dry_run(project, entry_id, out.parent)
    labels = variant_labels(out)
    assert labels, "no variants written"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["index.html", *(label + suffix for label in labels for suffix in SUFFIXES)]
    )
    page = BeautifulSoup((out / "index.html").read_text(encoding="utf-8"), "html.parser")
    viewport = tag(page.find("meta", attrs={"name": "viewport"}))
    assert "width=device-width" in str(viewport["content"])
    # no script, no frames, nothing fetched: every src, <link> and url() is absent
    assert not page.find_all(["script", "iframe", "link", "img", "object", "embed"])
    assert not page.find_all(src=True)
    assert not any(
        str(attr).startswith("on") for element in page.find_all(True) for attr in element.attrs
    )
    styles = " ".join(s.get_text() for s in page.find_all("style"))
    assert "url(" not in styles and "@import" not in styles

    drawn = 0
    for label in labels:
        message = parse_eml(out / f"{label}.eml")
        html_part, text_part = part(message, "html"), part(message, "plain")
        assert (out / f"{label}.html").read_text(encoding="utf-8") == html_part
        assert (out / f"{label}.txt").read_text(encoding="utf-8") == text_part
        count = report["variants"].get(label, 0)  # every recipient really rendered, by label
        name = key_of(label).title
        rows = [tag(tr) for tr in tag(page.find("table", class_="variants")).find_all("tr")]
        row = next(r for r in rows if r.find("td") and tag(r.find("td")).get_text() == name)
        cells = [td.get_text() for td in row.find_all("td")]
        assert cells[1] == str(count), (label, cells)
        assert {a["href"] for a in row.find_all("a") if not str(a["href"]).startswith("#")} == {
            label + suffix for suffix in SUFFIXES
        }
        section = page.find("section", id=label)
        if count == 0:
            assert section is None, f"{label} has no recipients but is drawn"
            continue
        drawn += 1
        section = tag(section)
        heading = tag(section.find("h2")).get_text()
        assert name in heading and f"{count} recipient" in heading
        headers = {
            tag(tr.find("th")).get_text(): tag(tr.find("td")).get_text()
            for tr in tag(section.find("table")).find_all("tr")
        }
        for header in ("From", "Subject", "List-Unsubscribe", "Content-Language"):
            assert headers[header] == str(message[header]), header
        assert headers["Content-Language"] == key_of(label).locale
        # in the variant's language (the page is English): screen readers and fonts take it
        assert section["lang"] == key_of(label).locale
        assert tag(section.find("pre")).get_text() == text_part
        shadows = section.find_all("template", attrs={"shadowrootmode": "open"})
        assert len(shadows) == 2, "one desktop and one phone view"
        body = words(tag(BeautifulSoup(html_part, "html.parser").body))
        # the access block is the only difference between paired variants: it is shown
        assert (".onion" in body) == (key_of(label).access_region is not None)
        for shadow in shadows:
            # parsed on its own: bs4 keeps <template> text apart from get_text()
            inlined = BeautifulSoup(shadow.decode_contents(), "html.parser")
            assert words(tag(inlined.find("div", recursive=False))) == body, "inlined whole"
    assert drawn == len(report["variants"])
    assert sum(report["variants"].values()) == report["selected"]


@pytest.mark.timeout(60)
def test_variants_without_recipients_are_listed_not_drawn(project: Path, tmp_path: Path) -> None:
    # update-2020-04-21 goes to RU, BY and KZ only; with the one KZ reader who chose a
    # language statusmail lacks (de: English) reading Russian, its English readers are
    # all in RU, so the plain English variant has nobody
    replace_in(
        project.parent / "subscribers" / "main.csv",
        "daniyar.abenov@example.com,Daniyar Abenov,de,KZ",
        "daniyar.abenov@example.com,Daniyar Abenov,ru,KZ",
    )
    out = tmp_path / "previews" / UPDATE
    report = dry_run(project, UPDATE, out.parent)
    empty = [label for label in variant_labels(out) if label not in report["variants"]]
    assert empty == ["en"]
    page = BeautifulSoup((out / "index.html").read_text(encoding="utf-8"), "html.parser")
    assert page.find("section", id="en") is None
    assert "en · no access block" in page.get_text()
    assert (out / "en.eml").exists() and (out / "en.html").exists()


@pytest.mark.timeout(60)
def test_stale_preview_files_are_cleared_and_nothing_else(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "previews" / BLOCK
    (out / "sub").mkdir(parents=True)
    stale = [out / name for name in ("de-RU.eml", "de-RU.html", "de-RU.txt")]
    kept = [out / "notes.md", out / "shot.png", out / "sub" / "old.html", out / "eml"]
    for path in stale + kept:
        path.write_text("keep me" if path in kept else "stale", encoding="utf-8")
    outside = tmp_path / "outside.html"
    outside.write_text("not a preview", encoding="utf-8")
    (out / "linked.html").symlink_to(outside)

    dry_run(project, BLOCK, out.parent)
    assert not any(path.exists() for path in stale)
    assert not (out / "linked.html").is_symlink()
    assert outside.read_text(encoding="utf-8") == "not a preview"
    assert all(path.read_text(encoding="utf-8") == "keep me" for path in kept)
    assert (out / "index.html").exists() and variant_labels(out)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("entry_id", SAMPLE_ENTRIES)
def test_previews_never_carry_a_subscriber(project: Path, tmp_path: Path, entry_id: str) -> None:
    out = tmp_path / "previews" / entry_id
    dry_run(project, entry_id, out.parent)
    subscriber_files = list((project.parent / "subscribers").iterdir())
    addresses = {
        address.lower()
        for path in subscriber_files
        for address in re.findall(r"[\w.+-]+@[\w.-]+\w", path.read_text(encoding="utf-8"))
    }
    assert len(addresses) > 5, addresses
    for path in out.iterdir():
        text = path.read_bytes().decode("utf-8", "replace").lower()
        assert not [a for a in addresses if a in text], path.name
    for eml in out.glob("*.eml"):
        assert parse_eml(eml)["To"].addresses[0].addr_spec == PREVIEW_ADDRESS


@pytest.mark.parametrize("option", ["--preview-dir", "--summary"])
def test_a_preview_or_summary_path_that_cannot_be_written_is_named(
    project: Path, option: str
) -> None:
    """A file where the folder should be: NotADirectoryError / FileExistsError went out
    as a traceback."""
    blocked = project.parent / "statusmail.yaml"  # a file, not a folder
    target = blocked if option == "--preview-dir" else blocked / "summary.md"
    result = invoke(project, "send", "update-2020-04-21", "--dry-run", option, str(target))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert f"{blocked}" in result.stderr and "cannot write" in result.stderr, result.stderr
