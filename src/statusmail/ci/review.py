"""What CI runs to check a project: ``check`` in the formats CI systems read
(``--format``), and what changed since a git ref (``--changed-since``). The dry run of
every changed entry is in ``dry_run``: a check imports none of the sending.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from statusmail.ci import formats
from statusmail.ci.changes import (
    AFFECT_EVERY_ENTRY,
    Changes,
    changed_since,
    display_root,
    project_files,
)
from statusmail.delivery.report import print_json
from statusmail.domain import ExitCode, counted
from statusmail.errors import ConfigError, Problem
from statusmail.project.config import Config, load_config
from statusmail.validation import CheckReport, check_project

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
            f"checked {counted(report.entries, 'entry', 'entries')},"
            f" {counted(report.subscribers, 'subscriber')}: {verdict}",
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


def webhook_problems(config: Config) -> list[Problem]:
    """What would stop ``serve`` from answering the configured providers' webhooks."""
    if not config.webhooks.served:
        return []
    from statusmail.feedback import webhooks  # their parsers only when a provider is configured

    return webhooks.webhook_problems(config)
