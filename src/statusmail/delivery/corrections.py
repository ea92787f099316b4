"""Entries already sent, and corrections of them.

``send`` of an entry the ledger shows sent in full says so (how many, when) and sends
nothing; if the entry's file changed since, it says the change reached nobody and how
to send a correction. A correction is an entry with ``corrects: ID``: its audience is
exactly the people ID went out to, as the ledger recorded them, less those the lists
or the suppressions now keep from any entry (unsubscribed, bounced, complained); it is
threaded under ID (``project.entries`` makes ``corrects`` its ``thread``) and its
subject starts with the language's "Correction: " (``templates/subject.txt.j2``).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass

from rich.console import Console

from statusmail.delivery.report import breakdown_rows, print_json
from statusmail.domain import Entry, ExitCode, counted
from statusmail.errors import InputError, LedgerError, Problem
from statusmail.ledger import Ledger
from statusmail.ledger import describe as ledger_describe
from statusmail.ledger import exists as ledger_exists
from statusmail.ledger.corrections import Sent, received, sent_record
from statusmail.ledger.importing import import_lists
from statusmail.ledger.subscribers import (
    Imported,
    preferences_stamp,
    read_subscribers,
    unchanged,
)
from statusmail.project.config import Config
from statusmail.project.entries import missing_language_problems
from statusmail.project.selection import AudienceCount, SelectionStats, select
from statusmail.project.subscriber_rows import RowProblem, Subscriber
from statusmail.project.subscribers import iter_subscribers

# -- an entry already sent ------------------------------------------------------------


@dataclass
class AlreadySent:
    record: Sent
    changed: bool  # the entry's file is not what was first selected and sent
    counts: dict[str, int]
    breakdown: list[tuple[str, str | None, str, int]]
    # the entry's last complete selection was made from the lists and preferences as they
    # are now: nobody new can be selected, so it is said without a run
    as_selected: bool = False

    def lines(self) -> list[str]:
        record, entry_id = self.record, self.record.entry_id
        n = record.sent
        said = [
            f"{entry_id} was already sent: {counted(n, 'message')}, the last "
            f"{when(record.last_sent_at or record.completed_at)}; nothing more to send."
        ]
        if self.changed:
            said.append(
                f"{entry_id} changed since it was sent: the change reached nobody. To tell "
                f"its recipients, write a new entry with 'corrects: {entry_id}' (it goes to "
                "exactly them, threaded under this one, its subject starting "
                '"Correction: ") and send that.'
            )
        return said


def print_already_sent(done: AlreadySent, as_json: bool, console: Console) -> ExitCode:
    """Say it (the run's JSON when asked, with ``already_sent``); exit 3 if some of it
    failed for good, else 0."""
    counts = done.counts
    if as_json:
        print_json(
            {
                "entry": done.record.entry_id,
                "counts": counts,
                "breakdown": breakdown_rows(done.breakdown),
                "stopped": None,
                "this_run": {"sent": 0, "failed": 0},
                "already_sent": {
                    "sent": done.record.sent,
                    "last_sent_at": done.record.last_sent_at,
                    "completed_at": done.record.completed_at,
                    "changed": done.changed,
                },
            }
        )
    else:
        for line in done.lines():
            console.print(line, markup=False, highlight=False)
        if counts.get("failed"):  # what exit 3 is about (the text said nothing of it)
            console.print(
                f"{counts['failed']} failed for good: statusmail status "
                f"{done.record.entry_id} --failed",
                markup=False,
                highlight=False,
            )
    return ExitCode.FAILED if counts.get("failed") else ExitCode.OK


def when(stamp: str | None) -> str:
    """A ledger time as a person reads it: ``on 2026-12-06 at 08:01 UTC``."""
    if not stamp:
        return "at a time the ledger does not know"
    try:
        moment = dt.datetime.fromisoformat(stamp)
    except ValueError:
        return f"at {stamp}"
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return f"on {moment:%Y-%m-%d} at {moment:%H:%M} UTC"


def already_sent(config: Config, entry: Entry) -> AlreadySent | None:
    """The entry as the ledger shows it when it was sent in full, else None (a first
    run, a run to continue, or a ledger to migrate first: the run itself says). Unless
    ``as_selected``, the lists or preferences changed since: the run selects again, and
    ``sent_nothing_new`` tells whether it found anyone."""
    target = config.paths.ledger
    if not ledger_exists(target):
        return None
    try:
        with Ledger(target, readonly=True) as ledger:
            record = sent_record(ledger, entry.id)
            if not record.complete or not record.sent:
                return None
            as_selected = _as_when_selected(ledger, config, entry)
            counts, breakdown = ledger.counts(entry.id), ledger.breakdown(entry.id)
    except LedgerError:
        return None
    changed = bool(record.digest and entry.digest and record.digest != entry.digest)
    return AlreadySent(record, changed, counts, breakdown, as_selected)


def _as_when_selected(ledger: Ledger, config: Config, entry: Entry) -> bool:
    """Whether the entry's last complete selection was made from the lists as they are
    now and the preferences as they are now (someone who chose its topic since, or a row
    fixed or added, would be selected by a run), and for a correction, when the entry
    it corrects had reached everyone it has now."""
    kept = unchanged(ledger, config.paths.subscribers)
    basis = _basis(ledger, entry)
    return (
        kept is not None
        and len(basis) > 2
        and basis[0] == str(kept.id)
        and basis[2] == preferences_stamp(ledger)
        and not _reached_more(ledger, entry, basis)
    )


def _basis(ledger: Ledger, entry: Entry) -> list[str]:
    """The parts of what the entry's last complete selection was made from
    (``intake.basis``); none when there is none."""
    return (ledger.selection_basis(entry.id) or "").split("|")


def reached(ledger: Ledger, entry: Entry) -> str:
    """For a correction, how many the entry it corrects went out to, as a part of its
    selection's basis ("" for other entries): a correction selected before the rest of
    that entry went out is selected again, and reaches them too."""
    return str(sent_record(ledger, entry.corrects).sent) if entry.corrects else ""


def behind(ledger: Ledger, entry: Entry) -> bool:
    """Whether a correction was selected before the entry it corrects reached everyone
    it has reached now (``watch`` then sends it again, to those alone)."""
    return bool(entry.corrects) and _reached_more(ledger, entry, _basis(ledger, entry))


def _reached_more(ledger: Ledger, entry: Entry, basis: list[str]) -> bool:
    if not entry.corrects:
        return False
    return (basis[4] if len(basis) > 4 else "") != reached(ledger, entry)


def sent_nothing_new(before: AlreadySent, counts: dict[str, int] | None) -> bool:
    """Whether a run of an entry sent in full (``before``) delivered to nobody new."""
    return (
        counts is not None
        and not counts.get("pending")
        and counts.get("sent", 0) == before.counts.get("sent", 0)
        and counts.get("failed", 0) == before.counts.get("failed", 0)
    )


# -- a correction's audience -------------------------------------------------------------


def only(
    addresses: Collection[str], items: Iterable[Subscriber | RowProblem]
) -> Iterator[Subscriber | RowProblem]:
    """The rows of ``items`` whose address is one of ``addresses`` (and every problem)."""
    for item in items:
        if isinstance(item, RowProblem) or item.key in addresses:
            yield item


def narrowed(
    ledger: Ledger, entry: Entry, items: Iterable[Subscriber | RowProblem]
) -> Iterable[Subscriber | RowProblem]:
    """``items``, or for a correction only those the entry it corrects went out to."""
    if not entry.corrects:
        return items
    return only(received(ledger, entry.corrects), items)


def audience(config: Config, entry: Entry, ledger: Ledger, imported: Imported) -> AudienceCount:
    """Whom a correction reaches, counted as its selection will choose them (it is no
    bigger than what it corrects reached, so it is read, not counted from groups)."""
    stats = SelectionStats()
    with ledger.preference_lookup() as preferences:
        for _ in select(
            entry,
            narrowed(ledger, entry, read_subscribers(ledger, imported.id)),
            config.default_locale_by_region,
            ledger.suppressed(),
            stats,
            preferences=preferences,
            declared_topics=config.topics,
        ):
            pass
    return AudienceCount(stats.selected, stats.fallbacks)


def files_narrowed(
    config: Config, entry: Entry, stats: SelectionStats
) -> Iterable[Subscriber | RowProblem]:
    """The list files as a dry run reads them; for a correction only those the entry
    it corrects went out to (nobody without a ledger: the dry run says why)."""
    rows = iter_subscribers(config.paths.subscribers, stats.read)
    if not entry.corrects:
        return rows
    return only(_received(config, entry.corrects) or set(), rows)


def _received(config: Config, entry_id: str) -> set[str] | None:
    target = config.paths.ledger
    if not ledger_exists(target):
        return None
    try:
        with Ledger(target, readonly=True) as ledger:
            return received(ledger, entry_id)
    except LedgerError:
        return None


def dry_run_lines(config: Config, entry: Entry, selected: int) -> list[str]:
    """What a dry run of a correction says about its audience."""
    if not entry.corrects:
        return []
    went = _received(config, entry.corrects)
    if went is None:
        return [
            f"correction of {entry.corrects}: no ledger at {_where(config)} to tell "
            "whom it went out to, so nobody is selected"
        ]
    return [
        f"correction of {entry.corrects}: to {selected} of the {len(went)} it went out to "
        f"({len(went) - selected} unsubscribed, suppressed or no longer in the lists since)"
    ]


# -- check ---------------------------------------------------------------------------


def check(config: Config, entries: Mapping[str, Entry]) -> tuple[list[Problem], list[str]]:
    """Each correction's problems and a note of whom it goes to (counted as its selection
    will choose them): it corrects an entry that went out to someone (one that exists:
    ``thread``'s check), names no audience, and has content in each language they read."""
    problems: list[Problem] = []
    notes: list[str] = []
    corrections = [entry for entry in entries.values() if entry.corrects]
    for entry in corrections:
        if entry.line("audience") is not None:
            problems.append(
                Problem(
                    entry.where,
                    entry.line("audience"),
                    f"a correction goes to exactly those {entry.corrects} went out to: "
                    "remove its audience",
                    code="correction-audience",
                )
            )
    if not corrections or not ledger_exists(config.paths.ledger):
        return problems, [f"{e.id}: {_unknown(config, e)}" for e in corrections]
    try:
        with Ledger(config.paths.ledger) as ledger:
            imported = import_lists(ledger, config.paths.subscribers)
            found = [
                (
                    e,
                    sent_record(ledger, e.corrects or "").sent,
                    audience(config, e, ledger, imported),
                )
                for e in corrections
            ]
    except (InputError, LedgerError):  # a broken list or ledger: said by the rest of check
        return problems, [*notes, *(f"{e.id}: {_unknown(config, e)}" for e in corrections)]
    for entry, went, count in found:
        if not went:
            if entry.corrects in entries:
                problems.append(
                    Problem(
                        entry.where,
                        entry.line("corrects"),
                        f"corrects {entry.corrects!r}, which the ledger shows sent to "
                        "nobody: there is nothing to correct (send it, or edit it instead)",
                        code="correction-unsent",
                    )
                )
            continue
        problems += missing_language_problems(entry, count.locales())
        by_locale: Counter[str] = Counter()
        for (locale, _region), n in count.selected.items():
            by_locale[locale] += n
        said = ", ".join(f"{n} {locale}" for locale, n in sorted(by_locale.items()))
        notes.append(
            f"{entry.id}: a correction of {entry.corrects}, to {count.total} of the {went} "
            f"it went out to ({said or 'nobody'})"
        )
    return problems, notes


def _unknown(config: Config, entry: Entry) -> str:
    return (
        f"a correction of {entry.corrects}; whom it goes to is known once the ledger "
        f"({_where(config)}) and the lists can be read"
    )


def _where(config: Config) -> str:
    """The ledger as messages name it: a server without its user name and password."""
    try:
        return ledger_describe(config.paths.ledger)
    except LedgerError:  # a URL libpq would misread: say so without any of it
        return "the ledger (its URL cannot be read)"
