"""``send --dry-run``: select and render every recipient of an entry without recording
anything or connecting; what it found (``DryRun``), for the report and for CI."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from statusmail.content.message import MessageFactory
from statusmail.delivery import corrections
from statusmail.delivery.intake import Run, nobody_problem
from statusmail.domain import mask_address, scrub
from statusmail.errors import StatusmailError
from statusmail.ledger import read_preferences, read_suppressions, reading
from statusmail.project import entries
from statusmail.project.selection import Inactive, SelectionStats, select
from statusmail.project.subscriber_rows import RowProblem


class Prepared(Run, Protocol):
    """A prepared run (``pipeline.Prepared``): its config, entry and message factory."""

    @property
    def factory(self) -> MessageFactory: ...


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
            corrections.files_narrowed(config, entry, stats),
            config.default_locale_by_region,
            suppressed,
            stats,
            preferences=preferences,
            declared_topics=config.topics,
        ):
            if isinstance(item, RowProblem):
                if item.fatal:  # refused as send refuses it: no counts, no previews
                    raise item.refusal()
                continue
            if isinstance(item, Inactive) or (limit is not None and report.rendered >= limit):
                continue
            try:
                key = prepared.factory.rehearse(item)
            except StatusmailError as exc:
                if len(report.failures) < 100:
                    report.failures.append(
                        f"{mask_address(item.email)}: {scrub(str(exc), [item.email])}"
                    )
                continue
            report.rendered += 1
            label = key.label
            report.variants[label] = report.variants.get(label, 0) + 1
    report.failures += [str(p) for p in entries.missing_language_problems(entry, stats.locales())]
    if entry.ready and not entry.corrects and not stats.total and not _begun(prepared):
        report.failures.append(str(nobody_problem(prepared)))  # as send refuses it
    return report


def _begun(run: Run) -> bool:
    """Whether the ledger has rows of the entry (a send of it has begun)."""
    with reading(run.config.paths.ledger) as ledger:
        return any(ledger.counts(run.entry.id).values())
