"""Waits a person would otherwise sit through in silence: the lists' import, the
selection staged before the confirmation prompt, the queue made after it, the checks of
a large audience. While one lasts, a terminal shows a transient status line on stderr
("selecting update-…: 230,000 of 1,000,000 subscribers"); without a terminal, once it
has lasted a second, an INFO log line says the same every few seconds (its ``event``
field names the wait, and its fields what it counts: ``subscribers``, ``of``,
``seconds``).

The caller only counts (``counted`` wraps an iterable: a few tens of nanoseconds a row;
or ``now`` when the wait moves on); a thread of the wait's own draws and logs. The same
thread makes a signal end a long SQL statement at once: the interpreter runs a signal's
handler only between two bytecodes, so a query of a million rows would otherwise hold
SIGINT and SIGTERM for as long as it runs. It stops the statement (``interrupt``), and
the error the ledger then raises becomes the ``Interrupted`` the signal would have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from statusmail import signals
from statusmail.errors import Interrupted
from statusmail.ledger import Ledger
from statusmail.ledger.database import SqliteDatabase
from statusmail.ledger.importing import import_lists
from statusmail.ledger.subscribers import Imported
from statusmail.signals import STOP_SIGNALS

log = logging.getLogger("statusmail")

T = TypeVar("T")

SHOW_AFTER = 0.5  # a terminal's status line appears once a wait lasts this long
LOG_AFTER = 1.0  # without a terminal, the first log line once a wait lasts this long
LOG_EVERY = 5.0  # and then one at most this often
REDRAW = 0.1  # the status line's redraws; and how often a signalled wait interrupts again
# A signal's handler raises at once where the program runs Python: the query it waits
# in is interrupted only if the wait is still on this long after the signal.
GRACE = 0.2
ENDING = 0.3  # the longest a wait's end waits for its thread, and then for its line
_ENDED = b"\0"  # written to the wait's pipe when it ends (signal numbers are 1 to 64)


def interrupter(ledger: Ledger) -> Callable[[], None] | None:
    """What ends the query ``ledger``'s connection runs now (called from another
    thread). Only a query outside a transaction: one inside would take the transaction
    with it, under the feet of the code that rolls it back; those are short (a batch).
    SQLite only: PostgreSQL's driver waits for its server in steps short enough for the
    signal's handler to run between them."""
    database = ledger.database
    if not isinstance(database, SqliteDatabase):
        return None
    connection = database.db

    def interrupt() -> None:
        if not connection.in_transaction:
            connection.interrupt()

    return interrupt


def log_terminal() -> Console | None:
    """The terminal statusmail's log lines are drawn on (rich's handler's console), if
    they go to one: where a command whose own output goes to stdout shows its waits."""
    from rich.logging import RichHandler

    for handler in log.handlers:
        if isinstance(handler, RichHandler) and handler.console.is_terminal:
            return handler.console
    return None


class ImportStopped(Exception):
    """``import_shown``'s ``stopping()`` became true: the import ended where it was."""


def import_shown(
    ledger: Ledger,
    folder: Path,
    *,
    console: Console | None,
    entry: str | None = None,
    force: bool = False,
    stopping: Callable[[], bool] | None = None,
) -> Imported:
    """``import_lists``, its wait shown (the file and the rows read so far) and ended at
    once by a signal: for ``send``, ``check``, ``statusmail import`` and ``watch`` alike.
    ``stopping``: for a thread that no signal's handler reaches (``watch`` imports in
    one), a flag looked at every thousand rows; once it is true the import ends there
    with ``ImportStopped`` (the next import drops what it left)."""
    wait = Waiting(
        "importing",
        f"importing {folder}",
        noun="rows",
        console=console,
        entry=entry,
        interrupt=interrupter(ledger),
    )

    def told(what: str, done: int | None) -> None:
        if stopping is not None and stopping():
            raise ImportStopped
        wait.now(what, done)

    with wait:
        return import_lists(ledger, folder, force=force, told=told)


