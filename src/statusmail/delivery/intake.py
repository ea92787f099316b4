"""Taking the audience into the ledger: all at once before a person confirms, or as a
stream that delivery follows (``stream``), so the first message leaves within seconds
however long the list.

The rows come from the lists' import in the ledger (``ledger.subscribers``), validated
when the files changed; every rule about the entry as a whole (content for each language
of its audience, an audience that selects nobody, the shrink guard) is decided from the
import's groups before anything is selected or sent (``decide``).

Either way the rows go through the ledger connection's own staging table (no lock held
while the list is read) into the entry's queue, stamped with the selection's generation;
pending rows the selection did not choose are skipped at its end, unless more of them
left the list than ``sending.max_removed_share`` allows (the shrink guard): then they
stay pending until a run with ``--accept-removals``.

The selection is leased to its sender (``sending.lease``, renewed by every batch it
enqueues), its generation the lease's fencing token: a selector that stood still past
it (stopped, paused, stalled) finds at its next write that another sender took the
selection over, and gives it up.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Iterable, Iterator
from typing import Protocol

from statusmail.delivery import corrections
from statusmail.delivery.waiting import Waiting
from statusmail.domain import Entry, counted
from statusmail.errors import InputError, Problem
from statusmail.ledger import Ledger, Plan, StagedRow
from statusmail.ledger.subscribers import (
    Imported,
    pending_groups,
    preferences_stamp,
    read_groups,
    read_problems,
    read_subscribers,
    special_groups,
)
from statusmail.project import entries
from statusmail.project.config import Config
from statusmail.project.selection import (
    Inactive,
    PreferenceLookup,
    SelectionStats,
    count_audience,
    count_removals,
    select,
)
from statusmail.project.subscriber_rows import RowProblem, Subscriber

log = logging.getLogger("statusmail")

# Up to this many pending recipients a resume finds from the queue (each page sorts
# them); more, and it walks the list for them (they are then most of it).
FEW_PENDING = 100_000


class Run(Protocol):
    """What a selection needs to know (a prepared run has it): the config and the entry."""

    @property
    def config(self) -> Config: ...

    @property
    def entry(self) -> Entry: ...


def listed(
    ledger: Ledger, imported: Imported, entry: Entry | None = None, *, pending: int = 0
) -> Iterator[Subscriber | RowProblem]:
    """The import's row problems, then its subscribers, in list order (for a correction,
    only those what it corrects went out to); an entry with recipients ``pending``
    (how many), those first, so that delivery takes them at once wherever they are."""
    yield from read_problems(ledger, imported.id)
    subscribers: Iterable[Subscriber] = read_subscribers(ledger, imported.id)
    if pending and entry is not None:
        few = pending <= FEW_PENDING
        subscribers = itertools.chain(
            read_subscribers(ledger, imported.id, pending=entry.id, first=True, few=few),
            read_subscribers(ledger, imported.id, pending=entry.id),
        )
    yield from corrections.narrowed(ledger, entry, subscribers) if entry else subscribers


def staged_rows(
    run: Run,
    suppressed: set[str],
    stats: SelectionStats,
    preferences: PreferenceLookup,
    source: Iterable[Subscriber | RowProblem],
) -> Iterator[StagedRow]:
    """The entry's selection as rows to stage; a broken list file raises ``InputError``."""
    config, entry = run.config, run.entry
    for item in select(
        entry,
        source,
        config.default_locale_by_region,
        suppressed,
        stats,
        inactive=True,
        preferences=preferences,
        declared_topics=config.topics,
    ):
        if isinstance(item, RowProblem):
            if item.fatal:
                raise item.refusal()  # select nobody more
            log.warning("skipped: %s", item.masked())
            key = item.email.lower() or f"{item.path}:{item.line}"
            yield StagedRow("invalid", key, detail=item.message)
        elif isinstance(item, Inactive):
            yield StagedRow("inactive", item.address, detail=item.reason)
        else:
            yield StagedRow.selected(item)


