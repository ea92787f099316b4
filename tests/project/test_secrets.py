"""Secrets without surprises (issue 20): an empty secret file, or a variable and its
``*_FILE`` both set, is one line naming them; the published development secret is used
only when nothing at all is set, and says so each time a command announces it."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from conftest import SECRET, free_port, invoke
from statusmail.errors import ConfigError
from statusmail.project.config import Config, load_config
from statusmail.project.secrets import (
    DEV_UNSUBSCRIBE_SECRET,
    read_secret,
    secret_problems,
    secret_shape_problem,
)
from statusmail.project.tokens import unsubscribe_token, verify_unsubscribe_token

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


@pytest.mark.parametrize("retired", ["abc", DEV_UNSUBSCRIBE_SECRET, f"{SECRET},short"])
def test_a_retired_secret_must_be_as_strong_as_the_current_one(project: Path, retired: str) -> None:
    """A retired secret still verifies tokens: one of 3 bytes, or the published
    development secret, let anyone unsubscribe anyone through serve, and check said ok."""
    env = {NAME: SECRET, PREVIOUS: retired}
    served = invoke(project, "serve", "--port", str(free_port()), env=env)
    assert served.exit_code == 1
    assert f"${PREVIOUS} holds a secret that is" in served.stderr
    assert retired.split(",")[-1] not in served.stderr  # a secret is never printed
    checked = invoke(project, "check", env=env)  # the maildir outbox: a warning
    assert f"${PREVIOUS} holds a secret that is" in checked.output
    problems = secret_problems(smtp_config(project), env)
    assert "secret-short" in [p.code for p in problems if not p.warning]


def smtp_config(project: Path) -> Config:
    config = load_config(project, {})
    return dataclasses.replace(config, transport="smtp")


@pytest.mark.parametrize(
    ("current", "as_file"), [(f"{SECRET}\n", False), (f"{SECRET} \n", True), (SECRET, True)]
)
def test_a_secret_moved_to_the_previous_ones_as_it_was_keeps_its_links(
    project: Path, tmp_path: Path, current: str, as_file: bool
) -> None:
    """Rotation by moving the current value into $…_PREVIOUS_SECRETS: a value with a
    trailing line break or space (a Kubernetes secret, a file) was read whole as the
    current secret but stripped as a previous one, and every link already sent broke."""
    config = load_config(project, {})
    before: dict[str, str] = {}
    if as_file:
        secret_file = tmp_path / "current"
        secret_file.write_text(current, encoding="utf-8")
        before = {f"{NAME}_FILE": str(secret_file)}
    else:
        before = {NAME: current}
    old_keys, _ = config.keyring(before)
    token = unsubscribe_token(old_keys, "alice@example.org")
    new = "n" * 40
    retired = {f"{PREVIOUS}_FILE": before[f"{NAME}_FILE"]} if as_file else {PREVIOUS: current}
    new_keys, _ = config.keyring({NAME: new, **retired})
    assert verify_unsubscribe_token(new_keys, token) == "alice@example.org"
    assert verify_unsubscribe_token(config.keyring({NAME: new})[0], token) is None
    shape = secret_shape_problem(config, old_keys, False)
    assert (shape is not None) == (current != current.strip())


def test_a_previous_secrets_file_may_hold_one_a_line(project: Path, tmp_path: Path) -> None:
    config = load_config(project, {})
    first, second = "a" * 40, "b" * 40
    tokens = [
        unsubscribe_token(config.keyring({NAME: s})[0], "bo@example.org") for s in (first, second)
    ]
    listed = tmp_path / "previous"
    listed.write_text(f"{first}\n{second}\n", encoding="utf-8")
    keys, _ = config.keyring({NAME: "c" * 40, f"{PREVIOUS}_FILE": str(listed)})
    assert [verify_unsubscribe_token(keys, t) for t in tokens] == ["bo@example.org"] * 2


def test_a_credential_whose_link_dangles_is_an_error_naming_it(tmp_path: Path) -> None:
    """It counted as unset: a retired secret silently dropped (its links broken while
    check said ok), a current one "not set", or the development secret for the outbox."""
    (tmp_path / PREVIOUS).symlink_to(tmp_path / "..data" / PREVIOUS)
    with pytest.raises(ConfigError) as info:
        read_secret(PREVIOUS, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    [problem] = info.value.problems
    assert problem.path == tmp_path / PREVIOUS and "No such file" in problem.message
