"""The subscriber lists held in the ledger: each import of them, whether the files are
still as it read them, and what selections and ``check`` read of it.

An import (``importing``) reads every file into the ``subscribers`` table under a new
import id and only then makes it the current one; a refused one keeps its problems.
The lists count as unchanged while each file's size and mtime are the same (nothing is
read) or its content digest is. Rows are numbered ``import id << 32`` on, so one import
is one range of the primary key.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from statusmail.domain import Preference
from statusmail.errors import InputError, Problem
from statusmail.ledger import queries
from statusmail.ledger.database import driver_errors, one_line
from statusmail.ledger.staging import STAGING
from statusmail.ledger.store import Ledger
from statusmail.project.selection import Group, topics_of
from statusmail.project.subscriber_rows import RowProblem, Subscriber, subscriber_files

PAGE = 5_000  # rows per page of a read


@dataclass
class Imported:
    """One import of the lists: the current one, or what this call made current."""

    id: int
    folder: str
    subscribers: int
    rows: int
    invalid: int
    duplicates: int
    at: str
    changed: bool = False  # this call read the files and made this import
    problems: list[RowProblem] = field(default_factory=list)  # this call's, first ones


class ImportRefused(InputError):
    """A file is broken (or there are none): the last good import stays. ``rows`` holds
    the row problems found on the way, ``kept`` the import that stays, if any."""

    def __init__(
        self,
        problems: list[Problem],
        rows: list[RowProblem],
        kept: Imported | None,
        *,
        again: bool = False,
    ) -> None:
        self.found = problems
        self.again = again  # the files are as a refused import found them: not read again
        if kept is not None:
            problems = [*problems[:-1], _with_kept(problems[-1], kept)]
        super().__init__(problems)
        self.rows = rows
        self.kept = kept


def _with_kept(problem: Problem, kept: Imported) -> Problem:
    return Problem(
        problem.path,
        problem.line,
        f"{problem.message} (nothing of the lists is imported until fixed; the last good "
        f"import of {kept.at}, {kept.subscribers} subscribers, stays)",
        code=problem.code,
    )


def span(import_id: int) -> tuple[int, int]:
    return import_id << 32, (import_id + 1) << 32


def digest_of(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def query(ledger: Ledger, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    try:
        return ledger.database.execute(sql, params)
    except driver_errors() as exc:
        raise ledger.error(
            f"cannot read or write the imported subscribers: {one_line(exc)}"
        ) from exc


# -- the current import and whether the files still are as it read them -------------


def current(ledger: Ledger) -> Imported | None:
    rows = query(
        ledger,
        "SELECT id, folder, subscribers, rows_read, invalid, duplicates, finished_at"
        " FROM subscriber_imports WHERE state = 'current'",
    )
    return Imported(*rows[0]) if rows else None


def still_there(ledger: Ledger, import_id: int) -> bool:
    """Whether the import is still in the ledger (cleaning up keeps the one an unfinished
    selection reads, from when its selection was taken)."""
    return bool(query(ledger, "SELECT 1 FROM subscriber_imports WHERE id = :i", i=import_id))


def unchanged(ledger: Ledger, folder: Path) -> Imported | None:
    """The current import if the lists are as it read them: the same files, each with
    its size and mtime (nothing read) or else its content digest. None: import again."""
    kept = current(ledger)
    if kept is None or not _same_place(kept.folder, folder):
        return None
    return kept if _same_files(ledger, kept.id, folder) else None


def _same_place(recorded: str, path: Path | str) -> bool:
    """The same file or folder, however it is spelled (a link to it, ``..``): two
    spellings of one project took turns importing the whole list again."""
    return recorded == str(path) or os.path.realpath(recorded) == os.path.realpath(path)


def refused_before(ledger: Ledger, folder: Path) -> list[Problem] | None:
    """The problems of the last refused import, if the files are still as it read them."""
    rows = query(
        ledger,
        "SELECT id, folder, refusal FROM subscriber_imports WHERE state = 'refused'"
        " AND refusal IS NOT NULL ORDER BY id DESC LIMIT 1",
    )
    if not rows or not _same_place(rows[0][1], folder):
        return None
    if not _same_files(ledger, rows[0][0], folder):
        return None
    return [
        Problem(path, line, message, code=code)
        for path, line, message, code in json.loads(rows[0][2])
    ]


def _same_files(ledger: Ledger, import_id: int, folder: Path) -> bool:
    try:
        files = subscriber_files(folder)
    except OSError:
        return False
    # Each file as the import recorded it, by where it is, however either spells it
    recorded = {
        os.path.realpath(path): (path, size, mtime, digest)
        for path, size, mtime, digest in query(
            ledger,
            "SELECT path, size, mtime_ns, digest FROM subscriber_files WHERE import_id = :i",
            i=import_id,
        )
    }
    places = {os.path.realpath(p): p for p in files}
    if set(places) != set(recorded):
        return False
    touched: list[tuple[str, int]] = []
    for place, path in places.items():
        spelled, size, mtime, digest = recorded[place]
        try:
            st = path.stat()
            if st.st_size != size:
                return False
            if st.st_mtime_ns != mtime:
                if digest_of(path) != digest:
                    return False
                touched.append((spelled, st.st_mtime_ns))
        except OSError:
            return False
    for path_text, mtime in touched:  # saved, so that next time the stat is enough
        query(
            ledger,
            "UPDATE subscriber_files SET mtime_ns = :m WHERE import_id = :i AND path = :p",
            m=mtime,
            i=import_id,
            p=path_text,
        )
    return True


# -- reading an import --------------------------------------------------------------


def read_subscribers(
    ledger: Ledger,
    import_id: int,
    *,
    pending: str | None = None,
    first: bool = False,
    few: bool = False,
) -> Iterator[Subscriber]:
    """The import's subscribers in list order, a page at a time (no read transaction
    stays open between pages). With ``pending`` (an entry) and ``first``, only those
    with a pending delivery of it (``few`` of them: found from the entry's queue, not by
    walking the list); with ``pending`` alone, the others (nor any this connection
    staged since)."""
    after, hi = span(import_id)
    where, source = "", "subscribers s"
    if pending is not None:
        has = (
            "EXISTS (SELECT 1 FROM deliveries d WHERE d.entry_id = :e"
            " AND d.address = s.address AND d.status = 'pending')"
        )
        if first and few:
            source = "deliveries d JOIN subscribers s ON s.import_id = :i AND s.address = d.address"
            where = " AND d.entry_id = :e AND d.status = 'pending'"
        elif first:
            where = f" AND {has}"
        else:
            ledger.database.execute(STAGING)
            staged = "EXISTS (SELECT 1 FROM staged t WHERE t.address = s.address)"
            where = f" AND NOT {has} AND NOT {staged}"
    paths: dict[str, Path] = {}  # a list's few files, each made a Path once
    while True:
        page = query(
            ledger,
            "SELECT s.pos, s.email, s.ascii_email, s.name, s.locale, s.region, s.topics,"
            f" s.status, s.file, s.line FROM {source} WHERE s.pos > :a AND s.pos < :hi{where}"
            f" ORDER BY s.pos LIMIT {PAGE}",
            a=after,
            hi=hi,
            e=pending,
            i=import_id,
        )
        for pos, email, ascii_email, name, locale, region, topics, status, file, line in page:
            yield Subscriber(
                email,
                ascii_email,
                name,
                locale,
                region,
                topics_of(topics),
                status,
                paths.get(file) or paths.setdefault(file, Path(file)),
                line,
            )
            after = pos
        if len(page) < PAGE:
            return


def read_problems(ledger: Ledger, import_id: int, limit: int | None = None) -> list[RowProblem]:
    lo, hi = span(import_id)
    rows = query(
        ledger,
        "SELECT file, line, message, email FROM subscriber_problems"
        " WHERE pos >= :lo AND pos < :hi ORDER BY pos" + (f" LIMIT {int(limit)}" if limit else ""),
        lo=lo,
        hi=hi,
    )
    return [
        RowProblem(Path(file), int(line), message, email) for file, line, message, email in rows
    ]


def read_groups(ledger: Ledger, import_id: int) -> list[Group]:
    rows = query(
        ledger,
        "SELECT status, locale, region, topics, members, last_first FROM subscriber_groups"
        " WHERE import_id = :i",
        i=import_id,
    )
    return [Group(s, lo, r, topics_of(t), int(n), int(f)) for s, lo, r, t, n, f in rows]


_SPECIAL = """
    LEFT JOIN preferences p ON p.address = {a}
    LEFT JOIN suppressions x ON x.address = {a}
