"""One pipeline for ``send``, ``send --dry-run`` and ``watch``.

prepare → select and stage → (confirm) → enqueue → deliver → report.

``prepare`` validates the entry and builds every variant, so a bad template, catalog
or key stops the run before anything is selected, recorded or connected. The selection
is staged in the ledger connection's own temporary table, holding no lock, so the
confirmation prompt waits with nothing locked; the enqueue is a few short transactions.
On PostgreSQL one sender at a time selects an entry, by a lease (``sending.lease``) the
others take over when it runs out; the others deliver what it enqueues.
``start`` and ``finish`` are the sequence; ``send`` and ``watch`` both call them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from statusmail import validation
from statusmail.content.catalog_gaps import catalog_problems
from statusmail.content.message import MessageFactory
from statusmail.content.render import Renderer
from statusmail.content.render_checks import render_problems
from statusmail.delivery import intake
from statusmail.delivery.dry_run import DryRun as DryRun  # what send --dry-run and ci read
from statusmail.delivery.dry_run import dry_run as dry_run
from statusmail.delivery.engine import CANCELLED, HOURLY_CAP, LIMIT, Engine, OnOutcome, RunResult
from statusmail.delivery.stream import Stream
from statusmail.delivery.takeover import Selection, take_selection
from statusmail.delivery.transport import Transport
from statusmail.delivery.waiting import Waiting, import_shown, interrupter
from statusmail.domain import Entry, ExitCode, mask_address
from statusmail.errors import ConnectError, InputError, LedgerError, Problem, StatusmailError
from statusmail.ledger import (
    DeliveryQueue,
    Ledger,
    LocalQueue,
    Plan,
    ServerQueue,
    controls,
    run_lock,
)
from statusmail.ledger.queue import worker_name
from statusmail.ledger.staging import SelectionLost
from statusmail.ledger.subscribers import Imported
from statusmail.project.config import Config, is_url
from statusmail.project.editions import load_editions, news_urls
from statusmail.project.entries import entry_paths, find_entry
from statusmail.project.regions import Region, load_regions
from statusmail.project.secrets import secret_problems
from statusmail.project.selection import SelectionStats
from statusmail.project.sending import ca_file_problems
from statusmail.project.tokens import Keyring

if TYPE_CHECKING:
    from rich.console import Console

log = logging.getLogger("statusmail")


@dataclass
class Prepared:
    config: Config
    entry: Entry
    regions: Mapping[str, Region]
    renderer: Renderer
    factory: MessageFactory
    warnings: list[Problem] = field(default_factory=list)


def make_transport(config: Config) -> Transport:
    if config.transport == "smtp":
        from statusmail.delivery.smtp import SmtpTransport

        return SmtpTransport(config.smtp, config.smtp.password())
    from statusmail.delivery.maildir import MaildirTransport

    return MaildirTransport(config.paths.outbox)


def describe_target(config: Config) -> str:
    if config.transport == "smtp":
        return f"SMTP {config.smtp.server}"
    return f"the maildir outbox {config.paths.outbox}"


def load(config: Config, entry_id: str) -> Entry:
    return find_entry(config.paths.updates, entry_id)


def prepare(
    config: Config,
    entry: Entry,
    *,
    preview: bool = False,
    send_now: bool = False,
    now: dt.datetime | None = None,
) -> Prepared:
    """Validate everything one entry's run needs and build each of its variants once.

    Raises ``InputError`` with every problem found; a preview may be of a draft and
    ignores ``send_at`` and delivery secrets.
    """
    regions = load_regions(config.paths.regions)
    found = validation.region_problems(regions)
    found += validation.entry_problems(
        entry,
        known_ids=[p.stem for p in entry_paths(config.paths.updates)],
        regions=regions,
        config=config,
    )
    found += catalog_problems(config.paths.templates)
    if not preview:
        found += validation.readiness_problems(
            entry, now=now or dt.datetime.now(dt.UTC), send_now=send_now
        )
        found += secret_problems(config)
        found += ca_file_problems(config)
    errors = [p for p in found if not p.warning]
    if errors:
        raise InputError(errors)
    try:
        keys, _ = config.keyring()
    except InputError:
        if not preview:
            raise
        keys = Keyring(b"preview")
    news = news_urls(load_editions(config.paths.regions, regions))
    renderer = Renderer(
        config.paths.templates,
        regions,
        config.sender.name,
        news=news,
        topic_names=config.topic_names,
    )
    factory = MessageFactory(config, entry, renderer, keys)
    errors = render_problems(factory, renderer.variant_keys(entry))
    if errors:
        raise InputError(errors)
    return Prepared(config, entry, regions, renderer, factory, [p for p in found if p.warning])


# -- selecting and starting ---------------------------------------------------------


class Declined(Exception):
    """The user answered no at the confirmation prompt; nothing was recorded."""


@dataclass
class Started:
    """A run whose queue is ready to deliver (or is being filled while it delivers)."""

    stats: SelectionStats
    plan: Plan | None = None  # the whole comparison, when selected before delivery
    stream: Stream | None = None  # the selection still to stream while delivering
    joined: bool = False  # another process selects this entry; this one helps deliver
    imported: Imported | None = None  # the lists' import this run selects from


Confirm = Callable[["Prepared", Started], bool]


@dataclass
class Request:
    limit: int | None = None
    accept_removals: bool = False
    accept_edit: bool = False  # the rest get the entry as it is now, though it changed
    confirm: Confirm | None = None
    mask: Callable[[str], str] = mask_address
    console: Console | None = None  # a terminal shows the long waits there; else log lines


@dataclass
class Held:
    """What a run holds: the ledger, and whether other senders may run the entry at
    the same time (PostgreSQL: then one of them selects, by a lease, and all deliver)."""

    ledger: Ledger
    shared: bool = False
    name: str = field(default_factory=worker_name)  # this run, as the selection's lease names it


@contextmanager
def open_ledger(config: Config, entry_id: str) -> Iterator[Held]:
    """The ledger, held for one run of ``entry_id``. On SQLite a second run of the entry
    refuses; on PostgreSQL it joins the first (one selects, all deliver)."""
    target = config.paths.ledger
    with run_lock(target, f"send-{entry_id}"), Ledger(target) as ledger:
        if not is_url(target):
            ledger.release(entry_id)  # claims of a crashed run: nobody else can hold them
        yield Held(ledger, shared=is_url(target))


def _joined(entry: Entry, stats: SelectionStats) -> Started:
    log.info(
        "%s: another sender is selecting this entry; delivering with it",
        entry.id,
        extra={"event": "joined", "entry": entry.id},
    )
    return Started(stats, joined=True)


def _waiting(prepared: Prepared, held: Held, request: Request, *args: str, **kw: Any) -> Waiting:
    """A wait of this run (``Waiting(event, what, ...)``), shown where the request says."""
    return Waiting(
        *args,
        console=request.console,
        entry=prepared.entry.id,
        interrupt=interrupter(held.ledger),
        **kw,
    )


def start(prepared: Prepared, held: Held, request: Request) -> Started:
    """Import the lists if they changed, decide every rule about the entry as a whole,
    select (or begin streaming the selection), ask: the run's queue is ready. Raises
    ``InputError`` (nothing sent or queued) or ``Declined``. Every step that can take
    long shows how far it is (``Waiting``) and ends at once on a signal."""
    entry, ledger = prepared.entry, held.ledger
    stats = SelectionStats()
    # (before joining another sender: it delivers this file's text too)
    edited = intake.edit_check(prepared, ledger, accept=request.accept_edit)
    if held.shared and ledger.selection_leased(entry.id):
        intake.keep_text(prepared, ledger, edited)
        return _joined(entry, stats)
    imported = import_shown(
        ledger, prepared.config.paths.subscribers, console=request.console, entry=entry.id
    )
    made_from = intake.basis(prepared, ledger, imported)
    if request.confirm is None:
        if ledger.selection_basis(entry.id) == made_from:
            log.info(
                "%s: the lists, preferences and entry are as its last complete selection "
                "found them: delivering the queue as it stands",
                entry.id,
                extra={"event": "resumed", "entry": entry.id},
            )
            return Started(stats, imported=imported)
        checking = f"checking {entry.id}'s audience and pending recipients against the lists"
        with _waiting(prepared, held, request, "checking", checking):
            pending = intake.decide(
                prepared, ledger, imported, accept_removals=request.accept_removals
            )
        generation = take_selection(prepared, held, imported)
        intake.keep_text(prepared, ledger, edited)
        if generation is None:  # another sender took it a moment ago
            return _joined(entry, stats)
        stream = Stream(
            prepared,
            prepared.config.paths.ledger,
            generation,
            stats,
            accept_removals=request.accept_removals,
            pending=pending,
            imported=imported,
            basis=made_from,
        )
        return Started(stats, stream=stream, imported=imported)
    while True:
        plan = _staged(prepared, held, request, stats, imported)
        started = Started(stats, plan=plan, imported=imported)
        if not request.confirm(prepared, started):
            raise Declined
        # The prompt may have waited for hours: lists changed (or imported) meanwhile
        # are selected again, and asked about again (a reader unsubscribed in the list
        # while it waited was mailed, even after statusmail import).
        now = import_shown(
            ledger, prepared.config.paths.subscribers, console=request.console, entry=entry.id
        )
        if now.id == imported.id:
            break
        log.info(
            "%s: the lists changed while the prompt waited: selecting again",
            entry.id,
            extra={"event": "reselecting", "entry": entry.id},
        )
        imported, stats = now, SelectionStats()
        made_from = intake.basis(prepared, ledger, imported)
    generation = take_selection(prepared, held, imported)
    intake.keep_text(prepared, ledger, edited)  # (only now: "no" at the prompt keeps none)
    if generation is None:  # another sender began selecting while the prompt waited
        return _joined(entry, stats)
    queueing = f"queueing {entry.id} for {plan.pending_after:,} recipients"
    try:
        with _waiting(prepared, held, request, "queueing", queueing):
            ledger.enqueue(entry.id, generation, lease=prepared.config.sending.lease)
            intake.finish(prepared, ledger, generation, stats, True, plan.pending, made_from)
    except SelectionLost:
        intake.lost(prepared)
        return Started(stats, joined=True)
    intake.said_selected(entry.id, stats, plan)
    return started


def _staged(
    prepared: Prepared, held: Held, request: Request, stats: SelectionStats, imported: Imported
) -> Plan:
    """The whole selection staged and compared with the ledger, before the prompt; raises
    ``InputError`` for a selection that cannot be right."""
    entry, ledger = prepared.entry, held.ledger
    selecting = f"selecting {entry.id}"
    with _waiting(prepared, held, request, "selecting", selecting, noun="subscribers") as wait:
        intake.stage_all(prepared, ledger, stats, imported, wait)
        wait.now(f"comparing {entry.id}'s selection with its recipients in the ledger")
        plan = ledger.plan(entry.id)
    if not plan.selected and not plan.known:
        raise InputError([intake.nobody_problem(prepared)])
    problem = intake.shrink_problem(
        prepared, plan.removed, plan.pending, "are no longer in the list or the audience"
    )
    if problem and not request.accept_removals:
        raise InputError([problem])
    return plan


# -- delivering and reporting --------------------------------------------------------


@dataclass
class Report:
    entry_id: str
    result: RunResult
    counts: dict[str, int] | None  # None when the ledger could not be read at the end
    breakdown: list[tuple[str, str | None, str, int]]
    refused: bool = False  # stopped by the input before anything was sent
    whole: bool = False  # the selection is complete and nothing of it is pending

    @property
    def stopped(self) -> str | None:
        """Why the run stopped early, if it did: the limit or the hourly cap reached as
        the last recipient was taken left nothing to continue."""
        why = self.result.stopped
        return None if self.whole and why in (LIMIT, HOURLY_CAP) else why

    @property
    def continues(self) -> bool:
        """Whether a re-run has more to do: not after a cancel (its exit was 4, "re-run
        to continue", and a re-run sends nothing: review)."""
        return bool(self.stopped) and self.stopped != CANCELLED

    @property
    def exit_code(self) -> ExitCode:
        if self.refused:
            return ExitCode.NOT_STARTED
        if self.counts is None or self.counts["pending"] or self.continues:
            return ExitCode.STOPPED
        if self.counts["failed"]:
            return ExitCode.FAILED
        return ExitCode.OK


def make_queue(prepared: Prepared, held: Held, *, shared: bool = False) -> DeliveryQueue:
    """``shared``: other processes of this run send from the same SQLite file."""
    target = prepared.config.paths.ledger
    lease, thread = prepared.config.sending.lease, prepared.entry.thread
    if is_url(target):
        return ServerQueue(str(target), prepared.entry.id, lease=lease, thread=thread)
    return LocalQueue(held.ledger, prepared.entry.id, lease=lease, thread=thread, shared=shared)


async def finish(
    prepared: Prepared,
    held: Held,
    transport: Transport,
    request: Request,
    started: Started,
    *,
    stop: asyncio.Event,
    on_outcome: OnOutcome | None = None,
    on_counts: Callable[[dict[str, int]], None] | None = None,
) -> Report:
    """Deliver what is pending (and what the selection adds while it streams) and report.
    Raises ``ConnectError`` when the relay cannot be reached at the start (nothing was
    sent); every later stop is in the report. ``on_counts``: outcomes of the run's other
    sender processes (``senders``), by status."""
    from statusmail import senders

    entry_id, ledger = prepared.entry.id, held.ledger
    helpers = senders.extra_processes(prepared.config, request)
    queue = make_queue(prepared, held, shared=helpers > 0)
    progress = asyncio.Event()
    selection = Selection(prepared, held, request, started, progress)
    engine = Engine(
        queue=queue,
        transport=transport,
        build=prepared.factory.build,
        settings=prepared.config.sending,
        stop=stop,
        on_outcome=on_outcome,
        mask=request.mask,
        limit=request.limit,
        selecting=selection.running,
        progress=progress,
        on_idle=selection.take_over,
        controls=controls.asker(ledger, entry_id),
        dkim=prepared.factory.signer,
    )
    selection.engine = engine
    selection.begin()
    team = senders.Team(prepared, request, started, engine, helpers, on_counts)
    cut = False  # the run stopped the selection before it was complete
    try:
        ledger.skip_suppressed(entry_id)
        team.begin()
        try:
            await engine.run()
        except BaseException:
            await team.end(failed=True)
            raise
        await team.end()
        if not stop.is_set():  # a stopped run ends at once: the next run skips them first
            ledger.skip_suppressed(entry_id)  # unsubscribed while this run went on
    except ConnectError:
        selection.stop()
        raise
    except StatusmailError as exc:  # the ledger, or a message that could not be built
        engine.result.stopped = str(exc)
        log.error("stopped: %s", exc, extra={"event": "stopped", "entry": entry_id})
    finally:
        if stop.is_set() or engine.result.stopped:
            cut = selection.running()
            selection.stop()
        await queue.close()
    result = engine.result
    refused = await selection.end(result, cut)
    if stop.is_set() and result.stopped is None:
        result.stopped = "interrupted by a signal"
    try:
        # What a cancelled run handed back, and what its selection added until it
        # stopped (so only now): cancelled, not left pending
        controls.cancel_pending(ledger, entry_id)
        if not stop.is_set():  # else nothing is to be marked, or the next run marks it
            ledger.mark_complete_if_done(entry_id)
        counts = ledger.counts(entry_id)
        breakdown = ledger.breakdown(entry_id)
        # (the ledger, not ``cut``: a stream stopped just as it ended is complete)
        whole = not counts["pending"] and ledger.selection_basis(entry_id) is not None
    except LedgerError as exc:
        log.error("%s", exc)
        return Report(entry_id, result, None, [], refused)
    return Report(entry_id, result, counts, breakdown, refused, whole)
