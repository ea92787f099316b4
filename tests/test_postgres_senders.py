"""Beyond one machine: several senders on one entry, limits across them, one active
watcher with a standby, and unsubscribes from any web host, all on the real PostgreSQL
server (each test in a schema of its own)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import IO, Any

import pytest

from conftest import SECRET, clean_environ, command, http_request, serving, wait_for
from delivery_helpers import add_subscribers, point_at
from postgres_helpers import query
from smtp_server import ReceivedMessage, RecordingServer
from statusmail.tokens import Keyring, unsubscribe_token

ENTRY = "update-2020-04-21"
SAMPLE = 14  # the sample's recipients of the entry
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def configure(project: Path, port: int, count: int, **sending: Any) -> list[str]:
    """The sample project sending ``ENTRY`` to ``SAMPLE + count`` recipients over SMTP."""
    addresses = add_subscribers(project, count)
    point_at(project, port, **{"concurrency": 4, "lease": 2, **sending})
    return addresses


def senders(project: Path, postgres: str, n: int, *args: str) -> list[subprocess.Popen[str]]:
    env = clean_environ(STATUSMAIL_UNSUBSCRIBE_SECRET=SECRET, STATUSMAIL_LEDGER=postgres)
    return [
        subprocess.Popen(
            command(project, *args),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]


def finish(processes: list[subprocess.Popen[str]], timeout: float = 120) -> list[int]:
    codes = []
    for process in processes:
        _, stderr = process.communicate(timeout=timeout)
        assert "Traceback" not in stderr, stderr
        if process.returncode:
            print(f"exit {process.returncode}:\n{stderr}")  # shown when the test fails
        codes.append(process.returncode)
    return codes


def recipient_of(message: ReceivedMessage) -> str:
    return message.rcpt_tos[0].lower()


def ledger_sent(postgres: str) -> dict[str, str]:
    rows = query(
        postgres,
        "SELECT address, message_id FROM deliveries WHERE entry_id = %s AND status = 'sent'",
        ENTRY,
    )
    return {address: message_id for address, message_id in rows}


@pytest.mark.timeout(120)
def test_three_senders_share_one_entry_and_send_everyone_once(
    project: Path,
    postgres: str,
) -> None:
    with RecordingServer() as server:
        configure(project, server.port, 10_000 - SAMPLE)
        processes = senders(project, postgres, 3, "send", ENTRY, "--yes")
        assert finish(processes) == [0, 0, 0]
        counts = server.count_by_recipient()
    assert len(counts) == 10_000 and set(counts.values()) == {1}
    sent = ledger_sent(postgres)
    assert len(sent) == 10_000
    # the ledger agrees with the server: the same messages (a Message-ID per recipient)
    assert sorted(sent.values()) == sorted(m.message["Message-ID"] for m in server.messages)
    # nothing is left held: every claim was given back or ended in an outcome
    assert query(postgres, "SELECT COUNT(*) FROM deliveries WHERE claimed_by IS NOT NULL") == [(0,)]


@pytest.mark.timeout(120)
def test_a_killed_sender_s_recipients_are_finished_by_the_others(
    project: Path,
    postgres: str,
) -> None:
    with RecordingServer() as server:
        addresses = configure(project, server.port, 1_500, rate=200)
        processes = senders(project, postgres, 3, "send", ENTRY, "--yes")
        wait_for(lambda: len(server.messages) >= 300, timeout=60, what="the first messages")
        killed = processes[0]  # the first to start: most likely the one selecting
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=10)
        assert finish(processes[1:]) == [0, 0]
        counts = server.count_by_recipient()
        messages = server.messages
    assert set(counts) >= {a.lower() for a in addresses}  # nobody missed
    assert len(counts) == SAMPLE + 1_500
    duplicates = {address: n for address, n in counts.items() if n > 1}
    assert sum(n - 1 for n in duplicates.values()) <= 4  # the killed one's connections
    for address in duplicates:  # a duplicate carries the same Message-ID
        assert len({m.message["Message-ID"] for m in messages if recipient_of(m) == address}) == 1
    assert query(postgres, "SELECT COUNT(*) FROM deliveries WHERE status = 'pending'") == [(0,)]


@pytest.mark.timeout(120)
def test_the_rate_holds_for_the_deployment_not_per_sender(
    project: Path,
    postgres: str,
) -> None:
    with RecordingServer() as server:
        configure(project, server.port, 2_000, rate=60)
        processes = senders(project, postgres, 3, "send", ENTRY, "--yes")
        wait_for(lambda: len(server.messages) >= 30, timeout=60, what="the first messages")
        start = server.messages[0].at + 1.0  # after the start-up of all three
        wait_for(lambda: server.messages[-1].at >= start + 20, timeout=60, what="20 s of sending")
        for process in processes:
            process.send_signal(signal.SIGTERM)
        assert set(finish(processes)) <= {0, 4}
        times = [m.at for m in server.messages if start <= m.at < start + 20]
    # Three senders at 60/s each would make 180/s: the limit is the deployment's.
    assert 60 * 20 * 0.95 <= len(times) <= 60 * 20 * 1.05, len(times) / 20

    def busiest(seconds: float) -> int:
        return max(sum(1 for t in times if s <= t < s + seconds) for s in times)

    # The slots are evenly spaced; what the relay sees also carries each process's
    # scheduling delay (three senders on two shared cores), which bunches a few
    # messages now and then, but never adds up over longer windows.
    assert busiest(1) <= 60 * 1.25, busiest(1)
    assert busiest(5) <= 5 * 60 * 1.05, busiest(5)


def read_until(stream: IO[str], wanted: str, timeout: float = 30) -> str:
    """Lines from ``stream`` up to one holding ``wanted`` (a readiness line)."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if wanted in line:
            return "".join(seen)
    raise AssertionError(f"no line with {wanted!r} in: {''.join(seen)}")


