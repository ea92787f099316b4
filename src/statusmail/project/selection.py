"""Who gets an entry: active, not suppressed, and in its audience."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from statusmail.domain import Entry, Preference, Recipient, SubscriberStatus
from statusmail.project.locales import resolve_locale
from statusmail.project.subscribers import ReadStats, RowProblem, iter_subscribers

# Keep at most this many invalid rows in memory for the report; the rest are counted.
MAX_REPORTED_PROBLEMS = 1000


@dataclass(frozen=True, slots=True)
class Inactive:
    """A subscriber in the list whom no entry may reach: unsubscribed, bounced, suppressed."""

    address: str
    reason: str


@dataclass
class SelectionStats:
    selected: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    inactive: int = 0
    suppressed: int = 0
    invalid: list[RowProblem] = field(default_factory=list)
    read: ReadStats = field(default_factory=ReadStats)
    # (why the language is not the subscriber's own, the language they get) -> how many
    fallbacks: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.selected.values())

    def by_locale(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for (locale, _region), n in self.selected.items():
            counts[locale] += n
        return dict(sorted(counts.items()))

    def by_region(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for (_locale, region), n in self.selected.items():
            counts[region or "-"] += n
        return dict(sorted(counts.items()))

    def locales(self) -> set[str]:
        return {locale for locale, _ in self.selected}

    def fallback_lines(self) -> list[str]:
        """``3 with unsupported locale 'de' → en``, most common first."""
        return [
            f"{n} with {reason} → {locale}" for (reason, locale), n in self.fallbacks.most_common()
        ]


PreferenceLookup = Callable[[str], Preference | None]


def apply_preference(
    preference: Preference | None,
    locale: str,
    topics: frozenset[str],
    declared: frozenset[str] | None,
) -> tuple[str, frozenset[str]]:
    """The locale and topics a subscriber gets: what they chose on the preferences page
    wins over the list's. Their topic choice covers the topics the page offered (the
    declared ones); a topic the list gives them that the page never showed stays."""
    if preference is None:
        return locale, topics
    if preference.locale:
        locale = preference.locale
    if preference.topics is not None:
        kept = topics - declared if declared is not None else frozenset()
        topics = kept | preference.topics
    return locale, topics


def select(
    entry: Entry,
    subscribers_dir: Path,
    default_locale_by_region: Mapping[str, str],
    suppressed: Collection[str] = (),
    stats: SelectionStats | None = None,
    *,
    inactive: bool = False,
    preferences: PreferenceLookup | None = None,
    declared_topics: frozenset[str] | None = None,
) -> Iterator[Recipient | RowProblem | Inactive]:
    """Stream the entry's recipients and the rows that could not be read (a ``fatal``
    one means the rest of its file is unknown); with ``inactive``, also the subscribers
    in the list whom nothing may reach (a re-selection tells them from those who left).

    ``preferences`` looks up what a subscriber chose on the preferences page (kept in
    the ledger, which this module does not read): it overrides the list's locale and
    topics; the list stays the source of who is subscribed."""
    stats = stats if stats is not None else SelectionStats()
    audience = entry.audience
    for item in iter_subscribers(subscribers_dir, stats.read):
        if isinstance(item, RowProblem):
            if len(stats.invalid) < MAX_REPORTED_PROBLEMS:
                stats.invalid.append(item)
            yield item
            continue
        key = item.key
        if item.status != SubscriberStatus.ACTIVE:
            stats.inactive += 1
            if inactive:
                yield Inactive(key, item.status)
            continue
        if key in suppressed:
            stats.suppressed += 1
            if inactive:
                yield Inactive(key, "suppressed")
            continue
        raw_locale, topics = item.locale, item.topics
        if preferences is not None:
            raw_locale, topics = apply_preference(
                preferences(key), raw_locale, topics, declared_topics
            )
        locale, fallback = resolve_locale(raw_locale, item.region, default_locale_by_region)
        if not audience.matches(item.region, topics, locale):
            continue
        stats.selected[(locale, item.region)] += 1
        if fallback:
            stats.fallbacks[(fallback, locale)] += 1
        yield Recipient(
            address=key,
            email=item.email,
            ascii_email=item.ascii_email,
            name=item.name,
            locale=locale,
            region=item.region,
        )
