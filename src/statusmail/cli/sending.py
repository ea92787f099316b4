"""Sending an entry and following it: ``send`` (and its dry run and test sends),
``status`` and ``list``; and steering it: ``pause``, ``resume``, ``cancel``, ``retry``."""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from statusmail.cli.app import (
    common_options,
    concurrency_option,
    dry_run_option,
    entry_argument,
    entry_id_callback,
    json_option,
    main,
    rate_option,
    run,
    show_addresses_option,
)
from statusmail.cli.output import console, out
from statusmail.domain import ExitCode

if TYPE_CHECKING:
    from statusmail.project.config import Config


def _send_usage(func: Callable[..., None]) -> Callable[..., None]:
    """ID is required unless --dry-run previews what changed; said before anything loads."""

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> None:
        since, dry_run = kwargs["all_changed_since"], kwargs["dry_run"]
        if (since or kwargs["summary"]) and not dry_run:
            flag = "--all-changed-since" if since else "--summary"
            raise click.UsageError(f"{flag} goes with --dry-run only")
        if since and kwargs["entry_id"]:
            raise click.UsageError("give an entry ID or --all-changed-since REF, not both")
        if not since and not kwargs["entry_id"]:
            raise click.UsageError("Missing argument 'ID' (or --dry-run --all-changed-since REF).")
        func(**kwargs)

    return wrapper


@main.command()
@common_options
@click.argument("entry_id", metavar="[ID]", required=False, callback=entry_id_callback)
@dry_run_option("Select and render everything, write previews; send nothing, record nothing.")
@click.option(
    "--preview-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where --dry-run writes previews: each entry's into PREVIEW_DIR/ID/ (default: "
    "previews/ID/), for one ID as with --all-changed-since.",
)
@click.option(
    "--all-changed-since",
    metavar="REF",
    default=None,
    help="With --dry-run and no ID: preview every entry whose file differs from the git "
    "ref REF; every entry when templates, catalogs, regions or the config changed.",
)
@click.option(
    "--summary",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="With --dry-run: write a Markdown summary for reviewers to FILE (variants, "
    "counts, subjects, links to the previews); appended to $GITHUB_STEP_SUMMARY too.",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Deliver to at most N recipients in this run; re-run for the rest.",
)
@rate_option
@concurrency_option
@click.option(
    "--accept-removals",
    is_flag=True,
    help="Go on although more than sending.max_removed_share of the pending recipients "
    "left the list since the last run.",
)
@click.option(
    "--accept-edit",
    is_flag=True,
    help="Go on although the entry changed since it began going out: the rest get it as it is now.",
)
@click.option("--now", is_flag=True, help="Send although the entry's send_at is still to come.")
@json_option("Print the result as JSON.")
@show_addresses_option
@click.option(
    "--test-to",
    metavar="ADDRESS",
    multiple=True,
    help="Send every variant, subject starting [TEST], to ADDRESS (one of test_recipients) "
    "instead of the audience; nothing is recorded. Repeatable.",
)
@click.option("--variant", default=None, help="With --test-to: only this variant (ru-RU, en).")
@click.option("--force", is_flag=True, help="With --test-to: addresses not in test_recipients.")
@_send_usage
@run
def send(
    config: Config,
    entry_id: str | None,
    dry_run: bool,
    preview_dir: Path | None,
    all_changed_since: str | None,
    summary: Path | None,
    yes: bool,
    limit: int | None,
    rate: float | None,
    concurrency: int | None,
    accept_removals: bool,
    accept_edit: bool,
    now: bool,
    as_json: bool,
    show_addresses: bool,
    test_to: tuple[str, ...],
    variant: str | None,
    force: bool,
) -> ExitCode:
    """Send entry ID to its audience (re-running continues where it stopped).

    Exit codes: 0 all sent, 1 nothing could start, 3 some failed permanently,
    4 stopped early (re-run to continue).

    \b
    Examples:
      statusmail send update-2020-04-21 --dry-run --preview-dir previews/
      statusmail send --dry-run --all-changed-since origin/main --summary previews/SUMMARY.md
      statusmail send update-2020-04-21 --yes --rate 10
      statusmail send update-2020-04-21 --test-to me@startmail.example --variant ru-RU
    """
    config = config.with_overrides(rate=rate, concurrency=concurrency)
    if (variant or force) and not test_to:
        raise click.UsageError("--variant and --force go with --test-to only")
    if test_to:
        if dry_run:
            raise click.UsageError("--test-to sends; it does not go with --dry-run")
        from statusmail.commands import sending
        from statusmail.delivery.test_send import Request

        assert entry_id is not None  # _send_usage
        return sending.send_test(config, entry_id, Request(test_to, variant, force), out)
    if dry_run and (all_changed_since or summary):
        from statusmail.ci import dry_run as ci

        preview = ci.PreviewOptions(
            entry_id, all_changed_since, preview_dir, limit, as_json, summary
        )
        return ci.send_dry_run(config, preview, out)
    assert entry_id is not None  # _send_usage
    from statusmail.commands import sending

    if dry_run:
        return sending.send_dry_run(config, entry_id, preview_dir, limit, as_json, out)
    options = sending.SendOptions(
        limit=limit,
        yes=yes,
        json=as_json,
        show_addresses=show_addresses,
        interactive=sys.stdin.isatty(),
        accept_removals=accept_removals,
        accept_edit=accept_edit,
        now=now,
    )
    return sending.send(config, entry_id, options, console, out)


