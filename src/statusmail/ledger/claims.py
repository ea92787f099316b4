"""What one sender process holds of an entry's queue (``Claims``): each row's claim epoch,
the fencing token its outcome is recorded with, and until when its lease surely holds;
``worker_name``, this process as claims name it, and ``clock``, what leases are
measured by here."""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Iterable

from statusmail.domain import Outcome, Recipient
from statusmail.ledger.outcomes import Fenced


def worker_name() -> str:
    """This process, as claims name it: host, pid and a random part (pids repeat)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


# The clock a lease is measured by here. Linux's boot time counts a suspended machine
# too (the monotonic clock may not); a paused or stopped process sees both run on.
_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def clock() -> float:
    return time.clock_gettime(_CLOCK)


class Claims:
    """What this process holds of the entry's queue: each row's claim epoch (the fencing
    token its outcome is recorded with), and until when its lease surely holds.

    A renewal (every third of the lease, in the background) is also the claim's
    validation: it answers with what this process still holds, and what it holds then
    stays its own on the server at least until ``lease`` after the renewal was sent,
    by this host's clock. So before a message a sender looks at that clock alone while
    the moment is more than ``margin`` away (``fresh``), and renews first (one round
    trip) when not: when the process stood still (stopped, paused, starved) long enough
    for another sender to take its rows over. A row found taken is ``lost``: its
    sender drops it (``drop``) and never records an outcome for it.
    """

    def __init__(self, lease: float) -> None:
        self.lease = lease
        self.margin = lease / 4
        self.epochs: dict[str, int] = {}  # what this process has in hand, by address
        self.lost: set[str] = set()  # of those, what another sender has taken over
        self.until = 0.0  # the lease of what is held surely lasts until then (clock())

    def fresh(self) -> bool:
        return clock() < self.until - self.margin

    def holds(self, address: str) -> bool:
        return address in self.epochs and address not in self.lost

    def taken(self, start: float, rows: Iterable[tuple[Recipient, int]]) -> list[Recipient]:
        """Record a claim sent at ``start``; returns the recipients not already in hand
        (a row lost and taken back is in hand still, and valid again)."""
        if not self.epochs.keys() - self.lost:
            self.until = start + self.lease  # else the older rows' lease ends first
        new = []
        for recipient, epoch in rows:
            if recipient.address not in self.epochs:
                new.append(recipient)
            self.epochs[recipient.address] = epoch
            self.lost.discard(recipient.address)
        return new

    def snapshot(self) -> dict[str, int]:
        """What is held now, as a renewal sent now will judge it."""
        return {a: e for a, e in self.epochs.items() if a not in self.lost}

    def confirmed(self, start: float, before: dict[str, int], held: dict[str, int]) -> int:
        """A renewal sent at ``start``, when ``before`` was held, answered ``held``;
        returns how many rows it found lost."""
        lost = 0
        for address, epoch in before.items():
            if self.epochs.get(address) == epoch and held.get(address) != epoch:
                self.lost.add(address)
                lost += 1
        self.until = start + self.lease
        return lost

    def drop(self, address: str) -> None:
        self.epochs.pop(address, None)
        self.lost.discard(address)

    def settle(self, outcomes: Iterable[Outcome]) -> Fenced:
        """Outcomes about to be recorded, fenced; their rows leave this process's hands
        now (a renewal answered meanwhile does not count them as lost)."""
        fenced = {}
        for outcome in outcomes:
            fenced[outcome] = self.epochs.pop(outcome.address, None)
            self.lost.discard(outcome.address)
        return fenced
