"""Almost-right input and badly timed faults: nothing is lost, leaked, hung or failed.

Each test first reproduces what broke when people who did not write statusmail tried
it (issue 10), then shows what happens now.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import (
    CSV_HEADER,
    SECRET,
    UPDATE,
    UPDATE_AUDIENCE,
    clean_environ,
    command,
    invoke,
    missing,
    outbox_count,
    outbox_messages,
    spawn,
    wait_for,
)
from delivery_helpers import add_subscribers, ledger_rows, point_at
from editing import line_of, replace_in
from smtp_server import RecordingServer
from statusmail.ledger import Ledger
from statusmail.project import subscribers


def in_mount_namespace(script: str, *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with ``sh`` in a private mount namespace (its mounts vanish with it),
    where a real read-only or full file system can be made; skip if that is impossible."""
    if shutil.which("unshare") is None:
        reason = "unshare (util-linux) is not installed"
    else:
        probe = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, timeout=10
        )
        reason = "" if probe.returncode == 0 else "cannot make a mount namespace here"
    if reason:
        missing(reason)
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_environ(STATUSMAIL_UNSUBSCRIBE_SECRET=SECRET),
    )


# -- 1. a malformed CSV row ------------------------------------------------------------


def test_an_unbalanced_quote_stops_check_and_send_before_anything(project: Path) -> None:
    csv_path = project.parent / "subscribers" / "main.csv"
    rows = csv_path.read_text(encoding="utf-8").splitlines(keepends=True)
    rows.insert(5, 'u0000@example.org,"Carol,en,NL,,active\n')
    rows.append('bob@example.org,Bob ""Bobby"" Jones,en,RU,service-status,active\n')
    csv_path.write_text("".join(rows), encoding="utf-8")
    check = invoke(project, "check")
    assert check.exit_code == 1
    assert f"{csv_path}:6: unbalanced quote" in check.output
    send = invoke(project, "send", UPDATE, "--yes")
    assert send.exit_code == 1
    assert f"{csv_path}:6: unbalanced quote" in send.stderr
    assert outbox_messages(project) == []
    assert ledger_rows(project) == {}


# -- 2. a template error after check -------------------------------------------------------


def test_a_template_error_stops_the_run_before_any_connection(project: Path) -> None:
    template = project.parent / "templates" / "message.txt.j2"
    good = template.read_text(encoding="utf-8")
    template.write_text(good + "{{ no_such_var }}\n", encoding="utf-8")
    with RecordingServer() as server:
        point_at(project, server.port)
        env = {"STATUSMAIL_UNSUBSCRIBE_SECRET": SECRET}
        result = invoke(project, "send", UPDATE, "--yes", env=env)
        assert result.exit_code == 1, result.stderr
        assert "message.txt.j2" in result.stderr and "no_such_var" in result.stderr
        assert server.connections == 0
        assert all(row["status"] != "failed" for row in ledger_rows(project).values())
        template.write_text(good, encoding="utf-8")  # fixed: the next run sends everyone
        result = invoke(project, "send", UPDATE, "--yes", env=env)
        assert result.exit_code == 0, result.stderr
        assert len(server.count_by_recipient()) == 14


# -- 3. a list that shrinks -----------------------------------------------------------------


