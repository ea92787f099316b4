"""The command line: parses options, sets up logging, calls one function in ``commands``.

Only what parsing needs is imported here; each command imports its own work when it
runs, so ``--help``, ``--version`` and a usage error start at once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import click
from rich.console import Console

from statusmail import __version__, signals
from statusmail.ci.formats import FORMATS
from statusmail.domain import Cause, ExitCode, SuppressionReason
from statusmail.errors import InputError, Interrupted, StatusmailError, StoppedEarly

if TYPE_CHECKING:
    from statusmail.project.config import Config

F = TypeVar("F", bound=Callable[..., Any])
console = Console(stderr=True, soft_wrap=True, emoji=False)  # "file:100:" is no emoji
out = Console(soft_wrap=True, emoji=False)

# Attributes every LogRecord has; anything else was passed in ``extra`` and is a field.
_RECORD_ATTRIBUTES = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
# Anything shaped like an address: a run of RFC 5322 atext (and dots) before an @, a
# domain after it. Masking is idempotent (``a***@x`` masks to itself).
_ATEXT = r"[\w.!#$%&'*+/=?^`{|}~-]"
_ADDRESS = re.compile(rf"(?<!{_ATEXT}){_ATEXT}+@[\w-]+(?:\.[\w-]+)+")


def _masked(text: str) -> str:
    from statusmail.domain import mask_address

    return _ADDRESS.sub(lambda m: mask_address(m.group()), text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors (``--log-format json``): ``time``,
    ``level``, ``logger``, ``event`` (``other`` for a line that names none),
    ``message``, and the fields a line carries (``entry``, counts, ``relay``, a masked
    ``recipient``; ``type`` and ``traceback`` for an exception). Every address in every
    field is masked, whatever the caller passed."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": "other",
            "message": _masked(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                keep = isinstance(value, int | float | bool | None)
                entry[key] = value if keep else _masked(str(value))
        if record.exc_info and record.exc_info[0] is not None:
            entry["type"] = record.exc_info[0].__name__
            entry["traceback"] = _masked(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is at each line, not as it was at set-up (a test's
    runner swaps it for each command it runs in-process)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class ConsoleLog:
    """What the command prints to ``console`` (stderr) as log records instead, with
    ``--log-format json``: each print is one record (``error: …`` lines as ``error``,
    ``file:line: …`` problems as ``problem``, the rest as ``output``), so stderr holds
    JSON only."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self.log = logging.getLogger("statusmail")

    def write(self, text: str) -> int:
        self._text.append(text)
        return len(text)

    def flush(self) -> None:
        text, self._text = "".join(self._text).rstrip("\n"), []
        if not text:
            return
        if text.startswith("error: "):
            level, event = logging.ERROR, "error"
        elif text.startswith("interrupted by "):
            level, event = logging.WARNING, "interrupted"
        elif _PROBLEM.match(text):
            warning = ": warning: " in text
            level, event = (logging.WARNING if warning else logging.ERROR), "problem"
        else:
            level, event = logging.INFO, "output"
        self.log.log(level, "%s", text, extra={"event": event})

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise OSError("no file descriptor: lines become log records")


# A problem as the commands print it: ``path[:line]: message`` or ``$VARIABLE: message``.
_PROBLEM = re.compile(r"(?:\$\w+|[^\s:]*/[^\s:]*)(?::\d+)?: ")
# Libraries whose warnings and errors share statusmail's log format: the PostgreSQL driver
# and its pool, the event loop, the HTTP server, and Python's ``warnings``.
LIBRARY_LOGGERS = ("psycopg", "asyncio", "uvicorn", "py.warnings")
LOGGERS = ("statusmail", *LIBRARY_LOGGERS)


