"""The Markdown a reviewer reads first after a CI dry run: per entry, every variant with
its recipient count and subject, the language fallbacks, the problems, and links to the
preview files. It never holds a subscriber's address: counts only, and every address-like
text in a problem is masked; of a subscriber row it cannot read, only where it is and
what is wrong, every value from the row masked (valid address or not)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from statusmail.ci.changes import Changes
from statusmail.ci.formats import Item, items
from statusmail.content.preview import preview_keys
from statusmail.content.variants import VariantKey
from statusmail.domain import counted, mask_addresses
from statusmail.errors import Problem, StatusmailError
from statusmail.pipeline import DryRun, Prepared
from statusmail.project.locales import SUPPORTED_LOCALES
from statusmail.project.subscriber_rows import RowProblem, mask_row
from statusmail.project.yamlfile import write_anew


@dataclass
class EntryPreview:
    """One entry of a CI dry run: previewed (``prepared`` and ``report`` set) or not
    (``problems`` say why)."""

    entry_id: str
    out_dir: Path
    prepared: Prepared | None = None
    report: DryRun | None = None
    files: int = 0  # preview files written
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.prepared is not None and self.report is not None and not self.report.failures


@dataclass(frozen=True, slots=True)
class Variant:
    key: VariantKey
    recipients: int
    subject: str


def variants(preview: EntryPreview) -> list[Variant]:
    """Every variant the entry can produce or its readers fall in, with how many
    selected recipients get it (as the previews count them)."""
    assert preview.prepared is not None and preview.report is not None
    entry, renderer = preview.prepared.entry, preview.prepared.renderer
    return [
        Variant(key, count, renderer.variant(entry, key).subject)
        for key, count in preview_keys(renderer, entry, preview.report.stats)
    ]


def subjects(preview: EntryPreview) -> dict[str, str]:
    """The entry's subject in each language it has, as subscribers see it."""
    assert preview.prepared is not None
    entry, renderer = preview.prepared.entry, preview.prepared.renderer
    return {
        locale: renderer.variant(entry, VariantKey(locale)).subject
        for locale in SUPPORTED_LOCALES
        if locale in entry.content
    }


# What starts a link, an image, emphasis, code or strikethrough, and the escape itself.
_INLINE = re.compile(r"([\\`*_\[\]~|])")


def _cell(text: str) -> str:
    """Text shown as written in a Markdown table cell and inline: no HTML, no column
    breaks, no link, image, emphasis or code (a subject is what subscribers will read,
    and a reviewer must see it so)."""
    text = re.sub(r"[\r\n]+", " ", text)  # no-break spaces stay: they are typography
    text = _INLINE.sub(r"\\\1", text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str) -> str:
    """``text`` as a code span, shown as written: fenced by more backticks than any run
    in it (an escape is shown as it is inside one)."""
    text = re.sub(r"[\r\n]+", " ", text)
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text[:1] == "`" or text[-1:] == "`" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _link(target: Path, start: Path) -> str:
    return quote(Path(os.path.relpath(target.absolute(), start.absolute())).as_posix())


def _files(preview: EntryPreview, key: VariantKey, start: Path) -> str:
    return " · ".join(
        f"[{suffix[1:]}]({_link(preview.out_dir / f'{key.label}{suffix}', start)})"
        for suffix in (".html", ".txt", ".eml")
    )


def _problem_lines(preview: EntryPreview, root: Path) -> list[str]:
    problems = list(preview.problems)
    if preview.prepared is not None:
        problems += preview.prepared.warnings
    texts = [_located(one) for one in items(problems, root)]
    if preview.report is not None:
        invalid = preview.report.stats.invalid
        texts += [_located(one) for one in items(map(_row, invalid), root)]
        told = {str(row) for row in invalid}  # a broken file: a failure too, said once
        texts += [f"render failed: {f}" for f in preview.report.failures if f not in told]
    return [f"- {_cell(mask_addresses(text))}" for text in texts]


def _row(problem: RowProblem) -> Problem:
    return Problem(problem.path, problem.line or None, mask_row(problem.message))


def _located(one: Item) -> str:
    where = f"{one.file}:{one.line}" if one.line else one.file
    kind = "warning: " if one.severity == "warning" else ""
    return f"{where}: {kind}{one.message}"