def nobody_problem(run: Run) -> Problem:
    entry = run.entry
    return Problem(
        entry.where,
        entry.line("audience") or entry.line("status"),
        "the audience selects no active subscriber: nothing to send",
        code="audience-empty",
    )


def edit_check(run: Run, ledger: Ledger, *, accept: bool) -> bool:
    """An entry whose file changed since it began going out is not finished as it is
    now unless ``accept``: those mailed got the earlier text, the rest would get this
    one, and nothing would say so (a review's run sent "June 3" to 4 and "June 10" to 10,
    then said the change "reached nobody"). Raises ``InputError``. True when the ledger
    is to keep this text as the one the entry goes out as (``keep_text``, once the run
    goes ahead: accepted, or nobody mailed yet)."""
    entry = run.entry
    state = ledger.entry_state(entry.id)
    if state is None or not entry.digest or state[0] == entry.digest:
        return False
    counts = ledger.counts(entry.id)
    went = sum(counts.get(status, 0) for status in ("sent", "bounced", "complained"))
    if went and not accept:
        raise InputError(
            [
                Problem(
                    entry.where,
                    None,
                    f"{entry.id} changed since it began going out: "
                    f"{counted(went, 'recipient')} got it as it was. To finish it as it "
                    "began, put that text back; to send the rest the text as it is now, "
                    f"run statusmail send {entry.id} --accept-edit (then an entry with "
                    f"'corrects: {entry.id}' tells those mailed before)",
                    code="entry-changed",
                )
            ]
        )
    if went:
        log.warning(
            "%s: changed since it began going out; the rest get it as it is now "
            "(--accept-edit), %s got it as it was",
            entry.id,
            counted(went, "recipient"),
            extra={"event": "entry_edit_accepted", "entry": entry.id, "before": went},
        )
    return True


def keep_text(run: Run, ledger: Ledger, edited: bool) -> None:
    """The entry's file as it is now is the text it goes out as (``edit_check``)."""
    if edited:
        ledger.record_digest(run.entry.id, run.entry.digest)


def shrink_problem(run: Run, removed: int, pending: int, what: str) -> Problem | None:
    """A list that shrinks is never taken on trust (an emptied or half-saved file)."""
    share = run.config.sending.max_removed_share
    if not pending or removed <= share * pending:
        return None
    return Problem(
        run.config.paths.subscribers,
        None,
        f"{removed} of the {pending} recipients still pending for {run.entry.id} "
        f"({removed / pending:.0%}) {what}, more than sending.max_removed_share "
        f"({share:.0%}); if that is right, re-run with --accept-removals",
        code="list-shrank",
    )


def decide(run: Run, ledger: Ledger, imported: Imported, *, accept_removals: bool) -> int:
    """Every rule about the entry as a whole, decided from the import before anything
    is selected or sent: the audience's languages each have content, it selects someone
    (or the entry has rows already), and it drops no more of the pending recipients than
    ``sending.max_removed_share`` (unless ``accept_removals``). Raises ``InputError``;
    returns how many recipients are pending."""
    config, entry = run.config, run.entry
    by_region, declared = config.default_locale_by_region, config.topics
    audience = (
        corrections.audience(config, entry, ledger, imported)
        if entry.corrects
        else count_audience(
            entry,
            read_groups(ledger, imported.id),
            special_groups(ledger, imported.id),
            by_region,
            declared,
        )
    )
    missing = entries.missing_language_problems(entry, audience.locales())
    if missing:
        raise InputError(missing)
    counts = ledger.counts(entry.id)
    if not audience.total and not sum(counts.values()):
        raise InputError([nobody_problem(run)])
    pending = counts["pending"]
    if pending:
        groups = pending_groups(ledger, imported.id, entry.id)
        removed = count_removals(entry, groups, by_region, declared)
        held = shrink_problem(run, removed, pending, "are no longer in the list or the audience")
        if held and not accept_removals:
            raise InputError([held])
    return pending


