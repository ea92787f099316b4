"""The group every command hangs on, the options the commands share (defined once, here),
and ``run``: the config loaded, errors and signals turned into exit codes."""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO, TypeVar

import click

from statusmail import __version__, signals
from statusmail.cli.output import console, setup_logging
from statusmail.domain import ExitCode
from statusmail.errors import InputError, Interrupted, StatusmailError, StoppedEarly

F = TypeVar("F", bound=Callable[..., Any])

CONFIG_HELP = "Config file (default: $STATUSMAIL_CONFIG, else ./statusmail.yaml)."
VERBOSE_HELP = "More log detail (-vv for debug)."
LOG_FORMAT_HELP = "Log lines as text or as one JSON object each."


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


class Number(click.FloatRange):
    """A finite number within the range: click's FloatRange lets "nan" through (it fails
    no comparison) and "inf"."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def common_options(func: F) -> F:
    """``--config``, ``-v`` and ``--log-format`` work before or after the command name."""
    func = click.option(
        "-v",
        "--verbose",
        count=True,
        expose_value=False,
        callback=_verbose_callback,
        help=VERBOSE_HELP,
    )(func)
    func = click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default=None,
        expose_value=False,
        callback=_log_format_callback,
        help=LOG_FORMAT_HELP,
    )(func)
    return click.option(
        "--config", "config_path", type=click.Path(path_type=Path), default=None, help=CONFIG_HELP
    )(func)


def json_option(help: str) -> Callable[[F], F]:
    """``--json``: the command's report as one JSON document on standard output."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def dry_run_option(help: str) -> Callable[[F], F]:
    return click.option("--dry-run", is_flag=True, help=help)


rate_option = click.option(
    "--rate",
    type=Number(min=0),
    default=None,
    help="Messages per second, all connections together (0: unlimited; default: sending.rate).",
)
concurrency_option = click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="Connections kept open at once (default: sending.concurrency).",
)
show_addresses_option = click.option(
    "--show-addresses",
    is_flag=True,
    help="Show whole addresses instead of masked (in the report and the log).",
)
csv_output = click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the CSV here instead of to standard output.",
)


def entry_id_callback(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> str | None:
    """An entry's file given for its ID (``updates/x.yaml``, as a shell completes it)."""
    from statusmail.project.entries import entry_id_of

    return None if value is None else entry_id_of(value)


entry_argument = click.argument("entry_id", metavar="ID", callback=entry_id_callback)


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


# The module of cli/ that defines each command: a process imports the module of the
# command it runs, not every command's (``--help`` and completion import them all).
COMMAND_MODULES = {
    **dict.fromkeys(("check", "init", "config"), "project"),
    **dict.fromkeys(("send", "status", "list", "pause", "resume", "cancel", "retry"), "sending"),
    **dict.fromkeys(("import", "suppress", "prefs", "ledger"), "lists"),
    **dict.fromkeys(("publish", "serve", "watch", "feedback"), "operations"),
}


class LazyGroup(click.Group):
    """The group whose commands are defined in the modules ``COMMAND_MODULES`` names,
    each imported when one of its commands is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMAND_MODULES})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            importlib.import_module(f"statusmail.cli.{COMMAND_MODULES[cmd_name]}")
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config", "config_path", type=click.Path(path_type=Path), default=None, help=CONFIG_HELP
)
@click.option("-v", "--verbose", count=True, help=VERBOSE_HELP)
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", help=LOG_FORMAT_HELP
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
    for stream in (sys.stdout, sys.stderr):
        # A file name that is not UTF-8 (git gives such names undecoded, Python carries
        # them as surrogates) is printed escaped, not a UnicodeEncodeError's traceback
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    setup_logging(verbose, log_format)
