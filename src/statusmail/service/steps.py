"""Blocking steps of the service (an IMAP pass, an import that connects to the ledger),
run beside its event loop without holding up its end."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def in_a_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function(*args, **kwargs)`` in a daemon thread of its own, awaited as
    ``asyncio.to_thread`` would be; but ``asyncio.run`` joins its executor's threads
    when it ends (without a limit on Python 3.11), so a stop waited for a step blocked on
    a server that accepts and never answers: 30 s on a silent IMAP server, 8 s on a
    PostgreSQL server cut off. This thread is never joined: the process exits and ends
    it where it is, as a kill would (what it recorded is in the ledger, a transaction at
    a time, and read again next time)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.done():  # (the awaiting task was cancelled: nobody wants it)
            return
        if error is None:
            done.set_result(result)  # type: ignore[arg-type]
        else:
            done.set_exception(error)

    def run() -> None:
        try:
            result = context.run(function, *args, **kwargs)
        except BaseException as exc:
            outcome: tuple[T | None, BaseException | None] = (None, exc)
        else:
            outcome = (result, None)
        with contextlib.suppress(RuntimeError):  # the loop is closed: the run is over
            loop.call_soon_threadsafe(settle, *outcome)

    name = getattr(function, "__name__", "step")
    threading.Thread(target=run, name=f"statusmail-{name}", daemon=True).start()
    return await done


async def done_before(work: asyncio.Future[Any], stop: asyncio.Event) -> bool:
    """Wait for ``work`` or ``stop``, whichever comes first; whether ``work`` is done. A
    step that holds nothing in flight (a connect, a mailbox pass) is left to its caller
    to cancel when the stop came first, so a stop need not wait ``signals.FORCE_AFTER``
    for a server that does not answer."""
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((work, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    return work.done()
