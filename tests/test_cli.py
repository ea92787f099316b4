"""Every command documents itself, and ``python -m statusmail`` is the same program."""

from __future__ import annotations

import subprocess
import sys

import click
from click.testing import CliRunner

from statusmail.cli import main


def all_commands(
    group: click.Group = main, prefix: tuple[str, ...] = ()
) -> dict[tuple[str, ...], click.Command]:
    """Every command, subcommands of groups included, by its path of names."""
    found: dict[tuple[str, ...], click.Command] = {}
    for name, command in group.commands.items():
        found[(*prefix, name)] = command
        if isinstance(command, click.Group):
            found.update(all_commands(command, (*prefix, name)))
    return found


def test_every_command_has_help_text() -> None:
    runner = CliRunner()
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
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, name
        first_line = " ".join(command.help.strip().splitlines()[0].split())
        assert first_line in " ".join(result.output.split())
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{name} {param.opts} lacks help text"


def test_python_dash_m_runs_the_same_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "statusmail", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for path in all_commands():
        assert path[0] in result.stdout


def test_usage_error_exits_2() -> None:
    result = CliRunner().invoke(main, ["send"])
    assert result.exit_code == 2
    result = CliRunner().invoke(main, ["no-such-command"])
    assert result.exit_code == 2