def setup_logging(verbose: int, log_format: str = "text") -> None:
    """statusmail's log lines, and the libraries' warnings and errors, in one format on
    stderr; with ``json``, whatever the command prints to stderr too (see ``ConsoleLog``)."""
    level = logging.DEBUG if verbose > 1 else logging.INFO
    console.file = None  # type: ignore[assignment]  # back to sys.stderr, as made
    formatter: logging.Formatter
    if log_format == "json":
        formatter = JsonFormatter()
        handler: logging.Handler = StderrHandler()
        console.file = ConsoleLog()  # type: ignore[assignment]
    elif console.is_terminal:
        from rich.logging import RichHandler

        formatter = logging.Formatter("%(message)s")
        handler = RichHandler(console=console, show_path=False, markup=False)
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
        handler = StderrHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger("statusmail")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # The HTTP server's own lines (serve, watch --metrics-port) in the same format, as
    # the libraries' warnings: a psycopg pool that cannot connect, a task nobody awaited.
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
        if name != "uvicorn":
            logger.setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)
    logging.captureWarnings(True)


def log_crash(exc: BaseException) -> bool:
    """An exception nothing expected, logged as one record with its ``type`` and
    ``traceback`` when the log is JSON (a collector reads one object, not a traceback's
    lines); False when it is not, and Python prints the traceback."""
    log = logging.getLogger("statusmail")
    if not any(isinstance(h.formatter, JsonFormatter) for h in log.handlers):
        return False
    log.critical(
        "unexpected %s: %s",
        type(exc).__name__,
        exc,
        exc_info=(type(exc), exc, exc.__traceback__),
        extra={"event": "crash"},
    )
    return True


def _log_format_callback(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        obj = ctx.find_root().ensure_object(dict)
        obj["log_format"] = value
        setup_logging(obj.get("verbose", 0), value)


def _verbose_callback(ctx: click.Context, _param: click.Parameter, value: int) -> None:
    """``-v`` after the command name adds to any before it."""
    if value:
        obj = ctx.find_root().ensure_object(dict)
        obj["verbose"] = obj.get("verbose", 0) + value
        setup_logging(obj["verbose"], obj.get("log_format", "text"))


csv_output = click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the CSV here instead of to standard output.",
)


def common_options(func: F) -> F:
    """``--config``, ``-v`` and ``--log-format`` work before or after the command name."""
    func = click.option(
        "-v",
        "--verbose",
        count=True,
        expose_value=False,
        callback=_verbose_callback,
        help="More log detail (-vv for debug).",
    )(func)
    func = click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default=None,
        expose_value=False,
        callback=_log_format_callback,
        help="Log lines as text or as one JSON object each.",
    )(func)
    return click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path),
        default=None,
        help="Config file (default: $STATUSMAIL_CONFIG, else ./statusmail.yaml).",
    )(func)


class _Watched:
    """Standard output that notes whether the command wrote to it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.written = stream, False

    def write(self, text: str) -> int:
        self.written = True
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def run(func: Callable[..., ExitCode], *, load: bool = True) -> Callable[..., None]:
    """Load the config (or, with ``load=False``, only find it: the command loads it),
    run the command, turn errors and signals into exit codes."""

    @functools.wraps(func)
    def wrapper(config_path: Path | None, **kwargs: Any) -> None:
        ctx = click.get_current_context()
        path = config_path or ctx.find_root().ensure_object(dict).get("config_path")
        stdout = _Watched(sys.stdout) if kwargs.get("as_json") else None
        said: list[str] = []
        try:
            from statusmail.project.config import find_config, load_config

            found = find_config(path)
            with contextlib.redirect_stdout(stdout) if stdout else contextlib.nullcontext():
                code = func(load_config(found) if load else found, **kwargs)
        except InputError as exc:
            said += [str(problem) for problem in exc.problems]
            for problem in exc.problems:
                console.print(str(problem), markup=False, highlight=False)
            code = ExitCode.NOT_STARTED
        except StoppedEarly as exc:
            said.append(str(exc))
            console.print(f"error: {exc}", markup=False, highlight=False)
            console.print("Stopped early. Run again to continue.", markup=False)
            code = ExitCode.STOPPED
        except StatusmailError as exc:
            said.append(str(exc))
            console.print(f"error: {exc}", markup=False, highlight=False)
            code = ExitCode.NOT_STARTED
        except Interrupted as exc:
            said.append(f"interrupted by {signals.name(exc.signum)}")
            console.print(said[-1], markup=False)
            code = ExitCode.OK if ctx.info_name == "watch" else ExitCode.STOPPED
        if stdout is not None and not stdout.written:  # --json prints JSON, whatever happens
            from statusmail.delivery.report import print_json

            print_json({"ok": code is ExitCode.OK, "exit_code": int(code), "errors": said})
        ctx.exit(int(code))

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Config file (default: $STATUSMAIL_CONFIG, else ./statusmail.yaml).",
)
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

    \b
    Example:
      statusmail check && statusmail send update-2020-04-21 --dry-run
    """
    obj = ctx.ensure_object(dict)
    obj["config_path"] = config_path
    obj["verbose"] = verbose
    obj["log_format"] = log_format
    setup_logging(verbose, log_format)


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
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print a report object instead: ok, counts, problems and warnings as text, notes.",
)
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
    return ci.check(config_path, options, console)


