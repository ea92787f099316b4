"""SIGINT and SIGTERM at any moment: from the first line of the program to its last.

Outside an event loop (loading, selecting, the confirmation prompt) a signal raises
``Interrupted`` where the program is, and every step on the way out rolls back what it
had not committed. While a run delivers, the signal sets the run's stop event, so
in-flight messages finish and are recorded; a run still going ``FORCE_AFTER`` seconds
later (it waits on a server that refuses or never answers, say) is cancelled where it
waits, so a signal is honoured within two seconds in every state.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from statusmail.errors import Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Seconds a stopping run has to end by itself before it is cancelled (and again every
# RECANCEL seconds: a library that swallows one cancellation does not keep it running).
# A message to a working relay is acknowledged in milliseconds; one that the relay has
# not acknowledged by then stays pending, at most one per connection.
FORCE_AFTER = 1.0
RECANCEL = 0.1


# Every signal ``_raise`` took: ``__main__`` reads it when the exception it raised came
# out as another (a signal inside a C extension's initialisation can).
received: list[int] = []
# What must be undone before ``Interrupted`` leaves the place the signal found the program
# in (a wait's status line and thread, see ``delivery.waiting``): the handler does it,
# since the exception can rise at the first instruction of the very ``__exit__`` or
# ``finally`` that would have.
_undo: list[Callable[[], None]] = []
# Inside ``raise_on_signal``: a running loop's own signal handling is set aside.
blocking: list[bool] = []


def _raise(signum: int, _frame: FrameType | None) -> None:
    received.append(signum)
    for undo in reversed(_undo[:]):
        with contextlib.suppress(Exception):
            undo()
    raise Interrupted(signum)


def undo_on_signal(undo: Callable[[], None]) -> None:
    """Have ``undo`` run before a signal's ``Interrupted`` is raised (until ``forget``)."""
    _undo.append(undo)


def forget(undo: Callable[[], None]) -> None:
    with contextlib.suppress(ValueError):
        _undo.remove(undo)


def install() -> None:
    """Make SIGINT and SIGTERM raise ``Interrupted`` (call first thing in the program)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise)


def name(signum: int) -> str:
    return signal.Signals(signum).name


@contextmanager
def raise_on_signal() -> Iterator[None]:
    """A synchronous stretch inside a running event loop (``watch`` importing a large
    list, say), which the loop cannot interrupt: its handlers run only once the stretch
    returns. Here SIGINT and SIGTERM raise ``Interrupted`` where the program is, as
    outside a loop, and a ``Waiting`` may take the wakeup descriptor to end a long query
    (``blocking``)."""
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    blocking.append(True)
    try:
        install()
        yield
    finally:
        blocking.pop()
        for sig in STOP_SIGNALS:
            signal.signal(sig, previous[sig])


@contextmanager
def stop_on_signal(
    on_signal: Callable[[], None], *, force_after: float | None = FORCE_AFTER
) -> Iterator[None]:
    """Inside a running event loop: SIGINT/SIGTERM call ``on_signal`` instead of raising.
    If the block still runs ``force_after`` seconds after the first signal, the task
    running it is cancelled (over again until it ends) and the block raises
    ``Interrupted``; ``None`` waits for the block however long it takes."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    received: list[int] = []
    timer: list[asyncio.TimerHandle] = []
    issued = 0  # the cancellations this made

    def force() -> None:
        nonlocal issued
        if task is not None and not task.done() and task.cancel():
            issued += 1
            timer[:] = [loop.call_later(RECANCEL, force)]

    def handle(signum: int) -> None:
        if not received and force_after is not None:
            timer.append(loop.call_later(force_after, force))
        received.append(signum)
        on_signal()

    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, handle, sig)
    try:
        yield
    except asyncio.CancelledError:
        if task is None or not issued:
            raise  # not this one's: somebody else cancelled the task
        for _ in range(min(issued, task.cancelling())):
            task.uncancel()
        raise Interrupted(received[0]) from None
    finally:
        for handle_ in timer:
            handle_.cancel()
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
            signal.signal(sig, previous[sig])
