"""The command line: parses options, sets up logging, calls one function in ``commands``."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.logging import RichHandler

from statusmail import __version__, commands
from statusmail.check import check_project
from statusmail.config import Config, find_config, load_config
from statusmail.errors import InputError, StatusmailError
from statusmail.report import print_json
from statusmail.suppression import REASONS

F = TypeVar("F", bound=Callable[..., Any])
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors (``--log-format json``)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(verbose: int, log_format: str = "text") -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO
    handler: logging.Handler
    if log_format == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    elif console.is_terminal:
        handler = RichHandler(console=console, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("statusmail")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def config_option(func: F) -> F:
    """``--config`` works before or after the command name."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path),
        default=None,
        help="Config file (default: $STATUSMAIL_CONFIG, else ./statusmail.yaml).",
    )(func)


def run(func: Callable[..., int]) -> Callable[..., None]:
    """Load the config, run the command, turn statusmail errors into exit code 1."""

    @functools.wraps(func)
    def wrapper(config_path: Path | None, **kwargs: Any) -> None:
        ctx = click.get_current_context()
        path = config_path or ctx.obj.get("config_path")
        try:
            config = load_config(find_config(path))
            code = func(config, **kwargs)
        except InputError as exc:
            for problem in exc.problems:
                console.print(str(problem), markup=False, highlight=False)
            code = commands.EXIT_NOT_STARTED
        except StatusmailError as exc:
            console.print(f"error: {exc}", markup=False, highlight=False)
            code = commands.EXIT_NOT_STARTED
        ctx.exit(code)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@config_option
@click.option("-v", "--verbose", count=True, help="More log detail (-vv for debug).")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    help="Log lines as text or as one JSON object each.",
)
@click.version_option(__version__, prog_name="statusmail")
@click.pass_context
def main(ctx: click.Context, config_path: Path | None, verbose: int, log_format: str) -> None:
    """Tell a service's users, by email and in their language, what is happening to it.

    Reads status-update entries, picks the affected subscribers, renders each message in
    the subscriber's language and delivers it, keeping a ledger so nobody is missed and
    nobody gets the same entry twice.
    """
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path
    setup_logging(verbose, log_format)


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
@run
def check(config: Config, as_json: bool) -> int:
    """Validate config, entries, templates, translations, regions and subscribers.

    Prints each problem as file:line: message and exits 1 if there is any.
    """
    report = check_project(config)
    if as_json:
        print_json(
            {
                "ok": report.ok,
                "entries": report.entries,
                "subscribers": report.subscribers,
                "problems": [str(p) for p in report.problems],
                "warnings": [str(p) for p in report.warnings],
            }
        )
    else:
        for problem in report.warnings + report.problems:
            console.print(str(problem), markup=False, highlight=False)
        verdict = "ok" if report.ok else f"{len(report.problems)} problem(s)"
        console.print(
            f"checked {report.entries} entries, {report.subscribers} subscribers: {verdict}",
            markup=False,
        )
    return commands.EXIT_OK if report.ok else commands.EXIT_NOT_STARTED


@main.command()
@config_option
@click.argument("entry_id", metavar="ID")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Select and render everything, write previews; send nothing, record nothing.",
)
@click.option(
    "--preview-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where --dry-run writes previews (default: previews/ID/).",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Deliver to at most N recipients in this run; re-run for the rest.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=None,
    help="Messages per second, all connections together (0: unlimited).",
)
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=None, help="Connections kept open at once."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--show-addresses", is_flag=True, help="Log whole addresses instead of masked.")
@run
def send(
    config: Config,
    entry_id: str,
    dry_run: bool,
    preview_dir: Path | None,
    yes: bool,
    limit: int | None,
    rate: float | None,
    concurrency: int | None,
    as_json: bool,
    show_addresses: bool,
) -> int:
    """Send entry ID to its audience (re-running continues where it stopped).

    Exit codes: 0 all sent, 1 nothing could start, 3 some failed permanently,
    4 stopped early (re-run to continue).
    """
    config = config.with_overrides(rate=rate, concurrency=concurrency)
    if dry_run:
        return commands.send_dry_run(config, entry_id, preview_dir, limit, as_json, console)
    options = commands.SendOptions(
        limit=limit,
        yes=yes,
        json=as_json,
        show_addresses=show_addresses,
        interactive=sys.stdin.isatty(),
    )
    return asyncio.run(commands.send(config, entry_id, options, console))


