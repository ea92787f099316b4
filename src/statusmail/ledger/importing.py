"""Importing the subscriber lists into the ledger when their files change, validated
once per change.

An import reads every file (``project.subscribers``: streamed, validated, de-duplicated)
into the ``subscribers`` table under a new import id, a batch per short transaction, so
``serve`` and the senders never wait on it for long; only then, in one short
transaction, does it become the current import. A file with a structural problem
refuses the whole import: nothing of it replaces the last good one, and the refusal is
kept with the files it read, so that until they change a run is refused again without
reading them. Row problems (a bad address, an unknown region) are kept beside the import
with their ``file:line``, and the row is left out. The import before the current one is
kept (a selection may still be reading it); older ones are deleted in batches.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from statusmail.errors import LedgerError, Problem
from statusmail.ledger.base import now_iso
from statusmail.ledger.database import PostgresDatabase, driver_errors, one_line
from statusmail.ledger.locks import lock_key
from statusmail.ledger.store import Ledger
from statusmail.ledger.subscribers import (
    Imported,
    ImportRefused,
    current,
    digest_of,
    query,
    refused_before,
    span,
    unchanged,
)
from statusmail.project.selection import Tally, topics_text
from statusmail.project.subscriber_rows import ReadStats, RowProblem, Subscriber, subscriber_files
from statusmail.project.subscribers import iter_subscribers

BATCH = 5_000  # rows per transaction of an import
LOCK_POLL = 0.05  # seconds between two tries for the import lock
TELL_EVERY = 1_000  # rows read between two calls of an import's ``told``
KEPT_PROBLEMS = 1_000  # row problems an import hands back to print; all are stored
NO_FILES = "no subscriber files (.csv, .yaml or .yml) in this folder"

# Told what a long import does now and, while it reads a file, how many rows it has read
# (None: it does not count rows now); ``delivery.waiting`` shows it.
Told = Callable[[str, int | None], None]


def _untold(_what: str, _rows: int | None) -> None:
    pass


def import_lists(
    ledger: Ledger, folder: Path, *, force: bool = False, told: Told = _untold
) -> Imported:
    """The current import, made anew first when the files changed (or ``force``).
    Raises ``ImportRefused`` when a file is broken: the last good import stays; and
    ``LedgerError`` when the ledger fails (busy past its timeout, say), never the
    driver's own error (watch keeps running on a ``StatusmailError``)."""
    try:
        if not force and (known := _known(ledger, folder)) is not None:
            return known
        waiting = f"importing {folder}: waiting for another import of the lists to end"
        with _import_lock(ledger, lambda: told(waiting, None)):
            # Another process may have imported the same change while this one waited.
            if not force and (known := _known(ledger, folder)) is not None:
                return known
            return _import(ledger, folder, told)
    except driver_errors() as exc:
        raise ledger.error(f"cannot import the subscribers: {one_line(exc)}") from exc


def _known(ledger: Ledger, folder: Path) -> Imported | None:
    """The current import if the files are as it read them; a refused import's problems
    again, without reading, if they are as that one found them (once per change)."""
    if (kept := unchanged(ledger, folder)) is not None:
        return kept
    if (problems := refused_before(ledger, folder)) is not None:
        raise ImportRefused(problems, [], current(ledger), again=True)
    return None


