"""What CI runs: ``check`` in the formats CI systems read (``--format``), what changed
since a git ref (``--changed-since``), and the dry run of every changed entry with a
Markdown summary a reviewer reads first (``send --dry-run --all-changed-since --summary``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from statusmail import pipeline
from statusmail.ci import formats, summary
from statusmail.ci.changes import (
    AFFECT_EVERY_ENTRY,
    Changes,
    changed_since,
    display_root,
    project_files,
)
from statusmail.ci.summary import EntryPreview
from statusmail.commands.sending import dry_run_json, print_dry_run
from statusmail.content.preview import write_previews
from statusmail.delivery.report import print_json
from statusmail.domain import ExitCode
from statusmail.errors import ConfigError, InputError, Problem
from statusmail.project.config import Config, load_config
from statusmail.project.entries import find_entry
from statusmail.validation import CheckReport, check_project
from statusmail.web.publish import preview_pages

log = logging.getLogger("statusmail")


@dataclass(frozen=True)
class CheckOptions:
    format: str = "text"
    report_json: bool = False  # --json: the report object (counts, problems as text)
    changed_since: str | None = None


def check(config_path: Path, options: CheckOptions, console: Console) -> ExitCode:
    changes: Changes | None = None
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        if options.format == "text" and not options.report_json:
            raise  # printed as every command prints a bad config
        report = CheckReport()
        report.add(exc.problems)
        root = display_root(config_path)
        checked = [("config", formats.shown_path(config_path, root)[0])]
    else:
        if options.changed_since:
            changes = changed_since(config, options.changed_since)
        report = check_project(config)
        report.add(webhook_problems(config))
        root = changes.root if changes else display_root(config.path)
        checked = [
            (kind, formats.shown_path(path, root)[0]) for kind, path in project_files(config)
        ]
    found = formats.items(report.warnings + report.problems, root)
    notices = _changed_items(changes) if changes else []
    if options.report_json:
        print_json(
            {
                "ok": report.ok,
                "entries": report.entries,
                "subscribers": report.subscribers,
                "problems": [str(p) for p in report.problems],
                "warnings": [str(p) for p in report.warnings],
                "notes": report.notes,
                **({"changed": changes.as_json()} if changes else {}),
            }
        )
    elif options.format == "text":
        for problem in report.warnings + report.problems:
            console.print(str(problem), markup=False, highlight=False)
        for note in report.notes:
            console.print(f"note: {note}", markup=False, highlight=False)
        for line in changes.lines() if changes else []:
            console.print(line, markup=False, highlight=False)
    elif options.format == "json":
        print_json([one.as_json() for one in found + notices])
    elif options.format == "github":
        sys.stdout.write(formats.github(found + notices))
    elif options.format == "junit":
        properties = _changed_properties(changes) if changes else []
        sys.stdout.write(formats.junit(checked, found + notices, properties))
    else:
        raise ValueError(f"unknown format {options.format!r}")
    if not options.report_json:
        verdict = "ok" if report.ok else f"{len(report.problems)} problem(s)"
        console.print(
            f"checked {report.entries} entries, {report.subscribers} subscribers: {verdict}",
            markup=False,
        )
    return ExitCode.OK if report.ok else ExitCode.NOT_STARTED


_NOUNS = {
    "config": "the config",
    "regions": "regions",
    "templates": "this template",
    "catalogs": "this catalog",
    "subscribers": "this subscriber list",
}


def _changed_items(changes: Changes) -> list[formats.Item]:
    """A notice per changed project file, so CI shows what a change touches."""
    found = []
    for kind, paths in changes.files.items():
        for path in paths:
            what = f"entry {path.stem}" if kind == "entries" else _NOUNS[kind]
            state = "changed" if path.exists() else "was removed"
            message = f"{what} {state} since {changes.ref}"
            if kind in AFFECT_EVERY_ENTRY:
                message += ": every entry's messages may differ"
            found.append(
                formats.Item(changes.relative(path), None, "notice", formats.CHANGED_CODE, message)
            )
    return found


def _changed_properties(changes: Changes) -> list[tuple[str, str]]:
    listed = changes.as_json()
    properties = [("changed_since", changes.ref)]
    for kind, value in listed.items():
        if isinstance(value, list):
            properties.append((f"changed.{kind}", " ".join(str(v) for v in value)))
    properties.append(("changed.every_entry", str(changes.every_entry).lower()))
    return properties


# -- the CI dry run ---------------------------------------------------------------------

SITE_PREVIEW = "site"  # the entry's status site pages, in its preview folder


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
    except InputError as exc:
        return EntryPreview(entry_id, out_dir, problems=exc.problems)
    report = pipeline.dry_run(prepared, limit=limit)
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


def webhook_problems(config: Config) -> list[Problem]:
    """What would stop ``serve`` from answering the configured providers' webhooks."""
    if not config.webhooks.served:
        return []
    from statusmail.feedback import webhooks  # their parsers only when a provider is configured

    return webhooks.webhook_problems(config)
