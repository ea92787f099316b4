"""Prometheus metrics of ``watch`` and ``serve``: every definition is here.

Each service run makes its own ``CollectorRegistry`` (with the process metrics), so two
runs in one process, or two tests, never share a counter. The delivery engine finds the
run's ``DeliveryMetrics`` through ``current()`` (a context variable ``watch`` sets with
``use()``); a ``send`` counts into a registry nobody exposes. Labels never hold an
address or entry text: ``entry`` is the entry id, the others come from fixed sets.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from statusmail.domain import FeedbackKind
from statusmail.errors import DeliveryError

# The class of the last reply a message got: an SMTP reply code's hundreds, ``network``
# when the connection failed or timed out before a reply, ``local`` when it was refused
# before anything went out (say, the relay lacks SMTPUTF8 for a non-ASCII address).
REPLY_CLASSES = ("2xx", "4xx", "5xx", "network", "local")
FAILED_CLASSES = ("4xx", "5xx", "network", "local")
RETRIED_CLASSES = ("4xx", "network")  # only transient failures are tried again
UNSUBSCRIBE_OUTCOMES = ("done", "invalid", "bad_request", "error")
FEEDBACK_KINDS = (*(str(kind) for kind in FeedbackKind), "other")
FEEDBACK_STATES = ("unverified", "forged", "held")
CONTENT_TYPE = CONTENT_TYPE_LATEST

# No ``*_created`` series beside each counter: they double what a scrape carries, and
# Prometheus gets the start from process_start_time_seconds.
disable_created_metrics()  # type: ignore[no-untyped-call]


def new_registry() -> CollectorRegistry:
    """A registry of its own, with the usual process, Python and GC metrics."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The text format a Prometheus scrape of ``/metrics`` gets."""
    return generate_latest(registry)


def reply_class(exc: DeliveryError) -> str:
    if exc.code is None:
        return "network" if exc.transient else "local"
    return f"{exc.code // 100}xx" if 200 <= exc.code < 600 else "local"


