"""send --dry-run --summary FILE: the Markdown a reviewer reads first (issue 15).

The summary is read as a reviewer's browser would: rendered by a Markdown parser, then
its table and lists read from the HTML; what it says is compared with the dry run's own
JSON and with the preview files it links to.
"""

from __future__ import annotations

import csv
import email
import email.policy
import json
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml
from bs4 import BeautifulSoup, Tag
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from conftest import invoke
from editing import refresh_sources
from masking_helpers import TEXTS, shown_unmasked
from statusmail.ci.summary import EntryPreview, _code, entry_section, for_the_step
from statusmail.errors import Problem

UPDATE = "update-2020-04-21"
BAD_ADDRESS = "broken.reader@example..org"  # invalid, so its row is a problem that names it


def addresses(project: Path) -> set[str]:
    """Every address in the sample's subscriber files."""
    folder = project / "subscribers"
    with (folder / "main.csv").open(encoding="utf-8", newline="") as handle:
        found = {row["email"] for row in csv.DictReader(handle)}
    found |= {row["email"] for row in yaml.safe_load((folder / "more.yaml").read_text("utf-8"))}
    return {a.lower() for a in found}


def rendered(summary: Path) -> BeautifulSoup:
    html = MarkdownIt("commonmark").enable("table").render(summary.read_text(encoding="utf-8"))
    return BeautifulSoup(html, "html.parser")


def subject_of(eml: Path) -> str:
    message = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return str(message["Subject"])


def items_after(page: BeautifulSoup, heading: str) -> list[str]:
    """The list items under the paragraph ``heading``."""
    label = page.find("p", string=heading)
    assert isinstance(label, Tag), heading
    listed = label.find_next_sibling("ul")
    assert isinstance(listed, Tag)
    return [li.get_text() for li in listed.find_all("li")]


def test_the_summary_shows_every_variant_and_no_address(project: Path, tmp_path: Path) -> None:
    with (project.parent / "subscribers" / "main.csv").open("a", encoding="utf-8") as handle:
        handle.write(f"{BAD_ADDRESS},Broken Reader,en,RU,service-status,active\n")
    previews, summary = tmp_path / "previews" / UPDATE, tmp_path / "reports" / "SUMMARY.md"
    step_summary = tmp_path / "step-summary.md"
    step_summary.write_text("# an earlier step\n", encoding="utf-8")
    result = invoke(
        project,
        *("send", UPDATE, "--dry-run", "--json"),
        *("--preview-dir", str(previews.parent), "--summary", str(summary)),
        env={"GITHUB_STEP_SUMMARY": str(step_summary)},
    )
    assert result.exit_code == 0, result.output
    dry_run = json.loads(result.stdout)
    text = summary.read_text(encoding="utf-8")

    for address in addresses(project.parent) | {BAD_ADDRESS}:
        assert address not in text.lower(), address
        assert address not in result.stdout.lower(), address  # the log, --json or not
    assert dry_run["invalid"] and all("'***'" in line for line in dry_run["invalid"])
    told = invoke(project, "send", UPDATE, "--dry-run", "--preview-dir", str(tmp_path / "p2"))
    assert "invalid address '***'" in told.stdout and BAD_ADDRESS not in told.stdout
    # the bad row is still reported, every value of it masked, even the address's domain
    assert "example..org" not in text

    page = rendered(summary)
    table = page.find("table")
    assert isinstance(table, Tag)
    header = [th.get_text() for th in table.find_all("th")]
    assert header == ["variant", "recipients", "subject", "preview"]
    rows = [[td for td in tr.find_all("td")] for tr in table.find_all("tr")[1:]]
    shown: dict[str, int] = {}
    for title, count, subject, files in rows:
        links = {a.get_text(): summary.parent / unquote(str(a["href"])) for a in files("a")}
        assert sorted(links) == ["eml", "html", "txt"]
        assert all(path.resolve().is_file() for path in links.values())  # relative to FILE
        label = links["eml"].stem
        shown[label] = int(count.get_text())
        assert subject.get_text() == subject_of(links["eml"]), title.get_text()
    # Every variant the gallery has, with the dry run's count (0: nobody gets it).
    assert sorted(shown) == sorted(p.stem for p in previews.glob("*.eml"))
    assert shown == {label: dry_run["variants"].get(label, 0) for label in shown}
    assert sum(shown.values()) == dry_run["selected"] == 14

    subjects = dict(line.split(": ", 1) for line in items_after(page, "Subjects:"))
    assert sorted(subjects) == ["en", "ru"]
    for locale, said in subjects.items():
        assert said == subject_of(previews / f"{locale}.eml")
    assert items_after(page, "Language fallbacks:") == dry_run["fallbacks"]
    (problem,) = items_after(page, "Problems:")
    assert problem.startswith("subscribers/main.csv:") and "invalid address" in problem
    assert "invalid address '***': An email address cannot" in problem
    gallery = page.find("a", string="gallery of every variant")
    assert isinstance(gallery, Tag)
    assert (summary.parent / str(gallery["href"])).resolve() == (previews / "index.html")

    assert step_summary.read_text(encoding="utf-8") == f"# an earlier step\n{text}\n"