def _entry_id(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """An entry's file given for its ID (``updates/x.yaml``, as a shell completes it)."""
    from statusmail.project.entries import entry_id_of

    return None if value is None else entry_id_of(value)


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
@click.argument("entry_id", metavar="[ID]", required=False, callback=_entry_id)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Select and render everything, write previews; send nothing, record nothing.",
)
@click.option(
    "--preview-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where --dry-run writes previews (default: previews/ID/; with "
    "--all-changed-since, each entry's go to PREVIEW_DIR/ID/, default previews/ID/).",
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
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=None,
    help="Messages per second, all connections together (0: unlimited).",
)
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=None, help="Connections kept open at once."
)
@click.option(
    "--accept-removals",
    is_flag=True,
    help="Go on although more than sending.max_removed_share of the pending recipients "
    "left the list since the last run.",
)
@click.option("--now", is_flag=True, help="Send although the entry's send_at is still to come.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--show-addresses", is_flag=True, help="Log whole addresses instead of masked.")
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
        from statusmail import commands
        from statusmail.delivery.test_send import Request

        assert entry_id is not None  # _send_usage
        return commands.send_test(config, entry_id, Request(test_to, variant, force), out)
    if dry_run and (all_changed_since or summary):
        from statusmail.ci import review as ci

        preview = ci.PreviewOptions(
            entry_id, all_changed_since, preview_dir, limit, as_json, summary
        )
        return ci.send_dry_run(config, preview, console)
    assert entry_id is not None  # _send_usage
    from statusmail import commands

    if dry_run:
        return commands.send_dry_run(config, entry_id, preview_dir, limit, as_json, console)
    options = commands.SendOptions(
        limit=limit,
        yes=yes,
        json=as_json,
        show_addresses=show_addresses,
        interactive=sys.stdin.isatty(),
        accept_removals=accept_removals,
        now=now,
    )
    return commands.send(config, entry_id, options, console)


@main.command()
@common_options
@click.argument("entry_id", metavar="ID", callback=_entry_id)
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@click.option("--failed", is_flag=True, help="List every failed recipient with its code and reply.")
@click.option("--show-addresses", is_flag=True, help="Show whole addresses instead of masked.")
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
    from statusmail import commands

    return commands.status(
        config,
        entry_id,
        as_json=as_json,
        failed=failed,
        show_addresses=show_addresses,
        console=out,
    )