class DeliveryMetrics:
    """What ``watch`` (and the delivery engine under it) exposes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.messages = Counter(
            "statusmail_messages",
            "Messages by outcome (sent; failed for good; retried: a failed attempt that "
            "will be tried again) and the class of the reply that decided it.",
            ["outcome", "reply_class"],
            registry=registry,
        )
        self.pending = Gauge(
            "statusmail_recipients_pending",
            "Recipients of the entry still waiting for a message, as of the last run.",
            ["entry"],
            registry=registry,
        )
        self.sending = Gauge(
            "statusmail_sending_entry_info",
            "1 for the entry being sent now; absent while nothing is sent.",
            ["entry"],
            registry=registry,
        )
        self.last_accepted = Gauge(
            "statusmail_last_accepted_timestamp_seconds",
            "When the relay last accepted a message (Unix time).",
            registry=registry,
        )
        self.relay_errors = Counter(
            "statusmail_relay_connection_errors",
            "Connections to the relay that could not be opened or reopened.",
            registry=registry,
        )
        self.relay_up = Gauge(
            "statusmail_relay_up",
            "1 if the relay was reachable at the last attempt to connect, else 0.",
            registry=registry,
        )
        self.watch_leader = Gauge(
            "statusmail_watch_leader",
            "1 while this watcher leads (sends); 0 while it stands by or reconnects.",
            registry=registry,
        )
        self.feedback = Counter(
            "statusmail_feedback_events",
            "Feedback read from returned mail, by kind (hard, soft, complaint, "
            "unsubscribe, other).",
            ["kind"],
            registry=registry,
        )
        self.feedback_reports = Counter(
            "statusmail_feedback_reports",
            "Reports that changed nobody's state: unverified (no proof), forged (a token "
            "or signature that did not verify), held (a storm, until released).",
            ["state"],
            registry=registry,
        )
        self.feedback_held = Gauge(
            "statusmail_feedback_held_events",
            "Feedback events the storm guard holds (feedback --release-held DOMAIN).",
            registry=registry,
        )
        for state in FEEDBACK_STATES:
            self.feedback_reports.labels(state)
        self.relay_reachable: bool | None = None  # None: not tried yet
        # Every series that can occur exists from the start, so rate() sees its first rise.
        self.messages.labels("sent", "2xx")
        for cls in FAILED_CLASSES:
            self.messages.labels("failed", cls)
        for cls in RETRIED_CLASSES:
            self.messages.labels("retried", cls)
        for kind in FEEDBACK_KINDS:
            self.feedback.labels(kind)

    def relay(self, reachable: bool, errors: int = 0) -> None:
        """The outcome of connecting to the relay: ``errors`` connections failed."""
        if errors:
            self.relay_errors.inc(errors)
        self.relay_reachable = reachable
        self.relay_up.set(1 if reachable else 0)

    def leader(self, leading: bool) -> None:
        self.watch_leader.set(1 if leading else 0)

    def for_entry(self, entry_id: str) -> EntryMetrics:
        return EntryMetrics(self, entry_id)

    def start_sending(self, entry_id: str, pending: int) -> None:
        self.sending.labels(entry_id).set(1)
        self.pending.labels(entry_id).set(pending)

    def done_sending(self, entry_id: str, pending: int | None) -> None:
        """``pending`` from the ledger's own count at the end, when it could be read. An
        entry nobody waits for any more leaves no series behind, so a watcher that sends
        a thousand entries does not keep a thousand zeros."""
        with contextlib.suppress(KeyError):
            self.sending.remove(entry_id)
        if pending == 0:
            with contextlib.suppress(KeyError):
                self.pending.remove(entry_id)
        elif pending is not None:
            self.pending.labels(entry_id).set(pending)

    def feedback_event(self, kind: str) -> None:
        self.feedback.labels(kind if kind in FEEDBACK_KINDS else "other").inc()


@dataclass
class EntryMetrics:
    """The children one run of one entry touches, resolved once: the per-message cost is
    one or two increments (no label lookups)."""

    parent: DeliveryMetrics
    entry_id: str

    def __post_init__(self) -> None:
        messages = self.parent.messages
        self._sent = messages.labels("sent", "2xx")
        self._failed = {cls: messages.labels("failed", cls) for cls in FAILED_CLASSES}
        self._retried = {cls: messages.labels("retried", cls) for cls in RETRIED_CLASSES}
        self._pending = self.parent.pending.labels(self.entry_id)
        self._last_accepted = self.parent.last_accepted

    def enqueued(self, count: int) -> None:
        """``count`` more recipients pending: the selection, streaming, added them."""
        self._pending.inc(count)

    def skipped(self) -> None:
        """A taken recipient was skipped (suppressed the moment before its turn)."""
        self._pending.dec()

    def sent(self) -> None:
        self._sent.inc()
        self._pending.dec()
        self._last_accepted.set_to_current_time()

    def failed(self, exc: DeliveryError | None) -> None:
        cls = reply_class(exc) if exc is not None else "local"
        child = self._failed.get(cls) or self.parent.messages.labels("failed", cls)
        child.inc()
        self._pending.dec()

    def retried(self, exc: BaseException | None) -> None:
        if isinstance(exc, DeliveryError):
            cls = reply_class(exc)
            (self._retried.get(cls) or self.parent.messages.labels("retried", cls)).inc()

    def relay(self, reachable: bool, errors: int = 0) -> None:
        self.parent.relay(reachable, errors)


class UnsubscribeMetrics:
    """What ``serve`` exposes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "statusmail_unsubscribe_requests",
            "One-click unsubscribe POSTs by outcome: done (recorded), invalid (bad "
            "token), bad_request (not a one-click body, or too large), error (the "
            "ledger failed).",
            ["outcome"],
            registry=registry,
        )
        self._by_outcome = {o: self.requests.labels(o) for o in UNSUBSCRIBE_OUTCOMES}

    def request(self, outcome: str) -> None:
        self._by_outcome[outcome].inc()


_current: contextvars.ContextVar[DeliveryMetrics | None] = contextvars.ContextVar(
    "statusmail_delivery_metrics", default=None
)
_unexposed: DeliveryMetrics | None = None


def current() -> DeliveryMetrics:
    """The delivery metrics of the running service, or ones nobody exposes (``send``)."""
    found = _current.get()
    if found is not None:
        return found
    global _unexposed
    if _unexposed is None:
        _unexposed = DeliveryMetrics(CollectorRegistry())
    return _unexposed


@contextlib.contextmanager
def use(metrics: DeliveryMetrics) -> Iterator[DeliveryMetrics]:
    """Make ``metrics`` the ones ``current()`` returns here (and in tasks started here)."""
    token = _current.set(metrics)
    try:
        yield metrics
    finally:
        _current.reset(token)


def feedback_report(state: str) -> None:
    """Count one report that changed nobody's state (unverified, forged, held)."""
    if state in FEEDBACK_STATES:
        current().feedback_reports.labels(state).inc()


def feedback_held(events: int) -> None:
    """How many events the storm guard holds now."""
    current().feedback_held.set(events)


def feedback_event(kind: str) -> None:
    """Count one feedback event (for the feedback reader): ``kind`` is a ``FeedbackKind``
    (``hard``, ``soft``, ``complaint``, ``unsubscribe``); anything else counts as
    ``other``."""
    current().feedback_event(kind)