def basis(run: Run, ledger: Ledger, imported: Imported) -> str:
    """What a selection of the entry is made from: the import, the entry's text, the
    stored preferences and lifted suppressions, the config's topics and languages by
    region, and for a correction how many the entry it corrects reached. A complete
    selection made from the same is still what one now would choose."""
    config = run.config
    settings = json.dumps(
        [sorted(config.default_locale_by_region.items()), sorted(config.topics or ())]
    )
    digest = hashlib.sha256(settings.encode()).hexdigest()[:16]
    parts = [imported.id, run.entry.digest, preferences_stamp(ledger), digest]
    return "|".join(map(str, [*parts, corrections.reached(ledger, run.entry)]))


def finish(
    run: Run,
    ledger: Ledger,
    generation: int,
    stats: SelectionStats,
    accept: bool,
    pending: int,
    basis: str | None = None,
) -> Problem | None:
    """End a complete selection: skip what it did not choose, or hold it when that is
    more than the guard allows of the ``pending`` recipients the run started with."""
    removed = ledger.removals(run.entry.id, generation)
    held = shrink_problem(run, removed, pending, "are no longer in the list or the audience")
    if held and accept:
        log.warning("accepted: %s", held.message)
        held = None
    ledger.finish_selection(
        run.entry.id,
        generation,
        stats.read.rows,
        skip_removed=held is None,
        lease=run.config.sending.lease,
        basis=basis if held is None else None,
    )
    return held


def lost(run: Run, *, ended: bool = False) -> None:
    """Say once that this run's selection was taken over, or ``ended`` by the server
    (this run stood still inside one of its writes): no address in it."""
    why = (
        "the server ended this sender's write of it (this one stood still inside it past "
        "sending.lease); another sender, or this one once the lease has run out, selects "
        "the list anew"
        if ended
        else "another sender took it over (this one stood still past sending.lease) and "
        "selects the list anew"
    )
    log.warning(
        "%s: this entry's selection is no longer this sender's: %s; this one delivers",
        run.entry.id,
        why,
        extra={"event": "selection_lost", "entry": run.entry.id},
    )


def stage_all(
    run: Run, ledger: Ledger, stats: SelectionStats, imported: Imported, wait: Waiting
) -> None:
    """The whole selection into the staging area (nothing in the queue yet), each row
    the lists hold counted by ``wait``."""
    entry = run.entry
    ledger.reset_staging()
    count_read(stats, imported)
    wait.total = None if entry.corrects else imported.subscribers + imported.invalid
    with ledger.preference_lookup() as preferences:
        source = wait.counted(listed(ledger, imported, entry))
        rows = staged_rows(run, ledger.suppressed(), stats, preferences, source)
        ledger.stage(rows)
    problems = entries.missing_language_problems(entry, stats.locales())
    if problems:
        raise InputError(problems)


def said_selected(entry_id: str, stats: SelectionStats, plan: Plan) -> None:
    """The log line of a selection made in full before delivery."""
    log.info(
        "%s: %s (%d new), %s pending; skipped %d inactive, "
        "%d suppressed of the audience; %d invalid, %s in the lists",
        entry_id,
        counted(stats.total, "selected recipient"),
        plan.new,
        counted(plan.pending_after, "recipient"),
        stats.inactive,
        stats.suppressed,
        stats.read.invalid,
        counted(stats.read.duplicates, "duplicate row"),
        extra={
            "event": "selected",
            "entry": entry_id,
            "selected": stats.total,
            "new": plan.new,
            "pending": plan.pending_after,
        },
    )


def count_read(stats: SelectionStats, imported: Imported) -> None:
    """The rows the import read, skipped as invalid and found twice (the selection
    reads only what the import kept)."""
    stats.read.rows = imported.rows
    stats.read.invalid = imported.invalid
    stats.read.duplicates = imported.duplicates
