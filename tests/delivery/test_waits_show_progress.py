"""Never silent, never slow to stop (issue 22): a wait longer than a second shows how far
it is (a transient status line on a terminal, an INFO line naming what it counts
otherwise), and SIGINT or SIGTERM ends it within a second however large the list,
inside a long query too, with nothing half recorded."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import signal
import sqlite3
import threading
import time
import timeit
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from conftest import SECRET, UPDATE, Running, clean_environ, command, invoke, spawn
from import_helpers import seeded_list
from pty_helpers import Terminal
from statusmail import signals
from statusmail.delivery import waiting
from statusmail.delivery.report import ProgressReporter
from statusmail.delivery.waiting import Waiting, interrupter
from statusmail.domain import DeliveryStatus, Outcome, Recipient
from statusmail.errors import Interrupted
from statusmail.ledger import Ledger

# Long enough a list that staging or importing it lasts well over a second here (about
# 25 to 50 us a row); the tests signal at the first sign of progress, so they do not
# wait for the whole of it.
ROWS = 80_000
RECIPIENT = Recipient("a@example.org", "a@example.org", "a@example.org", "", "en", None)


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """The waits' clock sped up: a terminal's line after 50 ms, a log line after 0.1 s
    and then every 0.2 s (instead of 0.5, 1 and 5 s)."""
    monkeypatch.setattr(waiting, "SHOW_AFTER", 0.05)
    monkeypatch.setattr(waiting, "LOG_AFTER", 0.1)
    monkeypatch.setattr(waiting, "LOG_EVERY", 0.2)


class Records(logging.Handler):
    """statusmail's log records, as they come (from the wait's thread too)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self.arrived = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.arrived:
            self.records.append(record)
            self.arrived.notify_all()

    def wait_for(self, count: int, timeout: float = 10) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.records) >= count, timeout)