@contextlib.contextmanager
def _import_lock(ledger: Ledger, waiting: Callable[[], None]) -> Iterator[None]:
    """One import at a time per ledger; the others wait for it (then find it done),
    calling ``waiting`` between two tries (it shows the wait, and ends it by raising
    when the run stops: a watcher's thread, which no signal reaches, waited for as
    long as the other import took, however long after SIGTERM)."""
    database = ledger.database
    if isinstance(database, PostgresDatabase):
        key = lock_key("subscriber-import")
        while not query(ledger, "SELECT pg_try_advisory_lock(:k)", k=key)[0][0]:
            waiting()
            time.sleep(LOCK_POLL)
        try:
            yield
        finally:
            with contextlib.suppress(LedgerError):
                query(ledger, "SELECT pg_advisory_unlock(:k)", k=key)
        return
    path = Path(f"{ledger.target}.import.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)  # (never a link)
    except OSError as exc:
        raise LedgerError(f"{path}: cannot create the import lock: {exc.strerror or exc}") from exc
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waiting()
                time.sleep(LOCK_POLL)
        yield
    finally:
        os.close(fd)


def _import(ledger: Ledger, folder: Path, told: Told) -> Imported:
    kept = current(ledger)
    told(f"importing {folder}: deleting the imports no selection reads any more", None)
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
            query(
                ledger,
                "INSERT INTO subscriber_imports (id, folder, state, started_at)"
                " SELECT COALESCE(MAX(id), 0) + 1, :f, 'loading', :at FROM subscriber_imports"
                " RETURNING id",
                f=str(folder),
                at=now_iso(),
            )[0][0]
        )
    try:
        made = _load(ledger, folder, import_id, kept, told)
    except ImportRefused as exc:
        _drop(ledger, import_id, rows_only=True)
        _refuse(ledger, import_id, stamps, exc.found)
        raise
    except BaseException:
        # Left 'loading' (a signal must end the run at once): the next import drops it.
        with contextlib.suppress(LedgerError):
            query(
                ledger,
                "UPDATE subscriber_imports SET finished_at = :at WHERE id = :i",
                at=now_iso(),
                i=import_id,
            )
        raise
    with ledger.transaction():
        _record_files(ledger, import_id, stamps)
        query(ledger, "UPDATE subscriber_imports SET state = 'replaced' WHERE state = 'current'")
        query(
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
        query(
            ledger,
            "UPDATE subscriber_imports SET state = 'refused', refusal = :r, finished_at = :at"
            " WHERE id = :i",
            r=refusal,
            at=now_iso(),
            i=import_id,
        )


def _load(
    ledger: Ledger, folder: Path, import_id: int, kept: Imported | None, told: Told
) -> Imported:
    stats, tally = ReadStats(), Tally()
    broken: list[RowProblem] = []
    problems: list[RowProblem] = []
    rows: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    pos = span(import_id)[0]
    tell = pos

    def statuses(path: Path, rows: int) -> None:
        told(f"importing {path} (its statuses first)", rows)

    for item in iter_subscribers(folder, stats, statuses):
        pos += 1
        if pos > tell:
            told(f"importing {item.path}", stats.rows)
            tell = pos + TELL_EVERY
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
        raise ledger.error(f"cannot import the subscribers: {one_line(exc)}") from exc


def _clean(ledger: Ledger) -> None:
    """Drop what no selection reads any more: imports that never finished (this process
    holds the import lock: nobody is loading), refused ones (a new one is being made)
    and every replaced one but the last, unless an unfinished selection reads it."""
    stale = query(
        ledger,
        "SELECT id FROM subscriber_imports WHERE (state IN ('loading', 'refused')"
        " OR (state = 'replaced' AND id < (SELECT MAX(id) FROM subscriber_imports"
        " WHERE state = 'replaced')))"
        " AND id NOT IN (SELECT selecting_from FROM entries WHERE selecting_from IS NOT NULL"
        " AND selected_generation < generation)",
    )
    for (import_id,) in stale:
        _drop(ledger, int(import_id))


def _drop(ledger: Ledger, import_id: int, *, rows_only: bool = False) -> None:
    """Delete one import (or only its rows), a batch per transaction."""
    lo, hi = span(import_id)
    for table in ("subscribers", "subscriber_problems"):
        top = query(
            ledger, f"SELECT MAX(pos) FROM {table} WHERE pos >= :lo AND pos < :hi", lo=lo, hi=hi
        )
        last = top[0][0]
        for start in range(lo, (last or lo) + 1, BATCH):
            query(
                ledger,
                f"DELETE FROM {table} WHERE pos >= :a AND pos < :b",
                a=start,
                b=start + BATCH,
            )
    if rows_only:
        return
    for table, column in (("subscriber_files", "import_id"), ("subscriber_groups", "import_id")):
        query(ledger, f"DELETE FROM {table} WHERE {column} = :i", i=import_id)
    query(ledger, "DELETE FROM subscriber_imports WHERE id = :i", i=import_id)