class Waiting:
    """One wait shown while it lasts: ``with Waiting("selecting", "selecting X",
    noun="subscribers", total=n) as wait:`` and ``wait.counted(rows)`` or ``wait.now``.

    ``console``: the terminal the status line goes to (None, or not a terminal: log
    lines). ``interrupt``: what ends the ledger's current statement when SIGINT or
    SIGTERM arrives (see ``interrupter``)."""

    def __init__(
        self,
        event: str,
        what: str,
        *,
        noun: str = "",
        total: int | None = None,
        console: Console | None = None,
        entry: str | None = None,
        interrupt: Callable[[], None] | None = None,
    ) -> None:
        self.event, self.what, self.noun, self.total, self.entry = event, what, noun, total, entry
        self.done = 0
        self.counting = bool(noun)  # the text and the log line give the count
        self.signalled: int | None = None  # the stop signal that came while it waited
        self._signalled_at = float("inf")
        self.started = time.monotonic()
        self._console = console if console is not None and console.is_terminal else None
        self._interrupt = interrupt
        self._bar: Progress | None = None
        self._lock = threading.RLock()  # the bar: drawn by the thread, closed by the caller
        self._ended = False
        self._log_at = self.started + LOG_AFTER
        self._pipe: tuple[int, int] | None = None
        self._woken_by_signals = False
        self._wakeup_before = -1  # the descriptor signals woke before this wait took it
        self._thread: threading.Thread | None = None

    # -- what the caller does --------------------------------------------------------

    def counted(self, items: Iterable[T]) -> Iterator[T]:
        """``items``, each counted as it is taken."""
        for item in items:
            self.done += 1
            yield item

    def now(self, what: str, done: int | None = None) -> None:
        """The wait moves on: ``what`` it does now and how many of its ``noun`` it has
        done so far (None: what it does now is not counted)."""
        self.what, self.counting = what, done is not None
        self.done = done or 0

    def text(self) -> str:
        if not self.counting:
            return self.what
        of = "" if self.total is None else f" of {self.total:,}"
        return f"{self.what}: {self.done:,}{of} {self.noun}"

    # -- the thread that shows it ----------------------------------------------------

    def __enter__(self) -> Waiting:
        self.started = time.monotonic()
        self._log_at = self.started + LOG_AFTER
        signals.undo_on_signal(self._end)
        read, write = os.pipe()
        self._pipe = (read, write)
        try:
            for fd in (read, write):
                os.set_blocking(fd, False)
            self._woken_by_signals = self._wake_on_signals(write)
            self._thread = threading.Thread(
                target=self._watch, args=(read,), name="waiting", daemon=True
            )
            self._thread.start()
        except BaseException:
            self._end()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._end()
        if self.signalled is not None and isinstance(exc, Exception):
            # The query the signal cut short failed: the signal is what happened.
            raise Interrupted(self.signalled) from None

    def _wake_on_signals(self, fd: int) -> bool:
        """Have a stop signal wake the thread even while this one is inside a query
        (only the main thread may, and only where no event loop has the signals, or
        where the loop's handling is set aside: ``signals.raise_on_signal``)."""
        if self._interrupt is None or threading.current_thread() is not threading.main_thread():
            return False
        if not signals.blocking:
            with contextlib.suppress(RuntimeError):  # RuntimeError: no loop runs here
                asyncio.get_running_loop()
                return False
        before = signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
        if before != -1 and not signals.blocking:  # someone else's: leave it be
            signal.set_wakeup_fd(before)
            return False
        self._wakeup_before = before  # the loop's, given back when the wait ends
        return True

    def _end(self) -> None:
        """The thread stopped, the status line gone. Run by ``__exit__`` and by the
        signal's handler (whichever comes first, or one inside the other): each step
        is taken once."""
        signals.forget(self._end)
        self._ended = True
        if self._woken_by_signals:
            self._woken_by_signals = False
            signal.set_wakeup_fd(self._wakeup_before, warn_on_full_buffer=False)
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            read, write = pipe
            with contextlib.suppress(OSError):
                os.write(write, _ENDED)
            os.close(write)  # the thread sees the end even past a full pipe: an EOF
            thread = self._thread
            if thread is None or thread.ident is None:
                os.close(read)  # no thread to close it
            else:
                # The thread closes the read end itself as it returns: closed here while
                # it still ran (it had not returned within ENDING on a loaded machine),
                # its number could go to another file that its select and read then took.
                thread.join(timeout=ENDING)
        # Bounded: a signal's handler may run this while the program holds the console
        # that a draw of the thread waits for (it then stays mid-draw: the line too).
        if self._lock.acquire(timeout=ENDING):
            try:
                bar, self._bar = self._bar, None
                if bar is not None:
                    bar.stop()
            finally:
                self._lock.release()

    def _watch(self, read: int) -> None:
        try:
            self._watching(read)
        finally:
            os.close(read)  # this thread's end of the pipe (see _end)

    def _watching(self, read: int) -> None:
        while True:
            ready, _, _ = select.select([read], [], [], self._sleep(time.monotonic()))
            if ready:
                try:
                    woke = os.read(read, 64)
                except BlockingIOError:
                    woke = None  # nothing after all
                others = bytes(n for n in woke or b"" if n not in STOP_SIGNALS and n)
                if others and self._wakeup_before != -1:
                    # Another signal (SIGHUP: reload) is the loop's: handed on to the
                    # descriptor its wakeup was taken from, it runs once the step ends.
                    with contextlib.suppress(OSError):
                        os.write(self._wakeup_before, others)
                if woke is not None and (not woke or _ENDED in woke):
                    return  # the end, or its write end closed
                stop = [n for n in woke or b"" if n in STOP_SIGNALS]
                if stop and self.signalled is None:
                    self.signalled, self._signalled_at = stop[0], time.monotonic()
            now = time.monotonic()
            if self._interrupt is not None and now - self._signalled_at >= GRACE:
                self._interrupt()  # again every REDRAW: a query begun since ends too
            self._show(now)

    def _sleep(self, now: float) -> float:
        if self.signalled is not None or self._bar is not None:
            return REDRAW
        if self._console is not None:
            return max(0.0, self.started + SHOW_AFTER - now)
        return max(0.0, self._log_at - now)

    def _show(self, now: float) -> None:
        if self._console is not None:
            if now - self.started >= SHOW_AFTER:
                self._draw(self._console)
        elif now >= self._log_at:
            self._log_at = now + LOG_EVERY
            self._log(now)

    def _draw(self, console: Console) -> None:
        with self._lock:
            if self._ended:
                return
            if self._bar is None:
                self._bar = Progress(
                    SpinnerColumn(),
                    TextColumn("{task.description}"),
                    BarColumn(),
                    TimeElapsedColumn(),
                    console=console,
                    transient=True,
                    auto_refresh=False,
                    redirect_stdout=False,
                    redirect_stderr=False,
                )
                self._bar.add_task(self.text(), total=self.total)
                self._bar.start()
            task = self._bar.task_ids[0]
            counted = self.counting and self.total is not None
            self._bar.update(
                task,
                description=self.text(),
                total=self.total if counted else None,
                completed=self.done if counted else 0,
                refresh=True,
            )

    def _log(self, now: float) -> None:
        fields: dict[str, Any] = {"event": self.event, "seconds": round(now - self.started, 1)}
        if self.entry is not None:
            fields["entry"] = self.entry
        if self.counting:
            fields[self.noun] = self.done
            fields["of"] = self.total
        log.info("%s (%.0f s so far)", self.text(), now - self.started, extra=fields)
