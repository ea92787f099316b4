"""``--log-format json`` (issue 13): one object per line with stable fields, an
``event`` on every line, and no address unmasked in any field, from real runs of
``watch`` against aiosmtpd and ``serve`` over real HTTP."""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import assume, given
from hypothesis import strategies as st

from conftest import SECRET, http_request
from delivery_helpers import add_subscribers, point_at
from ops_helpers import Service, serve_process
from smtp_server import RecordingServer
from statusmail.cli import JsonFormatter
from statusmail.tokens import Keyring, unsubscribe_token

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
    text = f"{before}{address}{after}"
    record = logging.LogRecord("statusmail", logging.WARNING, __file__, 1, "%s", (text,), None)
    if field:
        record.recipient = text
        record.msg, record.args = "nothing here", ()
    line = JsonFormatter().format(record)
    assert address not in json.loads(line)["recipient" if field else "message"]
    assert json.loads(line)["event"] == "other"
