"""Several sender processes on one host (``sending.processes``): the run's parent and a
helper share the ledger's queue, everyone gets one message, the global rate holds; a
helper killed mid-run leaves nobody out; SIGTERM to the parent ends them all at once."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from conftest import SECRET, UPDATE_AUDIENCE, spawn, wait_for
from delivery_helpers import add_subscribers, point_at, send
from postgres_helpers import query
from smtp_server import RecordingServer

# Messages a second, all processes together: 50, not 100, so that two senders, each of
# which alone sends several times that, keep it while the rest of the suite loads both
# cores (at 100 a clean-clone run counted 483 of 500: the senders fell behind their slots)
RATE = 50.0
WINDOW = 5.0  # seconds counted, once both processes send (issue 22: ±3 % over 5 s; over
# 1 s a single stall of 90 ms on a loaded machine failed a clean-clone run: 91 of 100)


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux: /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            with (task / "children").open() as handle:
                found += [int(word) for word in handle.read().split()]
        except FileNotFoundError:  # a thread that ended since the listing
            continue
    return found


def holding(ledger: Path | str, pid: int) -> bool:
    """Whether process ``pid`` holds a claim in the ledger (a SQLite file, or a
    PostgreSQL URL)."""
    sql = "SELECT COUNT(*) FROM deliveries WHERE claimed_by LIKE {}"
    if isinstance(ledger, str):
        return bool(query(ledger, sql.format("%s"), f"%:{pid}:%")[0][0])
    try:
        with contextlib.closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)) as db:
            return bool(db.execute(sql.format("?"), (f"%:{pid}:%",)).fetchall()[0][0])
    except sqlite3.OperationalError:  # not made yet
        return False


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def configure(project: Path, port: int, count: int, *, rate: float) -> set[str]:
    addresses = add_subscribers(project, count)
    point_at(project, port, processes=2, concurrency=2, lease=1, rate=rate)
    return {a.lower() for a in addresses}


@pytest.mark.timeout(60)
def test_two_processes_send_everyone_once_at_the_global_rate(
    project: Path, ledger_target: str | Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATUSMAIL_LEDGER", str(ledger_target))
    joined: list[float] = []
    ended = threading.Event()

    def the_helper_claims() -> None:
        """When the helper first holds a claim (not at all if the run ends first)."""
        while not ended.is_set():
            helpers = children(os.getpid())
            if helpers and holding(ledger_target, helpers[0]):
                joined.append(time.monotonic())
                return
            time.sleep(0.02)

    with RecordingServer() as server:
        # The helper starts in about a second (several on a loaded machine): the list
        # lasts long enough that it sends for a while.
        addresses = configure(project, server.port, int(RATE * (WINDOW + 3)), rate=RATE)
        watcher = threading.Thread(target=the_helper_claims, daemon=True)
        watcher.start()
        code, report, stderr = send(project)
        ended.set()
        watcher.join(5)
        counts = server.count_by_recipient()
        times = sorted(m.at for m in server.messages)
    assert code == 0, stderr
    assert set(counts) >= addresses and set(counts.values()) == {1}
    assert report["this_run"]["sent"] == len(counts) == len(addresses) + UPDATE_AUDIENCE
    assert "1 more sender process(es)" in stderr
    # Both processes sent (the helper's own log line, passed on by the parent) ...
    assert joined and stderr.count("delivering through") == 2, stderr
    # ... and together kept the rate, over a window once the helper had a claim.
    start = joined[0]
    assert start + WINDOW < times[-1], "the helper joined too late for a window"
    within = sum(start <= t < start + WINDOW for t in times)
    print(f"{within} messages in {WINDOW}s: {within / WINDOW:.1f}/s (rate {RATE:g})")
    assert abs(within - RATE * WINDOW) <= 0.03 * RATE * WINDOW


@pytest.mark.timeout(60)
def test_a_killed_helper_leaves_nobody_out(project: Path) -> None:
    killed: list[int] = []
    sessions: list[int] = []
    ledger = project.parent / "statusmail.db"

    def kill_the_helper() -> None:
        helper = wait_for(lambda: children(os.getpid()), timeout=30, what="the helper")[0]
        wait_for(lambda: holding(ledger, helper), timeout=30, what="the helper's claim")
        sessions.append(os.getsid(helper))  # its own: out of a terminal's Ctrl-C
        os.kill(helper, signal.SIGKILL)
        killed.append(helper)

    with RecordingServer() as server:
        addresses = configure(project, server.port, 600, rate=150)
        killer = threading.Thread(target=kill_the_helper, daemon=True)
        killer.start()
        code, report, stderr = send(project)
        killer.join(5)
        counts = server.count_by_recipient()
    assert killed, "the helper was never killed"
    assert sessions == killed != [os.getsid(0)]
    assert code == 0, stderr
    assert set(counts) >= addresses  # nobody missed
    # at most one unrecorded message per connection of the killed process is sent again
    assert sum(n - 1 for n in counts.values()) <= 2
    assert f"(pid {killed[0]}) ended by signal SIGKILL" in stderr
    assert report["counts"]["pending"] == 0


@pytest.mark.timeout(60)
def test_sigterm_to_the_parent_ends_every_process_within_a_second(project: Path) -> None:
    with RecordingServer() as server:
        configure(project, server.port, 2_000, rate=400)
        env = {"STATUSMAIL_UNSUBSCRIBE_SECRET": SECRET}
        with spawn(project, "send", "--yes", "update-2020-04-21", env=env) as running:
            helpers = wait_for(lambda: children(running.pid), timeout=30, what="the helper")
            ledger = project.parent / "statusmail.db"
            wait_for(lambda: holding(ledger, helpers[0]), timeout=30, what="its claim")
            signalled = time.monotonic()
            running.send_signal(signal.SIGTERM)
            code = running.finish(timeout=10)
            ended = time.monotonic() - signalled
            assert not [pid for pid in helpers if alive(pid)]
    print(f"ended {ended:.2f}s after SIGTERM")
    assert code == 4, running.stderr
    assert ended < 1.0


@pytest.mark.parametrize("cores", [1, 2, 4])
def test_unset_processes_leave_a_core_to_each_signer_with_a_dkim_key(
    project: Path, monkeypatch: pytest.MonkeyPatch, cores: int
) -> None:
    """Unset, ``sending.processes`` is the cores; with a DKIM key every sender process
    has a signer process beside it, so half of them (at least one) send."""
    from statusmail import pipeline, senders
    from statusmail.project.config import load_config

    monkeypatch.setattr(senders, "available_cores", lambda: cores)  # the machine's size
    point_at(project, 25)
    unsigned = senders.extra_processes(load_config(project), pipeline.Request())
    (project.parent / "dkim.key").write_bytes(b"(read only when a run signs)")
    with project.open("a", encoding="utf-8") as handle:
        handle.write("dkim: {domain: startmail.example, selector: status, key_file: dkim.key}\n")
    signed = senders.extra_processes(load_config(project), pipeline.Request())
    assert (unsigned, signed) == (cores - 1, max(1, cores // 2) - 1)