@main.command(name="import")
@common_options
@click.option("--force", is_flag=True, help="Read the lists even if they have not changed.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
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
    from statusmail import commands

    return commands.import_subscribers(config, force=force, as_json=as_json, console=out)


@main.command(name="list")
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@run
def list_(config: Config, as_json: bool) -> ExitCode:
    """Entries, their status, and how far each has been sent.

    \b
    Example:
      statusmail list --json
    """
    from statusmail import commands

    return commands.list_entries(config, as_json, out)


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
    @click.argument("entry_id", metavar="ID", callback=_entry_id)
    @run
    def command(config: Config, entry_id: str) -> ExitCode:
        from statusmail.delivery import controls

        act: Callable[[Config, str, Console], ExitCode] = getattr(controls, name)
        return act(config, entry_id, out)


for _name, _text in _CONTROLS.items():
    _control_command(_name, _text)


def _failure_code(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[245]\d\d|[245]\.\d{1,3}\.\d{1,3}", value):
        raise click.BadParameter(f"{value!r}: give a reply code (550) or a status code (5.2.2)")
    return value


@main.command()
@common_options
@click.argument("entry_id", metavar="ID", callback=_entry_id)
@click.option("--failed", is_flag=True, help="Every failed recipient (the default).")
@click.option(
    "--code",
    callback=_failure_code,
    default=None,
    help="Only those that failed with this reply code (550) or status code (5.2.2).",
)
@run
def retry(config: Config, entry_id: str, failed: bool, code: str | None) -> ExitCode:
    """Queue the failed recipients of entry ID again, for the next send (or watch).

    A suppressed address (unsubscribed, bounced, complained) is never retried.

    \b
    Example:
      statusmail retry update-2020-04-21 --failed --code 5.2.2
    """
    from statusmail.delivery import controls

    del failed  # the only recipients retry re-queues: named for a clear command line
    return controls.retry(config, entry_id, code, out)


@main.command()
@common_options
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of the site (default: publish.out).",
)
@run
def publish(config: Config, out_dir: Path | None) -> ExitCode:
    """Write the ready entries as a static site with Atom and JSON feeds.

    One edition per entry of regions.yaml's editions (the canonical site, the mirror,
    the onion service), each in every language. The site is written into a new folder
    and OUT/current is switched to it in one rename; publish.after runs afterwards.

    \b
    Example:
      statusmail publish --out /srv/statusmail/site
    """
    from statusmail.web.republish import publish_command

    return publish_command(config, out_dir, out)


@main.command()
@common_options
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
def serve(
    config: Config, host: str | None, port: int | None, insecure_dev_secret: bool
) -> ExitCode:
    """Run the one-click unsubscribe endpoint (RFC 8058) that List-Unsubscribe points to.

    POST with List-Unsubscribe=One-Click and a valid token suppresses the address; GET
    only shows a confirmation page, so link scanners unsubscribe nobody. The same port
    answers /metrics, /healthz and /readyz (forward only the unsubscribe path).

    \b
    Example:
      STATUSMAIL_UNSUBSCRIBE_SECRET=... statusmail serve --port 8080
    """
    from statusmail.web.serve import run_server

    return ExitCode(
        run_server(
            config,
            host or config.serve.host,
            config.serve.port if port is None else port,
            dev_secret=insecure_dev_secret,
        )
    )


@main.command()
@common_options
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
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve /metrics, /healthz and /readyz on this port (default: off).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics port listens on.",
)
@click.option(
    "--takeover",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    help="PostgreSQL ledger: seconds within which a standby watcher takes over from an "
    "active one that is gone.",
)
@run
def watch(
    config: Config,
    once: bool,
    poll_interval: float,
    retry_after: float,
    metrics_port: int | None,
    metrics_host: str,
    takeover: float,
) -> ExitCode:
    """Run the service: send ready entries that have not been sent, as they appear.

    Stops cleanly on SIGTERM/SIGINT (in-flight messages finish); SIGHUP reloads the
    config and templates. One watcher per ledger is active: on SQLite a second one
    refuses; on PostgreSQL it stands by and takes over when the active one is gone.

    \b
    Example:
      statusmail watch --log-format json --metrics-port 9464
    """
    import asyncio

    from statusmail.watch import Watcher, WatchOptions

    options = WatchOptions(
        once=once,
        poll_interval=poll_interval,
        backoff_initial=retry_after,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
        takeover=takeover,
    )
    return asyncio.run(Watcher(config, options).run())


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
@click.option("--json", "as_json", is_flag=True, help="Print the settings as JSON.")
@run
def show_config(config: Config, as_json: bool) -> ExitCode:
    """Show the configuration in force: every setting, its value and where it came from
    (the file and line, an environment variable, or the default). Secrets are shown as
    set or unset, never their value.

    \b
    Example:
      STATUSMAIL_SMTP_HOST=relay.example statusmail config --json
    """
    from statusmail import commands

    return commands.show_config(config, as_json, out)


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
    from statusmail import commands

    return commands.suppress_add(config, addresses, reason, detail, console)


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
@click.option("--dry-run", is_flag=True, help="Say how many would be lifted; lift none.")
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
    from statusmail import commands
    from statusmail.feedback import suppression

    if addresses and reason:
        raise click.UsageError("name addresses or give --reason, not both")
    if not addresses and not reason:
        raise click.UsageError("name the addresses to remove, or give --reason")
    if not reason and (since or domain or cause or dry_run):
        raise click.UsageError("--since, --domain, --cause and --dry-run go with --reason")
    if reason:
        selector = suppression.Selector(reason, since.date() if since else None, domain, cause)
        return commands.suppress_lift(config, selector, dry_run=dry_run, console=console)
    return commands.suppress_remove(config, addresses, console)


