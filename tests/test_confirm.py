"""On a terminal, ``send`` asks first; ``--yes`` and non-terminals do not. While it asks,
nothing is locked: the suppression list and the unsubscribe endpoint go on working, and
Ctrl-C cancels at once."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from conftest import (
    SECRET,
    UPDATE,
    clean_environ,
    command,
    http_request,
    invoke,
    outbox_count,
    outbox_messages,
    recipient,
    serving,
)
from pty_helpers import Terminal
from statusmail.project.tokens import Keyring, unsubscribe_token

PROMPT = "Type yes to send"


def on_terminal(config: Path, *args: str) -> Terminal:
    """``statusmail send`` of the April update on a pseudo-terminal."""
    return Terminal(
        command(config, "send", UPDATE, "--rate", "0", *args),
        clean_environ(COLUMNS="200", STATUSMAIL_UNSUBSCRIBE_SECRET=SECRET),
    )


def run_on_terminal(config: Path, answer: str) -> tuple[int, str]:
    """Run ``send`` on a terminal and type ``answer`` at the prompt."""
    with on_terminal(config) as terminal:
        terminal.read_until(PROMPT)
        terminal.type(answer)
        code = terminal.finish()
    return code, terminal.words()


def test_a_terminal_is_asked_and_no_sends_nothing(project: Path) -> None:
    code, output = run_on_terminal(project, "no")
    assert "Send update-2020-04-21 to 14 recipients" in output
    assert code == 1 and "nothing was recorded" in output
    assert not (project.parent / "outbox").exists()
    code, output = run_on_terminal(project, "yes")
    assert code == 0, output
    assert outbox_count(project) == 14


def test_while_the_prompt_waits_nothing_is_locked(project: Path) -> None:
    """Suppressing an address and a one-click unsubscribe each finish within 2 s while a
    person reads the prompt, and the run that follows respects both."""
    with on_terminal(project) as terminal:
        terminal.read_until(PROMPT)

        started = time.monotonic()
        added = invoke(project, "suppress", "add", "anna.petrova@example.org")
        assert added.exit_code == 0, added.stderr
        assert time.monotonic() - started < 2

        with serving(project, SECRET) as port:
            path = "/status/unsubscribe/" + unsubscribe_token(
                Keyring(SECRET.encode()), "ivan.smirnov@example.com"
            )
            started = time.monotonic()
            reply = http_request(
                port,
                "POST",
                path,
                b"List-Unsubscribe=One-Click",
                {"Content-Type": "application/x-www-form-urlencoded"},
            )
            assert reply.status == 200
            assert time.monotonic() - started < 2

        terminal.type("yes")
        assert terminal.finish() == 0, terminal.words()
    recipients = {recipient(message) for message in outbox_messages(project)}
    assert len(recipients) == 12
    assert not any("anna.petrova" in r or "ivan.smirnov" in r for r in recipients)


def test_a_list_changed_while_the_prompt_waits_is_selected_again_and_asked_again(
    project: Path,
) -> None:
    """Ivan unsubscribed in the list while the prompt waited: the run sent what was
    selected before the prompt, so he was mailed (even after statusmail import)."""
    main = project.parent / "subscribers" / "main.csv"
    row = "ivan.smirnov@example.com,Иван Смирнов,ru-RU,RU,service-status,active"
    with on_terminal(project) as terminal:
        terminal.read_until(PROMPT)
        text = main.read_text(encoding="utf-8")
        assert row in text
        main.write_text(text.replace(row, row.replace(",active", ",unsubscribed")), "utf-8")
        terminal.type("yes")
        terminal.read_until(f"{PROMPT}(.|\n)*{PROMPT}")  # asked again
        terminal.type("yes")
        assert terminal.finish() == 0, terminal.words()
    asked = terminal.words()
    assert "Send update-2020-04-21 to 14 recipients" in asked
    assert "Send update-2020-04-21 to 13 recipients" in asked
    recipients = {recipient(message) for message in outbox_messages(project)}
    assert len(recipients) == 13 and "ivan.smirnov@example.com" not in recipients


def test_ctrl_c_at_the_prompt_cancels_at_once(project: Path) -> None:
    with on_terminal(project) as terminal:
        # At once: a signal between the prompt's last byte and the read of the answer
        # ends the wait too (read in steps, not one blocking read).
        terminal.read_until(PROMPT)
        started = time.monotonic()
        terminal.process.send_signal(signal.SIGINT)
        code = terminal.finish(timeout=5)
    assert time.monotonic() - started < 2
    assert code == 4, terminal.words()
    assert "interrupted by SIGINT before delivery: nothing was sent" in terminal.words()
    assert not (project.parent / "outbox").exists()


def test_the_prompt_says_how_many_this_run_sends(project: Path) -> None:
    """With --limit 2 it asked to send to 14 and sent 2; on the re-run it asked for 12
    with a breakdown (3 en, 11 ru) that added up to 14."""
    with on_terminal(project, "--limit", "2") as terminal:
        terminal.read_until(PROMPT)
        terminal.type("yes")
        assert terminal.finish() == 4
    asked = terminal.words()
    assert "Send update-2020-04-21 to 2 recipients (of 14 selected: 3 en, 11 ru)" in asked
    assert outbox_count(project) == 2
    code, output = run_on_terminal(project, "no")
    assert "Send update-2020-04-21 to 12 recipients (of 14 selected: 3 en, 11 ru)" in output
    assert code == 1
