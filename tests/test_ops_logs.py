"""``--log-format json`` (issues 13 and 20): one object per line with stable fields, an
``event`` on every line, and no address unmasked in any field, from real runs of
``watch`` against aiosmtpd and ``serve`` over real HTTP; the PostgreSQL driver's warnings,
a fatal error and an unexpected exception are JSON lines too."""

from __future__ import annotations

import csv
import json
import logging
import re
import secrets
import signal
import sys
import unicodedata
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from conftest import SECRET, UPDATE, http_request, invoke, loggers_kept, server_url
from delivery_helpers import add_subscribers, point_at
from masking_helpers import STARRED, TEXTS, shown_unmasked
from ops_helpers import Service, serve_process
from postgres_helpers import query
from smtp_server import RecordingServer
from statusmail.__main__ import run
from statusmail.cli import JsonFormatter, TextFormatter
from statusmail.project.tokens import Keyring, unsubscribe_token

STABLE = {"time", "level", "logger", "event", "message"}
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}")


def every_address(config: Path) -> set[str]:
    """Every address in the project's subscriber files, as written and lower-cased."""
    found: set[str] = set()
    for path in (config.parent / "subscribers").iterdir():
        if path.suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as handle:
                found |= {row["email"].strip() for row in csv.DictReader(handle)}
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            rows = data.get("subscribers", data) if isinstance(data, dict) else data
            found |= {str(row["email"]).strip() for row in rows if isinstance(row, dict)}
    return {a for a in found if "@" in a} | {a.lower() for a in found if "@" in a}


def check_lines(text: str, addresses: set[str]) -> list[dict[str, Any]]:
    records = []
    for line in text.splitlines():
        record = json.loads(line)  # every line is one object
        assert set(record) >= STABLE, line
        assert TIME.fullmatch(record["time"]), line
        assert record["level"] in ("debug", "info", "warning", "error", "critical"), line
        assert isinstance(record["event"], str) and record["event"], line
        leaked = [a for a in addresses if a in line]
        assert not leaked, f"{leaked} in {line}"
        records.append(record)
    return records


@pytest.mark.timeout(90)
def test_watch_logs_json_with_events_entries_relay_and_masked_recipients(project: Path) -> None:
    added = add_subscribers(project, 20)
    refused, busy = added[3], added[5]
    with RecordingServer(
        # The refusal quotes the address, as real servers do: the log must not.
        reject_rcpt={refused: f"550 5.1.1 <{refused}>: Recipient address rejected"},
        data_reply=lambda _n, env: "451 4.7.1 Try later" if busy in env.rcpt_tos else None,
    ) as server:
        point_at(project, server.port, max_attempts=3)
        service = Service(project, "watch", "--once", "--poll-interval", "0.2")
        returncode = service.wait(timeout=60)
    assert returncode == 0, service.text
    records = check_lines(service.text, every_address(project))
    events = [r["event"] for r in records]
    relay = f"127.0.0.1:{server.port}"

    for expected in ("watching", "sending", "selected", "refused", "gave_up", "run_finished"):
        assert expected in events, events
    sending = next(r for r in records if r["event"] == "sending")
    assert sending["entry"] == "block-2020-01-23" and sending["relay"] == relay
    refusal = next(r for r in records if r["event"] == "refused")
    assert refusal["recipient"] == "u***@example.net"
    assert (refusal["entry"], refusal["relay"], refusal["code"]) == ("block-2020-01-23", relay, 550)
    assert "u***@example.net" in refusal["message"]
    gave_up = next(r for r in records if r["event"] == "gave_up")
    assert (gave_up["recipient"], gave_up["code"], gave_up["attempts"]) == (
        "u***@example.net",
        451,
        3,
    )
    finished = [r for r in records if r["event"] == "run_finished"]
    assert [r["entry"] for r in finished] == ["block-2020-01-23", "update-2020-04-21"]
    assert all(r["relay"] == relay for r in finished)
    assert finished[0]["failed"] == 2 and finished[0]["pending"] == 0
    assert finished[0]["sent"] == 18 + 20 - 2
    assert all(isinstance(r["sent"], int) for r in finished)


