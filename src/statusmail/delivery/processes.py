"""A run's other sender processes on this host (``sending.processes``).

The process that runs the command (the parent) keeps the terminal, the progress and the
exit code; each helper is a fresh interpreter (no fork: nothing of the parent's threads,
connections or event loop is copied) that delivers from the same ledger queue with its
own connection, claims and workers, so exactly-once holds as between several hosts: the
fenced claims, at most one unrecorded message per connection. A helper sends what it
counted, its log records and its result over a socket pair; the parent stops helpers
through it (and a helper whose parent is gone stops by itself: the socket ends).

A helper that dies is reported; what it held goes to the other processes when its lease
(``sending.lease``) runs out, as a dead host's does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from statusmail.domain import Outcome, Recipient

log = logging.getLogger("statusmail.delivery")

FLUSH = 0.1  # how often a helper sends its counts
STOP_WITHIN = 0.8  # a stopping helper still running then is cancelled where it waits
LOG_FIELDS = (str, int, float, bool, type(None))


@dataclass
class Ended:
    """What a helper said when its run ended."""

    sent: int = 0
    failed: int = 0
    stopped: str | None = None


Target = Callable[[Any, "Link"], Awaitable[Ended]]


class Link:
    """A helper's side of the socket: the run's stop event, and its outcomes counted and
    sent to the parent every ``FLUSH`` seconds (``on_outcome`` for the engine)."""

    def __init__(self, conn: Connection, stop: asyncio.Event) -> None:
        self.conn = conn
        self.stop = stop
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()

    def on_outcome(self, outcome: Outcome, _recipient: Recipient) -> None:
        self.counts[str(outcome.status)] += 1

    def send(self, message: tuple[Any, ...]) -> None:
        with self.lock, contextlib.suppress(OSError):
            self.conn.send(message)

    def sending(self) -> None:
        """Say that this helper starts claiming: from now on it may hold recipients."""
        self.send(("sending", None))

    def flush(self) -> None:
        if self.counts:
            counts, self.counts = dict(self.counts), Counter()
            self.send(("counts", counts))


class _Forward(logging.Handler):
    """A helper's log records go to the parent, which writes them where its own go."""

    def __init__(self, link: Link, index: int) -> None:
        super().__init__()
        self.link, self.index = link, index

    def emit(self, record: logging.LogRecord) -> None:
        fields = {k: v for k, v in vars(record).items() if isinstance(v, LOG_FIELDS)}
        fields.update(msg=record.getMessage(), args=None, sender_process=self.index)
        self.link.send(("log", fields))


