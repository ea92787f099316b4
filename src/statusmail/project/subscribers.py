"""Subscriber lists (CSV or YAML), streamed row by row, validated, de-duplicated.

A file is read whole or refused. A *structural* error -- an unbalanced quote, a row with
the wrong number of fields, bytes that are not UTF-8, a bad header, a line over 64 KiB,
no subscribers at all, a YAML syntax error, a duplicate key in a YAML subscriber, a second
YAML document -- is one fatal ``RowProblem`` at its ``file:line``, and nothing after it in
that file is read. A *row* problem (a bad address, status or region, a display name that
holds an address) skips that row only.

CSV is read as spreadsheets save it: UTF-8 with or without a BOM; LF, CRLF or CR line
ends; ``,`` or ``;`` between fields, told by the header line (Excel writes ``;`` where the
decimal separator is a comma, as in Russia). One physical line is one row: a quoted field
may hold the delimiter and ``""`` but never a line break, so a ``"`` that does not close
on its own line (which would make a CSV reader swallow the rows after it) and a ``"``
inside an unquoted field are structural errors at that line.

Topics are separated by ``;`` in both kinds of file. In a ``;`` file that cell must be
quoted (``"service-status;product-news"``), which is what Excel and LibreOffice write for
any cell holding the delimiter; unquoted, its ``;`` makes too many fields and the file is
refused, rather than taking a second separator that would change a ``,`` file's topics.
Excel's plain "CSV" is the legacy code page (Windows-1251 for Cyrillic): such a file is
refused with the hint to save it as "CSV UTF-8".
"""

from __future__ import annotations

import csv
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from statusmail.project.subscriber_csv import _SHAPES, _header, _header_line, _read_csv
from statusmail.project.subscriber_rows import (
    MAX_RAW_LINE_CHARS,
    Build,
    FileBroken,
    ReadStats,
    RowProblem,
    Subscriber,
    _bad_utf8,
    make_subscriber,
    row_status,
    subscriber_files,
)
from statusmail.project.subscriber_yaml import _read_yaml


def read_file(path: Path, build: Build = make_subscriber) -> Iterator[Subscriber | RowProblem]:
    """One file's subscribers and row problems in order; a structural error ends it."""
    try:
        if path.suffix.lower() == ".csv":
            yield from _read_csv(path, build)
        else:
            yield from _read_yaml(path, build)
    except FileBroken as exc:
        yield RowProblem(path, exc.line, exc.message, "", fatal=True)
    except UnicodeDecodeError:
        line, message = _bad_utf8(path)
        yield RowProblem(path, line, message, "", fatal=True)
    except csv.Error as exc:
        yield RowProblem(path, 0, f"invalid CSV: {exc}", "", fatal=True)
    except OSError as exc:
        yield RowProblem(path, 0, f"cannot read: {exc.strerror or exc}", "", fatal=True)


