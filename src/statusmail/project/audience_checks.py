"""What the subscriber lists say about the entries' audiences, for ``check``: the lists'
row problems, how many subscribers there are, which language each entry's readers get
(and whom a fallback serves), how many greetings ``name_order`` turns round, and an
audience that selects nobody or names what no active subscriber has."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from statusmail.domain import Entry, SubscriberStatus, counted
from statusmail.errors import Problem
from statusmail.project.config import Config
from statusmail.project.entries import missing_language_problems
from statusmail.project.locales import resolve_locale
from statusmail.project.selection import Group
from statusmail.project.subscriber_rows import RowProblem


@dataclass
class _Coverage:
    """What the active subscribers have, to tell an audience that selects nobody."""

    topics: set[str] = field(default_factory=set)
    regions: set[str] = field(default_factory=set)
    locales: set[str] = field(default_factory=set)
    fallbacks: Counter[tuple[str, str]] = field(default_factory=Counter)
    last_first: int = 0  # names written "Last, First"
    by_topic: Counter[str] = field(default_factory=Counter)  # active members per topic


@dataclass
class Reach:
    """What the lists tell ``check``: their problems and the audiences', its notes, and
    how many subscribers they hold."""

    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    subscribers: int = 0


def reach(
    config: Config,
    entries: list[Entry],
    regions: set[str],
    groups: Iterable[Group],
    row_problems: Iterable[RowProblem],
) -> Reach:
    """The lists (as ``selection.Tally`` groups them, and their row problems) against the
    entries; ``regions``: the codes regions.yaml defines (an unknown one is said already)."""
    found = Reach()
    problems = found.problems
    locales: dict[str, set[str]] = {entry.id: set() for entry in entries}
    selected: Counter[str] = Counter()
    coverage = _Coverage()
    for item in row_problems:
        code = "subscriber-file" if item.fatal else "subscriber-row"
        problems.append(Problem(item.path, item.line or None, item.message, code=code))
    for group in groups:
        found.subscribers += group.members
        if group.status != SubscriberStatus.ACTIVE:
            continue
        locale, fallback = resolve_locale(
            group.locale, group.region, config.default_locale_by_region
        )
        if fallback:
            coverage.fallbacks[(fallback, locale)] += group.members
        coverage.topics |= group.topics
        coverage.by_topic.update(dict.fromkeys(group.topics, group.members))
        coverage.locales.add(locale)
        coverage.last_first += group.last_first
        if group.region:
            coverage.regions.add(group.region)
        for entry in entries:
            if entry.audience.matches(group.region, group.topics, locale):
                locales[entry.id].add(locale)
                selected[entry.id] += group.members
    found.notes += [
        f"{counted(n, 'subscriber')} with {reason} get{'' if n != 1 else 's'} {locale}"
        for (reason, locale), n in coverage.fallbacks.most_common()
    ]
    found.notes += _name_order_notes(config, coverage.last_first)
    problems += _undeclared_topics(config, coverage)
    for entry in entries:
        if entry.corrects:  # its audience is who got what it corrects: corrections.check
            continue
        problems += missing_language_problems(entry, locales[entry.id])
        if entry.ready:
            problems += _audience_problems(entry, selected[entry.id], coverage, regions)
    return found


def _undeclared_topics(config: Config, coverage: _Coverage) -> list[Problem]:
    """Active subscribers with a topic the config's ``topics`` lacks: no audience can
    name it, so by it they get nothing (``Service-Status`` or ``service_status`` for
    ``service-status`` silently left them out of every entry for it)."""
    if config.topics is None:
        return []
    declared = {_spelling(topic): topic for topic in config.topics}
    problems = []
    for topic in sorted(set(coverage.by_topic) - config.topics):
        meant = declared.get(_spelling(topic))
        problems.append(
            Problem(
                config.paths.subscribers,
                None,
                f"{counted(coverage.by_topic[topic], 'active subscriber')} with the topic "
                f"{topic!r}, which is not one of the config's topics "
                f"({', '.join(sorted(config.topics)) or 'none'}): no entry reaches them by "
                + (f"it (did you mean {meant!r}?)" if meant else "it"),
                code="subscriber-topic",
                warning=True,
            )
        )
    return problems


def _spelling(topic: str) -> str:
    return topic.casefold().replace("_", "-").replace(" ", "-")


def _name_order_notes(config: Config, last_first: int) -> list[str]:
    """How many greetings ``name_order`` turns round (never whose: check's output goes
    into CI logs)."""
    if not last_first:
        return []
    names = counted(last_first, "subscriber name")
    if config.name_order == "given_first":
        return [f'{names} written "Last, First" greeted given name first (name_order)']
    return [
        f'{names} written "Last, First" greeted as written '
        "(name_order: given_first greets given name first)"
    ]


def _audience_problems(
    entry: Entry, selected: int, coverage: _Coverage, regions: set[str]
) -> list[Problem]:
    problems: list[Problem] = []
    audience, line = entry.audience, entry.line("audience")
    known_regions = (audience.regions or frozenset()) & regions  # unknown ones said already
    for what, wanted, present in (
        ("topic", audience.topics, coverage.topics),
        ("region", known_regions, coverage.regions),
        ("locale", audience.locales, coverage.locales),
    ):
        for value in sorted((wanted or frozenset()) - present):
            problems.append(
                Problem(
                    entry.where,
                    line,
                    f"no active subscriber has the audience's {what} {value!r}",
                    code="audience-unmatched",
                    # A send still reaches the rest of the audience: no BY reader left
                    # must not hold up the news for RU and KZ.
                    warning=True,
                )
            )
    if not selected:
        problems.append(
            Problem(
                entry.where,
                line or entry.line("status"),
                "the entry is ready but its audience selects no active subscriber",
                code="audience-empty",
            )
        )
    return problems