def test_an_entry_that_cannot_be_previewed_is_in_the_summary(project: Path, tmp_path: Path) -> None:
    entry = project.parent / "updates" / f"{UPDATE}.yaml"
    entry.write_text(
        entry.read_text(encoding="utf-8").replace("thread: block-2020-01-23", "thread: nothing"),
        encoding="utf-8",
    )
    summary = tmp_path / "SUMMARY.md"
    result = invoke(
        project,
        *("send", UPDATE, "--dry-run", "--preview-dir", str(tmp_path / "p")),
        *("--summary", str(summary)),
    )
    assert result.exit_code == 1
    assert "thread 'nothing' names no entry" in result.output
    page = rendered(summary)
    assert page.find("h2", string=f"{UPDATE}: not previewed") is not None
    (problem,) = items_after(page, "Problems:")
    assert problem.startswith(f"updates/{UPDATE}.yaml:") and "names no entry" in problem


@given(st.lists(st.text(max_size=300), max_size=60), st.integers(min_value=400, max_value=4000))
def test_the_step_summary_fits_what_github_shows(lines: list[str], limit: int) -> None:
    """GitHub shows nothing of a step summary over 1 MiB (every entry's messages changed,
    say): what goes there is cut at a line and says where the whole is."""
    text = "\n".join(lines)
    shown = for_the_step(text, "SUMMARY.md", limit)
    assert len(shown.encode("utf-8", "replace")) <= limit
    if len(text.encode("utf-8", "replace")) + 1 <= limit:
        assert shown == text + "\n"
    else:
        kept, _, said = shown.rpartition("\n\n**Cut here**")
        assert "the whole of it is SUMMARY.md in the artifact" in said
        assert text.startswith(kept) and (kept == "" or text[len(kept)] == "\n")


def problem_line(message: str) -> str:
    """The summary's line for a problem saying ``message``, as a reviewer reads it."""
    root = Path("/repository")
    where = root / "updates" / "entry.yaml"
    preview = EntryPreview("entry", root / "preview", problems=[Problem(where, 3, message)])
    [line] = [line for line in entry_section(preview, root, root) if line.startswith("- ")]
    shown = BeautifulSoup(MarkdownIt("commonmark").renderInline(line[2:]), "html.parser")
    prefix = "updates/entry.yaml:3: "
    assert shown.get_text().startswith(prefix)
    return shown.get_text().removeprefix(prefix)


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        # The second address of a URL's query: the first one's domain ran up to its @.
        (
            "link https://status.example.org/u?to=anna@example.org&cc=bob@example.net",
            "link https:/***@example.net",
        ),
        # A domain literal: the rule stopped at the bracket, and nothing matched.
        ("unknown anna@[192.0.2.1]", "unknown a***@[192.0.2.1]"),
        ('unknown "john doe"@example.org', 'unknown "j***@example.org'),
        (
            "link https://status.example.org/u?email=anna%40example.org",
            "link https:/***%40example.org",
        ),
        ("unknown anna'@example.org", "unknown a***@example.org"),
        ("unknown o'brien@example.ie", "unknown o***@example.ie"),  # it showed "o'b"
    ],
)
def test_an_address_the_summary_showed_is_masked(message: str, shown: str) -> None:
    assert problem_line(message) == shown


@settings(max_examples=75, deadline=None)
@given(TEXTS)
def test_the_summary_shows_no_address_any_rule_before_masked(text: str) -> None:
    line = problem_line(text)
    assert not shown_unmasked(text, line)


HOSTILE_SUBJECT = (
    r"Appeal [approved by legal](https://evil.example/x) `code` **bold** _it_ ~~gone~~"
    r" ![pix](https://evil.example/p.png) \*not\* <b>x</b> & a|b"
)


def test_a_subject_is_shown_as_subscribers_get_it_never_as_markdown(
    project: Path, tmp_path: Path
) -> None:
    """A subject's link text showed where the subject had a Markdown link, its remote
    image loaded as the reviewer read the summary, and emphasis and code changed what
    the reviewer was asked to approve."""
    entry = project.parent / "updates" / f"{UPDATE}.yaml"
    text = entry.read_text(encoding="utf-8")
    old = 'subject: "Update on the block in Russia: two appeals filed"'
    assert old in text
    entry.write_text(text.replace(old, f"subject: {json.dumps(HOSTILE_SUBJECT)}"), encoding="utf-8")
    refresh_sources(entry)  # the translator has seen it: only the summary is under test
    previews, summary = tmp_path / "previews", tmp_path / "SUMMARY.md"
    result = invoke(
        project,
        *("send", UPDATE, "--dry-run", "--preview-dir", str(previews), "--summary", str(summary)),
    )
    assert result.exit_code == 0, result.output
    page = rendered(summary)
    assert subject_of(previews / UPDATE / "en.eml") == HOSTILE_SUBJECT
    subjects = dict(line.split(": ", 1) for line in items_after(page, "Subjects:"))
    assert subjects["en"] == HOSTILE_SUBJECT
    table = page.find("table")
    assert isinstance(table, Tag)
    assert HOSTILE_SUBJECT in [td.get_text() for td in table.find_all("td")]
    for tag in ("img", "strong", "em", "code", "s", "del", "b"):
        assert page.find(tag) is None, tag
    assert not page.find_all("a", href=lambda href: "evil.example" in str(href))


@pytest.mark.parametrize("ref", ["origin/main", "feature_x*1", "a`b", "``odd", "v1.0~2"])
def test_a_ref_is_shown_as_written_in_its_code_span(ref: str) -> None:
    shown = BeautifulSoup(MarkdownIt("commonmark").renderInline(_code(ref)), "html.parser")
    code = shown.find("code")
    assert isinstance(code, Tag) and code.get_text() == ref
