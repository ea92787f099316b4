"""The selection streamed while delivery runs: a thread of its own (with its own ledger
connection) reads the lists' import, enqueues each batch as soon as it is read (which
renews the selection's lease) and ends the selection (``intake.finish``)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from statusmail.delivery.intake import Run, count_read, finish, listed, lost, staged_rows
from statusmail.errors import InputError, Interrupted, LedgerError, Problem, StatusmailError
from statusmail.ledger import Ledger, StagedRow
from statusmail.ledger.staging import SELECTION_ENDED, SelectionLost
from statusmail.ledger.subscribers import Imported, still_there
from statusmail.project import entries
from statusmail.project.config import is_url
from statusmail.project.selection import SelectionStats

FIRST_BATCH = 100  # small, so that delivery starts at once
BATCH = 2_000
STOP_EVERY = 1_000  # rows of the list read between looks at the run's stop (about 3 ms)

T = TypeVar("T")


@dataclass
class StreamResult:
    error: BaseException | None = None
    held: Problem | None = None  # removals the shrink guard did not skip
    nobody: bool = False
    lost: bool = False  # another sender took the selection over; this one gave it up


class Stream:
    """The selection running in a thread of its own (with its own ledger connection),
    each batch enqueued as soon as it is read (which renews the selection's lease);
    ``progress`` is set in the event loop after every batch and at the end. Taken over
    by another sender, it stops and says so once (``result.lost``); stopped or failed,
    it lets the lease go, so another sender can take the selection over at once."""

    def __init__(
        self,
        run: Run,
        target: str | Path,
        generation: int,
        stats: SelectionStats,
        *,
        accept_removals: bool,
        pending: int,
        imported: Imported,
        basis: str | None = None,
    ) -> None:
        self.run = run
        self.imported = imported
        self.basis = basis
        self.target = target
        self.generation = generation
        self.stats = stats
        self.accept_removals = accept_removals
        self.pending = pending  # recipients pending when the run started
        self.result = StreamResult()
        self.enqueued = 0
        self._stop = threading.Event()
        self._done: asyncio.Future[None] | None = None
        self._on_enqueued: Callable[[int], None] = lambda _count: None

    @property
    def running(self) -> bool:
        return self._done is not None and not self._done.done()

    def start(
        self,
        progress: asyncio.Event,
        on_error: Callable[[str], None],
        on_enqueued: Callable[[int], None] = lambda _count: None,
    ) -> None:
        """Run in a thread; ``on_enqueued`` (in that thread, so it must be thread-safe)
        with how many more recipients each batch made pending, ``on_error`` (in the
        loop) when the selection cannot go on."""
        loop = asyncio.get_running_loop()
        self._on_enqueued = on_enqueued
        self._done = loop.run_in_executor(None, self._run, loop, progress)

        def ended(done: asyncio.Future[None]) -> None:
            if self.result.error is not None:
                on_error(_reason(self.result.error))

        self._done.add_done_callback(ended)

    def stop(self) -> None:
        self._stop.set()

    async def wait(self) -> StreamResult:
        if self._done is not None:
            await asyncio.shield(self._done)
        return self.result

    def _run(self, loop: asyncio.AbstractEventLoop, progress: asyncio.Event) -> None:
        try:
            with Ledger(self.target) as ledger:
                try:
                    self._select(ledger, lambda n: self._added(n, loop, progress))
                finally:
                    # For the other senders (PostgreSQL); nothing when the selection
                    # finished or was taken over (it is another generation's then).
                    if is_url(self.target):
                        with contextlib.suppress(StatusmailError):
                            ledger.release_selection(self.run.entry.id, self.generation)
        except _Stopped:
            pass  # what was enqueued stays; the rest is selected by the next run
        except SelectionLost:
            self.result.lost = True
            lost(self.run)
        except LedgerError as exc:
            if getattr(exc.__cause__, "sqlstate", None) != SELECTION_ENDED:
                self.result.error = exc
            else:
                self.result.lost = True
                lost(self.run, ended=True)
        except (StatusmailError, Interrupted) as exc:
            self.result.error = exc
        finally:
            loop.call_soon_threadsafe(progress.set)

    def _added(self, count: int, loop: asyncio.AbstractEventLoop, progress: asyncio.Event) -> None:
        # Counted here, in the selection's thread, right after the batch's commit (the
        # metrics are prometheus-client's, safe from any thread): the pending gauge
        # never lags the ledger's rows. Only the waiting producer is woken in the loop.
        if count:
            self._on_enqueued(count)
        loop.call_soon_threadsafe(progress.set)

    def _select(self, ledger: Ledger, notify: Callable[[int], object]) -> None:
        count_read(self.stats, self.imported)
        with ledger.preference_lookup() as preferences:
            source = self._until_stopped(
                listed(ledger, self.imported, self.run.entry, pending=self.pending)
            )
            rows = staged_rows(self.run, ledger.suppressed(), self.stats, preferences, source)
            self._stream(ledger, notify, rows)

    def _until_stopped(self, rows: Iterable[T]) -> Iterator[T]:
        """``rows``, until the run stops: a batch of the selection can take a scan of
        most of the list (an audience of a few in a long list), and a stop must not
        wait for it (``asyncio.run`` waits for this thread before the run can end)."""
        for n, row in enumerate(rows):
            if not n % STOP_EVERY and self._stop.is_set():
                raise _Stopped
            yield row

    def _stream(
        self, ledger: Ledger, notify: Callable[[int], object], rows: Iterator[StagedRow]
    ) -> None:
        entry, stats = self.run.entry, self.stats
        lease = self.run.config.sending.lease
        after, size = 0, FIRST_BATCH
        for batch in _batches(rows, size):
            if self._stop.is_set():
                return
            missing = entries.missing_language_problems(entry, stats.locales())
            if missing:
                raise InputError(missing)
            ledger.stage(batch)
            after, added = ledger.enqueue(entry.id, self.generation, after, lease=lease)
            self.enqueued = after
            notify(added)
        if self._stop.is_set():
            return
        if not still_there(ledger, self.imported.id):
            # Removed while it was read (imported again, again and again, before this
            # selection was taken): it read part of the list, and is not complete.
            raise StatusmailError(
                f"{self.run.config.paths.subscribers}: the lists were imported again while"
                f" {entry.id}'s selection read them; run it again to select from the new"
                " import (what was queued stays queued)"
            )
        if not stats.total and not ledger.counts(entry.id)["pending"]:
            self.result.nobody = True
        self.result.held = finish(
            self.run,
            ledger,
            self.generation,
            stats,
            self.accept_removals,
            self.pending,
            self.basis,
        )


class _Stopped(Exception):
    """The run stopped while the selection was reading the list."""


def _reason(error: BaseException) -> str:
    if isinstance(error, InputError):
        return "; ".join(str(p) for p in error.problems)
    return str(error)


def _batches(rows: Iterable[StagedRow], first: int) -> Iterator[list[StagedRow]]:
    batch: list[StagedRow] = []
    size = first
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch, size = [], min(BATCH, size * 4)
    if batch:
        yield batch
