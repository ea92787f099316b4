"""What a chaos run recorded, and the checker that reads it whole.

The history holds what the outside world saw: every message the relay accepted (its
recipient, Message-ID, when its MAIL FROM came and when its end of DATA was accepted),
every unsubscribe ``serve`` answered with 200 (and when), the faults injected, and what
the ledger says at the end. ``check`` compares it with what the README promises:

- nobody missing: every recipient of the entry who was not unsubscribed got it;
- duplicates within the bound: at most one per connection per fault that can lose a
  claim (a kill, a stop past the lease, the ledger's connections cut or refused);
- nobody sent after their unsubscribe was answered: the README promises that an
  address whose one-click POST was answered before its message's attempt began never
  gets it. The attempt begins (the sender asks the ledger) after the sender has read
  the relay's last reply on that session before the message's MAIL FROM (the previous
  message's end of DATA, or EHLO): so a message that arrived although its 200 came
  before that reply is a violation. One whose 200 came between that reply and its MAIL
  FROM may have been under way already, as the README allows: counted as raced;
- the rate within its bound over every 5 s window of arrivals: the token bucket gives
  out at most ``floor(5 × rate) + 1`` slots in 5 s, and a message arrives after its
  slot, so a window holds at most those plus one message per connection that took its
  slot before the window began (see ``rate_bound``).

All times are ``time.monotonic()`` of the harness's process (the relay runs in it).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

WINDOW = 5.0  # seconds: the rate is checked over every window this long


@dataclass(frozen=True)
class Arrival:
    """One message the relay accepted."""

    recipient: str  # lower-case
    message_id: str
    mail_at: float  # its MAIL FROM
    at: float  # its end of DATA, accepted
    floor: float  # the relay's last reply on the session before the MAIL FROM, as sent


@dataclass
class Faults:
    """The faults that can cost duplicates, counted as they were injected."""

    kills: int = 0  # kill -9 of a process holding claims
    stops: int = 0  # SIGSTOP of a process holding claims, past the lease, then SIGCONT
    cut: int = 0  # processes holding claims when their ledger connections were terminated
    ended: int = 0  # processes that ended by themselves (exit 4) holding claims, not of a cut
    exhaustions: int = 0  # periods of connection exhaustion (no cost by themselves)
    restarts: int = 0  # "PostgreSQL restarts": every backend terminated, refused a moment
    injected: Counter[str] = field(default_factory=Counter)  # every fault, by kind

    @property
    def losing(self) -> int:
        """How many times a sending process could lose the claims in its hands."""
        return self.kills + self.stops + self.cut + self.ended

    def summary(self) -> str:
        return (
            f"faults: {self.injected['kill']} kill -9 ({self.kills} of claim holders),"
            f" {self.injected['stop']} stops past the lease ({self.stops} of claim holders),"
            f" {self.restarts} restarts ({self.cut} claim holders cut),"
            f" {self.exhaustions} exhaustions; {self.ended} ended by themselves holding claims"
        )


@dataclass
class History:
    recipients: frozenset[str]  # the entry's audience, lower-case
    rate: float  # sending.rate, messages per second for the deployment
    concurrency: int  # sending.concurrency, connections per sending process
    processes: int  # sending processes that may run at once (senders and watchers)
    arrivals: list[Arrival] = field(default_factory=list)
    unsubscribed: dict[str, float] = field(default_factory=dict)  # address: 200 answered at
    faults: Faults = field(default_factory=Faults)
    ledger_sent: frozenset[str] = frozenset()  # what the ledger shows as sent at the end
    ledger_pending: int = 0  # rows still pending or claimed at the end
    problems: list[str] = field(default_factory=list)  # tracebacks, hangs, exits: one line each


@dataclass(frozen=True)
class Verdict:
    recipients: int
    missing: list[str]
    duplicates: int
    duplicate_bound: int
    foreign_duplicates: list[str]  # a recipient's copies carrying different Message-IDs
    unsubscribed: int  # addresses whose one-click POST was answered 200
    after_unsubscribe: list[tuple[str, float]]  # (address, seconds its 200 preceded the floor)
    raced: int  # arrived, MAIL FROM after the 200, the attempt perhaps under way before it
    max_rate: float  # the most arrivals in a 5 s window, per second
    rate_bound: float
    sent_not_arrived: list[str]  # the ledger says sent, the relay never had it
    pending: int
    problems: list[str]
    faults: str  # what was injected, in one line

    @property
    def ok(self) -> bool:
        return not (
            self.missing
            or self.duplicates > self.duplicate_bound
            or self.foreign_duplicates
            or self.after_unsubscribe
            or self.max_rate > self.rate_bound
            or self.sent_not_arrived
            or self.pending
            or self.problems
        )

    def line(self) -> str:
        """The one-line verdict, with its counts."""
        head = "OK" if self.ok else "VIOLATION"
        return (
            f"{head}: {self.recipients} recipients, {len(self.missing)} missing,"
            f" {self.duplicates} duplicates (bound {self.duplicate_bound}),"
            f" {len(self.after_unsubscribe)} after unsubscribe (of {self.unsubscribed};"
            f" {self.raced} raced, allowed),"
            f" max 5 s rate {self.max_rate:.1f}/s (bound {self.rate_bound:.1f})"
            + (
                f", {len(self.sent_not_arrived)} sent but never arrived"
                if self.sent_not_arrived
                else ""
            )
            + (f", {self.pending} still pending" if self.pending else "")
            + (f", {len(self.problems)} problems" if self.problems else "")
        )

    def details(self) -> list[str]:
        """One line per violation, for the reader of a failed run (addresses as they are:
        the harness's own generated ones)."""
        lines = [f"missing: {address}" for address in self.missing[:20]]
        if self.duplicates > self.duplicate_bound:
            lines.append(f"duplicates: {self.duplicates} above the bound {self.duplicate_bound}")
        lines += [f"duplicate with another Message-ID: {a}" for a in self.foreign_duplicates[:20]]
        lines += [
            f"sent after its unsubscribe was answered: {address} (the 200 came {late:.3f} s"
            " before the relay's last reply on the session before its MAIL FROM)"
            for address, late in self.after_unsubscribe[:20]
        ]
        if self.max_rate > self.rate_bound:
            lines.append(f"rate: {self.max_rate:.1f}/s over 5 s, above {self.rate_bound:.1f}/s")
        lines += [f"ledger says sent, never arrived: {a}" for a in self.sent_not_arrived[:20]]
        if self.pending:
            lines.append(f"ledger: {self.pending} rows still pending or claimed at the end")
        return lines + self.problems


def most_in_window(times: list[float], window: float = WINDOW) -> int:
    """The most of ``times`` that fall in any closed interval ``window`` long."""
    ordered = sorted(times)
    most = start = 0
    for end, at in enumerate(ordered):
        while at - ordered[start] > window:
            start += 1
        most = max(most, end - start + 1)
    return most


def rate_bound(rate: float, connections: int, window: float = WINDOW) -> int:
    """The most arrivals a window may hold: the bucket's slots in it (they are at least
    ``1 / rate`` apart) plus, per connection, the one message whose slot came before the
    window began and which was still on its way (a connection sends one at a time)."""
    return math.floor(window * rate) + 1 + connections


def check(history: History) -> Verdict:
    counts = Counter(arrival.recipient for arrival in history.arrivals)
    ids: dict[str, set[str]] = {}
    for arrival in history.arrivals:
        ids.setdefault(arrival.recipient, set()).add(arrival.message_id)
    wanted = history.recipients - history.unsubscribed.keys()
    answered = [
        (arrival, history.unsubscribed[arrival.recipient])
        for arrival in history.arrivals
        if arrival.recipient in history.unsubscribed
    ]
    late = sorted(
        (arrival.recipient, round(arrival.floor - at, 3))
        for arrival, at in answered
        if at < arrival.floor
    )
    raced = sum(1 for arrival, at in answered if arrival.floor <= at < arrival.mail_at)
    # A floor of 0 (no reply noted) would make the check above vacuous: the harness's own
    # hooks failed, and the run proves nothing about unsubscribes
    unfloored = sum(1 for a in history.arrivals if not 0 < a.floor <= a.mail_at)
    problems = list(history.problems)
    if unfloored:
        problems.append(f"harness: {unfloored} arrivals without a reply noted before MAIL FROM")
    connections = history.concurrency * history.processes
    bound = rate_bound(history.rate, connections) if history.rate else 0
    most = most_in_window([arrival.at for arrival in history.arrivals])
    return Verdict(
        recipients=len(history.recipients),
        missing=sorted(wanted - counts.keys()),
        duplicates=sum(n - 1 for n in counts.values()),
        duplicate_bound=history.concurrency * history.faults.losing,
        foreign_duplicates=sorted(address for address, seen in ids.items() if len(seen) > 1),
        unsubscribed=len(history.unsubscribed),
        after_unsubscribe=late,
        raced=raced,
        max_rate=most / WINDOW,
        rate_bound=bound / WINDOW if history.rate else math.inf,
        sent_not_arrived=sorted(history.ledger_sent - counts.keys()),
        pending=history.ledger_pending,
        problems=problems,
        faults=history.faults.summary(),
    )
