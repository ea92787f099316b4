"""Every command documents itself, and ``python -m statusmail`` is the same program."""

from __future__ import annotations

import re

import click
from click.testing import CliRunner

from conftest import invoke, statusmail
from statusmail.cli import main
from statusmail.cli.app import COMMAND_MODULES

# "Example:" alone on a line, then an indented command line, maybe after a variable
# it needs (click keeps the line breaks only of a paragraph marked with \b).
EXAMPLE = re.compile(r"^ *Examples?:\n +((?:[A-Z_]+=\S+ )*statusmail\b.*)$", re.MULTILINE)


def all_commands(
    group: click.Group = main, prefix: tuple[str, ...] = ()
) -> dict[tuple[str, ...], click.Command]:
    """Every command, subcommands of groups included, by its path of names (as --help
    and completion find them: the top level's are imported when asked for)."""
    found: dict[tuple[str, ...], click.Command] = {}
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert command is not None, name
        found[(*prefix, name)] = command
        if isinstance(command, click.Group):
            found.update(all_commands(command, (*prefix, name)))
    return found


def example_in(help_output: str) -> str | None:
    """The example command line of a ``--help`` output, if it has one."""
    found = EXAMPLE.search(help_output)
    return found[1] if found else None


def test_every_command_has_help_text() -> None:
    commands = all_commands()
    names = {" ".join(path) for path in commands}
    assert {
        "check",
        "send",
        "status",
        "list",
        "watch",
        "serve",
        "suppress add",
        "suppress remove",
        "suppress list",
        "suppress export",
    } <= names
    for path, command in commands.items():
        name = " ".join(path)
        assert command.help and len(command.help.strip()) > 20, f"{name} lacks help text"
        result = invoke(None, *path, "--help")
        assert result.exit_code == 0, name
        example = example_in(result.output)
        assert example, f"statusmail {name} --help shows no example:\n{result.output}"
        assert f"statusmail {name}" in example, f"{name}: the example is {example!r}"
        first_line = " ".join(command.help.strip().splitlines()[0].split())
        assert first_line in " ".join(result.output.split())
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{name} {param.opts} lacks help text"


def test_each_command_is_found_in_the_module_that_defines_it() -> None:
    """A process imports only the module of the command it runs: ``COMMAND_MODULES``
    names each command's, and every command defined is in it."""
    commands = {path[0]: command for path, command in all_commands().items()}
    assert set(commands) == set(main.commands) == set(COMMAND_MODULES)
    for name, command in commands.items():
        assert command.callback is not None, name
        defined_in = command.callback.__module__
        assert defined_in == f"statusmail.cli.{COMMAND_MODULES[name]}", (name, defined_in)


def test_the_program_has_an_example_too() -> None:
    result = invoke(None, "--help")
    assert result.exit_code == 0
    example = example_in(result.output)
    assert example and example.startswith("statusmail "), result.output


def test_a_help_text_without_an_example_is_caught() -> None:
    """The check above would fail for a command whose example went missing or was run
    into its paragraph."""

    @click.command()
    def plain() -> None:
        """Do a thing to the service and say what was done, briefly.

        Example: statusmail plain --now
        """

    @click.command()
    def kept() -> None:
        """Do a thing to the service and say what was done, briefly.

        \b
        Example:
          statusmail kept --now
        """

    runner = CliRunner()
    assert example_in(runner.invoke(plain, ["--help"]).output) is None
    assert example_in(runner.invoke(kept, ["--help"]).output) == "statusmail kept --now"


def test_python_dash_m_runs_the_same_cli() -> None:
    result = statusmail(None, "--help", timeout=60)
    assert result.returncode == 0
    for path in all_commands():
        assert path[0] in result.stdout


def test_usage_error_exits_2() -> None:
    result = invoke(None, "send")
    assert result.exit_code == 2
    result = invoke(None, "no-such-command")
    assert result.exit_code == 2


def test_a_usage_error_in_a_real_process_is_usage_and_exit_2() -> None:
    """The other tests run usage errors in-process; here the one a user meets."""
    result = statusmail(None, "send", "--dry-run", timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("Usage: ")
    assert "Missing argument 'ID'" in result.stderr
