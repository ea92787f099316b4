"""Re-running is safe: the ledger follows the subscriber list and the suppression table
between runs, and a finished entry needs no relay (found in review)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from conftest import SECRET_ENV, UPDATE, UPDATE_AUDIENCE, invoke, outbox_count, spawn, wait_for
from delivery_helpers import ledger_rows, point_at, send
from editing import replace_in
from smtp_server import RecordingServer


def statuses(config: Path) -> dict[str, str]:
    return {address: row["status"] for address, row in ledger_rows(config).items()}


def test_a_fixed_row_gets_the_entry_on_the_next_run(project: Path) -> None:
    csv_path = project.parent / "subscribers" / "main.csv"
    replace_in(
        csv_path,
        "ivan.smirnov@example.com,Иван Смирнов,ru-RU,RU,",
        "ivan.smirnov@example.com,Иван Смирнов,ru-RU,Russia,",
    )
    code, _, stderr = send(project, UPDATE, "--rate", "0")
    assert code == 0, stderr
    assert statuses(project)["ivan.smirnov@example.com"] == "skipped"
    replace_in(csv_path, ",Russia,", ",RU,")
    code, report, stderr = send(project, UPDATE, "--rate", "0")
    assert code == 0, stderr
    assert statuses(project)["ivan.smirnov@example.com"] == "sent"
    assert report["counts"]["skipped"] == 0


def test_unsubscribed_between_runs_is_not_sent(project: Path) -> None:
    code, _, stderr = send(project, UPDATE, "--rate", "0", "--limit", "1")
    assert code == 4, stderr
    pending = [a for a, s in statuses(project).items() if s == "pending"]
    by_endpoint, by_list = pending[0], pending[1]
    assert (
        invoke(project, "suppress", "add", by_endpoint, "--reason", "unsubscribed").exit_code == 0
    )
    for path in (project.parent / "subscribers").iterdir():
        text = path.read_text(encoding="utf-8")
        if by_list in text.lower():
            lines = [
                line.replace(",active", ",unsubscribed") if by_list in line.lower() else line
                for line in text.splitlines()
            ]
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, report, stderr = send(project, UPDATE, "--rate", "0")
    assert code == 0, stderr
    final = statuses(project)
    assert final[by_endpoint] == final[by_list] == "skipped"
    assert report["counts"]["pending"] == 0 and report["counts"]["sent"] == 12
    assert outbox_count(project) == 12


def test_a_finished_entry_needs_no_relay(project: Path) -> None:
    with RecordingServer() as server:
        point_at(project, server.port)
        code, _, stderr = send(project)
        assert code == 0, stderr
        port = server.port
    code, report, stderr = send(project)  # the relay is gone now
    assert code == 0, stderr
    assert report["counts"]["sent"] == 14
    assert f"127.0.0.1:{port}" not in stderr


def test_sigterm_cuts_a_long_backoff_short(project: Path) -> None:
    with RecordingServer(fail_data_every=1) as server:  # 451 to every message
        point_at(project, server.port, concurrency=1, retry_initial=60, retry_max=60)
        with spawn(project, "send", UPDATE, "--yes", env=SECRET_ENV) as process:
            wait_for(lambda: server.data_commands >= 1, what="the first DATA")
            # The 451 is on its way: give the client a moment to read it and start a
            # backoff of up to a minute (nothing it logs tells that it has).
            time.sleep(0.2)
            started = time.monotonic()
            assert process.stop(signal.SIGTERM) == 4, process.stderr
            assert time.monotonic() - started < 10
        assert {row["status"] for row in ledger_rows(project).values()} == {"pending"}


def test_status_masks_addresses_that_server_replies_quote(project: Path) -> None:
    address = "kate.morozova@example.com"
    with RecordingServer(
        reject_rcpt={address: f"550 5.1.1 <{address}>: Recipient unknown"}
    ) as server:
        point_at(project, server.port)
        code, _, _ = send(project)
        assert code == 3
        status = invoke(project, "status", UPDATE, "--json")
        assert address not in status.stdout and "k***@example.com" in status.stdout


def test_status_masks_the_ascii_form_of_an_idn_address_a_reply_quotes(project: Path) -> None:
    """The relay quotes the address as it was given in RCPT TO, the ASCII form of an
    internationalized domain: status masked only the ledger's Unicode key, and printed
    the whole address in --json and --failed."""
    unicode_form = "maria@пример.испытание"  # one of the sample's subscribers
    ascii_form = "maria@xn--e1afmkfd.xn--80akhbyknj4f"
    reply = f"550 5.1.1 <{ascii_form}>: Recipient unknown"
    with RecordingServer(reject_rcpt={unicode_form: reply, ascii_form: reply}) as server:
        point_at(project, server.port)
        code, _, _ = send(project)
        assert code == 3
    shown = invoke(project, "status", UPDATE, "--json").stdout
    shown += invoke(project, "status", UPDATE, "--failed").stdout
    assert "m***@xn--e1afmkfd.xn--80akhbyknj4f" in shown
    assert ascii_form not in shown and unicode_form not in shown
    assert "(1 attempt, " in shown  # a permanent refusal: one attempt, said so


def test_a_limit_reached_with_the_last_recipient_is_not_a_stop(project: Path) -> None:
    """--limit (or the hourly cap) equal to what was left: everyone was sent, yet the
    run exited 4 saying 'Stopped early: limit. Re-run to continue'."""
    code, report, stderr = send(project, UPDATE, "--rate", "0", "--limit", str(UPDATE_AUDIENCE))
    assert code == 0, stderr
    assert report["stopped"] is None and report["counts"]["pending"] == 0, (report, stderr)
    assert "Stopped early" not in stderr
    assert outbox_count(project) == UPDATE_AUDIENCE
    project.write_text(
        project.read_text(encoding="utf-8").replace("max_per_hour: null", "max_per_hour: 1")
    )
    other = send(project, "block-2020-01-23", "--rate", "0")  # one an hour: stops early
    assert other[0] == 4 and other[1]["stopped"], other[2]
