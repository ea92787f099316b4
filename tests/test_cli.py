"""Every command documents itself, and ``python -m statusmail`` is the same program."""

from __future__ import annotations

import subprocess
import sys

import click
from click.testing import CliRunner

from statusmail.cli import main


def all_commands() -> dict[str, click.Command]:
    assert isinstance(main, click.Group)
    return dict(main.commands)


def test_every_command_has_help_text() -> None:
    runner = CliRunner()
    commands = all_commands()
    assert {"check", "send", "status", "list"} <= set(commands)
    for name, command in commands.items():
        assert command.help and len(command.help.strip()) > 20, f"{name} lacks help text"
        result = runner.invoke(main, [name, "--help"])
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
    for name in all_commands():
        assert name in result.stdout


def test_usage_error_exits_2() -> None:
    result = CliRunner().invoke(main, ["send"])
    assert result.exit_code == 2
    result = CliRunner().invoke(main, ["no-such-command"])
    assert result.exit_code == 2
