"""``statusmail watch`` as a real subprocess against aiosmtpd (issue 5)."""

from __future__ import annotations

import signal
import time
from contextlib import ExitStack
from pathlib import Path

from conftest import (
    BLOCK_AUDIENCE,
    RU_AUDIENCE,
    SECRET_ENV,
    UPDATE_AUDIENCE,
    Running,
    closed_port,
    invoke,
    spawn,
    wait_for,
)
from delivery_helpers import add_subscribers, ledger_rows, point_at
from smtp_server import RecordingServer

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


def watch(config: Path) -> Running:
    """``statusmail watch`` polling fast and retrying soon (backoff 0.05, 0.1, 0.2 s, ...:
    the relay down for a few tries, or a reload that waits for the next, costs no more)."""
    return spawn(config, "watch", "--poll-interval", "0.2", "--retry-after", "0.05", env=SECRET_ENV)


def test_sends_ready_entries_new_files_not_drafts_or_invalid_and_never_twice(
    project: Path,
) -> None:
    updates = project.parent / "updates"
    with RecordingServer() as server:
        point_at(project, server.port)
        with watch(project) as process:
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
            process.wait_for_line("update-2020-05-01: sent")
            time.sleep(0.5)  # on purpose: two more scans, in which nothing else goes out
            assert process.stop() == 0, process.stderr
        stderr = process.stderr
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
        with watch(project) as process:
            process.wait_for_line("changed after it was sent in full")  # its first scan
            time.sleep(0.5)  # on purpose: two more scans, in which nothing goes out
            assert process.stop() == 0, process.stderr
        assert len(server.messages) == total
        assert "changed after it was sent in full" in process.stderr
        counts = server.count_by_recipient()
        assert max(counts.values()) == 3  # RU readers got all three entries, once each


def test_relay_down_for_a_while_then_up_delivers_everyone_once(project: Path) -> None:
    with ExitStack() as stack:
        relay_down = ExitStack()
        stack.push(relay_down)
        port = relay_down.enter_context(closed_port())
        point_at(project, port)
        process = stack.enter_context(watch(project))
        # the watcher keeps trying and marks nothing failed
        process.wait_for_line("relay unavailable", count=2)
        assert process.process.poll() is None
        rows = ledger_rows(project, "block-2020-01-23")
        assert {row["status"] for row in rows.values()} <= {"pending"}
        relay_down.close()  # the relay comes back up, on the same port
        server = stack.enter_context(RecordingServer(port=port))
        wait_for(lambda: len(server.messages) == BLOCK_AUDIENCE + UPDATE_AUDIENCE)
        process.wait_for_line("update-2020-04-21: sent")  # the last run ended
        assert process.stop() == 0, process.stderr
        counts = server.count_by_recipient()
        assert set(counts.values()) == {1, 2}  # once per entry: 2 for RU/BY/KZ readers
        assert sum(counts.values()) == BLOCK_AUDIENCE + UPDATE_AUDIENCE


def test_sigterm_during_a_send_exits_0_and_a_restart_finishes(project: Path) -> None:
    add_subscribers(project, 60)
    with RecordingServer() as server:
        point_at(project, server.port, rate=150, concurrency=3)
        with watch(project) as process:
            wait_for(lambda: len(server.messages) >= 30)  # the first entry's 78 half sent
            assert process.stop() == 0, process.stderr
        before = len(server.messages)
        total = BLOCK_AUDIENCE + UPDATE_AUDIENCE + 2 * 60  # the 60 get both entries
        assert before < total
        point_at(project, server.port, rate=0, concurrency=3)  # the rest needs no pacing
        with watch(project) as process:
            wait_for(lambda: len({m.message["Message-ID"] for m in server.messages}) >= total)
            process.wait_for_line("update-2020-04-21: sent")  # the last run ended
            assert process.stop() == 0, process.stderr
        ids = [m.message["Message-ID"] for m in server.messages]
        duplicates = len(ids) - len(set(ids))
        assert duplicates <= 3  # at most the in-flight ones
        assert len(set(ids)) == total


def test_second_watcher_refuses_and_once_exits(project: Path) -> None:
    with RecordingServer() as server:
        point_at(project, server.port)
        with watch(project) as process:
            wait_for(lambda: len(server.messages) == BLOCK_AUDIENCE + UPDATE_AUDIENCE)
            second = invoke(project, "watch", "--once", env=SECRET_ENV)
            assert second.exit_code == 1
            assert "another statusmail run" in second.stderr
            assert process.stop() == 0, process.stderr
        once = invoke(project, "--log-format", "json", "watch", "--once", env=SECRET_ENV)
        assert once.exit_code == 0, once.stderr
        assert len(server.messages) == BLOCK_AUDIENCE + UPDATE_AUDIENCE
        assert once.stderr.strip().startswith("{") and '"level"' in once.stderr