"""
_SPECIAL_COLUMNS = (
    "s.status, s.locale, s.region, s.topics, p.address IS NOT NULL, p.locale, p.topics,"
    " x.address IS NOT NULL"
)


def _group(row: tuple[Any, ...], members: int) -> Group:
    status, locale, region, topics, preferred, pref_locale, pref_topics, suppressed = row
    preference = (
        Preference(pref_locale, None if pref_topics is None else topics_of(pref_topics))
        if preferred
        else None
    )
    return Group(
        status,
        locale,
        region,
        topics_of(topics),
        members,
        preference=preference,
        suppressed=bool(suppressed),
    )


def special_groups(ledger: Ledger, import_id: int) -> list[Group]:
    """The import's active subscribers with a stored preference or a suppression, grouped
    with it (driven from those two tables, which are small beside a list)."""
    rows = query(
        ledger,
        f"SELECT {_SPECIAL_COLUMNS}, COUNT(*) FROM"
        " (SELECT address FROM preferences UNION SELECT address FROM suppressions) k"
        " JOIN subscribers s ON s.import_id = :i AND s.address = k.address"
        + _SPECIAL.format(a="k.address")
        + " WHERE s.status = 'active'"
        f" GROUP BY {_SPECIAL_COLUMNS}",
        i=import_id,
    )
    return [_group(row[:-1], int(row[-1])) for row in rows]


def pending_groups(ledger: Ledger, import_id: int, entry_id: str) -> list[tuple[Group | None, int]]:
    """The entry's pending recipients, grouped as the import has them (None: no longer
    in the list), for the shrink guard."""
    rows = query(
        ledger,
        f"SELECT s.address IS NOT NULL, {_SPECIAL_COLUMNS}, COUNT(*) FROM deliveries d"
        " LEFT JOIN subscribers s ON s.import_id = :i AND s.address = d.address"
        + _SPECIAL.format(a="d.address")
        + " WHERE d.entry_id = :e AND d.status = 'pending'"
        f" GROUP BY s.address IS NOT NULL, {_SPECIAL_COLUMNS}",
        i=import_id,
        e=entry_id,
    )
    return [(_group(row[1:-1], int(row[-1])) if row[0] else None, int(row[-1])) for row in rows]


def preferences_stamp(ledger: Ledger) -> str:
    """Changes whenever a preference is saved or a suppression lifted: a selection made
    before may no longer be what one now would choose."""
    prefs = query(ledger, "SELECT COUNT(*), MAX(updated_at) FROM preferences")[0]
    lifts = query(ledger, "SELECT COUNT(*), MAX(lifted_at) FROM suppression_lifts")[0]
    changed = query(ledger, "SELECT version FROM changes WHERE name = :n", n=queries.CHOICES)
    version = changed[0][0] if changed else 0
    return f"{prefs[0]}/{prefs[1]}/{lifts[0]}/{lifts[1]}/{version}"
