"""Who gets an entry: active, not suppressed, and in its audience."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from statusmail.entries import Entry
from statusmail.ledger import Recipient
from statusmail.locales import resolve_locale
from statusmail.subscribers import ReadStats, RowProblem, iter_subscribers


@dataclass
class SelectionStats:
    selected: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    inactive: int = 0
    suppressed: int = 0
    invalid: list[RowProblem] = field(default_factory=list)
    read: ReadStats = field(default_factory=ReadStats)

    @property
    def total(self) -> int:
        return sum(self.selected.values())

    def missing_locales(self, entry: Entry) -> set[str]:
        return {locale for locale, _ in self.selected} - set(entry.content)


# Keep at most this many invalid rows in memory for the report; the rest are counted.
MAX_REPORTED_PROBLEMS = 1000


def select(
    entry: Entry,
    subscribers_dir: Path,
    default_locale_by_region: Mapping[str, str],
    suppressed: Collection[str] = (),
    stats: SelectionStats | None = None,
) -> Iterator[Recipient | RowProblem]:
    """Stream the entry's recipients (and the rows that could not be read)."""
    stats = stats if stats is not None else SelectionStats()
    audience = entry.audience
    for item in iter_subscribers(subscribers_dir, stats.read):
        if isinstance(item, RowProblem):
            if len(stats.invalid) < MAX_REPORTED_PROBLEMS:
                stats.invalid.append(item)
            yield item
            continue
        if item.status != "active":
            stats.inactive += 1
            continue
        key = item.key
        if key in suppressed:
            stats.suppressed += 1
            continue
        locale = resolve_locale(item.locale, item.region, default_locale_by_region)
        if not audience.matches(item.region, item.topics, locale):
            continue
        stats.selected[(locale, item.region)] += 1
        yield Recipient(
            address=key,
            email=item.email,
            ascii_email=item.ascii_email,
            name=item.name,
            locale=locale,
            region=item.region,
        )