def test_a_list_that_shrinks_is_not_taken_on_trust(project: Path) -> None:
    addresses = add_subscribers(project, 200)
    generated = project.parent / "subscribers" / "generated.csv"
    first = invoke(project, "send", UPDATE, "--yes", "--rate", "0", "--limit", "50", "--json")
    assert first.exit_code == 4 and json.loads(first.stdout)["stopped"] == "limit"
    pending = 214 - 50

    generated.write_text("", encoding="utf-8")  # emptied: a broken file, not an empty list
    emptied = invoke(project, "send", UPDATE, "--yes")
    assert emptied.exit_code == 1 and f"{generated}:1: no subscribers" in emptied.stderr

    # half of it left: more than the allowed 10 % of what is pending
    lines = [CSV_HEADER] + [f"{a},User,ru,RU,service-status,active\n" for a in addresses[:100]]
    generated.write_text("".join(lines), encoding="utf-8")
    before = ledger_rows(project)
    refused = invoke(project, "send", UPDATE, "--yes")
    assert refused.exit_code == 1
    removed = sum(1 for a in addresses[100:] if before[a]["status"] == "pending")
    share = f"{removed / pending:.0%}"
    # The lists are imported before anything is selected, so the count is exact and
    # the run refuses before sending anyone anything (issue 21: exit 1, not 4).
    assert f"{removed} of the {pending} recipients still pending" in refused.stderr
    assert f"({share}) are no longer in the list or the audience" in refused.stderr
    assert "--accept-removals" in refused.stderr
    assert ledger_rows(project) == before  # nothing changed

    # the same size with other rows: refused the same, exactly, before anything is sent
    swapped = [CSV_HEADER] + [f"{a},User,ru,RU,service-status,active\n" for a in addresses[:100]]
    swapped += [f"other{i}@example.net,Other,ru,RU,service-status,active\n" for i in range(100)]
    generated.write_text("".join(swapped), encoding="utf-8")
    sent = outbox_count(project)
    held = invoke(project, "send", UPDATE, "--yes", "--rate", "0", "--json")
    assert held.exit_code == 1, held.stderr
    assert f"{removed} of the {pending} recipients still pending" in held.stderr
    assert f"({share}) are no longer in the list or the audience" in held.stderr
    assert ledger_rows(project) == before and outbox_count(project) == sent
    generated.write_text("".join(lines), encoding="utf-8")

    accepted = invoke(project, "send", UPDATE, "--yes", "--rate", "0", "--accept-removals")
    assert accepted.exit_code == 0, accepted.stderr
    rows = ledger_rows(project)
    assert {rows[a]["status"] for a in addresses[100:] if before[a]["status"] == "pending"} == {
        "skipped"
    }
    assert outbox_count(project) == 214 - removed  # the 100 others were never sent to


# -- 4. storage faults end the run ----------------------------------------------------------


