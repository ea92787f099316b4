"""``statusmail watch`` keeps its promises when the files or the operator change things
under it: an entry paused while it waited for its relay, two files for one entry, a
key fixed after it blocked both entries, a --once pass on a PostgreSQL ledger."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from pathlib import Path

import pytest

from conftest import (
    BLOCK_AUDIENCE,
    SECRET,
    SECRET_ENV,
    UPDATE_AUDIENCE,
    closed_port,
    free_port,
    http_request,
    invoke,
    part_text,
    spawn,
    statusmail,
    wait_for,
)
from delivery_helpers import point_at
from dkim_helpers import Keys, sign_with
from dkim_helpers import keys as keys  # the fixture
from editing import replace_in
from ops_helpers import cpu_seconds, silent_server
from postgres_helpers import query
from smtp_server import RecordingServer
from statusmail.ledger.schema import SCHEMA_VERSION
from test_watch import NEW_ENTRY, watch


def test_an_entry_paused_while_it_waited_for_its_relay_leaves_the_watcher_idle(
    project: Path,
) -> None:
    """The backoff of an entry that is no longer due stayed: once its time came, the
    loop slept for max(0, until - now) = 0 and spun (92 % of a core)."""
    with closed_port() as nowhere:
        point_at(project, nowhere)
        args = ("watch", "--poll-interval", "0.5", "--retry-after", "0.05")
        with spawn(project, *args, env=SECRET_ENV) as process:
            process.wait_for_line("relay unavailable")
            for entry in ("block-2020-01-23", "update-2020-04-21"):
                assert invoke(project, "pause", entry, env=SECRET_ENV).exit_code == 0
            process.wait_for_line("update-2020-04-21: paused on")
            process.wait_for_line("block-2020-01-23: paused on")
            before = cpu_seconds(process.pid)
            time.sleep(1)  # the measurement's window, not a wait for readiness
            spent = cpu_seconds(process.pid) - before
            assert spent < 0.3, f"{spent:.2f} s of CPU in a second, paused"
            assert process.stop() == 0, process.stderr


def test_two_files_for_one_entry_send_neither(project: Path) -> None:
    """check and send refuse x.yaml beside x.yml (either may be the one meant); watch
    sent the first it read."""
    updates = project.parent / "updates"
    with RecordingServer() as server:
        point_at(project, server.port)
        with watch(project) as process:
            wait_for(lambda: len(server.messages) == BLOCK_AUDIENCE + UPDATE_AUDIENCE)
            for suffix, en, ru in ((".yaml", "One", "Первая"), (".yml", "Other", "Вторая")):
                text = NEW_ENTRY.format(status="ready").replace("A short update", en)
                text = text.replace("Короткая новость", ru)
                (updates / f"update-2020-05-01{suffix}").write_text(text, encoding="utf-8")
            process.wait_for_line("are both entry 'update-2020-05-01': keep one")
            (updates / "update-2020-05-01.yml").unlink()  # the operator keeps one
            wait_for(
                lambda: any(
                    "update-2020-05-01" in m.message["Message-ID"] for m in server.messages
                ),
                what="the entry kept",
            )
            assert process.stop() == 0, process.stderr
        subjects = {
            m.message["Subject"] for m in server.messages if "2020-05-01" in m.message["Message-ID"]
        }
        assert subjects <= {"One", "Первая"} and subjects, subjects


def test_an_entry_blocked_by_its_key_goes_once_the_key_is_fixed(project: Path, keys: Keys) -> None:
    """The files a blocked entry was waiting on did not include the DKIM key (nor the
    entry it threads on, nor the relay's CA): fixed, it was never looked at again,
    not even on SIGHUP."""
    sign_with(project, keys)
    good = (project.parent / "dkim.key").read_bytes()
    (project.parent / "dkim.key").write_text("not a key\n", encoding="utf-8")
    with RecordingServer() as server:
        point_at(project, server.port)
        with watch(project) as process:
            process.wait_for_line("not sent until its files are fixed")
            assert not server.messages
            (project.parent / "dkim.key").write_bytes(good)
            wait_for(lambda: len(server.messages) == BLOCK_AUDIENCE + UPDATE_AUDIENCE)
            assert process.stop() == 0, process.stderr
    assert all(m.message["DKIM-Signature"] for m in server.messages)


def test_an_entry_held_for_its_secret_file_goes_once_the_file_is_fixed(project: Path) -> None:
    """An empty secret file holds every entry ("not sent until its files are fixed"),
    but the secret's file was not among the files looked at: fixed, nothing went out
    until a SIGHUP (review)."""
    secret_file = project.parent / "unsubscribe.secret"
    secret_file.write_text("", encoding="utf-8")
    env = {"STATUSMAIL_UNSUBSCRIBE_SECRET_FILE": str(secret_file)}
    with RecordingServer() as server:
        point_at(project, server.port)
        args = ("watch", "--poll-interval", "0.2", "--retry-after", "0.05")
        with spawn(project, *args, env=env) as process:
            process.wait_for_line("not sent until its files are fixed")
            assert not server.messages
            secret_file.write_text(SECRET + "\n", encoding="utf-8")
            wait_for(lambda: len(server.messages) == BLOCK_AUDIENCE + UPDATE_AUDIENCE)
            assert process.stop() == 0, process.stderr


@pytest.mark.timeout(60)
def test_watch_once_on_postgresql_exits_after_its_pass(project: Path, postgres: str) -> None:
    """After leading one pass it stood for election again, and led again, forever."""
    env = {**SECRET_ENV, "STATUSMAIL_LEDGER": postgres}
    with RecordingServer() as server:
        point_at(project, server.port)
        done = statusmail(project, "watch", "--once", env=env, timeout=30)
        assert done.returncode == 0, done.stderr
        assert len(server.messages) == BLOCK_AUDIENCE + UPDATE_AUDIENCE
        assert done.stderr.count("leading: this watcher sends") == 1, done.stderr


def test_an_entry_file_is_read_once_it_stands_still(project: Path) -> None:
    """An entry saved in place in two writes, the second a moment later: the watcher
    sent what the first had written (a cut-off body), then said the file changed after
    it was sent in full."""
    entry = project.parent / "updates" / "update-2020-05-01.yaml"
    whole = NEW_ENTRY.format(status="ready")
    cut = whole.index("We will write again.") + len("We will")
    with RecordingServer() as server:
        point_at(project, server.port)
        with watch(project) as process:
            wait_for(lambda: len(server.messages) == BLOCK_AUDIENCE + UPDATE_AUDIENCE)
            with entry.open("w", encoding="utf-8") as handle:
                handle.write(whole[:cut] + '"}\n' + whole[whole.index("  ru:") :])
                handle.flush()
                time.sleep(0.6)  # the scenario: the second write comes after a look or two
                handle.seek(0)
                handle.truncate()
                handle.write(whole)
            wait_for(lambda: any("2020-05-01" in m.message["Message-ID"] for m in server.messages))
            process.wait_for_line("update-2020-05-01: sent")
            assert process.stop() == 0, process.stderr
    bodies = {
        part_text(m.message, "plain")
        for m in server.messages
        if "2020-05-01" in m.message["Message-ID"] and m.message["Content-Language"] == "en"
    }
    assert bodies and all("We will write again." in body for body in bodies), bodies
    assert "changed after it was sent in full" not in process.stderr


def test_an_entry_file_stamped_in_the_future_is_sent_once_it_stands_still(project: Path) -> None:
    """A file written by a host whose clock is an hour ahead (a shared folder), or on
    this one before its clock was stepped back: the watcher took it for one still
    being written until its clock reached the stamp, an hour later."""
    entry = project.parent / "updates" / "update-2020-05-01.yaml"
    with RecordingServer() as server:
        point_at(project, server.port)
        with watch(project) as process:
            wait_for(lambda: len(server.messages) == BLOCK_AUDIENCE + UPDATE_AUDIENCE)
            written = project.parent / "update-2020-05-01.yaml"
            written.write_text(NEW_ENTRY.format(status="ready"), encoding="utf-8")
            ahead = time.time() + 3600
            os.utime(written, (ahead, ahead))
            written.rename(entry)
            process.wait_for_line("update-2020-05-01: sent", timeout=20)
            assert process.stop() == 0, process.stderr
    assert any("2020-05-01" in m.message["Message-ID"] for m in server.messages)


def test_sigterm_ends_a_watcher_waiting_for_another_import_of_the_lists(project: Path) -> None:
    """The import lock was taken with a blocking flock in the watcher's import thread,
    which no signal reaches: SIGTERM logged 'stopping' at once and the process ended
    when the other import let go (27 s measured)."""
    with RecordingServer() as server:
        point_at(project, server.port)
        with watch(project) as process:
            wait_for(lambda: len(server.messages) == BLOCK_AUDIENCE + UPDATE_AUDIENCE)
            lock = os.open(f"{project.parent / 'statusmail.db'}.import.lock", os.O_RDWR)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)  # another import, under way
                with (project.parent / "subscribers" / "main.csv").open("a") as handle:
                    handle.write("late@example.org,Late Reader,en,NL,service-status,active\n")
                process.wait_for_line("waiting for another import of the lists to end")
                started = time.monotonic()
                assert process.stop() == 0, process.stderr
                assert time.monotonic() - started < 2
            finally:
                os.close(lock)


def test_a_readiness_probe_waiting_on_a_silent_database_does_not_hold_the_stop(
    project: Path,
) -> None:
    """/readyz opens the ledger in the metrics thread; on a server that never answers
    that waits for the connect timeout (10 s), and the stop waited for the thread: exit
    8.8 s after SIGTERM, where the README promises under two. The watcher itself, still
    connecting to the server for leadership, waited a second before it was cut short
    (1.4 s to exit here, 2.2 s with the suite's load)."""
    metrics = free_port()
    args = ("watch", "--poll-interval", "0.2", "--metrics-port", str(metrics))
    with silent_server() as (port, taken):
        env = {**SECRET_ENV, "STATUSMAIL_LEDGER": f"postgresql://127.0.0.1:{port}/test"}
        with spawn(project, *args, env=env) as process:
            process.wait_for_line("metrics and health on")
            before = len(taken)

            def ask() -> None:
                with contextlib.suppress(OSError):  # (it times out: nothing answers)
                    http_request(metrics, "GET", "/readyz")

            threading.Thread(target=ask, daemon=True).start()
            wait_for(lambda: len(taken) > before, what="the probe to reach the server")
            started = time.monotonic()
            assert process.stop() == 0, process.stderr
            assert time.monotonic() - started < 2, process.stderr
            # nothing was in flight: the stop did not wait a second for the server
            assert "stopped without waiting any longer" not in process.stderr


def test_a_bounce_pass_blocked_on_a_silent_imap_server_does_not_hold_the_stop(
    project: Path,
) -> None:
    """A bounce pass reading an IMAP server that accepts and never answers: 'stopping'
    came at once, the exit 30 s later (the IMAP timeout), as asyncio.run joined the
    thread the pass ran in. (An import connecting to a PostgreSQL ledger that stopped
    answering held it 8 s the same way: the same thread, the same fix.)"""
    with silent_server() as (port, taken):
        imap = (
            f"  imap: {{host: 127.0.0.1, port: {port}, security: none, username: u,"
            " timeout: 30}\n  #"
        )
        replace_in(project, "  maildir: bounces ", imap)
        replace_in(project, "  interval: 300 ", "  interval: 1   ")
        env = {**SECRET_ENV, "STATUSMAIL_IMAP_PASSWORD": "pw"}
        with spawn(project, "watch", "--poll-interval", "0.2", env=env) as process:
            wait_for(lambda: taken, what="the bounce pass to reach the IMAP server")
            started = time.monotonic()
            assert process.stop() == 0, process.stderr
            assert time.monotonic() - started < 2, process.stderr
            # nothing was in flight: the stop did not wait a second for the mailbox
            assert "stopped without waiting any longer" not in process.stderr


@pytest.mark.timeout(60)
def test_a_watcher_that_does_not_know_the_upgraded_schema_steps_down(
    project: Path, postgres: str
) -> None:
    """A rolling upgrade: another host's newer statusmail migrated the ledger. The old
    leader could no longer read it, said so, and kept the leader's lock: the upgraded
    watcher stood by for good and nothing was sent (review). It now stops, exit 1,
    naming the versions, which frees the lock."""
    env = {**SECRET_ENV, "STATUSMAIL_LEDGER": postgres}
    with RecordingServer() as server:
        point_at(project, server.port)
        args = ("watch", "--poll-interval", "0.2", "--retry-after", "0.05")
        with spawn(project, *args, env=env) as process:
            wait_for(lambda: len(server.messages) == BLOCK_AUDIENCE + UPDATE_AUDIENCE)
            query(
                postgres,
                "INSERT INTO schema_version VALUES (%s, 'later') RETURNING 1",
                SCHEMA_VERSION + 1,
            )
            assert process.finish(timeout=20) == 1
    newer = f"schema is version {SCHEMA_VERSION + 1}, newer than this statusmail knows"
    assert newer in process.stderr and "so that a watcher that knows the schema can lead" in (
        process.stderr
    )
