"""A deployment of several hosts on the real PostgreSQL server (each test in a schema of
its own): the rate is the deployment's, one watcher is active and a standby takes over,
and an unsubscribe on a web host stops every sender."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import IO

import pytest

from conftest import SECRET, http_request, serving, wait_for
from postgres_helpers import ENTRY, SAMPLE, configure, finish, query, recipient_of, senders
from smtp_server import RecordingServer
from statusmail.project.tokens import Keyring, unsubscribe_token

FORM = {"Content-Type": "application/x-www-form-urlencoded"}

# The deployment's rate, and the window it is measured over: 360 messages, so the
# bounds below (5 %) are 18 messages either way, far from the 3 times as many that
# senders each keeping the rate would make.
RATE = 60
WINDOW = 6


@pytest.mark.timeout(120)
def test_the_rate_holds_for_the_deployment_not_per_sender(
    project: Path,
    postgres: str,
) -> None:
    with RecordingServer() as server:
        # enough for the start-up and the window, with seconds to spare
        configure(project, server.port, 1_000, rate=RATE)
        processes = senders(project, postgres, 3, "send", ENTRY, "--yes")
        wait_for(lambda: len(server.messages) >= 30, timeout=60, what="the first messages")
        start = server.messages[0].at + 1.0  # after the start-up of all three
        wait_for(
            lambda: server.messages[-1].at >= start + WINDOW,
            timeout=60,
            what=f"{WINDOW} s of sending",
        )
        for process in processes:
            process.send_signal(signal.SIGTERM)
        assert set(finish(processes)) <= {0, 4}
        times = [m.at for m in server.messages if start <= m.at < start + WINDOW]
    # Three senders at 60/s each would make 180/s: the limit is the deployment's.
    assert RATE * WINDOW * 0.95 <= len(times) <= RATE * WINDOW * 1.05, len(times) / WINDOW

    def busiest(seconds: float) -> int:
        return max(sum(1 for t in times if s <= t < s + seconds) for s in times)

    # The slots are evenly spaced; what the relay sees also carries each process's
    # scheduling delay (three senders on two shared cores), which bunches a few
    # messages now and then, but never adds up over longer windows.
    assert busiest(1) <= RATE * 1.25, busiest(1)
    assert busiest(5) <= 5 * RATE * 1.05, busiest(5)


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
        configure(project, server.port, 200, rate=100)
        args = ("watch", "--poll-interval", "0.2", "--takeover", "3", "--log-format", "json")
        (active,) = senders(project, postgres, 1, *args)
        assert active.stderr is not None
        read_until(active.stderr, '"event": "watching"')
        (standby,) = senders(project, postgres, 1, *args)
        assert standby.stderr is not None
        read_until(standby.stderr, '"event": "standby"')
        wait_for(lambda: len(server.messages) >= 60, timeout=60, what="the first messages")
        active.send_signal(signal.SIGKILL)
        active.communicate(timeout=10)
        killed_at = time.monotonic()
        read_until(standby.stderr, '"event": "active"', timeout=10)
        assert time.monotonic() - killed_at <= 3 + 1  # within --takeover
        wait_for(
            lambda: len(server.count_by_recipient()) == SAMPLE + 200,
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
        addresses = configure(project, server.port, 400, rate=150)
        late = addresses[-1].lower()  # far back in the queue: still pending
        path = "/status/unsubscribe/" + unsubscribe_token(Keyring(SECRET.encode()), late)
        env_ledger = {"STATUSMAIL_LEDGER": postgres}
        # the web host is up before the senders start: the unsubscribe is answered a
        # moment after the first messages, with the late recipient seconds away
        with serving(project, SECRET, env=env_ledger) as port:
            processes = senders(project, postgres, 2, "send", ENTRY, "--yes")
            wait_for(lambda: len(server.messages) >= 100, timeout=60, what="the first messages")
            assert query(
                postgres,
                "SELECT status FROM deliveries WHERE entry_id = %s AND address = %s",
                ENTRY,
                late,
            ) == [("pending",)]
            status = http_request(port, "POST", path, b"List-Unsubscribe=One-Click", FORM).status
            answered = time.monotonic()
        assert status == 200
        assert finish(processes) == [0, 0]
        after = [m for m in server.messages if recipient_of(m) == late and m.at > answered]
    assert after == []
    assert query(
        postgres, "SELECT status FROM deliveries WHERE entry_id = %s AND address = %s", ENTRY, late
    ) == [("skipped",)]