@pytest.fixture
def records() -> Iterator[Records]:
    log = logging.getLogger("statusmail")
    handler, level = Records(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def test_without_a_terminal_a_wait_past_its_first_second_logs_what_it_counts(
    quick: None, records: Records
) -> None:
    with Waiting("selecting", "selecting e1", noun="subscribers", total=1000, entry="e1"):
        pass  # a short wait says nothing
    assert not records.records
    with Waiting("selecting", "selecting e1", noun="subscribers", total=1000, entry="e1") as wait:
        for _ in wait.counted(range(1000)):
            if len(records.records) >= 2:
                break
            time.sleep(0.002)  # the work the wait is for
    first, *later = records.records
    assert first.getMessage().startswith("selecting e1: ")
    assert " of 1,000 subscribers (" in first.getMessage()
    fields = first.__dict__
    assert fields["event"] == "selecting" and fields["entry"] == "e1" and fields["of"] == 1000
    assert 0 < fields["subscribers"] <= 1000 and fields["seconds"] >= waiting.LOG_AFTER
    for before, after in zip(records.records, later, strict=False):
        assert after.created - before.created >= waiting.LOG_EVERY * 0.9  # at most so often
        assert after.__dict__["subscribers"] > before.__dict__["subscribers"]
    count = len(records.records)
    time.sleep(1.5 * waiting.LOG_EVERY)
    assert len(records.records) == count  # nothing once the wait is over


def test_a_step_that_counts_nothing_says_what_it_does(quick: None, records: Records) -> None:
    with Waiting("selecting", "selecting e1", noun="subscribers", total=10) as wait:
        wait.now("comparing e1's selection with the ledger")
        records.wait_for(1)
    said = records.records[0]
    assert said.getMessage().startswith("comparing e1's selection with the ledger (")
    assert "subscribers" not in said.__dict__ and said.__dict__["event"] == "selecting"


def test_on_a_terminal_a_transient_line_shows_the_count_and_no_log_line(
    quick: None, records: Records
) -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    with Waiting("selecting", "selecting e1", noun="subscribers", total=5000, console=console) as w:
        for _ in w.counted(range(5000)):
            if "of 5,000 subscribers" in screen.getvalue():
                break
            time.sleep(0.001)
    drawn = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", screen.getvalue())
    assert re.search(r"selecting e1: [\d,]+ of 5,000 subscribers", drawn), drawn
    assert screen.getvalue().endswith("\x1b[2K")  # transient: the line is erased at the end
    assert not records.records


def test_a_wait_that_ends_while_its_thread_is_busy_leaves_the_thread_its_pipe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The wait's end waits ENDING for its thread, then goes on. A thread still busy then
    (logging, on a loaded machine) must find its pipe where it was: closed under it, the
    descriptor's number went to the next file opened, which the thread then watched and
    read (it had failed a clean-clone run with EINVAL)."""
    monkeypatch.setattr(waiting, "LOG_AFTER", 0.0)  # its first log line at once
    logging_now, go_on = threading.Event(), threading.Event()

    class Slow(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "event", None) == "selecting":
                logging_now.set()
                go_on.wait(10)

    handler = Slow()
    logger = logging.getLogger("statusmail")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    others: list[tuple[int, int]] = []
    try:
        with Waiting("selecting", "selecting e1") as wait:
            assert logging_now.wait(10)
            thread = wait._thread
        assert thread is not None and thread.is_alive()  # the end did not wait for it
        others = [os.pipe() for _ in range(4)]  # where the freed numbers would go
        for _, write in others:
            os.write(write, b"x")
        go_on.set()
        thread.join(10)
        assert not thread.is_alive()
        assert [os.read(read, 2) for read, _ in others] == [b"x"] * 4  # none taken
    finally:
        go_on.set()
        logger.removeHandler(handler)
        logger.setLevel(level)
        for pipe in others:
            for fd in pipe:
                os.close(fd)


def test_a_sighup_during_a_synchronous_step_reaches_the_loop_after_it() -> None:
    """A wait inside the loop's process takes the signals' wakeup descriptor for SIGINT
    and SIGTERM (``signals.raise_on_signal``): a SIGHUP meanwhile (watch's reload) was
    read by the wait's thread and dropped, so the reload never came."""
    reloaded: list[int] = []

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        came = asyncio.Event()

        def reload() -> None:
            reloaded.append(1)
            came.set()

        loop.add_signal_handler(signal.SIGHUP, reload)
        try:
            with (
                signals.raise_on_signal(),
                Waiting("checking", "checking x", interrupt=lambda: None),
            ):
                os.kill(os.getpid(), signal.SIGHUP)
                time.sleep(0.3)  # the synchronous step, the loop's handlers not running
            assert not reloaded  # (not within the step: after it)
            await asyncio.wait_for(came.wait(), 5)
            return True
        finally:
            loop.remove_signal_handler(signal.SIGHUP)

    assert asyncio.run(main())
    assert reloaded == [1]


def test_counting_a_row_costs_well_under_a_microsecond() -> None:
    rows = range(200_000)
    wait = Waiting("selecting", "selecting e1", noun="subscribers")
    plain = min(timeit.repeat(lambda: sum(1 for _ in rows), number=1, repeat=3))
    counted = min(timeit.repeat(lambda: sum(1 for _ in wait.counted(rows)), number=1, repeat=3))
    per_row = (counted - plain) / len(rows)
    print(f"counting: {per_row * 1e9:.0f} ns a row")
    assert per_row < 1e-6
    assert wait.done == 3 * len(rows)


def test_the_delivery_progress_line_says_what_it_counts(records: Records) -> None:
    reporter = ProgressReporter(10, console=Console(file=io.StringIO()), interval=0)
    for _ in range(3):
        reporter(Outcome("a@example.org", DeliveryStatus.SENT, 1, 250), RECIPIENT)
    reporter.close()
    said = records.records[-1]
    assert re.match(
        r"progress: 3 of 10 recipients done, 3 sent, 0 failed, [\d.]+ messages/s$",
        said.getMessage(),
    ), said.getMessage()
    fields = said.__dict__
    assert (fields["event"], fields["recipients"], fields["of"], fields["sent"]) == (
        "progress",
        3,
        10,
        3,
    )


@pytest.fixture
def stop_signals_raise() -> Iterator[None]:
    """SIGTERM raises ``Interrupted`` in this process, as it does in statusmail's."""
    before = signal.signal(signal.SIGTERM, signals._raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
        signals.received.clear()  # what the next test in this process starts from


def test_sigterm_ends_a_long_query_at_once_and_the_ledger_goes_on(
    tmp_path: Path, quick: None, records: Records, stop_signals_raise: None
) -> None:
    """A query the interpreter cannot leave (one statement over millions of rows: the
    shrink guard's or the plan's on a large ledger) is interrupted within a second."""

    def signal_once_it_shows() -> None:
        records.wait_for(1)  # the wait's first line: the query runs
        os.kill(os.getpid(), signal.SIGTERM)

    slow = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30000000)"
        " SELECT COUNT(*) FROM n"
    )
    with Ledger(tmp_path / "statusmail.db") as ledger:
        sender = threading.Thread(target=signal_once_it_shows)
        sender.start()
        started = time.monotonic()
        with (
            pytest.raises(Interrupted),
            Waiting("checking", "checking e1", interrupt=interrupter(ledger)),
        ):
            ledger.database.execute(slow)
        sender.join()
        took = time.monotonic() - started
        assert ledger.database.execute("SELECT 1") == [(1,)]  # interrupted no longer
    assert took < waiting.LOG_AFTER + 1, f"{took:.2f} s"
    assert signal.set_wakeup_fd(-1) == -1  # given back


def test_inside_an_event_loop_a_synchronous_wait_still_ends_within_a_second(
    tmp_path: Path, quick: None, records: Records
) -> None:
    """``watch`` runs ``pipeline.start`` (the import, the audience checks: seconds at a
    million rows) in its event loop's thread, where the loop cannot run its signal
    handlers until it returns. Inside ``signals.raise_on_signal`` SIGTERM raises there
    and then, the long query is interrupted, and afterwards the loop has its signals
    back: the next SIGTERM calls the loop's handler, as before."""
    slow = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30000000)"
        " SELECT COUNT(*) FROM n"
    )

    async def watch_like(ledger: Ledger) -> tuple[float, list[str]]:
        stopped = asyncio.Event()
        said: list[str] = []

        def signal_once_it_shows() -> None:
            records.wait_for(1)  # the wait's first line: the query runs
            os.kill(os.getpid(), signal.SIGTERM)

        def loops_own() -> None:
            said.append("loop")
            stopped.set()

        with signals.stop_on_signal(loops_own):
            sender = threading.Thread(target=signal_once_it_shows)
            sender.start()
            started = time.monotonic()
            try:
                with (
                    signals.raise_on_signal(),
                    Waiting("checking", "checking e1", interrupt=interrupter(ledger)),
                ):
                    ledger.database.execute(slow)
            except Interrupted as exc:
                said.append(signals.name(exc.signum))
            took = time.monotonic() - started
            sender.join()
            os.kill(os.getpid(), signal.SIGTERM)  # the loop's again
            await asyncio.wait_for(stopped.wait(), 5)
        return took, said

    with Ledger(tmp_path / "statusmail.db") as ledger:
        took, said = asyncio.run(watch_like(ledger))
        assert ledger.database.execute("SELECT 1") == [(1,)]  # interrupted no longer
    assert said == ["SIGTERM", "loop"]
    assert took < waiting.LOG_AFTER + 1, f"{took:.2f} s"
    signals.received.clear()


