"""SIGINT and SIGTERM at any moment: from the first line of the program to its last.

Outside an event loop (loading, selecting, the confirmation prompt) a signal raises
``Interrupted`` where the program is, and every step on the way out rolls back what it
had not committed. While a run delivers, the signal only sets the run's stop event, so
in-flight messages finish and are recorded.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from statusmail.errors import Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _raise(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signum)


def install() -> None:
    """Make SIGINT and SIGTERM raise ``Interrupted`` (call first thing in the program)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise)


def name(signum: int) -> str:
    return signal.Signals(signum).name


@contextmanager
def stop_on_signal(on_signal: Callable[[], None]) -> Iterator[None]:
    """Inside a running event loop: SIGINT/SIGTERM call ``on_signal`` instead of raising."""
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    try:
        yield
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
            signal.signal(sig, previous[sig])