@suppress.command(name="show")
@common_options
@click.argument("address")
@click.option("--json", "as_json", is_flag=True, help="Print the history as JSON.")
@run
def suppress_show(config: Config, address: str, as_json: bool) -> ExitCode:
    """Print every event recorded for ADDRESS: its suppression, each report (entry,
    cause, code, text, source, when) and each lifted suppression.

    \b
    Example:
      statusmail suppress show ivan@example.org
    """
    from statusmail import commands

    return commands.suppress_show(config, address, as_json, out)


@suppress.command(name="list")
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@run
def suppress_list(config: Config, as_json: bool) -> ExitCode:
    """Print the suppression list: address, reason, when.

    \b
    Example:
      statusmail suppress list --json
    """
    from statusmail import commands

    return commands.suppress_list(config, as_json, out)


@suppress.command(name="export")
@common_options
@csv_output
@run
def suppress_export(config: Config, output: Path | None) -> ExitCode:
    """Export the suppression list as CSV (cells are made safe for spreadsheets).

    \b
    Example:
      statusmail suppress export -o suppressed.csv
    """
    from statusmail import commands

    return commands.suppress_export(config, output)


@main.command()
@common_options
@click.option(
    "--dry-run", is_flag=True, help="Show what would change; record nothing, move nothing."
)
@click.option("--json", "as_json", is_flag=True, help="Print a summary of the pass as JSON.")
@click.option("--show-addresses", is_flag=True, help="Show whole addresses instead of masked.")
@click.option(
    "--release-held",
    metavar="DOMAIN",
    default=None,
    help="Apply the events the storm guard held for DOMAIN (after a look), then stop.",
)
@run
def feedback(
    config: Config,
    dry_run: bool,
    as_json: bool,
    show_addresses: bool,
    release_held: str | None,
) -> ExitCode:
    """Read bounces, complaints and mailto unsubscribes back from the bounce mailbox.

    Only a report tied to a delivery by proof (the VERP return path, a statusmail
    Message-ID, an unsubscribe token) changes anything; others are recorded as
    unverified or forged. A bad or disabled mailbox suppresses at once; a full one or
    an expiry scores (bounces.soft_limit days within bounces.soft_window_days
    suppress); policy and sender-side rejections never suppress. A storm of one
    domain and cause is held until --release-held. Handled messages move to the
    processed folder; everything else stays where it was.

    \b
    Example:
      statusmail feedback --dry-run && statusmail feedback --json
      statusmail feedback --release-held mail.ru
    """
    from statusmail import commands

    return commands.feedback(
        config,
        dry_run=dry_run,
        as_json=as_json,
        show_addresses=show_addresses,
        release_held=release_held,
        console=out,
    )


@main.group()
def prefs() -> None:
    """Subscribers' own choices of language and topics (the preferences page).

    They override the subscriber files' locale and topics in every selection; the
    files stay the source of who is subscribed.

    \b
    Example:
      statusmail prefs export -o preferences.csv
    """


@prefs.command(name="list")
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@run
def prefs_list(config: Config, as_json: bool) -> ExitCode:
    """Print every stored preference: address, language, topics, when.

    \b
    Example:
      statusmail prefs list --json
    """
    from statusmail import commands

    return commands.prefs_list(config, as_json, out)


@prefs.command(name="export")
@common_options
@csv_output
@run
def prefs_export(config: Config, output: Path | None) -> ExitCode:
    """Export the stored preferences as CSV (email, locale, topics, updated_at).

    \b
    Example:
      statusmail prefs export -o preferences.csv
    """
    from statusmail import commands

    return commands.prefs_export(config, output)


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
    from statusmail import commands

    return commands.ledger_migrate(config, console)


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
    from statusmail import commands

    return commands.ledger_copy(config, to, out)
