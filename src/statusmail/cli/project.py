"""The project's own commands: ``check`` it, ``init`` a new one, show its ``config``."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import click

from statusmail.ci.formats import FORMATS
from statusmail.cli.app import common_options, json_option, main, run
from statusmail.cli.output import console, out
from statusmail.domain import ExitCode
from statusmail.errors import StatusmailError

if TYPE_CHECKING:
    from statusmail.project.config import Config


@main.command()
@common_options
@click.option(
    "--format",
    "output_format",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="text: file:line: message for people; json: a list of {file, line, severity, code, "
    "message}; github: workflow commands that annotate the pull request; junit: JUnit XML.",
)
@json_option("Print a report object instead: ok, counts, problems and warnings as text, notes.")
@click.option(
    "--changed-since",
    metavar="REF",
    default=None,
    help="Also report which entries, templates, catalogs, regions and subscriber files "
    "differ from the git ref REF (everything is still checked).",
)
@functools.partial(run, load=False)
def check(
    config_path: Path, output_format: str, as_json: bool, changed_since: str | None
) -> ExitCode:
    """Validate config, entries, templates, translations, regions and subscribers.

    Prints each problem as file:line: message and exits 1 if there is any.

    \b
    Examples:
      statusmail check --config project/statusmail.yaml
      statusmail check --format github --changed-since origin/main
      statusmail check --format junit > statusmail-check.xml
    """
    if as_json and output_format != "text":
        raise click.UsageError("--json prints the report object; it does not go with --format")
    from statusmail.ci import review as ci

    options = ci.CheckOptions(output_format, as_json, changed_since)
    # The text report is the output (stdout); the machine formats keep stdout for the
    # machine, and their closing "checked ..." line goes to stderr.
    return ci.check(config_path, options, out if output_format == "text" else console)


@main.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path), default=".")
def init(folder: Path) -> None:
    """Write a new project into FOLDER (default: here): the sample config with every key
    written or commented, entries in English and Russian, templates, catalog, regions and
    a small subscriber list. It passes `check` and previews at once; nothing is overwritten.

    \b
    Example:
      statusmail init status-news && cd status-news && statusmail check
    """
    from statusmail.project.starter import init_project

    try:
        written = init_project(folder)
    except StatusmailError as exc:
        console.print(f"error: {exc}", markup=False, highlight=False)
        raise SystemExit(int(ExitCode.NOT_STARTED)) from None
    for path in written:
        console.print(f"wrote {path}", markup=False, highlight=False)
    entry = max(p.stem for p in (folder / "updates").glob("*.yaml"))
    console.print(
        f"Next: cd {folder} && statusmail check && statusmail send {entry} --dry-run",
        markup=False,
        highlight=False,
    )


@main.command(name="config")
@common_options
@json_option("Print the settings as JSON.")
@run
def show_config(config: Config, as_json: bool) -> ExitCode:
    """Show the configuration in force: every setting, its value and where it came from
    (the file and line, an environment variable, or the default). Secrets are shown as
    set or unset, never their value.

    \b
    Example:
      STATUSMAIL_SMTP_HOST=relay.example statusmail config --json
    """
    from statusmail.commands import reports

    return reports.show_config(config, as_json, out)