def test_rate_and_concurrency_on_the_command_line_pace_the_service(project: Path) -> None:
    """The SPEC's common options: watch refused them (no such option)."""
    with RecordingServer() as server:
        point_at(project, server.port)  # rate 0: unlimited, unless the command line says
        rate = 20.0
        once = invoke(
            project, "watch", "--once", "--rate", str(rate), "--concurrency", "1", env=SECRET_ENV
        )
        assert once.exit_code == 0, once.output
        times = sorted(m.at for m in server.messages)
    assert len(times) == BLOCK_AUDIENCE + UPDATE_AUDIENCE
    # two entries, each paced from its first message: at least (n - 1) / rate in all
    assert times[-1] - times[0] >= 0.95 * (len(times) - 2) / rate
    assert invoke(project, "watch", "--once", "--concurrency", "0").exit_code == 2


def test_a_reload_keeps_the_command_lines_rate_and_concurrency(project: Path) -> None:
    from statusmail.project.config import load_config
    from statusmail.watch import Watcher, WatchOptions

    options = WatchOptions(once=True, rate=3.0, concurrency=1)
    watcher = Watcher(load_config(project).with_overrides(rate=3.0, concurrency=1), options)
    watcher._reload()
    assert (watcher.config.sending.rate, watcher.config.sending.concurrency) == (3.0, 1)


def test_sighup_reloads_the_config(project: Path) -> None:
    """Started against a relay that is not there, the watcher picks up a new relay
    address from the config on SIGHUP, without a restart."""
    with closed_port() as nowhere:
        point_at(project, nowhere)
        with watch(project) as process, RecordingServer() as server:
            process.wait_for_line("watching")  # the config is loaded
            process.wait_for_line("relay unavailable")
            point_at(project, server.port)
            tries = process.stderr.count("relay unavailable")
            # two more tries, the second begun after the config changed: both still fail
            process.wait_for_line("relay unavailable", count=tries + 2)
            assert not server.messages  # the running watcher still uses the old config
            process.send_signal(signal.SIGHUP)
            process.wait_for_line("config reloaded")
            wait_for(lambda: len(server.messages) == BLOCK_AUDIENCE + UPDATE_AUDIENCE)
            assert process.stop() == 0, process.stderr
        assert "reloading the config" in process.stderr


def test_a_list_changed_while_an_entry_is_sent_is_imported_and_selected_again(
    project: Path,
) -> None:
    """Comms mark a reader unsubscribed in the list and add another while the watcher
    sends: the run went on with the list as it was (the unsubscribed reader was mailed
    11 s later) and the watcher never mailed the new one that entry (review)."""
    main = project.parent / "subscribers" / "main.csv"
    leaving = "sean.obrien@example.org"
    row = "sean.obrien@example.org,Seán O'Brien,en,US,service-status,active"
    with RecordingServer() as server:
        point_at(project, server.port, rate=8)  # (Seán's message comes 2 s in)
        with watch(project) as process:
            wait_for(lambda: len(server.messages) >= 2)
            text = main.read_text(encoding="utf-8")
            assert row in text
            main.write_text(
                text.replace(row, row.replace(",active", ",unsubscribed"))
                + "newbie@example.org,Newbie,en,US,service-status,active\n",
                encoding="utf-8",
            )
            mailed = {m.rcpt_tos[0] for m in server.messages}
            assert leaving not in mailed  # (too late for the test otherwise)
            process.wait_for_line("the lists changed while it was sent", timeout=10)
            process.wait_for_line("update-2020-04-21: sent", timeout=30)
            assert process.stop() == 0, process.stderr
    got = server.count_by_recipient()
    assert leaving not in got
    assert got["newbie@example.org"] == 1  # the entry it was sending (block: US readers)
    assert max(got.values()) == 2  # nobody had an entry twice: block and update at most


def test_watch_once_stopped_by_a_list_change_exits_4(project: Path) -> None:
    """The run stopped to select again; --once then ended with 0 and 12 pending."""
    main = project.parent / "subscribers" / "main.csv"
    with RecordingServer() as server:
        point_at(project, server.port, rate=8)
        with spawn(project, "watch", "--once", env=SECRET_ENV) as process:
            wait_for(lambda: len(server.messages) >= 2)
            main.write_text(main.read_text(encoding="utf-8") + "\n", encoding="utf-8")
            code = process.finish(timeout=30)
    assert "the lists changed while it was sent" in process.stderr, process.stderr
    assert code == 4, process.stderr
