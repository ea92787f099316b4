"""What the ledger keeps besides deliveries: the subscriber lists ``import``ed, the
``suppress``ion list, subscribers' ``prefs``, and the ``ledger`` itself."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from statusmail.cli.app import common_options, csv_output, dry_run_option, json_option, main, run
from statusmail.cli.output import console, out
from statusmail.domain import Cause, ExitCode, SuppressionReason

if TYPE_CHECKING:
    from statusmail.project.config import Config


@main.command(name="import")
@common_options
@click.option("--force", is_flag=True, help="Read the lists even if they have not changed.")
@json_option("Print the counts as JSON.")
@run
def import_(config: Config, force: bool, as_json: bool) -> ExitCode:
    """Import the subscriber lists into the ledger, validating every row.

    check, send and watch import the lists themselves when a file changed (by size,
    mtime and content); this does it ahead, for a long list. A file with a broken
    structure refuses the whole import (exit 1) and the last good import stays; an
    invalid row is reported with its file:line and left out. Unchanged lists are not
    read again.

    \b
    Example:
      statusmail import --json
    """
    from statusmail.commands import lists

    return lists.import_subscribers(config, force=force, as_json=as_json, console=out)


@main.group()
def suppress() -> None:
    """Addresses that never get a message: unsubscribed, bounced, complained, manual.

    Every selection respects this list; sync it with your source of truth with
    add, remove and export.

    \b
    Example:
      statusmail suppress add someone@example.org --reason manual
    """


@suppress.command(name="add")
@common_options
@click.argument("addresses", nargs=-1, required=True)
@click.option(
    "--reason",
    type=click.Choice([reason.value for reason in SuppressionReason]),
    default=SuppressionReason.MANUAL.value,
    show_default=True,
    help="Why the addresses are suppressed.",
)
@click.option("--detail", default=None, help="A note kept with each address.")
@run
def suppress_add(
    config: Config, addresses: tuple[str, ...], reason: str, detail: str | None
) -> ExitCode:
    """Suppress ADDRESSES (all must be valid, or none is added).

    \b
    Example:
      statusmail suppress add a@example.org b@example.org --detail "asked by phone"
    """
    from statusmail.commands import lists

    return lists.suppress_add(config, addresses, reason, detail, console)


@suppress.command(name="remove")
@common_options
@click.argument("addresses", nargs=-1)
@click.option(
    "--reason",
    type=click.Choice([reason.value for reason in SuppressionReason]),
    default=None,
    help="Lift every suppression for this reason (instead of naming addresses).",
)
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="With --reason: only suppressions made on or after this day (UTC).",
)
@click.option("--domain", default=None, help="With --reason: only addresses at this domain.")
@click.option(
    "--cause",
    type=click.Choice([cause.value for cause in Cause]),
    default=None,
    help="With --reason: only suppressions a report of this cause made.",
)
@dry_run_option("Say how many would be lifted; lift none.")
@run
def suppress_remove(
    config: Config,
    addresses: tuple[str, ...],
    reason: str | None,
    since: dt.datetime | None,
    domain: str | None,
    cause: str | None,
    dry_run: bool,
) -> ExitCode:
    """Take ADDRESSES off the suppression list, so later entries reach them again; or,
    with --reason, every suppression that matches (undo in bulk).

    \b
    Examples:
      statusmail suppress remove a@example.org
      statusmail suppress remove --reason bounced --since 2020-04-21 --domain mail.ru --dry-run
    """
    from statusmail.commands import lists
    from statusmail.feedback import suppression

    if addresses and reason:
        raise click.UsageError("name addresses or give --reason, not both")
    if not addresses and not reason:
        raise click.UsageError("name the addresses to remove, or give --reason")
    if not reason and (since or domain or cause or dry_run):
        raise click.UsageError("--since, --domain, --cause and --dry-run go with --reason")
    if reason:
        selector = suppression.Selector(reason, since.date() if since else None, domain, cause)
        return lists.suppress_lift(config, selector, dry_run=dry_run, console=console)
    return lists.suppress_remove(config, addresses, console)


@suppress.command(name="show")
@common_options
@click.argument("address")
@json_option("Print the history as JSON.")
@run
def suppress_show(config: Config, address: str, as_json: bool) -> ExitCode:
    """Print every event recorded for ADDRESS: its suppression, each report (entry,
    cause, code, text, source, when) and each lifted suppression.

    \b
    Example:
      statusmail suppress show ivan@example.org
    """
    from statusmail.commands import lists

    return lists.suppress_show(config, address, as_json, out)


@main.group()
def prefs() -> None:
    """Subscribers' own choices of language and topics (the preferences page).

    They override the subscriber files' locale and topics in every selection; the
    files stay the source of who is subscribed.

    \b
    Example:
      statusmail prefs export -o preferences.csv
    """


def _list_and_export(group: click.Group, list_help: str, export_help: str) -> None:
    """``GROUP list`` (or ``--json``) and ``GROUP export`` (CSV) of a list the ledger
    keeps; the work is ``commands.lists.GROUP_list`` and ``GROUP_export``."""

    @group.command(name="list", help=list_help)
    @common_options
    @json_option("Print the list as JSON.")
    @run
    def list_(config: Config, as_json: bool) -> ExitCode:
        from statusmail.commands import lists

        show: Callable[[Config, bool, Console], ExitCode] = getattr(lists, f"{group.name}_list")
        return show(config, as_json, out)

    @group.command(name="export", help=export_help)
    @common_options
    @csv_output
    @run
    def export(config: Config, output: Path | None) -> ExitCode:
        from statusmail.commands import lists

        write: Callable[[Config, Path | None], ExitCode] = getattr(lists, f"{group.name}_export")
        return write(config, output)


_list_and_export(
    suppress,
    """Print the suppression list: address, reason, when.

    \b
    Example:
      statusmail suppress list --json
    """,
    """Export the suppression list as CSV (cells are made safe for spreadsheets).

    \b
    Example:
      statusmail suppress export -o suppressed.csv
    """,
)
_list_and_export(
    prefs,
    """Print every stored preference: address, language, topics, when.

    \b
    Example:
      statusmail prefs list --json
    """,
    """Export the stored preferences as CSV (email, locale, topics, updated_at).

    \b
    Example:
      statusmail prefs export -o preferences.csv
    """,
)


@main.group()
def ledger() -> None:
    """The ledger itself: its schema, and moving it from SQLite to PostgreSQL.

    \b
    Example:
      statusmail ledger copy --to postgresql://db.internal/statusmail
    """


@ledger.command(name="migrate")
@common_options
@run
def ledger_migrate(config: Config) -> ExitCode:
    """Apply the schema migrations the ledger lacks (paths.ledger or $STATUSMAIL_LEDGER).

    \b
    Example:
      STATUSMAIL_LEDGER=postgresql://db.internal/statusmail statusmail ledger migrate
    """
    from statusmail.commands import lists

    return lists.ledger_migrate(config, console)


@ledger.command(name="copy")
@common_options
@click.option(
    "--to",
    "to",
    required=True,
    help="The ledger to copy into: a postgresql:// URL (or a SQLite file); it must be empty.",
)
@run
def ledger_copy(config: Config, to: str) -> ExitCode:
    """Copy the ledger (entries, deliveries, suppressions, feedback, preferences) into
    another and check that every table's count is equal on both sides.

    \b
    Example:
      statusmail ledger copy --to postgresql://db.internal/statusmail
    """
    from statusmail.commands import lists

    return lists.ledger_copy(config, to, out)
