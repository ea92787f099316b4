"""``statusmail watch`` as a real subprocess against aiosmtpd (issue 5)."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from delivery_helpers import add_subscribers, ledger_rows, point_at, spawn
from smtp_server import RecordingServer

BLOCK_AUDIENCE = 18  # block-2020-01-23 on the sample subscribers
UPDATE_AUDIENCE = 14  # update-2020-04-21
NEW_ENTRY = """\
id: update-2020-05-01
date: 2020-05-01
status: {status}
thread: block-2020-01-23
audience: {{regions: [RU], topics: [service-status]}}
content:
  en: {{subject: "A short update", summary: "Nothing new yet.", body: "We will write again."}}
  ru: {{subject: "Короткая новость", summary: "Пока без изменений.", body: "Мы напишем снова."}}
"""
RU_AUDIENCE = 9


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def watch(config: Path) -> subprocess.Popen[str]:
    return spawn(config, "watch", "--poll-interval", "0.2", "--retry-after", "0.2")


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    return stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_sends_ready_entries_new_files_not_drafts_or_invalid_and_never_twice(
    project: Path,
) -> None:
    updates = project.parent / "updates"
    with RecordingServer() as server:
        point_at(project, server.port)
        process = watch(project)
        try:
            wait_for(lambda: len(server.messages) == BLOCK_AUDIENCE + UPDATE_AUDIENCE)
            # the oldest entry went first
            subjects = [m.message["Message-ID"] for m in server.messages]
            assert all("block-2020-01-23" in s for s in subjects[:BLOCK_AUDIENCE])
            (updates / "draft-2020-05-02.yaml").write_text(
                NEW_ENTRY.replace("update-2020-05-01", "draft-2020-05-02").format(status="draft"),
                encoding="utf-8",
            )
            (updates / "broken-2020-05-03.yaml").write_text(
                "id: broken-2020-05-03\ndate: 2020-05-03\nstatus: ready\ncontent: [\n",
                encoding="utf-8",
            )
            (updates / "update-2020-05-01.yaml").write_text(
                NEW_ENTRY.format(status="ready"), encoding="utf-8"
            )
            total = BLOCK_AUDIENCE + UPDATE_AUDIENCE + RU_AUDIENCE
            wait_for(lambda: len(server.messages) == total)
            time.sleep(1.0)  # several more scans: nothing else goes out
        finally:
            stderr = stop(process)
        assert len(server.messages) == total
        assert "broken-2020-05-03.yaml:5" in stderr or "broken-2020-05-03.yaml:4" in stderr
        assert "draft-2020-05-02" not in str([m.message["Message-ID"] for m in server.messages])
        assert not ledger_rows(project, "draft-2020-05-02")
        assert not ledger_rows(project, "broken-2020-05-03")

        # a restart sends nothing twice, even after the text of a sent entry changed
        entry = updates / "update-2020-05-01.yaml"
        entry.write_text(
            entry.read_text(encoding="utf-8").replace("Nothing new", "Still nothing"),
            encoding="utf-8",
        )
        process = watch(project)
        time.sleep(1.5)
        stderr = stop(process)
        assert len(server.messages) == total
        assert "changed after it was sent in full" in stderr
        counts = server.count_by_recipient()
        assert max(counts.values()) == 3  # RU readers got all three entries, once each


def test_relay_down_for_a_while_then_up_delivers_everyone_once(project: Path) -> None:
    port = free_port()
    point_at(project, port)
    process = watch(project)
    try:
        time.sleep(1.5)  # the relay is down: the watcher keeps trying, marks nothing failed
        assert process.poll() is None
        rows = ledger_rows(project, "block-2020-01-23")
        assert {row["status"] for row in rows.values()} <= {"pending"}
        with RecordingServer(port=port) as server:
            wait_for(lambda: len(server.messages) == BLOCK_AUDIENCE + UPDATE_AUDIENCE)
            time.sleep(0.5)
            stop(process)
            counts = server.count_by_recipient()
            assert set(counts.values()) == {1, 2}  # once per entry: 2 for RU/BY/KZ readers
            assert sum(counts.values()) == BLOCK_AUDIENCE + UPDATE_AUDIENCE
    finally:
        if process.poll() is None:
            process.kill()


def test_sigterm_during_a_send_exits_0_and_a_restart_finishes(project: Path) -> None:
    add_subscribers(project, 300)
    with RecordingServer() as server:
        point_at(project, server.port, rate=150, concurrency=3)
        process = watch(project)
        wait_for(lambda: len(server.messages) >= 60)
        stop(process)
        before = len(server.messages)
        total = BLOCK_AUDIENCE + UPDATE_AUDIENCE + 2 * 300  # the 300 get both entries
        assert before < total
        process = watch(project)
        wait_for(lambda: len({m.message["Message-ID"] for m in server.messages}) >= total)
        time.sleep(0.5)
        stop(process)
        ids = [m.message["Message-ID"] for m in server.messages]
        duplicates = len(ids) - len(set(ids))
        assert duplicates <= 3  # at most the in-flight ones
        assert len(set(ids)) == total


def test_second_watcher_refuses_and_once_exits(project: Path) -> None:
    with RecordingServer() as server:
        point_at(project, server.port)
        process = watch(project)
        try:
            wait_for(lambda: len(server.messages) == BLOCK_AUDIENCE + UPDATE_AUDIENCE)
            second = spawn(project, "watch", "--once")
            _, stderr = second.communicate(timeout=30)
            assert second.returncode == 1
            assert "another statusmail run" in stderr
        finally:
            stop(process)
        once = spawn(project, "--log-format", "json", "watch", "--once")
        _, stderr = once.communicate(timeout=30)
        assert once.returncode == 0, stderr
        assert len(server.messages) == BLOCK_AUDIENCE + UPDATE_AUDIENCE
        assert stderr.strip().startswith("{") and '"level"' in stderr


def test_sighup_reloads_the_config(project: Path) -> None:
    """Started against a relay that is not there, the watcher picks up a new relay
    address from the config on SIGHUP, without a restart."""
    point_at(project, free_port())
    process = watch(project)
    try:
        time.sleep(1.0)
        with RecordingServer() as server:
            point_at(project, server.port)
            time.sleep(1.0)
            assert not server.messages  # the running watcher still uses the old config
            process.send_signal(signal.SIGHUP)
            wait_for(lambda: len(server.messages) == BLOCK_AUDIENCE + UPDATE_AUDIENCE)
            stderr = stop(process)
        assert "reloading the config" in stderr
    finally:
        if process.poll() is None:
            process.kill()