def test_serve_logs_json_and_never_the_token_or_the_address(project: Path) -> None:
    address = "Reader.One@Example.org"
    token = unsubscribe_token(Keyring(SECRET.encode()), address.lower())
    with serve_process(project, "--log-format", "json") as (port, process):
        body = b"List-Unsubscribe=One-Click"
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        status, _ = http_request(port, "POST", f"/status/unsubscribe/{token}", body, headers).pair()
        assert status == 200
        assert http_request(port, "GET", "/metrics").status == 200
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    records = check_lines(stderr, {address, address.lower()})
    assert [r["event"] for r in records][:2] == ["listening", "unsubscribed"]
    assert token not in stderr


EMAILS = st.emails()
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


@given(address=EMAILS, before=TEXT, after=TEXT, field=st.booleans())
def test_no_address_survives_the_json_formatter(
    address: str, before: str, after: str, field: bool
) -> None:
    local = address.rpartition("@")[0]
    assume(not local.endswith("***"))  # that one reads as masked already
    assume(local.strip("*"))  # "*@a.ac" masked is "****@a.ac", which holds it
    text = f"{before}{address}{after}"
    record = logging.LogRecord("statusmail", logging.WARNING, __file__, 1, "%s", (text,), None)
    if field:
        record.recipient = text
        record.msg, record.args = "nothing here", ()
    line = JsonFormatter().format(record)
    assert address not in json.loads(line)["recipient" if field else "message"]
    assert json.loads(line)["event"] == "other"


def logged(text: str) -> str:
    """``text`` as the JSON log's ``message`` has it."""
    record = logging.LogRecord("statusmail", logging.WARNING, __file__, 1, "%s", (text,), None)
    message = json.loads(JsonFormatter().format(record))["message"]
    assert isinstance(message, str)
    return message


def nfd(text: str) -> str:
    """``text`` decomposed (``й`` as ``и`` and a combining breve), as macOS writes names."""
    return unicodedata.normalize("NFD", text)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        # A combining mark (no \w) just before the @ or in the domain: no match at all.
        (nfd("skipped андрей@пример.рф"), nfd("skipped а***@пример.рф")),
        (nfd("skipped anna@почтай.рф"), nfd("skipped a***@почтай.рф")),
        ("skipped anna😀@example.org", "skipped a***@example.org"),
        # A domain of one label, or a literal: the rule wanted a dot and \w.
        ("relay said anna@localhost", "relay said a***@localhost"),
        ("relay said anna@[192.0.2.1]", "relay said a***@[192.0.2.1]"),
        # A second address in a link: its local part did not start the run.
        ("link mailto:anna@example.org?cc=bob@example.net", "link mailto:a***@example.net"),
        (
            "link https://x.example/u?to=anna@example.org&cc=bob@example.net",
            "link https:/***@example.net",
        ),
        ('unknown "john doe"@example.org', 'unknown "j***@example.org'),
        ("GET /status/u?email=anna%40example.org", "GET /***%40example.org"),
    ],
)
def test_an_address_the_log_showed_is_masked(text: str, shown: str) -> None:
    assert logged(text) == shown


@settings(max_examples=75, deadline=None)
@given(TEXTS)
def test_the_log_shows_no_address_any_rule_before_masked(text: str) -> None:
    message = logged(text)
    assert not shown_unmasked(text, message)


@settings(max_examples=75, deadline=None)
@given(STARRED)
def test_the_log_masks_masked_text_as_it_is(text: str) -> None:
    assert logged(logged(text)) == logged(text)


