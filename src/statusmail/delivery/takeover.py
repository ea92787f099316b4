"""The selection a run delivers while it delivers: the one it streams itself, or, joining
another sender on PostgreSQL, the other's, taken over when that one's lease runs out
(``Selection``); and a new generation of an entry's selection, leased to the run
(``take_selection``). ``pipeline.start`` and ``pipeline.finish`` use them."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from statusmail.delivery import intake
from statusmail.delivery.engine import Engine, RunResult
from statusmail.delivery.intake import Run
from statusmail.delivery.stream import Stream
from statusmail.domain import counted
from statusmail.errors import InputError
from statusmail.ledger import Ledger
from statusmail.ledger.importing import import_lists
from statusmail.ledger.subscribers import Imported
from statusmail.project.selection import SelectionStats

log = logging.getLogger("statusmail")


class Held(Protocol):
    """What a run holds (``pipeline.Held``)."""

    ledger: Ledger
    shared: bool
    name: str


class Request(Protocol):
    """What was asked of a run (``pipeline.Request``)."""

    accept_removals: bool


class Started(Protocol):
    """A run whose queue is ready to deliver (``pipeline.Started``)."""

    stats: SelectionStats
    stream: Stream | None
    imported: Imported | None


def take_selection(prepared: Run, held: Held, imported: Imported | None) -> int | None:
    """A new generation of the entry's selection, leased to this run; None while
    another sender's lease of it runs (PostgreSQL: this run joins that one). The import
    it reads is kept until the selection is complete."""
    entry, lease = prepared.entry, prepared.config.sending.lease
    reads = imported.id if imported is not None else None
    if not held.shared:  # one run at a time: a lease a crashed run left means nothing
        return held.ledger.begin_selection(entry.id, entry.digest, held.name, lease, reads)
    return held.ledger.take_selection(entry.id, entry.digest, held.name, lease, reads)


class Selection:
    """The selection a run delivers: the one it streams itself, or, joining another
    sender on PostgreSQL, the other's; taken over when that one's lease runs out (its
    sender died, or stands still)."""

    def __init__(
        self,
        prepared: Run,
        held: Held,
        request: Request,
        started: Started,
        progress: asyncio.Event,
    ) -> None:
        self.prepared, self.held, self.request = prepared, held, request
        self.started, self.progress = started, progress
        self.stream = started.stream
        self.engine: Engine | None = None

    def running(self) -> bool:
        return self.stream is not None and self.stream.running

    def begin(self) -> None:
        if self.stream is not None and self.engine is not None:
            self.stream.start(self.progress, self.engine.halt, self.engine.metrics.enqueued)

    def stop(self) -> None:
        if self.stream is not None and self.stream.running:
            self.stream.stop()

    async def take_over(self) -> None:
        """The queue waits on a selection this run does not stream: the first sender to
        find its selector's lease run out (that sender died, or stands still) takes it
        over and selects anew, under a new generation that fences the old one's writes."""
        held = self.held
        if not held.shared or self.running():
            return
        entry = self.prepared.entry
        try:
            imported = self.started.imported or import_lists(
                held.ledger, self.prepared.config.paths.subscribers
            )
        except InputError as exc:  # the lists broke since: nothing to take over from
            log.error("%s", exc, extra={"event": "input_problem", "entry": entry.id})
            return
        generation = take_selection(self.prepared, held, imported)
        if generation is None:
            return
        pending = held.ledger.counts(entry.id)["pending"]  # as the taken selection found it
        # Counted afresh: a run that lost a selection of its own and takes the entry's
        # over would add this list to that one's (its rows are the entry's list_rows).
        self.started.stats = SelectionStats()
        log.warning(
            "%s: the sender that was selecting this entry is gone or stood still past "
            "sending.lease; selecting it here",
            entry.id,
            extra={"event": "selection_taken_over", "entry": entry.id},
        )
        self.stream = Stream(
            self.prepared,
            self.prepared.config.paths.ledger,
            generation,
            self.started.stats,
            accept_removals=self.request.accept_removals,
            pending=pending,
            imported=imported,
        )
        self.begin()

    async def end(self, result: RunResult, cut: bool) -> bool:
        """Wait for the selection this run streams to end and say what it came to (its
        problems stop the run); True when they refused the run before anything was sent.
        ``cut``: the run stopped the selection before it was complete."""
        entry_id, started, stream = self.prepared.entry.id, self.started, self.stream
        refused = False
        outcome = None if stream is None else await stream.wait()
        if outcome is not None and not outcome.lost:  # a selection taken over says so itself
            if isinstance(outcome.error, InputError):
                problems = outcome.error.problems
                refused = result.sent == 0 and result.failed == 0
                for problem in problems:
                    log.error("%s", problem, extra={"event": "input_problem", "entry": entry_id})
                result.stopped = result.stopped or "; ".join(str(p) for p in problems)
            elif outcome.error is not None:
                result.stopped = result.stopped or str(outcome.error)
            if outcome.nobody:
                log.error("%s", intake.nobody_problem(self.prepared))
                refused = True
            if outcome.held is not None:
                log.error("%s", outcome.held, extra={"event": "removals_held", "entry": entry_id})
                result.stopped = result.stopped or outcome.held.message
            log.info(
                "%s: %s%s; skipped %d inactive, %d suppressed of the audience; "
                "%d invalid, %s in the lists",
                entry_id,
                counted(started.stats.total, "selected recipient"),
                " so far (the run stopped before the selection ended)" if cut else "",
                started.stats.inactive,
                started.stats.suppressed,
                started.stats.read.invalid,
                counted(started.stats.read.duplicates, "duplicate row"),
                extra={
                    "event": "selected",
                    "entry": entry_id,
                    "selected": started.stats.total,
                    "complete": not cut,
                },
            )
        return refused
