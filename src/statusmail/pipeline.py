"""One pipeline for ``send``, ``send --dry-run`` and ``watch``.

prepare → select and stage → (confirm) → enqueue → deliver → report.

``prepare`` validates the entry and builds every variant, so a bad template, catalog
or key stops the run before anything is selected, recorded or connected. The selection
is staged in the ledger connection's own temporary table, holding no lock, so the
confirmation prompt waits with nothing locked; the enqueue is a few short transactions.
``start`` and ``finish`` are the sequence; ``send`` and ``watch`` both call them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from statusmail import validation
from statusmail.catalog import catalog_problems
from statusmail.config import Config
from statusmail.delivery import Engine, OnOutcome, RunResult
from statusmail.domain import Entry, ExitCode
from statusmail.entries import entry_paths, find_entry
from statusmail.errors import ConnectError, InputError, LedgerError, Problem, StatusmailError
from statusmail.ledger import (
    Ledger,
    Plan,
    StagedRow,
    read_preferences,
    read_suppressions,
    run_lock,
)
from statusmail.message import MessageFactory
from statusmail.regions import Region, load_regions
from statusmail.render import Renderer
from statusmail.report import mask_address, scrub
from statusmail.selection import Inactive, PreferenceLookup, SelectionStats, select
from statusmail.subscribers import RowProblem
from statusmail.throttle import HourlyWindow
from statusmail.tokens import Keyring
from statusmail.transport import Transport

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
        from statusmail.smtp import SmtpTransport

        return SmtpTransport(config.smtp, config.smtp.password())
    from statusmail.maildir import MaildirTransport

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
        found += validation.secret_problems(config)
    errors = [p for p in found if not p.warning]
    if errors:
        raise InputError(errors)
    try:
        keys, _ = config.keyring()
    except InputError:
        if not preview:
            raise
        keys = Keyring(b"preview")
    renderer = Renderer(config.paths.templates, regions, config.sender.name)
    factory = MessageFactory(config, entry, renderer, keys)
    errors = validation.render_problems(factory, renderer.variant_keys(entry))
    if errors:
        raise InputError(errors)
    return Prepared(config, entry, regions, renderer, factory, [p for p in found if p.warning])


# -- selecting and staging ---------------------------------------------------------


@dataclass
class Staged:
    stats: SelectionStats
    plan: Plan


def _staged_rows(
    prepared: Prepared,
    suppressed: set[str],
    stats: SelectionStats,
    preferences: PreferenceLookup,
) -> Iterator[StagedRow]:
    config, entry = prepared.config, prepared.entry
    for item in select(
        entry,
        config.paths.subscribers,
        config.default_locale_by_region,
        suppressed,
        stats,
        inactive=True,
        preferences=preferences,
        declared_topics=config.topics,
    ):
        if isinstance(item, RowProblem):
            if item.fatal:
                # A broken list could hide anyone after the break: select nobody.
                raise InputError([Problem(item.path, item.line or None, item.message)])
            log.warning("skipped: %s", item)
            key = item.email.lower() or f"{item.path}:{item.line}"
            yield StagedRow("invalid", key, detail=item.message)
        elif isinstance(item, Inactive):
            yield StagedRow("inactive", item.address, detail=item.reason)
        else:
            yield StagedRow.selected(item)


def stage(prepared: Prepared, ledger: Ledger) -> Staged:
    """Select the audience into the ledger's staging area; nothing is recorded yet."""
    entry = prepared.entry
    stats = SelectionStats()
    with ledger.preference_lookup() as preferences:
        ledger.stage(_staged_rows(prepared, ledger.suppressed(), stats, preferences))
    problems = validation.missing_language_problems(entry, stats.locales())
    plan = ledger.plan(entry.id)
    if not plan.selected and not plan.known:
        problems.append(
            Problem(
                entry.where,
                entry.line("audience") or entry.line("status"),
                "the audience selects no active subscriber: nothing to send",
            )
        )
    if problems:
        raise InputError(problems)
    return Staged(stats, plan)


def removal_problem(prepared: Prepared, plan: Plan) -> Problem | None:
    """A list that shrinks is never taken on trust (an emptied or half-saved file)."""
    share = prepared.config.sending.max_removed_share
    if not plan.pending or plan.removed <= share * plan.pending:
        return None
    entry = prepared.entry
    return Problem(
        prepared.config.paths.subscribers,
        None,
        f"{plan.removed} of the {plan.pending} recipients still pending for {entry.id} "
        f"({plan.removed / plan.pending:.0%}) are no longer in the list or the audience, "
        f"more than sending.max_removed_share ({share:.0%}); if that is right, re-run with "
        "--accept-removals",
    )


class Declined(Exception):
    """The user answered no at the confirmation prompt; nothing was recorded."""


Confirm = Callable[[Prepared, Staged], bool]


@dataclass
class Request:
    limit: int | None = None
    accept_removals: bool = False
    confirm: Confirm | None = None
    mask: Callable[[str], str] = mask_address


@contextmanager
def open_ledger(config: Config, entry_id: str) -> Iterator[Ledger]:
    """The ledger, held for one run of ``entry_id`` (a second run of it refuses)."""
    with run_lock(config.paths.ledger, f"send-{entry_id}"), Ledger(config.paths.ledger) as ledger:
        yield ledger


