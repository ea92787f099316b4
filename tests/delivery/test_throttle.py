"""Throttle, hourly cap and failure breaker, on a fake clock (no real waiting)."""

from __future__ import annotations

import asyncio
import math
from itertools import pairwise

import pytest

from statusmail.delivery.throttle import FailureWindow, HourlyWindow, TokenBucket


class FakeClock:
    """``now()`` and an async ``sleep()`` that moves time instead of waiting."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)  # let other tasks run, as a real sleep would


def bucket(clock: FakeClock, rate: float, **kw: float) -> TokenBucket:
    return TokenBucket(rate, clock=clock.now, sleep=clock.sleep, **kw)


# -- TokenBucket --------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "rate"), [(1, 5.0), (10, 5.0), (100, 20.0), (7, 0.5)])
async def test_n_acquires_take_n_minus_one_intervals(n: int, rate: float) -> None:
    clock = FakeClock()
    tb = bucket(clock, rate)
    for _ in range(n):
        await tb.acquire()
    assert clock.t - 1000.0 == pytest.approx((n - 1) / rate)


async def test_no_two_grants_closer_than_the_interval() -> None:
    clock = FakeClock()
    tb = bucket(clock, 4.0)
    grants = []
    for _ in range(20):
        await tb.acquire()
        grants.append(clock.t)
    gaps = [b - a for a, b in pairwise(grants)]
    assert min(gaps) >= 0.25 - 1e-9


async def test_no_drift_when_sleep_oversleeps() -> None:
    # The sleeper wakes up late every time; the schedule must not slip further.
    clock = FakeClock(0.0)

    async def late_sleep(seconds: float) -> None:
        clock.t += seconds + 0.01

    tb = TokenBucket(10.0, clock=clock.now, sleep=late_sleep)
    for _ in range(101):
        await tb.acquire()
    # Grants are due at 0, 0.1, ..., 10.0: the lateness does not accumulate.
    assert clock.t == pytest.approx(10.0, abs=0.011)


async def test_idle_time_is_not_banked_with_burst_one() -> None:
    clock = FakeClock()
    tb = bucket(clock, 2.0)
    await tb.acquire()
    clock.t += 60  # idle for a minute
    await tb.acquire()
    start = clock.t
    await tb.acquire()
    assert clock.t - start == pytest.approx(0.5)


async def test_burst_allows_that_many_back_to_back() -> None:
    clock = FakeClock()
    tb = bucket(clock, 1.0, burst=3)
    for _ in range(3):
        await tb.acquire()
    assert clock.t == 1000.0
    await tb.acquire()
    assert clock.t == pytest.approx(1001.0)


async def test_concurrent_acquirers_are_all_served_in_order() -> None:
    clock = FakeClock()
    tb = bucket(clock, 10.0)
    grants: list[tuple[int, float]] = []

    async def worker(i: int) -> None:
        await tb.acquire()
        grants.append((i, clock.t))

    await asyncio.gather(*(worker(i) for i in range(50)))
    assert [i for i, _ in grants] == list(range(50))  # FIFO
    times = [t for _, t in grants]
    gaps = [b - a for a, b in pairwise(times)]
    assert min(gaps) >= 0.1 - 1e-9
    assert clock.t - 1000.0 == pytest.approx(4.9)


async def test_cancelled_waiter_does_not_use_a_slot() -> None:
    clock = FakeClock()
    gate = asyncio.Event()

    async def blocking_sleep(seconds: float) -> None:
        await gate.wait()
        clock.t += seconds

    tb = TokenBucket(1.0, clock=clock.now, sleep=blocking_sleep)
    await tb.acquire()
    waiter = asyncio.create_task(tb.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    clock.t += 1.0
    gate.set()
    await tb.acquire()  # due now: the cancelled waiter left no debt
    assert clock.t == pytest.approx(1001.0)


@pytest.mark.parametrize("rate", [0.0, math.inf])
async def test_unlimited_never_sleeps(rate: float) -> None:
    clock = FakeClock()
    tb = bucket(clock, rate)
    assert tb.unlimited
    for _ in range(1000):
        await tb.acquire()
    assert clock.sleeps == []


@pytest.mark.parametrize(("rate", "burst"), [(-1.0, 1.0), (math.nan, 1.0), (1.0, 0.5)])
def test_bucket_rejects_bad_arguments(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst=burst)


# -- HourlyWindow -------------------------------------------------------------------------


def test_hourly_limit_and_sliding() -> None:
    clock = FakeClock(0.0)
    hw = HourlyWindow(3, clock=clock.now)
    for t in (0.0, 100.0, 200.0):
        clock.t = t
        assert hw.try_take()
    clock.t = 3599.0
    assert not hw.try_take()
    assert hw.count == 3
    assert hw.seconds_until_free() == pytest.approx(1.0)
    clock.t = 3600.0  # the first one leaves the window
    assert hw.seconds_until_free() == 0.0
    assert hw.try_take()
    assert not hw.try_take()
    clock.t = 3700.0
    assert hw.try_take()


def test_hourly_unlimited() -> None:
    hw = HourlyWindow(None, clock=FakeClock().now)
    assert all(hw.try_take() for _ in range(10_000))
    assert hw.seconds_until_free() == 0.0


def test_hourly_preseeded_from_ledger() -> None:
    clock = FakeClock(10_000.0)
    seeded = [5_000.0, 7_000.0, 9_000.0, 9_500.0]  # the first is over an hour old
    hw = HourlyWindow(4, clock=clock.now, already_sent_timestamps=seeded)
    assert hw.count == 3
    assert hw.try_take()
    assert not hw.try_take()
    assert hw.seconds_until_free() == pytest.approx(7_000.0 + 3600.0 - 10_000.0)


def test_hourly_record_counts_without_checking() -> None:
    clock = FakeClock()
    hw = HourlyWindow(1, clock=clock.now)
    hw.record()
    hw.record()
    assert hw.count == 2
    assert not hw.try_take()


def test_hourly_zero_limit_never_frees() -> None:
    hw = HourlyWindow(0, clock=FakeClock().now)
    assert not hw.try_take()
    assert hw.seconds_until_free() == math.inf


# -- FailureWindow ------------------------------------------------------------------------


def test_failure_window_needs_min_samples() -> None:
    fw = FailureWindow(0.2, size=50, min_samples=20)
    for _ in range(19):
        fw.record(False)
    assert not fw.tripped
    fw.record(False)
    assert fw.tripped


def test_failure_window_threshold_is_inclusive() -> None:
    fw = FailureWindow(0.25, size=20, min_samples=20)
    for i in range(20):
        fw.record(i % 4 != 0)  # 5 failures in 20 = 0.25
    assert fw.failure_rate == pytest.approx(0.25)
    assert fw.tripped
    fw.record(True)  # drops a failure out of the window: 4/20
    assert not fw.tripped


def test_failure_window_slides() -> None:
    fw = FailureWindow(0.5, size=10, min_samples=5)
    for _ in range(10):
        fw.record(False)
    assert fw.tripped
    for _ in range(6):
        fw.record(True)
    assert fw.failure_rate == pytest.approx(0.4)
    assert not fw.tripped


def test_failure_window_disabled_by_zero() -> None:
    fw = FailureWindow(0.0, size=10, min_samples=1)
    for _ in range(100):
        fw.record(False)
    assert not fw.tripped


def test_failure_window_min_samples_above_size_is_clamped() -> None:
    fw = FailureWindow(1.0, size=5, min_samples=20)
    for _ in range(5):
        fw.record(False)
    assert fw.tripped