@pytest.mark.timeout(30)
def test_a_ledger_error_while_recording_stops_every_worker(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ledger.record`` raising (a full disk, an I/O error) ends the run within seconds
    with exit 4; nobody is recorded as sent who was not delivered."""
    add_subscribers(project, 300)
    calls = 0
    real = Ledger.check_same_file

    def failing(self: Ledger) -> None:
        nonlocal calls
        calls += 1
        if calls > 5:
            raise sqlite3.OperationalError("database or disk is full")
        real(self)

    monkeypatch.setattr(Ledger, "check_same_file", failing)
    started = time.monotonic()
    result = invoke(project, "send", UPDATE, "--yes", "--rate", "0", "--json")
    assert time.monotonic() - started < 5
    assert result.exit_code == 4, result.output
    assert "database or disk is full" in result.stderr
    assert json.loads(result.stdout)["stopped"].endswith("database or disk is full")
    rows = ledger_rows(project)
    sent = sum(1 for row in rows.values() if row["status"] == "sent")
    delivered = outbox_count(project)
    assert sent <= delivered <= sent + 4  # at most the in-flight ones, per connection


@pytest.mark.timeout(60)
def test_a_full_ledger_disk_stops_the_run(project: Path, tmp_path: Path) -> None:
    """The ledger on a real 1 MB file system that fills up mid-run."""
    add_subscribers(project, 3000)
    disk = tmp_path / "disk"
    disk.mkdir()
    replace_in(project, "ledger: statusmail.db", f"ledger: {disk}/statusmail.db")
    run = " ".join(command(project, "send", UPDATE, "--yes", "--rate", "0", "--json"))
    result = in_mount_namespace(f"mount -t tmpfs -o size=1m tmpfs {disk} && exec {run}")
    assert "Traceback" not in result.stderr
    assert result.returncode == 4, result.stderr
    # Whichever write finds the disk full first stops the run: the selection streaming
    # in (its enqueue) or an outcome (the group commit).
    stopped = re.search(
        f"{re.escape(str(disk))}/statusmail.db: cannot (record outcomes|enqueue the selection):"
        " database or disk is full",
        result.stderr,
    )
    assert stopped, result.stderr
    report = json.loads(result.stdout)
    assert "database or disk is full" in report["stopped"]
    # what was accepted but not recorded: at most one message per connection
    assert outbox_count(project) <= report["this_run"]["sent"] + 4


def test_a_read_only_ledger_folder_is_a_clear_error(project: Path, tmp_path: Path) -> None:
    disk = tmp_path / "ro"
    disk.mkdir()
    replace_in(project, "ledger: statusmail.db", f"ledger: {disk}/statusmail.db")
    run = " ".join(command(project, "send", UPDATE, "--yes"))
    result = in_mount_namespace(f"mount -t tmpfs -o ro tmpfs {disk} && exec {run}")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{disk}/statusmail.db.send-{UPDATE}.lock" in result.stderr
    assert "Read-only file system" in result.stderr


def test_a_ledger_on_a_read_only_file_system_is_still_read(project: Path, tmp_path: Path) -> None:
    """A copy of the ledger on a read-only mount (a reporting host, a snapshot): SQLite
    cannot make the shared-memory file a WAL ledger is read through, and status, list
    and a dry run all failed ("unable to open database file")."""
    disk = tmp_path / "ro"
    disk.mkdir()
    replace_in(project, "ledger: statusmail.db", f"ledger: {disk}/statusmail.db")
    sent = invoke(project, "send", UPDATE, "--yes", "--rate", "0")
    assert sent.exit_code == 0, sent.output
    assert not (disk / "statusmail.db-wal").exists()  # closed cleanly: nothing to replay
    status = " ".join(command(project, "status", UPDATE, "--json"))
    result = in_mount_namespace(
        f"mount --bind {disk} {disk} && mount -o remount,bind,ro {disk} && exec {status}"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["sent"] == 14


@pytest.mark.timeout(60)
def test_a_ledger_deleted_mid_run_stops_it(project: Path) -> None:
    add_subscribers(project, 400)

    def delete_the_ledger() -> None:  # beside the run, as another program would
        wait_for(lambda: outbox_count(project) >= 20, what="the first messages")
        for suffix in ("", "-wal", "-shm"):
            (project.parent / f"statusmail.db{suffix}").unlink(missing_ok=True)

    deleter = threading.Thread(target=delete_the_ledger, daemon=True)
    deleter.start()
    result = invoke(project, "send", UPDATE, "--yes", "--rate", "100")
    deleter.join(10)
    assert result.exit_code == 4, result.stderr
    assert "deleted or replaced" in result.stderr
    assert outbox_count(project) < 414


# -- 5 and 6. signals at any moment ---------------------------------------------------------


@pytest.mark.parametrize("delay", [0.2, 0.4, 0.8])
def test_sigterm_early_in_send_exits_4_with_a_line(project: Path, delay: float) -> None:
    with spawn(project, "send", UPDATE, "--yes") as process:
        process.wait_until_catching(signal.SIGTERM)  # the program's first line ran
        time.sleep(delay)  # the point is the timing of the signal, not readiness
        code = process.stop(signal.SIGTERM)
    assert "Traceback" not in process.stderr
    if code == 0:  # the whole (short) run finished before the signal
        assert outbox_count(project) == UPDATE_AUDIENCE
        return
    assert code == 4, process.stderr
    assert "SIGTERM" in process.stderr or "signal" in process.stderr


def test_sigterm_early_in_watch_exits_0(project: Path) -> None:
    with spawn(project, "watch", "--poll-interval", "0.1") as process:
        process.wait_until_catching(signal.SIGTERM)  # the program's first line ran
        time.sleep(0.15)  # the timing of the signal is the point
        assert process.stop(signal.SIGTERM) == 0, process.stderr
    assert "Traceback" not in process.stderr


# -- what operators and comms asked for -----------------------------------------------------


def test_a_region_nobody_is_in_any_more_is_a_warning_and_the_rest_still_get_the_news(
    project: Path,
) -> None:
    """check refused what send then sent (the two must agree); refusing both would hold
    up the news for RU and KZ because no reader is left in one more region."""
    regions = project.parent / "regions.yaml"
    replace_in(regions, "\nRU:\n", "\nUA:\n  name: {en: Ukraine, ru: Украина}\nRU:\n")
    entry = project.parent / "updates" / f"{UPDATE}.yaml"
    replace_in(entry, "regions: [RU, BY, KZ]", "regions: [RU, BY, KZ, UA]")
    check = invoke(project, "check")
    assert check.exit_code == 0, check.output
    said = f"{entry}:{line_of(entry, 'audience:')}: warning: no active subscriber has the"
    assert f"{said} audience's region 'UA'" in check.output
    send = invoke(project, "send", UPDATE, "--yes")
    assert send.exit_code == 0, send.output
    assert outbox_count(project) == UPDATE_AUDIENCE


def test_an_audience_that_selects_nobody_fails_check_the_dry_run_and_send(project: Path) -> None:
    entry = project.parent / "updates" / f"{UPDATE}.yaml"
    # each key alone matches someone; together (Russian readers in NL) nobody
    replace_in(entry, "regions: [RU, BY, KZ]", "regions: [NL]\n  locales: [ru]")
    audience = line_of(entry, "audience:")
    check = invoke(project, "check")
    assert check.exit_code == 1
    assert f"{entry}:{audience}: the entry is ready but its audience selects no active" in (
        check.output
    )
    # the dry run CI keeps green said "0 recipients" and exited 0
    previews = str(project.parent / "previews")
    dry = invoke(project, "send", UPDATE, "--dry-run", "--preview-dir", previews)
    assert dry.exit_code == 1, dry.output
    assert f"{entry}:{audience}: the audience selects no active subscriber" in dry.stderr
    send = invoke(project, "send", UPDATE, "--yes")
    assert send.exit_code == 1
    assert f"{entry}:{audience}: the audience selects no active subscriber" in send.stderr
    # a typo in a topic: the config declares its topics, so it is named as such
    replace_in(entry, "topics: [service-status]", "topics: [service_status]")
    typo = invoke(project, "send", UPDATE, "--yes")
    assert typo.exit_code == 1
    assert f"{entry}:{audience}: topic 'service_status' is not one of the config's topics" in (
        typo.stderr
    )


def test_send_waits_for_send_at_unless_now(project: Path) -> None:
    entry = project.parent / "updates" / f"{UPDATE}.yaml"
    replace_in(entry, "status: ready\n", "status: ready\nsend_at: 2999-01-01T09:00:00Z\n")
    line = line_of(entry, "send_at:")
    refused = invoke(project, "send", UPDATE, "--yes")
    assert refused.exit_code == 1
    assert f"{entry}:{line}: send_at is 2999-01-01T09:00:00+00:00, still to come" in refused.stderr
    assert outbox_count(project) == 0
    now = invoke(project, "send", UPDATE, "--yes", "--now", "--rate", "0")
    assert now.exit_code == 0, now.stderr
    assert outbox_count(project) == 14


def test_a_missing_smtp_password_is_named_by_check_and_send(project: Path) -> None:
    env = {"STATUSMAIL_TRANSPORT": "smtp", "STATUSMAIL_UNSUBSCRIBE_SECRET": SECRET}
    smtp_line = line_of(project, "smtp:")
    wanted = (
        f"{project}:{smtp_line}: smtp.username is set but $STATUSMAIL_SMTP_PASSWORD is unset "
        "or empty"
    )
    check = invoke(project, "check", env=env)
    assert check.exit_code == 1 and wanted in check.output
    send = invoke(project, "send", UPDATE, "--yes", env=env)
    assert send.exit_code == 1 and wanted in send.stderr
    empty = invoke(project, "send", UPDATE, "--yes", env={**env, "STATUSMAIL_SMTP_PASSWORD": ""})
    assert empty.exit_code == 1 and wanted in empty.stderr


def test_a_relay_without_auth_is_named_as_such(project: Path) -> None:
    with RecordingServer() as server:
        point_at(project, server.port, username="status@startmail.example")
        env = {"STATUSMAIL_UNSUBSCRIBE_SECRET": SECRET, "STATUSMAIL_SMTP_PASSWORD": "pw"}
        result = invoke(project, "send", UPDATE, "--yes", env=env)
    assert result.exit_code == 1
    assert f"127.0.0.1:{server.port}: the server does not offer AUTH" in result.stderr
    assert "smtp.username" in result.stderr


def test_status_lists_failures_and_knows_unknown_entries(project: Path) -> None:
    refusal = {"ivan.smirnov@example.com": "550 5.1.1 User unknown"}
    with RecordingServer(reject_rcpt=refusal) as server:
        point_at(project, server.port)
        env = {"STATUSMAIL_UNSUBSCRIBE_SECRET": SECRET}
        assert invoke(project, "send", UPDATE, "--yes", env=env).exit_code == 3
    masked = invoke(project, "status", UPDATE, "--failed")
    assert masked.exit_code == 0
    assert "failed i***@example.com: 550 5.1.1 User unknown (reply to RCPT" in masked.stdout
    assert "ivan.smirnov" not in masked.stdout
    shown = invoke(project, "status", UPDATE, "--failed", "--show-addresses")
    assert "failed ivan.smirnov@example.com: 550" in shown.stdout
    report = json.loads(invoke(project, "status", UPDATE, "--json").stdout)
    assert report["failed"] == 1 and report["sent"] == 13
    assert {"locale": "ru", "region": "RU", "status": "failed", "count": 1} in report["breakdown"]
    unknown = invoke(project, "status", "update-2020-04-12")
    assert unknown.exit_code == 1
    assert "no entry 'update-2020-04-12'" in unknown.stderr


def test_list_is_whole_when_piped_and_has_json(project: Path) -> None:
    long_id = "update-2020-04-21-" + "with-a-long-name-" * 4 + "x"
    shutil.copy(
        project.parent / "updates" / f"{UPDATE}.yaml",
        project.parent / "updates" / f"{long_id}.yaml",
    )
    replace_in(project.parent / "updates" / f"{long_id}.yaml", f"id: {UPDATE}", f"id: {long_id}")
    piped = invoke(project, "list")
    assert piped.exit_code == 0
    assert long_id in piped.stdout.split()
    rows = json.loads(invoke(project, "list", "--json").stdout)
    assert sorted(row["id"] for row in rows) == ["block-2020-01-23", UPDATE, long_id]


@pytest.mark.parametrize(
    "entry_id", ["index", "update #2?", "update..2", "-update", "обновление", "update.yaml.bak"]
)
def test_an_entry_id_that_cannot_name_its_page_and_message_ids_is_refused(
    project: Path, entry_id: str
) -> None:
    """An id is a file name, a Message-ID's left part (<id.digest@domain>: a dot-atom),
    a page of the status site (id.html) and a command-line argument: "index" replaced
    the site's index, "update #2?" made links that end at the "#", and both passed
    check. ("update.yaml.bak" is a good id: only its dots are single.)"""
    updates = project.parent / "updates"
    (updates / f"{UPDATE}.yaml").rename(updates / f"{entry_id}.yaml")
    replace_in(updates / f"{entry_id}.yaml", f"id: {UPDATE}", f"id: {json.dumps(entry_id)}")
    result = invoke(project, "check")
    if entry_id == "update.yaml.bak":
        assert result.exit_code == 0, result.stderr
        return
    assert result.exit_code == 1, result.stdout
    line = next(
        n
        for n, text in enumerate((updates / f"{entry_id}.yaml").read_text().splitlines(), 1)
        if text.startswith("id:")
    )
    said = result.stdout + result.stderr
    assert f"{entry_id}.yaml:{line}: id " in said, said
    assert "rename the file and its id" in said
    assert "Traceback" not in said


def test_log_format_after_the_command_and_fields_in_json_lines(project: Path) -> None:
    result = invoke(project, "send", UPDATE, "--yes", "--rate", "0", "--log-format", "json")
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    selected = [line for line in lines if line.get("event") == "selected"]
    assert selected and selected[0]["entry"] == UPDATE and selected[0]["selected"] == 14
    assert all("time" in line and "level" in line for line in lines)
    assert not any("@" in json.dumps(line) for line in lines if line.get("event") == "selected")


def test_watch_says_once_what_stops_an_entry_until_its_files_change(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    from statusmail import watch
    from statusmail.project.config import load_config

    csv_path = project.parent / "subscribers" / "main.csv"
    csv_path.write_text(CSV_HEADER, encoding="utf-8")  # only a header: a broken file
    reads = 0
    real = subscribers.read_file

    def counting(*args: object, **kwargs: object) -> object:
        nonlocal reads
        reads += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    watcher = watch.Watcher(load_config(project), watch.WatchOptions(poll_interval=0.1))

    async def passes(n: int) -> None:
        for _ in range(n):
            await watcher._work_through_due()

    with pytest.MonkeyPatch.context() as patch:
        # The lists are read by their import, once per change of the files (issue 21),
        # not once per entry: each of the two files twice (its statuses, then its rows),
        # however many entries and passes.
        patch.setattr(subscribers, "read_file", counting)
        asyncio.run(passes(5))
        complaints = [r for r in caplog.records if "no subscribers" in r.getMessage()]
        assert len(complaints) == 1 and reads == 4  # the import's refusal, once
        csv_path.write_text(CSV_HEADER + "\n", encoding="utf-8")  # changed, still broken
        asyncio.run(passes(3))
        complaints = [r for r in caplog.records if "no subscribers" in r.getMessage()]
        assert len(complaints) == 2 and reads == 8