@main.command()
@common_options
@entry_argument
@json_option("Print the counts as JSON.")
@click.option("--failed", is_flag=True, help="List every failed recipient with its code and reply.")
@show_addresses_option
@run
def status(
    config: Config, entry_id: str, as_json: bool, failed: bool, show_addresses: bool
) -> ExitCode:
    """Per-recipient outcome counts of entry ID: sent, failed, pending, skipped.

    Exits 1 when no entry has that ID.

    \b
    Example:
      statusmail status update-2020-04-21 --failed
    """
    from statusmail.commands import reports

    return reports.status(
        config,
        entry_id,
        as_json=as_json,
        failed=failed,
        show_addresses=show_addresses,
        console=out,
    )


@main.command(name="list")
@common_options
@json_option("Print the list as JSON.")
@run
def list_(config: Config, as_json: bool) -> ExitCode:
    """Entries, their status, and how far each has been sent.

    \b
    Example:
      statusmail list --json
    """
    from statusmail.commands import reports

    return reports.list_entries(config, as_json, out)


_CONTROLS = {
    "pause": """Pause entry ID: a running send or watch stops taking recipients within a second.

    The messages in flight finish; the rest stay pending, nothing is lost or sent
    twice. The running send exits 4; watch leaves the entry, saying so once. resume
    (or the next send of ID) continues.

    \b
    Example:
      statusmail pause update-2020-04-21
    """,
    "resume": """Resume entry ID, paused: watch sends the rest at its next look (or run send).

    A cancelled entry is never resumed (exit 1).

    \b
    Example:
      statusmail resume update-2020-04-21
    """,
    "cancel": """Cancel entry ID: its pending recipients become cancelled and are never sent.

    A running send or watch stops within a second (the messages in flight are sent and
    recorded as sent); status and list show the cancelled ones. A later send of ID
    sends nothing and says so.

    \b
    Example:
      statusmail cancel update-2020-04-21
    """,
}


def _control_command(name: str, text: str) -> None:
    """``statusmail pause|resume|cancel ID``: the same shape, the work in delivery.controls."""

    @main.command(name=name, help=text)
    @common_options
    @entry_argument
    @json_option("Print what was done as JSON.")
    @run
    def command(config: Config, entry_id: str, as_json: bool) -> ExitCode:
        from statusmail.delivery import controls

        act: Callable[[Config, str, Console, bool], ExitCode] = getattr(controls, name)
        return act(config, entry_id, out, as_json)


for _name, _text in _CONTROLS.items():
    _control_command(_name, _text)


def _failure_code(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[245]\d\d|[245]\.\d{1,3}\.\d{1,3}", value):
        raise click.BadParameter(f"{value!r}: give a reply code (550) or a status code (5.2.2)")
    return value


@main.command()
@common_options
@entry_argument
@click.option("--failed", is_flag=True, help="Every failed recipient (the default).")
@click.option(
    "--code",
    callback=_failure_code,
    default=None,
    help="Only those that failed with this reply code (550) or status code (5.2.2).",
)
@json_option("Print what was done as JSON.")
@run
def retry(config: Config, entry_id: str, failed: bool, code: str | None, as_json: bool) -> ExitCode:
    """Queue the failed recipients of entry ID again, for the next send (or watch).

    A suppressed address (unsubscribed, bounced, complained) is never retried.

    \b
    Example:
      statusmail retry update-2020-04-21 --failed --code 5.2.2
    """
    from statusmail.delivery import controls

    del failed  # the only recipients retry re-queues: named for a clear command line
    return controls.retry(config, entry_id, code, out, as_json)
