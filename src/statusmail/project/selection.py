"""Who gets an entry: active, not suppressed, and in its audience.

``select`` streams the recipients from the subscribers (the ledger's imported table, or
the files themselves for a dry run); ``count_audience`` and ``count_removals`` decide the
same from the import's groups (how many subscribers have each status, locale, region and
topics) before anything is sent: which languages the audience needs, whether it is
empty, how many pending recipients it drops."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from statusmail.domain import Entry, Preference, Recipient, SubscriberStatus
from statusmail.project.locales import resolve_locale
from statusmail.project.subscriber_rows import ReadStats, RowProblem, Subscriber, given_name_first
from statusmail.project.subscribers import iter_subscribers

# Keep at most this many invalid rows in memory for the report; the rest are counted.
MAX_REPORTED_PROBLEMS = 1000


@dataclass(frozen=True, slots=True)
class Inactive:
    """A subscriber in the list whom no entry may reach: unsubscribed, bounced, suppressed."""

    address: str
    reason: str


@dataclass
class SelectionStats:
    """What a selection chose, per (locale, region); of the entry's audience, how many it
    skipped as inactive or suppressed; of the lists, the rows it could not read."""

    selected: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    inactive: int = 0
    suppressed: int = 0
    invalid: list[RowProblem] = field(default_factory=list)
    read: ReadStats = field(default_factory=ReadStats)
    # (why the language is not the subscriber's own, the language they get) -> how many
    fallbacks: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Of ``selected``, per (locale, region, topics): those whose footer names only some
    # of the entry's topics (``Recipient.topics``); the rest get the entry's own.
    topics: Counter[tuple[str, str | None, frozenset[str]]] = field(default_factory=Counter)

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
    """The locale and topics a subscriber gets: the language chosen on the preferences
    page wins over the list's. A topic choice takes away the declared topics the reader
    unticked, and never adds one the list does not give them: the page shows every topic
    ticked to every address (it tells nothing about the list), so a box left ticked says
    nothing about what the reader wants (review: unticking one topic signed a reader up
    for all the others). A topic the page never showed stays."""
    if preference is None:
        return locale, topics
    if preference.locale:
        locale = preference.locale
    if preference.topics is not None and declared is not None:
        topics = topics - (declared - preference.topics)
    return locale, topics


def select(
    entry: Entry,
    subscribers: Path | Iterable[Subscriber | RowProblem],
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
    topics; the list stays the source of who is subscribed. ``subscribers`` is a folder
    of list files, or the rows already read (the ledger's import)."""
    stats = stats if stats is not None else SelectionStats()
    audience = entry.audience
    if isinstance(subscribers, Path):
        subscribers = iter_subscribers(subscribers, stats.read)
    for item in subscribers:
        if isinstance(item, RowProblem):
            if len(stats.invalid) < MAX_REPORTED_PROBLEMS:
                stats.invalid.append(item)
            yield item
            continue
        key = item.key
        raw_locale, topics = item.locale, item.topics
        preference = preferences(key) if preferences is not None else None
        if preference is not None:
            raw_locale, topics = apply_preference(preference, raw_locale, topics, declared_topics)
        locale, fallback = resolve_locale(raw_locale, item.region, default_locale_by_region)
        reached = audience.matches(item.region, topics, locale)
        active = item.status == SubscriberStatus.ACTIVE
        if not active or key in suppressed:
            # Counted only when the entry's audience has them: "3 inactive" in a report
            # means three of its readers, not three anywhere in the lists.
            if reached and active:
                stats.suppressed += 1
            elif reached:
                stats.inactive += 1
            if inactive:
                yield Inactive(key, "suppressed" if active else item.status)
            continue
        if not reached:
            if (
                inactive
                and preference is not None
                and _listed_in(entry, item, default_locale_by_region)
            ):
                # Their own choice took them out, as an unsubscribe does: not a row gone
                # from the list (which the shrink guard holds the run for).
                yield Inactive(key, "left on the preferences page")
            continue
        stats.selected[(locale, item.region)] += 1
        if fallback:
            stats.fallbacks[(fallback, locale)] += 1
        chosen = chosen_topics(entry, topics)
        if chosen is not None:
            stats.topics[(locale, item.region, chosen)] += 1
        yield Recipient(
            address=key,
            email=item.email,
            ascii_email=item.ascii_email,
            name=item.name,
            locale=locale,
            region=item.region,
            topics=chosen,
        )


def _listed_in(entry: Entry, item: Subscriber, by_region: Mapping[str, str]) -> bool:
    """Whether the list's own locale and topics (no preference) put ``item`` in the
    entry's audience."""
    locale, _ = resolve_locale(item.locale, item.region, by_region)
    return entry.audience.matches(item.region, item.topics, locale)


