"""The CI dry run (``send --dry-run --all-changed-since REF``, or one ID with
``--summary``): every entry that changed, each previewed into ``PREVIEW_DIR/ID/``, its
status site pages beside, and the Markdown summary a reviewer reads first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from statusmail import pipeline
from statusmail.ci import summary
from statusmail.ci.changes import Changes, changed_since, display_root
from statusmail.ci.summary import EntryPreview
from statusmail.commands.sending import dry_run_json, print_dry_run
from statusmail.content.preview import SITE_PREVIEW, write_previews
from statusmail.delivery.report import print_json
from statusmail.domain import ExitCode
from statusmail.errors import InputError
from statusmail.project.config import Config
from statusmail.project.entries import find_entry
from statusmail.web.publish import preview_pages

log = logging.getLogger("statusmail")


@dataclass(frozen=True)
class PreviewOptions:
    entry_id: str | None = None
    changed_since: str | None = None
    preview_dir: Path | None = None
    limit: int | None = None
    as_json: bool = False
    summary: Path | None = None


def preview_entry(
    config: Config, entry_id: str, out_dir: Path, limit: int | None, *, site: bool = False
) -> EntryPreview:
    """The dry run of one entry, its previews written (with ``site``, its status site
    pages too); problems instead if it cannot run."""
    try:
        entry = find_entry(config.paths.updates, entry_id)
        prepared = pipeline.prepare(config, entry, preview=True)
        # (a broken subscriber file stops this entry's dry run, reported with the rest)
        report = pipeline.dry_run(prepared, limit=limit)
    except InputError as exc:
        return EntryPreview(entry_id, out_dir, problems=exc.problems)
    written = write_previews(prepared.factory, report.stats, out_dir)
    try:  # the entry's pages on the status site, beside its messages
        written += preview_pages(config, entry, out_dir / SITE_PREVIEW) if site else []
    except InputError as exc:
        return EntryPreview(entry_id, out_dir, problems=exc.problems)
    return EntryPreview(entry_id, out_dir, prepared, report, len(written))


def send_dry_run(
    config: Config,
    options: PreviewOptions,
    console: Console,
    environ: Mapping[str, str] = os.environ,
) -> ExitCode:
    """``send ID --dry-run --summary FILE``, or ``send --dry-run --all-changed-since REF``:
    every entry that changed (every entry when what they all use changed), each into
    ``PREVIEW_DIR/ID/``."""
    changes: Changes | None = None
    if options.changed_since:
        changes = changed_since(config, options.changed_since)
        base = options.preview_dir or Path("previews")
        targets = [(entry_id, base / entry_id) for entry_id in changes.to_preview(config)]
    else:
        assert options.entry_id is not None
        entry_id = options.entry_id
        targets = [(entry_id, (options.preview_dir or Path("previews")) / entry_id)]
    site = options.changed_since is not None  # CI's review of a change
    previews = [preview_entry(config, i, out, options.limit, site=site) for i, out in targets]
    if options.summary is not None:
        root = changes.root if changes else display_root(config.path)
        text = summary.markdown(previews, changes, options.summary.absolute().parent, root)
        summary.write(text, options.summary, environ)
    if changes is None:
        return _print_one(previews[0], options, console)
    if options.as_json:
        print_json(
            {
                "changed": changes.as_json(),
                "entries": [_entry_json(p) for p in previews],
                "summary": str(options.summary) if options.summary else None,
            }
        )
    else:
        for line in changes.lines():
            console.print(line, markup=False, highlight=False)
        if not previews:
            console.print("no entry to preview", markup=False)
        for one in previews:
            if one.prepared is not None and one.report is not None:
                print_dry_run(one.prepared, one.report, one.out_dir, one.files, console)
            else:
                console.print(f"{one.entry_id}: not previewed", markup=False)
                for problem in one.problems:
                    console.print(f"  {problem}", markup=False, highlight=False)
    for one in previews:
        for failure in one.report.failures if one.report else []:
            log.error("%s: render failed: %s", one.entry_id, failure)
    if options.summary is not None and not options.as_json:  # JSON: its "summary"
        console.print(f"summary: {options.summary}", markup=False)
    return ExitCode.OK if all(p.ok for p in previews) else ExitCode.NOT_STARTED


def _print_one(one: EntryPreview, options: PreviewOptions, console: Console) -> ExitCode:
    """One entry by its ID: printed exactly as ``send ID --dry-run`` prints it."""
    if one.prepared is None or one.report is None:
        raise InputError(one.problems)
    if options.as_json:
        print_json(dry_run_json(one.prepared, one.report, one.out_dir))
    else:
        print_dry_run(one.prepared, one.report, one.out_dir, one.files, console)
        console.print(f"  summary: {options.summary}", markup=False)
    for failure in one.report.failures:
        log.error("render failed: %s", failure)
    return ExitCode.OK if one.ok else ExitCode.NOT_STARTED


def _entry_json(one: EntryPreview) -> dict[str, object]:
    if one.prepared is None or one.report is None:
        return {
            "entry": one.entry_id,
            "previewed": False,
            "problems": [str(p) for p in one.problems],
        }
    return {**dry_run_json(one.prepared, one.report, one.out_dir), "previewed": True}