class SeenAddresses:
    """Which addresses a pass has met, exactly, in memory that stays flat however long
    the list: the first ``spill_at`` are kept in a set, the rest in a temporary SQLite
    file (a primary key and a bounded page cache), so a million rows cost the memory of
    a hundred thousand.
    """

    def __init__(self, spill_at: int = 100_000) -> None:
        self.spill_at = spill_at
        self._memory: set[str] = set()
        self._db: sqlite3.Connection | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def add(self, address_key: str) -> bool:
        """Remember ``address_key``; False if it was already there."""
        if self._db is not None:
            cursor = self._db.execute("INSERT OR IGNORE INTO seen VALUES (?)", (address_key,))
            return cursor.rowcount == 1
        if address_key in self._memory:
            return False
        self._memory.add(address_key)
        if len(self._memory) >= self.spill_at:
            self._spill()
        return True

    def _spill(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="statusmail-seen-")
        self._db = sqlite3.connect(Path(self._tmp.name) / "seen.db", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE seen (address TEXT PRIMARY KEY) WITHOUT ROWID")
        self._db.execute("BEGIN")  # one long transaction: nothing here needs to survive
        self._db.executemany("INSERT INTO seen VALUES (?)", ((a,) for a in self._memory))
        self._memory = set()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


Pace = Callable[[Path, int], None]  # (the file, its rows read so far): every PACE rows
PACE = 1_000


def iter_subscribers(
    folder: Path, stats: ReadStats | None = None, pace: Pace | None = None
) -> Iterator[Subscriber | RowProblem]:
    """Every subscriber once (the first spelling wins, but not over a status that is not
    ``active``: see ``_withdrawn``), and every bad row, in file order. ``pace`` is told
    how far the first pass is (it may raise to end it: a stop signal)."""
    stats = stats if stats is not None else ReadStats()
    if not folder.exists():
        yield RowProblem(folder, 0, "subscribers folder not found", "", fatal=True)
        return
    files = subscriber_files(folder)
    withdrawn = _withdrawn(files, pace)
    seen = SeenAddresses()
    try:
        for path in files:
            stats.files.append(path)
            for item in read_file(path):
                stats.rows += 1
                if isinstance(item, RowProblem):
                    stats.invalid += 1
                    yield item
                elif seen.add(item.key):
                    status = withdrawn.get(item.key) if item.status == "active" else None
                    yield item if status is None else replace(item, status=status)
                else:
                    stats.duplicates += 1
    finally:
        seen.close()


def _withdrawn(files: list[Path], pace: Pace | None = None) -> dict[str, str]:
    """Each address some row gives a status other than ``active`` (unsubscribed, say),
    and the first such status: it wins over an ``active`` row of the same address in
    any file or line, so that a list kept as main.csv and unsubscribes.csv never mails
    whom the second one names. A pass that only parses the rows, and validates only
    those few (an ``active`` row costs no address check)."""
    found: dict[str, str] = {}
    for path in files:
        rows = 0

        def counting(row: dict[str, Any], path: Path, line: int) -> Subscriber | None:
            nonlocal rows
            rows += 1
            if pace is not None and rows % PACE == 0:
                pace(path, rows)
            return _unless_active(row, path, line)

        for item in read_file(path, counting):
            if isinstance(item, Subscriber):
                found.setdefault(item.key, item.status)
    return found


def _unless_active(row: dict[str, Any], path: Path, line: int) -> Subscriber | None:
    if row_status(row) == "active":
        return None
    item = make_subscriber(row, path, line)
    return item if isinstance(item, Subscriber) else None


def _structure_only(row: dict[str, Any], path: Path, line: int) -> None:
    return None


def _csv_looks_whole(path: Path) -> bool:
    """A fast pass over a CSV file: valid UTF-8, and every line either without quotes
    and with one cell per column, or quoted as ``_csv_lines`` requires. False means
    "look closer" (the full reader then finds the problem and its words)."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            number, first = _header_line(handle)
            delimiter, columns = _header(first, number)
            shape, cells = _SHAPES[delimiter], len(columns) - 1
            rows = 0
            for line in handle:
                if len(line) > MAX_RAW_LINE_CHARS:
                    return False
                if '"' in line:
                    if shape.fullmatch(line) is None:
                        return False
                elif line.count(delimiter) != cells:
                    if line.strip():
                        return False
                    continue
                rows += 1
            return rows > 0
    except (FileBroken, UnicodeDecodeError, OSError):
        return False


def first_broken(folder: Path) -> RowProblem | None:
    """The first structural problem of the lists (a broken file), found without
    validating rows, several times faster than reading them: a run that streams the
    list refuses a broken file before it sends anyone anything."""
    if not folder.exists():
        return RowProblem(folder, 0, "subscribers folder not found", "", fatal=True)
    for path in subscriber_files(folder):
        if path.suffix.lower() == ".csv" and _csv_looks_whole(path):
            continue
        for item in read_file(path, _structure_only):
            if isinstance(item, RowProblem) and item.fatal:
                return item
    return None


def count_rows(folder: Path) -> int:
    """About how many subscriber rows the lists hold, read fast (no parsing): a CSV's
    non-blank lines after the header, a YAML file's top-level ``- `` items. For telling
    that a list shrank before it is read row by row; unreadable files count 0."""
    total = 0
    try:
        files = subscriber_files(folder)
    except OSError:
        return 0
    for path in files:
        csv_file = path.suffix.lower() == ".csv"
        try:
            with path.open("rb") as handle:
                if csv_file:
                    rows = sum(1 for line in handle if line.strip(b" \t,;\r\n")) - 1
                else:
                    rows = sum(1 for line in handle if line[:2] in (b"- ", b"-\n"))
        except OSError:
            continue
        total += max(0, rows)
    return total