@main.command()
@config_option
@click.argument("entry_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@run
def status(config: Config, entry_id: str, as_json: bool) -> int:
    """Per-recipient outcome counts of entry ID: sent, failed, pending, skipped."""
    return commands.status(config, entry_id, as_json, out)


@main.command(name="list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@run
def list_(config: Config, as_json: bool) -> int:
    """Entries, their status, and how far each has been sent."""
    return commands.list_entries(config, as_json, out)


@main.command()
@config_option
@click.option("--host", default=None, help="Address to listen on (default: serve.host).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port to listen on (default: serve.port).",
)
@click.option(
    "--insecure-dev-secret",
    is_flag=True,
    help="Allow the published development secret when the real one is not set "
    "(local trials only: anyone can forge its tokens).",
)
@run
def serve(config: Config, host: str | None, port: int | None, insecure_dev_secret: bool) -> int:
    """Run the one-click unsubscribe endpoint (RFC 8058) that List-Unsubscribe points to.

    POST with List-Unsubscribe=One-Click and a valid token suppresses the address; GET
    only shows a confirmation page, so link scanners unsubscribe nobody.
    """
    from statusmail.serve import run_server

    return run_server(
        config,
        host or config.serve.host,
        config.serve.port if port is None else port,
        dev_secret=insecure_dev_secret,
    )


@main.command()
@config_option
@click.option("--once", is_flag=True, help="Send what is due, then exit (for cron).")
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.05),
    default=2.0,
    show_default=True,
    help="Seconds between scans of the updates folder.",
)
@click.option(
    "--retry-after",
    type=click.FloatRange(min=0.01),
    default=5.0,
    show_default=True,
    help="First wait, in seconds, before retrying an entry whose relay was down "
    "(doubles up to 5 minutes).",
)
@run
def watch(config: Config, once: bool, poll_interval: float, retry_after: float) -> int:
    """Run the service: send ready entries that have not been sent, as they appear.

    Stops cleanly on SIGTERM/SIGINT (in-flight messages finish); SIGHUP reloads the
    config and templates. One watcher per ledger.
    """
    from statusmail.watch import Watcher, WatchOptions

    options = WatchOptions(once=once, poll_interval=poll_interval, backoff_initial=retry_after)
    return asyncio.run(Watcher(config.path, options).run())


@main.group()
def suppress() -> None:
    """Addresses that never get a message: unsubscribed, bounced, complained, manual.

    Every selection respects this list; sync it with your source of truth with
    add, remove and export.
    """


@suppress.command(name="add")
@config_option
@click.argument("addresses", nargs=-1, required=True)
@click.option(
    "--reason",
    type=click.Choice(REASONS),
    default="manual",
    show_default=True,
    help="Why the addresses are suppressed.",
)
@click.option("--detail", default=None, help="A note kept with each address.")
@run
def suppress_add(
    config: Config, addresses: tuple[str, ...], reason: str, detail: str | None
) -> int:
    """Suppress ADDRESSES (all must be valid, or none is added)."""
    from statusmail import suppression
    from statusmail.ledger import Ledger

    with Ledger(config.paths.ledger) as ledger:
        added = suppression.add(ledger, addresses, reason, detail)
    console.print(f"suppressed {added} new address(es); {len(addresses) - added} already were")
    return commands.EXIT_OK


@suppress.command(name="remove")
@config_option
@click.argument("addresses", nargs=-1, required=True)
@run
def suppress_remove(config: Config, addresses: tuple[str, ...]) -> int:
    """Take ADDRESSES off the suppression list, so later entries reach them again."""
    from statusmail import suppression
    from statusmail.ledger import Ledger

    with Ledger(config.paths.ledger) as ledger:
        removed = suppression.remove(ledger, addresses)
    console.print(f"removed {removed} address(es) from the suppression list")
    return commands.EXIT_OK


@suppress.command(name="list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@run
def suppress_list(config: Config, as_json: bool) -> int:
    """Print the suppression list: address, reason, when."""
    from statusmail.ledger import Ledger

    with Ledger(config.paths.ledger) as ledger:
        rows = ledger.suppressions()
    if as_json:
        print_json(
            [{"email": a, "reason": r, "detail": d, "suppressed_at": t} for a, r, d, t in rows]
        )
    else:
        for address, reason, _detail, created in rows:
            out.print(f"{address}\t{reason}\t{created}", markup=False, highlight=False)
    return commands.EXIT_OK


@suppress.command(name="export")
@config_option
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the CSV here instead of to standard output.",
)
@run
def suppress_export(config: Config, output: Path | None) -> int:
    """Export the suppression list as CSV (cells are made safe for spreadsheets)."""
    from statusmail import suppression
    from statusmail.ledger import Ledger

    with Ledger(config.paths.ledger) as ledger:
        text = suppression.export_csv(ledger)
    if output:
        output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return commands.EXIT_OK
