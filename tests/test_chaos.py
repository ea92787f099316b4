"""The fault harness (tests/chaos, issue 20) in the suite: its checker finds each kind of
violation in a history made to hold it, and a short run on the real PostgreSQL server
(two senders and a watcher, a kill -9 and a stop past the lease, a fixed seed) and one
on a SQLite ledger file (a sender and a watcher with two processes each) keep every
promise. The long runs are by hand: ``python tests/chaos --seconds 600`` and
``python tests/chaos --ledger sqlite --seconds 90 --rate 250``."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import replace

import psycopg
import pytest

from chaos.history import Arrival, Faults, History, check, most_in_window, rate_bound
from chaos.run import Settings, run
from conftest import missing, server_url

RATE = 10.0
CONCURRENCY = 2


def steady(recipients: int, *, start: float = 100.0) -> History:
    """A history that keeps every promise: each recipient once, a slot apart."""
    addresses = [f"r{i}@example.org" for i in range(recipients)]
    arrivals = [
        Arrival(address, f"<{i}@x>", start + i / RATE, start + i / RATE + 0.01, start + i / RATE)
        for i, address in enumerate(addresses)
    ]
    return History(
        recipients=frozenset(addresses),
        rate=RATE,
        concurrency=CONCURRENCY,
        processes=2,
        arrivals=arrivals,
        ledger_sent=frozenset(addresses),
    )


def test_the_checker_passes_a_clean_history_and_finds_each_violation() -> None:
    clean = check(steady(200))
    assert clean.ok, clean.details()
    assert clean.missing == [] and clean.duplicates == 0

    history = steady(200)
    lost = history.arrivals.pop(7)
    verdict = check(history)
    assert verdict.missing == [lost.recipient] and not verdict.ok
    # the ledger said sent, and it never arrived
    assert verdict.sent_not_arrived == [lost.recipient]

    history = steady(200)
    history.arrivals += history.arrivals[:3]  # three copies more, no fault to explain them
    verdict = check(history)
    assert (verdict.duplicates, verdict.duplicate_bound, verdict.ok) == (3, 0, False)
    history.faults = Faults(kills=1)  # one kill explains up to one per connection
    verdict = check(history)
    assert (verdict.duplicate_bound, verdict.ok) == (CONCURRENCY, False)
    history.faults = Faults(kills=1, stops=1)
    assert check(history).ok

    history = steady(200)
    copy = dataclasses.replace(history.arrivals[0], message_id="<another@x>")
    history.arrivals.append(copy)
    history.faults = Faults(kills=1)
    assert check(history).foreign_duplicates == [copy.recipient]

    history = steady(200)
    late, raced, early = history.arrivals[50], history.arrivals[55], history.arrivals[60]
    history.arrivals[50] = late = dataclasses.replace(late, floor=late.mail_at - 0.05)
    history.arrivals[55] = raced = dataclasses.replace(raced, floor=raced.mail_at - 0.05)
    history.unsubscribed = {
        late.recipient: late.floor - 0.2,  # before the session's last reply: violated
        raced.recipient: raced.floor + 0.01,  # after it, before MAIL FROM: may be under way
        early.recipient: early.mail_at,
    }
    verdict = check(history)
    assert verdict.after_unsubscribe == [(late.recipient, 0.2)], verdict.after_unsubscribe
    assert (verdict.unsubscribed, verdict.raced) == (3, 1)
    history.arrivals[70] = dataclasses.replace(history.arrivals[70], floor=0.0)
    assert check(history).problems == ["harness: 1 arrivals without a reply noted before MAIL FROM"]

    history = steady(200)
    # every arrival of the second half twice as close: double the rate
    half = len(history.arrivals) // 2
    base = history.arrivals[half].at
    history.arrivals[half:] = [
        dataclasses.replace(a, at=base + (a.at - base) / 2) for a in history.arrivals[half:]
    ]
    verdict = check(history)
    assert verdict.max_rate > verdict.rate_bound and not verdict.ok


def test_the_busiest_window_is_counted_exactly() -> None:
    draw = random.Random(20)
    for _ in range(50):
        times = [draw.uniform(0, 30) for _ in range(draw.randrange(1, 120))]
        brute = max(sum(start <= t <= start + 5 for t in times) for start in times)
        assert most_in_window(times) == brute
    # at the rate exactly, a 5 s window holds the slots at both ends
    assert most_in_window([i / RATE for i in range(200)]) == rate_bound(RATE, 0)


# A short run: two seconds of faults, a hundred recipients, three unsubscribes.
SHORT = Settings(
    seconds=2,
    recipients=100,
    rate=50,
    concurrency=CONCURRENCY,
    lease=1,
    every=0.8,
    faults=("kill", "stop"),
    unsubscribes=3,
    finish_within=20,
)


def keeps_every_promise(settings: Settings) -> None:
    """A short run with ``settings`` in which a fault came and someone unsubscribed:
    the whole history keeps every promise."""
    said: list[str] = []
    verdict = run(settings, said.append)
    assert verdict.ok, "\n".join([*said, *verdict.details(), verdict.faults, verdict.line()])
    assert any(line.startswith(("kill", "stop")) for line in said), said  # a fault came
    assert verdict.unsubscribed >= 1, said


@pytest.mark.timeout(60)
def test_a_short_chaos_run_keeps_every_promise() -> None:
    try:
        psycopg.connect(server_url(), connect_timeout=3).close()
    except psycopg.Error as exc:
        missing(f"no PostgreSQL at {server_url()} ({exc}); set $STATUSMAIL_TEST_POSTGRES")
    keeps_every_promise(
        replace(
            SHORT,
            seed=5,
            senders=2,
            watchers=1,  # the long run has two; one more here costs a second of start-up
            server=server_url(),
        )
    )


@pytest.mark.timeout(60)
def test_a_short_chaos_run_on_a_sqlite_ledger_keeps_every_promise() -> None:
    keeps_every_promise(
        replace(
            SHORT,
            seed=3,
            senders=1,  # one run of the entry at a time on SQLite: a second send is refused
            watchers=1,
            processes=2,  # a helper beside each: they share the file and its claims
            ledger="sqlite",
        )
    )