def as_role(url: str, role: str) -> str:
    """``url`` connecting as ``role`` (trust authentication: no password)."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{role}@{rest.rpartition('@')[2]}"


def test_json_logs_hold_the_drivers_warnings_and_the_fatal_error(
    project: Path, postgres: str
) -> None:
    # A role the server lets open 3 connections: the ledger's, the selection's and one
    # for the senders' pool, which warns when 8 connections' claims make it grow past it.
    import psycopg

    add_subscribers(project, 200)

    role = f"statusmail_test_{secrets.token_hex(4)}"
    schema = query(postgres, "SELECT current_schema()")[0][0]
    with psycopg.connect(server_url(), autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 3")
        try:
            admin.execute(f"GRANT ALL ON SCHEMA {schema} TO {role}")
            env = {"STATUSMAIL_LEDGER": as_role(postgres, role)}
            args = ("--log-format", "json", "send", UPDATE, "--yes")
            sent = invoke(project, *args, "--rate", "0", "--concurrency", "8", env=env)
            assert sent.exit_code == 0, sent.stderr
            records = check_lines(sent.stderr, every_address(project))
            # Whether the pool has to grow past the role's limit depends on how the
            # workers' claims and group commits overlap: what it
            # says when it does is a JSON warning (and see the test below).
            warned = [r for r in records if r["logger"].startswith("psycopg")]
            assert {r["level"] for r in warned} <= {"warning"}, records
            assert all("too many connections" in r["message"] for r in warned)

            # Exhausted: the run stops at once, on one line naming the server (exit 4).
            # (another entry: this one went out in full, which a run says without one)
            admin.execute(f"ALTER ROLE {role} CONNECTION LIMIT 1")
            other = ("--log-format", "json", "send", "block-2020-01-23", "--yes")
            again = invoke(project, *other, env=env)
            assert again.exit_code == 4, again.stderr
            records = check_lines(again.stderr, every_address(project))
            [fatal] = [r for r in records if r["level"] == "error"]
            assert fatal["event"] == "stopped"
            assert fatal["message"].startswith("stopped: postgresql://127.0.0.1")
            assert "too many connections" in fatal["message"]
        finally:
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")


def test_a_driver_warning_is_a_json_line_of_its_own_logger(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """psycopg's pool warns through its logger (e.g. "error connecting in 'pool-1'"),
    which the JSON log takes as it takes statusmail's own lines."""
    from statusmail.cli.output import setup_logging

    with loggers_kept():
        setup_logging(0, "json")
        logging.getLogger("psycopg.pool").warning(
            "error connecting in %r: %s", "pool-1", "too many connections for role x"
        )
        logging.getLogger("psycopg.pool").info("a pool's routine line, not shown")
    [record] = check_lines(capsys.readouterr().err, set())
    assert (record["logger"], record["level"]) == ("psycopg.pool", "warning")
    assert record["message"] == "error connecting in 'pool-1': too many connections for role x"


def test_an_unexpected_exception_is_one_json_line(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    address = "reader.one@example.org"

    def broken(*_args: object) -> NoReturn:
        raise RuntimeError(f"a fault injected for {address}")  # no real part fails so

    monkeypatch.setattr("statusmail.commands.reports.list_entries", broken)
    argv = ["statusmail", "--log-format", "json", "list", "--config", str(project)]
    monkeypatch.setattr(sys, "argv", argv)
    # As in a process of its own, no signal was taken yet (a test before this one in
    # this process may have raised one through statusmail's handler: it keeps a record).
    monkeypatch.setattr("statusmail.signals.received", [])
    monkeypatch.setattr("statusmail.__main__._received", [])
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with loggers_kept(), pytest.raises(SystemExit) as exited:
            run()  # python -m statusmail, in this process
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert exited.value.code == 1
    [crash] = check_lines(capsys.readouterr().err, {address})
    assert (crash["level"], crash["event"], crash["type"]) == ("critical", "crash", "RuntimeError")
    assert crash["message"].startswith("unexpected RuntimeError: a fault injected for r***@")
    assert crash["traceback"].startswith("Traceback (most recent call last):")
    assert "in broken" in crash["traceback"]


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_a_text_log_line_is_one_printable_line_whatever_its_message(text: str) -> None:
    """A relay's reply or a bounce's field logged with ESC sequences cleared the
    operator's terminal and drew what it liked; a line break in one forged a line."""
    record = logging.LogRecord("statusmail", logging.INFO, __file__, 1, "said %s", (text,), None)
    line = TextFormatter("%(levelname)s %(message)s").format(record)
    assert line.isprintable(), line
    assert line == f"INFO said {text}" or not text.isprintable()
