"""``send`` and ``send --dry-run``: from an entry ID to delivered (or previewed) messages."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from statusmail import markdown
from statusmail.config import Config
from statusmail.delivery import Engine, OnOutcome, RunResult
from statusmail.entries import Entry, cross_check, entry_paths, find_entry
from statusmail.errors import InputError, Problem, RenderError
from statusmail.ledger import Ledger, Recipient
from statusmail.message import MessageFactory
from statusmail.regions import Region, load_regions
from statusmail.render import Renderer, catalog_problems
from statusmail.report import mask_address, scrub
from statusmail.selection import SelectionStats, select
from statusmail.subscribers import RowProblem
from statusmail.throttle import HourlyWindow
from statusmail.transport import Transport

log = logging.getLogger("statusmail")


@dataclass
class Prepared:
    config: Config
    entry: Entry
    regions: Mapping[str, Region]
    renderer: Renderer
    secret: bytes
    factory: MessageFactory


def prepare(config: Config, entry_id: str, *, allow_draft: bool = False) -> Prepared:
    """Load and validate everything one entry's run needs; raise ``InputError`` if not."""
    entry = find_entry(config.paths.updates, entry_id)
    problems: list[Problem] = []
    if not entry.ready and not allow_draft:
        problems.append(
            Problem(
                entry.path or entry_id,
                entry.line("status"),
                "the entry is a draft; drafts are never sent (set status: ready)",
            )
        )
    regions = load_regions(config.paths.regions)
    known = [p.stem for p in entry_paths(config.paths.updates)]
    problems += cross_check(entry, known, regions)
    problems += catalog_problems(config.paths.templates)
    problems += unsafe_link_problems(entry, regions)
    if problems:
        raise InputError(problems)
    secret, is_dev = config.unsubscribe_secret()
    if is_dev:
        log.warning(
            "$%s is not set: using the development unsubscribe secret (maildir only)",
            config.unsubscribe.secret_env,
        )
    renderer = Renderer(config.paths.templates, regions, config.sender.name)
    factory = MessageFactory(config, entry, renderer, secret)
    return Prepared(config, entry, regions, renderer, secret, factory)


def unsafe_link_problems(entry: Entry, regions: Mapping[str, Region]) -> list[Problem]:
    """``javascript:`` and the like would be dropped silently: refuse them instead."""
    problems = []
    for locale, content in entry.content.items():
        for target in markdown.refused_links(content.body):
            problems.append(
                Problem(
                    entry.path or entry.id,
                    entry.line(f"content.{locale}"),
                    f"link {target!r} in the {locale} body is not allowed",
                )
            )
    if entry.access_instructions:
        for region in regions.values():
            for locale, text in region.access.items():
                for target in markdown.refused_links(text):
                    problems.append(
                        Problem(
                            region.path or "regions",
                            region.line,
                            f"link {target!r} in {region.code}'s {locale} access text "
                            "is not allowed",
                        )
                    )
    return problems


def missing_locale_problem(entry: Entry, stats: SelectionStats) -> Problem | None:
    missing = stats.missing_locales(entry)
    if not missing:
        return None
    return Problem(
        entry.path or entry.id,
        entry.line("content"),
        f"subscribers in the audience read {', '.join(sorted(missing))} "
        f"but the entry has no content in it",
    )


@dataclass
class Selected:
    stats: SelectionStats
    new: int  # recipients added to the ledger by this selection
    pending: int  # all still pending for the entry, the new ones included


class Declined(Exception):
    """The user answered no at the confirmation prompt; nothing was recorded."""


def select_into_ledger(
    prepared: Prepared, ledger: Ledger, confirm: Callable[[Selected], bool] | None = None
) -> Selected:
    """Write the audience into the ledger as pending, in one transaction.

    Rolls back (and raises) when the audience needs a language the entry lacks, or when
    ``confirm`` says no. Invalid subscriber rows are recorded as skipped.
    """
    entry, config = prepared.entry, prepared.config
    stats = SelectionStats()
    skipped: list[tuple[str, str]] = []

    def recipients() -> Iterator[Recipient]:
        items = select(
            entry,
            config.paths.subscribers,
            config.default_locale_by_region,
            ledger.suppressed(),
            stats,
        )
        for item in items:
            if isinstance(item, RowProblem) and item.fatal:
                # A broken list could hide anyone after the break: send nothing.
                raise InputError([Problem(item.path, item.line or None, item.message)])
            if isinstance(item, RowProblem):
                log.warning("skipped: %s", item)
                skipped.append((item.email.lower() or f"{item.path}:{item.line}", item.message))
            else:
                yield item

    selected: list[Selected] = []

    def before_commit(new: int) -> None:
        problem = missing_locale_problem(entry, stats)
        if problem:
            raise InputError([problem])
        selected.append(Selected(stats, new, ledger.counts(entry.id)["pending"]))
        if confirm is not None and not confirm(selected[0]):
            raise Declined

    ledger.add_pending(entry.id, recipients(), before_commit=before_commit)
    if skipped:
        ledger.add_skipped(entry.id, skipped)
    ledger.mark_selected(entry.id, entry.digest)
    return selected[0]


async def deliver(
    prepared: Prepared,
    ledger: Ledger,
    transport: Transport,
    *,
    limit: int | None = None,
    stop: asyncio.Event | None = None,
    on_outcome: OnOutcome | None = None,
    mask: Callable[[str], str] = lambda address: address,
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
    engine = Engine(
        hourly=hourly,
        entry_id=prepared.entry.id,
        transport=transport,
        ledger=ledger,
        build=prepared.factory.build,
        settings=prepared.config.sending,
        stop=stop,
        on_outcome=on_outcome,
        mask=mask,
    )
    entry_id = prepared.entry.id
    ledger.skip_suppressed(entry_id)
    result = RunResult()
    if ledger.counts(entry_id)["pending"]:  # nothing to do needs no relay
        result = await engine.run(ledger.pending(entry_id, limit))
        ledger.skip_suppressed(entry_id)  # unsubscribed while this run went on
    ledger.mark_complete_if_done(entry_id)
    return result


@dataclass
class DryRun:
    stats: SelectionStats
    rendered: int = 0
    failures: list[str] = field(default_factory=list)
    variants: dict[str, int] = field(default_factory=dict)


def dry_run(prepared: Prepared, *, limit: int | None = None) -> DryRun:
    """Select and render every recipient without touching the ledger or the network."""
    config, entry = prepared.config, prepared.entry
    suppressed: set[str] = set()
    if config.paths.ledger.exists():
        suppressed = read_only_suppressions(config.paths.ledger)
    stats = SelectionStats()
    report = DryRun(stats)
    for item in select(
        entry, config.paths.subscribers, config.default_locale_by_region, suppressed, stats
    ):
        if isinstance(item, RowProblem):
            if item.fatal:
                report.failures.append(str(item))
            continue
        if limit is not None and report.rendered >= limit:
            continue
        try:
            built = prepared.factory.build(item)
        except (RenderError, KeyError, ValueError) as exc:
            if len(report.failures) < 100:
                report.failures.append(
                    f"{mask_address(item.email)}: {scrub(str(exc), [item.email])}"
                )
            continue
        report.rendered += 1
        label = built.variant.label
        report.variants[label] = report.variants.get(label, 0) + 1
    problem = missing_locale_problem(entry, stats)
    if problem:
        report.failures.append(str(problem))
    return report


def read_only_suppressions(path: Path) -> set[str]:
    import sqlite3

    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return {row[0] for row in db.execute("SELECT address FROM suppressions")}
        finally:
            db.close()
    except sqlite3.Error:
        return set()
