"""The subscriber lists held in the ledger: imported when their files change, validated
once per change, read by every selection.

An import reads every file (``project.subscribers``: streamed, validated, de-duplicated)
into the ``subscribers`` table under a new import id, a batch per short transaction, so
``serve`` and the senders never wait on it for long; only then, in one short
transaction, does it become the current import. A file with a structural problem
refuses the whole import: nothing of it replaces the last good one. Row problems (a bad
address, an unknown region) are kept beside it with their ``file:line``, and the row is
left out. Each file's size, mtime and content digest are recorded: the lists count as
unchanged while size and mtime are the same (nothing is read) or the digest is.

Rows are numbered ``import id << 32`` on, so one import is one range of the primary key;
the import before the current one is kept (a selection may still be reading it) and
older ones are deleted in batches.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from statusmail.domain import Preference
from statusmail.errors import InputError, LedgerError, Problem
from statusmail.ledger.database import PostgresDatabase, driver_errors
from statusmail.ledger.locks import lock_key
from statusmail.ledger.store import STAGING, Ledger, now_iso
from statusmail.project.selection import Group, Tally, topics_of, topics_text
from statusmail.project.subscribers import (
    ReadStats,
    RowProblem,
    Subscriber,
    iter_subscribers,
    subscriber_files,
)

BATCH = 5_000  # rows per transaction of an import (and per page of a read)
KEPT_PROBLEMS = 1_000  # row problems an import hands back to print; all are stored
NO_FILES = "no subscriber files (.csv, .yaml or .yml) in this folder"


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


def _q(ledger: Ledger, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    try:
        return ledger.database.execute(sql, params)
    except driver_errors() as exc:
        raise ledger.error(f"cannot read or write the imported subscribers: {exc}") from exc


# -- the current import and whether the files still are as it read them -------------


def current(ledger: Ledger) -> Imported | None:
    rows = _q(
        ledger,
        "SELECT id, folder, subscribers, rows_read, invalid, duplicates, finished_at"
        " FROM subscriber_imports WHERE state = 'current'",
    )
    return Imported(*rows[0]) if rows else None


def unchanged(ledger: Ledger, folder: Path) -> Imported | None:
    """The current import if the lists are as it read them: the same files, each with
    its size and mtime (nothing read) or else its content digest. None: import again."""
    kept = current(ledger)
    if kept is None or kept.folder != str(folder) or not _same_files(ledger, kept.id, folder):
        return None
    return kept


def _refused_before(ledger: Ledger, folder: Path) -> list[Problem] | None:
    """The problems of the last refused import, if the files are still as it read them."""
    rows = _q(
        ledger,
        "SELECT id, folder, refusal FROM subscriber_imports WHERE state = 'refused'"
        " AND refusal IS NOT NULL ORDER BY id DESC LIMIT 1",
    )
    if not rows or rows[0][1] != str(folder) or not _same_files(ledger, rows[0][0], folder):
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
    recorded = {
        path: (size, mtime, digest)
        for path, size, mtime, digest in _q(
            ledger,
            "SELECT path, size, mtime_ns, digest FROM subscriber_files WHERE import_id = :i",
            i=import_id,
        )
    }
    if {str(p) for p in files} != set(recorded):
        return False
    touched: list[tuple[str, int]] = []
    for path in files:
        size, mtime, digest = recorded[str(path)]
        try:
            st = path.stat()
            if st.st_size != size:
                return False
            if st.st_mtime_ns != mtime:
                if digest_of(path) != digest:
                    return False
                touched.append((str(path), st.st_mtime_ns))
        except OSError:
            return False
    for path_text, mtime in touched:  # saved, so that next time the stat is enough
        _q(
            ledger,
            "UPDATE subscriber_files SET mtime_ns = :m WHERE import_id = :i AND path = :p",
            m=mtime,
            i=import_id,
            p=path_text,
        )
    return True


# -- importing ---------------------------------------------------------------------


def import_lists(ledger: Ledger, folder: Path, *, force: bool = False) -> Imported:
    """The current import, made anew first when the files changed (or ``force``).
    Raises ``ImportRefused`` when a file is broken: the last good import stays."""
    if not force and (known := _known(ledger, folder)) is not None:
        return known
    with _import_lock(ledger):
        # Another process may have imported the same change while this one waited.
        if not force and (known := _known(ledger, folder)) is not None:
            return known
        return _import(ledger, folder)


def _known(ledger: Ledger, folder: Path) -> Imported | None:
    """The current import if the files are as it read them; a refused import's problems
    again, without reading, if they are as that one found them (once per change)."""
    if (kept := unchanged(ledger, folder)) is not None:
        return kept
    if (problems := _refused_before(ledger, folder)) is not None:
        raise ImportRefused(problems, [], current(ledger), again=True)
    return None


@contextlib.contextmanager
def _import_lock(ledger: Ledger) -> Iterator[None]:
    """One import at a time per ledger; the others wait for it (then find it done)."""
    database = ledger.database
    if isinstance(database, PostgresDatabase):
        key = lock_key("subscriber-import")
        while not _q(ledger, "SELECT pg_try_advisory_lock(:k)", k=key)[0][0]:
            time.sleep(0.05)
        try:
            yield
        finally:
            with contextlib.suppress(LedgerError):
                _q(ledger, "SELECT pg_advisory_unlock(:k)", k=key)
        return
    path = Path(f"{ledger.target}.import.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise LedgerError(f"{path}: cannot create the import lock: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _import(ledger: Ledger, folder: Path) -> Imported:
    kept = current(ledger)
    _clean(ledger)
    if not folder.exists():
        raise ImportRefused([Problem(folder, None, "subscribers folder not found")], [], kept)
    files = subscriber_files(folder)
    if not files:
        raise ImportRefused([Problem(folder, None, NO_FILES)], [], kept)
    stamps = []
    for path in files:
        try:
            st = path.stat()
            stamps.append((str(path), st.st_size, st.st_mtime_ns, digest_of(path)))
        except OSError as exc:
            problem = Problem(path, None, f"cannot read: {exc.strerror or exc}")
            raise ImportRefused([problem], [], kept) from exc
    with ledger.transaction():
        import_id = int(
            _q(
                ledger,
                "INSERT INTO subscriber_imports (id, folder, state, started_at)"
                " SELECT COALESCE(MAX(id), 0) + 1, :f, 'loading', :at FROM subscriber_imports"
                " RETURNING id",
                f=str(folder),
                at=now_iso(),
            )[0][0]
        )
    try:
        made = _load(ledger, folder, import_id, kept)
    except ImportRefused as exc:
        _drop(ledger, import_id, rows_only=True)
        _refuse(ledger, import_id, stamps, exc.found)
        raise
    except BaseException:
        # Left 'loading' (a signal must end the run at once): the next import drops it.
        with contextlib.suppress(LedgerError):
            _q(
                ledger,
                "UPDATE subscriber_imports SET finished_at = :at WHERE id = :i",
                at=now_iso(),
                i=import_id,
            )
        raise
    with ledger.transaction():
        _record_files(ledger, import_id, stamps)
        _q(ledger, "UPDATE subscriber_imports SET state = 'replaced' WHERE state = 'current'")
        _q(
            ledger,
            "UPDATE subscriber_imports SET state = 'current', subscribers = :n, rows_read = :r,"
            " invalid = :bad, duplicates = :d, finished_at = :at WHERE id = :i",
            n=made.subscribers,
            r=made.rows,
            bad=made.invalid,
            d=made.duplicates,
            at=made.at,
            i=import_id,
        )
    return made


def _record_files(ledger: Ledger, import_id: int, stamps: list[tuple[str, int, int, str]]) -> None:
    ledger.database.executemany(
        "INSERT INTO subscriber_files VALUES (:i, :p, :s, :m, :d)",
        [{"i": import_id, "p": p, "s": s, "m": m, "d": d} for p, s, m, d in stamps],
    )


def _refuse(
    ledger: Ledger, import_id: int, stamps: list[tuple[str, int, int, str]], found: list[Problem]
) -> None:
    """Keep what a refused import found with the files it read: until they change, a
    run is refused with the same problems without reading them again."""
    refusal = json.dumps([[str(p.path), p.line, p.message, p.code] for p in found])
    with ledger.transaction():
        _record_files(ledger, import_id, stamps)
        _q(
            ledger,
            "UPDATE subscriber_imports SET state = 'refused', refusal = :r, finished_at = :at"
            " WHERE id = :i",
            r=refusal,
            at=now_iso(),
            i=import_id,
        )


def _load(ledger: Ledger, folder: Path, import_id: int, kept: Imported | None) -> Imported:
    stats, tally = ReadStats(), Tally()
    broken: list[RowProblem] = []
    problems: list[RowProblem] = []
    rows: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    pos = span(import_id)[0]
    for item in iter_subscribers(folder, stats):
        pos += 1
        if isinstance(item, RowProblem):
            if item.fatal:
                broken.append(item)
                continue
            if len(problems) < KEPT_PROBLEMS:
                problems.append(item)
            bad.append(_problem_row(import_id, pos, item))
        elif not broken:  # once a file is broken nothing is kept: only read on, to report
            tally.add(item)
            rows.append(_row(import_id, pos, item))
        if len(rows) + len(bad) >= BATCH:
            _write(ledger, rows, bad)
            rows, bad = [], []
    if broken:
        found = [Problem(p.path, p.line or None, p.message, code="subscriber-file") for p in broken]
        raise ImportRefused(found, problems, kept)
    _write(ledger, rows, bad)
    with ledger.transaction():
        ledger.database.executemany(
            "INSERT INTO subscriber_groups VALUES (:i, :status, :locale, :region, :topics,"
            " :members, :last_first)",
            [
                {
                    "i": import_id,
                    "status": g.status,
                    "locale": g.locale,
                    "region": g.region,
                    "topics": topics_text(g.topics),
                    "members": g.members,
                    "last_first": g.last_first,
                }
                for g in tally.groups()
            ],
        )
    return Imported(
        import_id,
        str(folder),
        sum(tally.members.values()),
        stats.rows,
        stats.invalid,
        stats.duplicates,
        now_iso(),
        changed=True,
        problems=problems,
    )


def _row(import_id: int, pos: int, item: Subscriber) -> dict[str, Any]:
    return {
        "pos": pos,
        "i": import_id,
        "address": item.key,
        "email": item.email,
        "ascii_email": item.ascii_email,
        "name": item.name,
        "locale": item.locale,
        "region": item.region,
        "topics": topics_text(item.topics),
        "status": item.status,
        "file": str(item.path),
        "line": item.line,
    }


def _problem_row(import_id: int, pos: int, item: RowProblem) -> dict[str, Any]:
    return {
        "pos": pos,
        "i": import_id,
        "file": str(item.path),
        "line": item.line,
        "email": item.email,
        "message": item.message,
    }


def _write(ledger: Ledger, rows: list[dict[str, Any]], bad: list[dict[str, Any]]) -> None:
    try:
        with ledger.transaction():
            if rows:
                ledger.database.executemany(
                    "INSERT INTO subscribers VALUES (:pos, :i, :address, :email, :ascii_email,"
                    " :name, :locale, :region, :topics, :status, :file, :line)",
                    rows,
                )
            if bad:
                ledger.database.executemany(
                    "INSERT INTO subscriber_problems VALUES (:pos, :i, :file, :line, :email,"
                    " :message)",
                    bad,
                )
    except driver_errors() as exc:
        raise ledger.error(f"cannot import the subscribers: {exc}") from exc


def _clean(ledger: Ledger) -> None:
    """Drop what no selection reads any more: imports that never finished (this process
    holds the import lock: nobody is loading), refused ones (a new one is being made)
    and every replaced one but the last."""
    stale = _q(
        ledger,
        "SELECT id FROM subscriber_imports WHERE state IN ('loading', 'refused')"
        " OR (state = 'replaced' AND id < (SELECT MAX(id) FROM subscriber_imports"
        " WHERE state = 'replaced'))",
    )
    for (import_id,) in stale:
        _drop(ledger, int(import_id))


def _drop(ledger: Ledger, import_id: int, *, rows_only: bool = False) -> None:
    """Delete one import (or only its rows), a batch per transaction."""
    lo, hi = span(import_id)
    for table in ("subscribers", "subscriber_problems"):
        top = _q(
            ledger, f"SELECT MAX(pos) FROM {table} WHERE pos >= :lo AND pos < :hi", lo=lo, hi=hi
        )
        last = top[0][0]
        for start in range(lo, (last or lo) + 1, BATCH):
            _q(
                ledger,
                f"DELETE FROM {table} WHERE pos >= :a AND pos < :b",
                a=start,
                b=start + BATCH,
            )
    if rows_only:
        return
    for table, column in (("subscriber_files", "import_id"), ("subscriber_groups", "import_id")):
        _q(ledger, f"DELETE FROM {table} WHERE {column} = :i", i=import_id)
    _q(ledger, "DELETE FROM subscriber_imports WHERE id = :i", i=import_id)


# -- reading an import --------------------------------------------------------------


def read_subscribers(
    ledger: Ledger, import_id: int, *, pending: str | None = None, first: bool = False
) -> Iterator[Subscriber]:
    """The import's subscribers in list order, a page at a time (no read transaction
    stays open between pages). With ``pending`` (an entry) and ``first``, only those
    with a pending delivery of it; with ``pending`` alone, the others (nor any this
    connection staged since)."""
    after, hi = span(import_id)
    where = ""
    if pending is not None:
        has = (
            "EXISTS (SELECT 1 FROM deliveries d WHERE d.entry_id = :e"
            " AND d.address = s.address AND d.status = 'pending')"
        )
        if first:
            where = f" AND {has}"
        else:
            ledger.database.execute(STAGING)
            staged = "EXISTS (SELECT 1 FROM staged t WHERE t.address = s.address)"
            where = f" AND NOT {has} AND NOT {staged}"
    while True:
        page = _q(
            ledger,
            "SELECT pos, email, ascii_email, name, locale, region, topics, status, file, line"
            f" FROM subscribers s WHERE pos > :a AND pos < :hi{where} ORDER BY pos LIMIT {BATCH}",
            a=after,
            hi=hi,
            e=pending,
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
                Path(file),
                line,
            )
            after = pos
        if len(page) < BATCH:
            return


def read_problems(ledger: Ledger, import_id: int, limit: int | None = None) -> list[RowProblem]:
    lo, hi = span(import_id)
    rows = _q(
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
    rows = _q(
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
    rows = _q(
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
    rows = _q(
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
    prefs = _q(ledger, "SELECT COUNT(*), MAX(updated_at) FROM preferences")[0]
    lifts = _q(ledger, "SELECT COUNT(*), MAX(lifted_at) FROM suppression_lifts")[0]
    return f"{prefs[0]}/{prefs[1]}/{lifts[0]}/{lifts[1]}"