def chosen_topics(entry: Entry, topics: frozenset[str]) -> frozenset[str] | None:
    """Of ``entry``'s topics, those a reader with ``topics`` gets it for, when it names
    two or more and the reader chose some of them only; else None (the entry's own)."""
    own = entry.audience.topics
    if own is None or len(own) < 2:
        return None
    chosen = own & topics
    return chosen if chosen and chosen != own else None


# -- deciding from the import's groups, before anything is sent ------------------------


def topics_text(topics: Iterable[str]) -> str:
    """Topics as the ledger keeps them: sorted, separated by ``;``."""
    return ";".join(sorted(topics))


def topics_of(text: str | None) -> frozenset[str]:
    return frozenset(t for t in (text or "").split(";") if t)


GroupKey = tuple[str, str, str | None, str]  # status, locale as written, region, topics


@dataclass
class Tally:
    """What an import counts while it reads: subscribers per (status, locale, region,
    topics), and of those how many names are written "Last, First"."""

    members: Counter[GroupKey] = field(default_factory=Counter)
    last_first: Counter[GroupKey] = field(default_factory=Counter)

    def add(self, item: Subscriber) -> None:
        key = (item.status, item.locale, item.region, topics_text(item.topics))
        self.members[key] += 1
        if item.name and given_name_first(item.name) is not None:
            self.last_first[key] += 1

    def groups(self) -> list[Group]:
        return [
            Group(status, locale, region, topics_of(topics), n, self.last_first[key])
            for key, n in self.members.items()
            for status, locale, region, topics in [key]
        ]


@dataclass(frozen=True, slots=True)
class Group:
    """``members`` subscribers alike in what selection looks at; for those with a stored
    preference or a suppression, the ``preference`` and whether they are ``suppressed``."""

    status: str
    locale: str
    region: str | None
    topics: frozenset[str]
    members: int
    last_first: int = 0
    preference: Preference | None = None
    suppressed: bool = False

    @property
    def key(self) -> GroupKey:
        return (self.status, self.locale, self.region, topics_text(self.topics))


@dataclass
class AudienceCount:
    selected: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    fallbacks: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.selected.values())

    def locales(self) -> set[str]:
        return {locale for locale, _ in self.selected}


def _chosen(
    entry: Entry,
    group: Group,
    by_region: Mapping[str, str],
    declared: frozenset[str] | None,
) -> tuple[str, str | None] | None:
    """(locale, fallback) when the group's subscribers get ``entry``, else None."""
    if group.status != SubscriberStatus.ACTIVE or group.suppressed:
        return None
    raw, topics = apply_preference(group.preference, group.locale, group.topics, declared)
    locale, fallback = resolve_locale(raw, group.region, by_region)
    if not entry.audience.matches(group.region, topics, locale):
        return None
    return locale, fallback


def count_audience(
    entry: Entry,
    groups: Iterable[Group],
    special: Iterable[Group],
    by_region: Mapping[str, str],
    declared: frozenset[str] | None = None,
) -> AudienceCount:
    """Who ``entry`` reaches, counted from the import's ``groups`` and the ``special``
    ones (subscribers with a preference or a suppression, each group counted in
    ``groups`` too, as the list has them): exactly what ``select`` would choose."""
    plain: Counter[GroupKey] = Counter()
    shapes: dict[GroupKey, Group] = {}
    for group in groups:
        plain[group.key] += group.members
        shapes[group.key] = group
    special = list(special)
    for group in special:
        plain[group.key] -= group.members
    count = AudienceCount()
    everyone = [(shapes[key], n) for key, n in plain.items() if n > 0]
    everyone += [(group, group.members) for group in special]
    for group, members in everyone:
        chosen = _chosen(entry, group, by_region, declared)
        if chosen is not None:
            locale, fallback = chosen
            count.selected[(locale, group.region)] += members
            if fallback:
                count.fallbacks[(fallback, locale)] += members
    return count


def count_removals(
    entry: Entry,
    pending: Iterable[tuple[Group | None, int]],
    by_region: Mapping[str, str],
    declared: frozenset[str] | None = None,
) -> int:
    """How many of the entry's pending recipients a selection now would drop because
    they left the list (no group) or the audience: what the shrink guard counts. Those
    now inactive or suppressed are not removals (nothing may reach them)."""
    removed = 0
    for group, members in pending:
        gone = group is None or (
            group.status == SubscriberStatus.ACTIVE
            and not group.suppressed
            and _chosen(entry, group, by_region, declared) is None
            # out by their own choice on the preferences page: as an unsubscribe, not
            # a removal
            and _chosen(entry, replace(group, preference=None), by_region, declared) is None
        )
        if gone:
            removed += members
    return removed