# -- the real command, a real process ----------------------------------------------------


def deliveries(project: Path) -> int:
    with sqlite3.connect(project.parent / "statusmail.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0])


def test_send_on_a_terminal_shows_the_selection_before_its_prompt_and_ctrl_c_ends_it(
    project: Path,
) -> None:
    seeded_list(project, ROWS)
    env = clean_environ(COLUMNS="160", STATUSMAIL_UNSUBSCRIBE_SECRET=SECRET)
    with Terminal(command(project, "send", UPDATE), env) as terminal:
        terminal.read_until(rf"selecting {UPDATE}: [\d,]+ of {ROWS:,} subscribers")
        signalled = time.monotonic()
        terminal.process.send_signal(signal.SIGINT)
        code = terminal.finish(timeout=10)
        took = time.monotonic() - signalled
    said = terminal.words()
    assert code == 4, said
    assert took < 1, f"{took:.2f} s after SIGINT"
    assert "Type yes" not in said  # it was still selecting
    assert "interrupted by SIGINT before delivery: nothing was sent" in said
    assert "Traceback" not in said and "Exception ignored" not in said
    assert deliveries(project) == 0


# An import's progress line, in its first pass (the rows' statuses) or its second
IMPORTING = r"importing \S+everyone\.csv( \(its statuses first\))?: [\d,]+ rows \("


def stopped_while_importing(run: Running) -> tuple[dict[str, Any], int, float]:
    """SIGTERM once ``run`` logs its import's rows: that line, the exit code, and the
    seconds from the signal to the exit."""
    line = json.loads(run.wait_for_line('"event": "importing"'))
    signalled = time.monotonic()
    code = run.stop(signal.SIGTERM, timeout=10)
    return line, code, time.monotonic() - signalled


def test_import_without_a_terminal_logs_the_rows_it_read_and_sigterm_ends_it(
    project: Path,
) -> None:
    """The interrupted import leaves the last one current: nothing of it is selected."""
    seeded_list(project, ROWS)  # its CSV, and the import of it as import 1
    with spawn(project, "import", "--force", "--log-format", "json") as run:
        line, code, took = stopped_while_importing(run)
    assert code == 4, run.stderr
    assert took < 1, f"{took:.2f} s after SIGTERM"
    assert "interrupted by SIGTERM" in run.stderr
    # (the line may come from the pass over the statuses, which can have read them all)
    assert line["level"] == "info" and line["seconds"] >= 1 and 0 < line["rows"] <= ROWS
    assert re.match(IMPORTING, line["message"]), line
    with sqlite3.connect(project.parent / "statusmail.db") as db:
        imports = db.execute(
            "SELECT id, state, finished_at IS NOT NULL FROM subscriber_imports ORDER BY id"
        ).fetchall()
    # the next import drops it; whether its end was stamped depends on which pass the
    # signal found (seen unstamped when it came in the pass over the statuses)
    assert [row[:2] for row in imports] == [(1, "current"), (2, "loading")]
    assert imports[0][2] == 1
    again = invoke(project, "import", "--force")
    assert again.exit_code == 0, again.output
    with sqlite3.connect(project.parent / "statusmail.db") as db:
        states = db.execute("SELECT id, state FROM subscriber_imports ORDER BY id").fetchall()
    assert states == [(1, "replaced"), (2, "current")]  # (the loading one dropped first)


def test_watch_logs_the_rows_it_imports_and_sigterm_ends_it_at_once(project: Path) -> None:
    """A watcher imports a changed list in a thread of its own: it logs the rows read
    once that lasts a second, and a stop signal ends it within a thousand rows. (Three
    times the list: this import takes a second per ROWS here, and the signal must come
    while it still runs.)"""
    rows = 3 * ROWS
    path = seeded_list(project, rows)
    with path.open("a", encoding="utf-8") as handle:  # changed since: imported anew
        handle.write("late@example.org,Поздний,ru,RU,service-status,active\n")
    env = {"STATUSMAIL_UNSUBSCRIBE_SECRET": SECRET}
    with spawn(project, "--log-format", "json", "watch", env=env) as run:
        line, code, took = stopped_while_importing(run)
    assert code == 0, run.stderr
    assert took < 1, f"{took:.2f} s after SIGTERM"
    # (the line may come from the pass over the statuses, which can have read them all)
    assert line["level"] == "info" and line["seconds"] >= 1 and 0 < line["rows"] <= rows + 1
    assert re.match(IMPORTING, line["message"]), line
    assert '"event": "imported"' not in run.stderr and "Traceback" not in run.stderr
    assert deliveries(project) == 0


def test_check_of_a_changed_list_says_what_it_imports(
    project: Path, quick: None, records: Records
) -> None:
    """``check`` imports a changed list before it reads it: the wait says so, with the
    rows read so far (on a terminal, the line goes where the log goes: stdout is the
    report's)."""
    from statusmail.project.config import load_config
    from statusmail.validation import check_project

    seeded_list(project, 20_000)
    with (project.parent / "subscribers" / "everyone.csv").open("a", encoding="utf-8") as f:
        f.write("late@example.org,Late,ru,RU,service-status,active\n")
    report = check_project(load_config(project))
    assert report.subscribers == 20_001
    said = [r for r in records.records if r.__dict__.get("event") == "importing"]
    assert said, [r.getMessage() for r in records.records]
    assert said[-1].__dict__["rows"] > 0 and said[-1].getMessage().startswith("importing ")
