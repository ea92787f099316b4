"""Pacing for one run: a shared rate limit, an hourly cap and a failure-rate breaker.

All three take their clock as a parameter so that tests can drive them with a fake one.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

HOUR = 3600.0


class TokenBucket:
    """At most ``rate`` grants per second, shared by every worker of a run.

    Scheduling is by "theoretical arrival time" (GCRA): each grant moves the next
    allowed time on by exactly ``1 / rate``, so oversleeping does not make the run
    drift. ``burst`` grants may be taken back to back after an idle spell (default 1:
    never faster than the rate). Waiters are served in arrival order. ``rate`` 0 or
    infinity means unlimited.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate < 0 or math.isnan(rate):
            raise ValueError(f"rate must be 0 (unlimited) or positive, not {rate}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst}")
        self.rate = rate
        self.unlimited = rate == 0 or math.isinf(rate)
        self._interval = 0.0 if self.unlimited else 1.0 / rate
        self._tolerance = (burst - 1.0) * self._interval
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None  # theoretical time of the next grant
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait until this caller may send one message."""
        if self.unlimited:
            return
        async with self._lock:  # FIFO: one waiter at a time sleeps for its slot
            now = self._clock()
            due = now if self._next is None else max(self._next, now)
            allowed_at = due - self._tolerance
            if allowed_at > now:
                await self._sleep(allowed_at - now)
            self._next = due + self._interval


class SharedBucket:
    """The same pacing shared by every process that sends for a deployment: the next
    slot is kept in the ledger. ``take_slots(interval, count)`` reserves ``count``
    consecutive slots and returns how long to wait for the first, so one transaction
    paces the next ``span`` seconds of this process's messages (about) and the slots of
    all processes never overlap: the combined rate holds whatever the number of senders.
    A slot the workers come too late for is let go rather than used in a burst. Below
    ``BLOCKS_FROM`` messages a second each worker takes its own slot as it needs it, as
    one transaction a slot costs little there, and a process that falls behind (a busy
    machine) lets no reserved slot lapse."""

    BLOCKS_FROM = 200.0

    def __init__(
        self,
        rate: float,
        take_slots: Callable[[float, int], Awaitable[float]],
        *,
        span: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.unlimited = rate == 0 or math.isinf(rate)
        self._interval = 0.0 if self.unlimited else 1.0 / rate
        self.block = 1
        if not self.unlimited and rate >= self.BLOCKS_FROM:
            self.block = max(1, min(64, int(rate * span)))
        self._take_slots = take_slots
        self._clock = clock
        self._sleep = sleep
        self._due: deque[float] = deque()  # this process's reserved slots (clock())
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if self.unlimited:
            return
        if self.block == 1:  # a slow rate: each worker takes its own slot, at once
            wait = await self._take_slots(self._interval, 1)
            if wait > 0:
                await self._sleep(wait)
            return
        async with self._lock:  # FIFO, as TokenBucket
            now = self._clock()
            while self._due and self._due[0] < now - self._interval:
                self._due.popleft()
            if not self._due:
                wait = await self._take_slots(self._interval, self.block)
                # measured from the answer: never earlier than the ledger's slot
                first = self._clock() + max(wait, 0.0)
                self._due.extend(first + i * self._interval for i in range(self.block))
            delay = self._due.popleft() - self._clock()
            if delay > 0:
                await self._sleep(delay)


class HourlyWindow:
    """A sliding one-hour count of messages sent, against an optional ``limit``.

    ``already_sent_timestamps`` pre-seeds the window (e.g. from the ledger on a re-run);
    they must come from the same clock as ``clock``.
    """

    def __init__(
        self,
        limit: int | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        already_sent_timestamps: Iterable[float] = (),
    ) -> None:
        if limit is not None and limit < 0:
            raise ValueError(f"limit must not be negative, not {limit}")
        self.limit = limit
        self._clock = clock
        self._times: deque[float] = deque(sorted(already_sent_timestamps))

    def _prune(self) -> float:
        now = self._clock()
        while self._times and self._times[0] <= now - HOUR:
            self._times.popleft()
        return now

    def try_take(self) -> bool:
        """Take one slot now, or return False if ``limit`` were taken in the last hour."""
        now = self._prune()
        if self.limit is not None and len(self._times) >= self.limit:
            return False
        self._times.append(now)
        return True

    def record(self) -> None:
        """Count one message sent now, whether or not the limit allows it."""
        self._times.append(self._prune())

    @property
    def count(self) -> int:
        """Messages counted within the last hour."""
        self._prune()
        return len(self._times)

    def seconds_until_free(self) -> float:
        """How long until ``try_take`` can succeed (0 if it can now)."""
        now = self._prune()
        if self.limit is None or len(self._times) < self.limit:
            return 0.0
        if self.limit == 0:
            return math.inf
        # The oldest timestamps that must leave the window before a slot frees up.
        return self._times[len(self._times) - self.limit] + HOUR - now


class FailureWindow:
    """Trips when the share of failures among the last ``size`` attempts reaches
    ``threshold``, once at least ``min_samples`` attempts were recorded.
    ``threshold`` 0 disables it.
    """

    def __init__(self, threshold: float, size: int = 50, min_samples: int = 20) -> None:
        if not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be a share from 0 to 1, not {threshold}")
        if size < 1:
            raise ValueError(f"size must be at least 1, not {size}")
        self.threshold = threshold
        self.size = size
        self.min_samples = max(1, min(min_samples, size))
        self._outcomes: deque[bool] = deque(maxlen=size)

    def record(self, ok: bool) -> None:
        self._outcomes.append(ok)

    @property
    def failure_rate(self) -> float:
        if not self._outcomes:
            return 0.0
        return self._outcomes.count(False) / len(self._outcomes)

    @property
    def tripped(self) -> bool:
        if self.threshold == 0 or len(self._outcomes) < self.min_samples:
            return False
        return self.failure_rate >= self.threshold