@pytest.mark.timeout(120)
def test_a_standby_watcher_takes_over_and_finishes_the_entry(
    project: Path,
    postgres: str,
) -> None:
    # one entry to send: the block notice goes, and the update no longer threads on it
    (project.parent / "updates" / "block-2020-01-23.yaml").unlink()
    update = project.parent / "updates" / f"{ENTRY}.yaml"
    text = update.read_text(encoding="utf-8")
    assert "\nthread: block-2020-01-23\n" in text
    update.write_text(text.replace("\nthread: block-2020-01-23\n", "\n"), encoding="utf-8")
    with RecordingServer() as server:
        configure(project, server.port, 600, rate=100)
        args = ("watch", "--poll-interval", "0.2", "--takeover", "3", "--log-format", "json")
        (active,) = senders(project, postgres, 1, *args)
        assert active.stderr is not None
        read_until(active.stderr, '"event": "watching"')
        (standby,) = senders(project, postgres, 1, *args)
        assert standby.stderr is not None
        read_until(standby.stderr, '"event": "standby"')
        wait_for(lambda: len(server.messages) >= 100, timeout=60, what="the first messages")
        active.send_signal(signal.SIGKILL)
        active.communicate(timeout=10)
        killed_at = time.monotonic()
        read_until(standby.stderr, '"event": "active"', timeout=10)
        assert time.monotonic() - killed_at <= 3 + 1  # within --takeover
        wait_for(
            lambda: len(server.count_by_recipient()) == SAMPLE + 600,
            timeout=60,
            what="the standby to finish the entry",
        )
        standby.send_signal(signal.SIGTERM)
        assert finish([standby]) == [0]
        counts = server.count_by_recipient()
    assert sum(n - 1 for n in counts.values()) <= 4
    assert query(postgres, "SELECT COUNT(*) FROM deliveries WHERE status = 'pending'") == [(0,)]


@pytest.mark.timeout(120)
def test_an_unsubscribe_on_a_web_host_stops_every_sender(
    project: Path,
    postgres: str,
) -> None:
    with RecordingServer() as server:
        addresses = configure(project, server.port, 1_500, rate=150)
        processes = senders(project, postgres, 2, "send", ENTRY, "--yes")
        wait_for(lambda: len(server.messages) >= 100, timeout=60, what="the first messages")
        late = addresses[-1].lower()  # far back in the queue: still pending
        assert query(
            postgres,
            "SELECT status FROM deliveries WHERE entry_id = %s AND address = %s",
            ENTRY,
            late,
        ) == [("pending",)]
        path = "/status/unsubscribe/" + unsubscribe_token(Keyring(SECRET.encode()), late)
        env_ledger = {"STATUSMAIL_LEDGER": postgres}
        with serving(project, SECRET, env=env_ledger) as port:
            status = http_request(port, "POST", path, b"List-Unsubscribe=One-Click", FORM).status
        answered = time.monotonic()
        assert status == 200
        assert finish(processes) == [0, 0]
        after = [m for m in server.messages if recipient_of(m) == late and m.at > answered]
    assert after == []
    assert query(
        postgres, "SELECT status FROM deliveries WHERE entry_id = %s AND address = %s", ENTRY, late
    ) == [("skipped",)]