def entry_section(preview: EntryPreview, start: Path, root: Path) -> list[str]:
    if preview.prepared is None or preview.report is None:
        return [
            f"## {_cell(preview.entry_id)}: not previewed",
            "",
            "Problems:",
            "",
            *_problem_lines(preview, root),
            "",
        ]
    entry, stats = preview.prepared.entry, preview.report.stats
    gallery = _link(preview.out_dir / "index.html", start)
    send_at = f" · send_at {entry.send_at.isoformat()}" if entry.send_at else ""
    lines = [
        f"## {_cell(entry.id)} ({entry.date.isoformat()}, {entry.status.value})",
        "",
        f"{counted(stats.total, 'recipient')}{send_at} · [gallery of every variant]({gallery})",
        "",
        "| variant | recipients | subject | preview |",
        "| --- | ---: | --- | --- |",
    ]
    for variant in variants(preview):
        lines.append(
            f"| {_cell(variant.key.title)} | {variant.recipients} | {_cell(variant.subject)} "
            f"| {_files(preview, variant.key, start)} |"
        )
    lines += ["", "Subjects:", ""]
    lines += [f"- {locale}: {_cell(subject)}" for locale, subject in subjects(preview).items()]
    fallbacks = stats.fallback_lines()
    lines += ["", "Language fallbacks:" if fallbacks else "Language fallbacks: none", ""]
    if fallbacks:
        lines += [f"- {_cell(line)}" for line in fallbacks] + [""]
    problems = _problem_lines(preview, root)
    lines += ["Problems:" if problems else "Problems: none", ""]
    if problems:
        lines += [*problems, ""]
    return lines


def markdown(
    previews: Sequence[EntryPreview], changes: Changes | None, start: Path, root: Path
) -> str:
    """The whole summary; links are relative to ``start`` (the summary file's folder),
    files named in problems relative to ``root`` (the repository's)."""
    lines = ["# statusmail previews", ""]
    if changes is not None and changes.any:
        lines += [f"Changed since {_code(changes.ref)}:", ""]
        lines += [f"- {_cell(line)}" for line in changes.described()] + [""]
    elif changes is not None:
        lines += [f"Nothing statusmail reads changed since {_code(changes.ref)}.", ""]
    if not previews:
        lines += ["No entry to preview.", ""]
    lines.append(
        "Each preview is rendered for a made-up recipient; a real message differs only in "
        "its greeting name and unsubscribe links."
    )
    lines.append("")
    for preview in previews:
        lines += entry_section(preview, start, root)
    return "\n".join(lines).rstrip("\n") + "\n"


# GitHub takes at most 1 MiB of a step's summary, and shows nothing of one larger.
STEP_SUMMARY_LIMIT = 1024 * 1024


def for_the_step(text: str, name: str, limit: int = STEP_SUMMARY_LIMIT) -> str:
    """``text`` as the run's page can show it: whole, or cut at a line to fit in
    ``limit`` octets with a last line saying where the rest is (``name``)."""
    data = text.encode("utf-8", "replace")
    if len(data) + 1 <= limit:
        return text + "\n"
    said = (
        f"\n\n**Cut here**: GitHub shows at most 1 MiB of a step's summary; the whole"
        f" of it is {name} in the artifact.\n"
    )
    room = limit - len(said.encode())
    end = data.rfind(b"\n", 0, room + 1)
    return data[: max(end, 0)].decode("utf-8") + said


def write(text: str, path: Path, environ: Mapping[str, str]) -> None:
    """Write the summary to ``path``, and append it to ``$GITHUB_STEP_SUMMARY`` if set
    (cut to what GitHub shows); a path that cannot be written is a ``StatusmailError``
    naming it."""
    step_summary = environ.get("GITHUB_STEP_SUMMARY")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Made anew, never written through a link a change left there (review: the
        # summary overwrote the file a committed SUMMARY.md link pointed to). A file name
        # git gave undecoded is carried as surrogates: written as ?
        write_anew(path, text, errors="replace")
        if step_summary:
            with open(step_summary, "a", encoding="utf-8", errors="replace") as handle:
                handle.write(for_the_step(text, path.name))
    except OSError as exc:
        where = exc.filename or path
        raise StatusmailError(f"{where}: cannot write the summary: {exc.strerror or exc}") from exc