def start(prepared: Prepared, ledger: Ledger, request: Request) -> Staged:
    """Select, stage, check the shrink guard, ask, and enqueue: the run's queue is ready.

    Raises ``InputError`` (nothing recorded) or ``Declined``.
    """
    staged = stage(prepared, ledger)
    problem = removal_problem(prepared, staged.plan)
    if problem and not request.accept_removals:
        raise InputError([problem])
    if problem:
        log.warning("accepted: %s", problem.message)
    if request.confirm is not None and not request.confirm(prepared, staged):
        raise Declined
    ledger.enqueue(prepared.entry.id, prepared.entry.digest)
    stats = staged.stats
    log.info(
        "%s: %d selected (%d new), %d pending; skipped %d invalid, %d inactive, "
        "%d suppressed, %d duplicate rows",
        prepared.entry.id,
        stats.total,
        staged.plan.new,
        staged.plan.pending_after,
        stats.read.invalid,
        stats.inactive,
        stats.suppressed,
        stats.read.duplicates,
        extra={
            "event": "selected",
            "entry": prepared.entry.id,
            "selected": stats.total,
            "new": staged.plan.new,
            "pending": staged.plan.pending_after,
        },
    )
    return staged


# -- delivering and reporting --------------------------------------------------------


@dataclass
class Report:
    entry_id: str
    result: RunResult
    counts: dict[str, int] | None  # None when the ledger could not be read at the end
    breakdown: list[tuple[str, str | None, str, int]]

    @property
    def exit_code(self) -> ExitCode:
        if self.counts is None or self.counts["pending"] or self.result.stopped:
            return ExitCode.STOPPED
        if self.counts["failed"]:
            return ExitCode.FAILED
        return ExitCode.OK


async def finish(
    prepared: Prepared,
    ledger: Ledger,
    transport: Transport,
    request: Request,
    *,
    stop: asyncio.Event,
    on_outcome: OnOutcome | None = None,
) -> Report:
    """Deliver what is pending and report. Raises ``ConnectError`` when the relay cannot
    be reached at the start (nothing was sent); every later stop is in the report."""
    entry_id = prepared.entry.id
    result = await deliver(prepared, ledger, transport, request, stop=stop, on_outcome=on_outcome)
    if stop.is_set() and result.stopped is None:
        result.stopped = "interrupted by a signal"
    try:
        counts = ledger.counts(entry_id)
        breakdown = ledger.breakdown(entry_id)
    except LedgerError as exc:
        log.error("%s", exc)
        return Report(entry_id, result, None, [])
    if counts["pending"] and result.stopped is None and request.limit is not None:
        result.stopped = "limit"
    return Report(entry_id, result, counts, breakdown)


async def deliver(
    prepared: Prepared,
    ledger: Ledger,
    transport: Transport,
    request: Request,
    *,
    stop: asyncio.Event,
    on_outcome: OnOutcome | None = None,
) -> RunResult:
    hourly = None
    limit_per_hour = prepared.config.sending.max_per_hour
    if limit_per_hour:
        # Count what already went out in the last hour, in the window's own clock.
        wall, mono = time.time(), time.monotonic()
        since = dt.datetime.fromtimestamp(wall - 3600, dt.UTC)
        hourly = HourlyWindow(
            limit_per_hour,
            already_sent_timestamps=[mono - (wall - t) for t in ledger.sent_since(since)],
        )
    entry_id = prepared.entry.id
    engine = Engine(
        hourly=hourly,
        entry_id=entry_id,
        transport=transport,
        ledger=ledger,
        build=prepared.factory.build,
        settings=prepared.config.sending,
        stop=stop,
        on_outcome=on_outcome,
        mask=request.mask,
    )
    try:
        ledger.skip_suppressed(entry_id)
        if ledger.counts(entry_id)["pending"]:  # nothing to do needs no relay
            pending = ledger.pending(entry_id, request.limit, thread=prepared.entry.thread)
            await engine.run(pending)
            ledger.skip_suppressed(entry_id)  # unsubscribed while this run went on
        ledger.mark_complete_if_done(entry_id)
    except ConnectError:
        raise
    except StatusmailError as exc:  # the ledger, or a message that could not be built
        engine.result.stopped = str(exc)
        log.error("stopped: %s", exc, extra={"event": "stopped", "entry": entry_id})
    return engine.result


# -- the dry run ---------------------------------------------------------------------


@dataclass
class DryRun:
    stats: SelectionStats
    rendered: int = 0
    failures: list[str] = field(default_factory=list)
    variants: dict[str, int] = field(default_factory=dict)


def dry_run(prepared: Prepared, *, limit: int | None = None) -> DryRun:
    """Select and render every recipient without recording anything or connecting."""
    config, entry = prepared.config, prepared.entry
    stats = SelectionStats()
    report = DryRun(stats)
    suppressed = read_suppressions(config.paths.ledger)
    with read_preferences(config.paths.ledger) as preferences:
        for item in select(
            entry,
            config.paths.subscribers,
            config.default_locale_by_region,
            suppressed,
            stats,
            preferences=preferences,
            declared_topics=config.topics,
        ):
            if isinstance(item, RowProblem):
                if item.fatal:
                    report.failures.append(str(item))
                continue
            if isinstance(item, Inactive) or (limit is not None and report.rendered >= limit):
                continue
            try:
                built = prepared.factory.build(item)
            except StatusmailError as exc:
                if len(report.failures) < 100:
                    report.failures.append(
                        f"{mask_address(item.email)}: {scrub(str(exc), [item.email])}"
                    )
                continue
            report.rendered += 1
            label = built.variant.label
            report.variants[label] = report.variants.get(label, 0) + 1
    report.failures += [
        str(p) for p in validation.missing_language_problems(entry, stats.locales())
    ]
    return report
