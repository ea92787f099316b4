"""Secrets without surprises (issue 20): an empty secret file, or a variable and its
``*_FILE`` both set, is one line naming them; the published development secret is used
only when nothing at all is set, and says so each time a command announces it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from conftest import SECRET, invoke
from statusmail.errors import ConfigError
from statusmail.project.config import load_config
from statusmail.project.secrets import DEV_UNSUBSCRIBE_SECRET, read_secret

NAME = "STATUSMAIL_UNSUBSCRIBE_SECRET"
PREVIOUS = "STATUSMAIL_UNSUBSCRIBE_PREVIOUS_SECRETS"


def error_lines(stderr: str) -> list[str]:
    """The lines of a command that refused to start (no notes, no summary)."""
    return [line for line in stderr.splitlines() if line and not line.startswith("note: ")]


@pytest.mark.parametrize("content", ["", "  \r\n"])
def test_an_empty_secret_file_is_an_error_naming_the_file(
    project: Path, tmp_path: Path, content: str
) -> None:
    empty = tmp_path / "unsubscribe.secret"
    empty.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        read_secret(NAME, {f"{NAME}_FILE": str(empty)})
    [problem] = info.value.problems
    assert problem.path == empty and f"${NAME}_FILE" in problem.message

    # as a command says it: one line, the file first
    sent = invoke(project, "send", "update-2020-04-21", "--yes", env={f"{NAME}_FILE": str(empty)})
    assert sent.exit_code == 1
    assert error_lines(sent.stderr) == [str(problem)]


def test_an_empty_credential_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / NAME).write_text("", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        read_secret(NAME, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert info.value.problems[0].path == tmp_path / NAME
    assert "$CREDENTIALS_DIRECTORY" in info.value.problems[0].message


@pytest.mark.parametrize("name", [NAME, "STATUSMAIL_SMTP_PASSWORD"])
def test_a_variable_and_its_file_both_set_is_an_error_naming_both(
    project: Path, tmp_path: Path, name: str
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET, encoding="utf-8")
    both = {name: SECRET, f"{name}_FILE": str(secret_file)}
    with pytest.raises(ConfigError) as info:
        read_secret(name, both)
    [problem] = info.value.problems
    assert f"${name}" in str(problem) and f"${name}_FILE" in str(problem)
    assert SECRET not in str(problem)

    env = {NAME: SECRET, "STATUSMAIL_TRANSPORT": "smtp", "STATUSMAIL_SMTP_PASSWORD": "pw"}
    checked = invoke(project, "check", env={**env, **both})
    assert checked.exit_code == 1
    assert [line for line in error_lines(checked.output) if f"${name}_FILE" in line] == [
        str(problem)
    ]


def test_the_development_secret_only_when_nothing_is_set(
    project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_config(project, {})
    with caplog.at_level(logging.WARNING, logger="statusmail"):
        keys, is_dev = config.keyring({}, announce=True)
        config.keyring({}, announce=True)  # a second start says it again
        config.keyring({})  # a check that says it its own way: no log line
    assert (keys.secret, is_dev) == (DEV_UNSUBSCRIBE_SECRET.encode(), True)
    said = [r for r in caplog.records if getattr(r, "event", None) == "dev_secret"]
    assert len(said) == 2
    assert f"${NAME} is not set" in said[0].getMessage()
    assert said[0].levelno == logging.WARNING

    # anything set that gives no secret is an error, never the stand-in
    empty_file = tmp_path / "empty"
    empty_file.write_text("", encoding="utf-8")
    for env in ({NAME: ""}, {PREVIOUS: SECRET}, {f"{NAME}_FILE": str(empty_file)}):
        with pytest.raises(ConfigError) as info:
            config.keyring(env, announce=True)
        assert len(info.value.problems) == 1
        assert SECRET not in str(info.value)
    assert len([r for r in caplog.records if getattr(r, "event", None) == "dev_secret"]) == 2