def helper_main() -> None:
    """A helper's process: ``python -c`` calls this with the socket's descriptor."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # until the loop takes them over
    conn = Connection(int(sys.argv[1]))
    try:
        target, job, index, level = conn.recv()
        asyncio.run(_serve(conn, target, job, index, level))
    except BaseException as exc:  # said to the parent, which says it in one line
        with contextlib.suppress(OSError):
            conn.send(("done", Ended(stopped=str(exc) or type(exc).__name__)))
    conn.close()


async def _serve(
    conn: Connection,
    target: Target,
    job: Any,
    index: int,
    level: int,
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    link = Link(conn, stop)
    root = logging.getLogger()
    root.handlers[:] = [_Forward(link, index)]
    root.setLevel(level)
    task = asyncio.current_task()
    assert task is not None

    def stopping() -> None:
        if not stop.is_set():
            stop.set()
            loop.call_later(STOP_WITHIN, task.cancel)

    def readable() -> None:
        try:
            while conn.poll():
                if conn.recv() == ("stop",):
                    stopping()
        except (EOFError, OSError):  # the parent is gone
            loop.remove_reader(conn.fileno())
            stopping()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping)
    loop.add_reader(conn.fileno(), readable)

    async def flushing() -> None:
        while True:
            await asyncio.sleep(FLUSH)
            link.flush()

    flusher = asyncio.create_task(flushing())
    ended = Ended(stopped="stopped")
    try:
        ended = await target(job, link)
    except asyncio.CancelledError:
        pass  # stopped, and still waiting STOP_WITHIN later: what was unrecorded stays pending
    finally:
        flusher.cancel()
        link.flush()
        # said before the loop ends (and with it the signal handlers this process has)
        link.send(("done", ended))


@dataclass
class _Helper:
    index: int
    process: subprocess.Popen[bytes]
    conn: Connection
    sending: bool = False  # it may hold recipients (before, it can be killed at no cost)
    killed: str | None = None  # why this process killed it, if it did
    ended: Ended | None = None
    gone: asyncio.Event = field(default_factory=asyncio.Event)


class Helpers:
    """The parent's side: starts helpers, passes their counts and log records on, stops
    them, and reports one that died before it said it was done."""

    def __init__(
        self,
        target: Target,
        job: Any,
        *,
        on_counts: Callable[[dict[str, int]], None],
        on_stopped: Callable[[str], None],
        lease: float,
    ) -> None:
        self.target, self.job = target, job
        self.on_counts = on_counts
        self.on_stopped = on_stopped
        self.lease = lease
        self.helpers: list[_Helper] = []
        self.stopping = False

    @property
    def pids(self) -> list[int]:
        return [h.process.pid for h in self.helpers]

    def start(self, count: int) -> None:
        """Start ``count`` helpers; one that cannot be started is said in one line and
        the run goes on without it."""
        loop = asyncio.get_running_loop()
        level = logging.getLogger("statusmail").getEffectiveLevel()
        first = len(self.helpers) + 2  # the parent is process 1
        for index in range(first, first + count):
            try:
                mine, theirs = socket.socketpair()
                with mine, theirs:
                    process = subprocess.Popen(
                        [sys.executable, "-c", _COMMAND, str(theirs.fileno())],
                        pass_fds=[theirs.fileno()],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        # Out of the terminal's process group: a Ctrl-C is the parent's
                        # (it stops the helpers through the socket), never a
                        # KeyboardInterrupt printed by a helper still starting up.
                        start_new_session=True,
                    )
                    conn = Connection(mine.detach())
                helper = _Helper(index, process, conn)
                self.helpers.append(helper)
                conn.send((self.target, self.job, helper.index, level))
            except (OSError, pickle.PicklingError, TypeError, AttributeError) as exc:
                log.warning(
                    "cannot start sender process %d (%s); this run goes on without it",
                    index,
                    exc,
                    extra={"event": "process_not_started", "sender_process": index},
                )
                self.kill("the run goes on in one process")
                return
            loop.add_reader(conn.fileno(), self._readable, helper)
        log.info(
            "%d more sender process(es) on this host share the run",
            count,
            extra={"event": "processes_started", "count": count, "pids": self.pids},
        )

    def stop(self, *, now: bool = False) -> None:
        """Ask every helper to stop: in-flight messages finish, the rest stays pending.
        ``now``: one still starting (it holds nothing yet) is killed rather than waited
        for."""
        self.stopping = True
        for helper in self.helpers:
            if helper.gone.is_set():
                continue
            if now and not helper.sending:
                helper.killed = "still starting when the run stopped"
                helper.process.kill()
                continue
            with contextlib.suppress(OSError):
                helper.conn.send(("stop",))

    async def join(self, timeout: float) -> Ended:
        """Wait for every helper to end (killing those still running after ``timeout``);
        what they sent and why any stopped, together."""
        waits = [asyncio.ensure_future(helper.gone.wait()) for helper in self.helpers]
        try:
            if waits:
                await asyncio.wait(waits, timeout=timeout)
        finally:
            for wait in waits:
                wait.cancel()
            self.kill()  # still running (or the run is cancelled): nothing sends behind it
        total = Ended()
        for helper in self.helpers:
            if helper.ended is not None:
                total.sent += helper.ended.sent
                total.failed += helper.ended.failed
                total.stopped = total.stopped or helper.ended.stopped
        return total

    def kill(self, why: str = "still running when the run had ended") -> None:
        for helper in self.helpers:
            if helper.process.poll() is None:
                helper.killed = helper.killed or why
                helper.process.kill()
            if not helper.gone.is_set():
                helper.process.wait()
                self._read(helper)  # what it said before it ended
                self._gone(helper)

    def _readable(self, helper: _Helper) -> None:
        if not self._read(helper):
            helper.process.wait()  # its end of the socket closed: it is exiting
            self._gone(helper)

    def _read(self, helper: _Helper) -> bool:
        """Take what the helper has sent; False once its end is closed."""
        try:
            while helper.conn.poll():
                kind, body = helper.conn.recv()
                if kind == "counts":
                    self.on_counts(body)
                elif kind == "log":
                    record = logging.makeLogRecord(body)
                    logging.getLogger(record.name).handle(record)
                elif kind == "sending":
                    helper.sending = True
                elif kind == "done":
                    # All it had to say: its ledger connection is closed, only the
                    # interpreter's teardown is left, which the run need not wait for.
                    helper.ended = body
                    helper.process.kill()
        except (EOFError, OSError):
            return False
        return True

    def _gone(self, helper: _Helper) -> None:
        if helper.gone.is_set():
            return
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(helper.conn.fileno())
        helper.conn.close()
        helper.gone.set()
        if helper.ended is None and helper.killed:
            log.info(
                "sender process %d (pid %d) killed: %s",
                helper.index,
                helper.process.pid,
                helper.killed,
                extra={"event": "process_killed", "sender_process": helper.index},
            )
        elif helper.ended is None:
            code = helper.process.returncode
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            log.warning(
                "sender process %d (pid %d) ended by %s before its run was done; what it "
                "held goes to the other processes when its lease (sending.lease, %gs) runs out",
                helper.index,
                helper.process.pid,
                how,
                self.lease,
                extra={
                    "event": "process_died",
                    "sender_process": helper.index,
                    "pid": helper.process.pid,
                    "how": how,
                },
            )
        elif helper.ended.stopped and not self.stopping:
            self.on_stopped(f"sender process {helper.index}: {helper.ended.stopped}")


_COMMAND = "from statusmail.delivery.processes import helper_main; helper_main()"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1
