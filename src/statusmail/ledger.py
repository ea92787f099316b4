"""The SQLite ledger: who should get which entry, and what happened when we tried.

One row per (entry, recipient): ``pending`` → ``sent`` | ``failed`` | ``skipped``. A run
first *stages* its selection in a temporary table of its own connection (no lock on the
ledger is held while the list is read or a person decides), then *enqueues* it in short
transactions, so the ledger is also the queue: a re-run drains what is still pending. A
row becomes ``sent`` only after the transport accepted the message.

All of statusmail's SQL lives here. Every ``sqlite3.Error`` leaves as a ``LedgerError``
naming the file. The schema is versioned by numbered migrations (``schema_version``).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import functools
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from statusmail.domain import DeliveryStatus, Outcome, Preference, Recipient
from statusmail.errors import LedgerError

# A writer waits at most this long for another (a group commit or an enqueue batch takes
# milliseconds), so the unsubscribe endpoint never waits on a send for long.
BUSY_TIMEOUT = 2.0
ENQUEUE_BATCH = 20_000

MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema (ledgers made before versioning have it, maybe without
    # `selection`, which migration 1 adds when it is missing)
    """
    CREATE TABLE IF NOT EXISTS deliveries (
        entry_id    TEXT NOT NULL,
        address     TEXT NOT NULL,            -- lower-cased, the comparison key
        email       TEXT NOT NULL,            -- as the subscriber wrote it (normalized)
        ascii_email TEXT,
        name        TEXT NOT NULL DEFAULT '',
        locale      TEXT NOT NULL,
        region      TEXT,
        status      TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed', 'skipped')),
        attempts    INTEGER NOT NULL DEFAULT 0,
        code        INTEGER,
        detail      TEXT,
        message_id  TEXT,
        selection   INTEGER NOT NULL DEFAULT 0,
        created_at  TEXT NOT NULL,
        updated_at  TEXT NOT NULL,
        PRIMARY KEY (entry_id, address)
    );
    CREATE INDEX IF NOT EXISTS deliveries_status ON deliveries (entry_id, status);
    CREATE TABLE IF NOT EXISTS suppressions (
        address    TEXT PRIMARY KEY,
        reason     TEXT NOT NULL
                   CHECK (reason IN ('unsubscribed', 'bounced', 'complained', 'manual')),
        detail     TEXT,
        created_at TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS entries (
        entry_id     TEXT PRIMARY KEY,
        digest       TEXT NOT NULL,
        selected_at  TEXT NOT NULL,
        completed_at TEXT
    );
    """,
    # 2: the address index that status and the unsubscribe page's language lookup use
    """
    CREATE INDEX IF NOT EXISTS deliveries_address ON deliveries (address);
    """,
    # 3: what comes back (bounces, complaints, mailto unsubscribes) and preferences.
    # deliveries gains the outcomes bounced and complained (SQLite changes a CHECK
    # constraint only by rebuilding the table: the same rows, rowids and order: a return
    # path names its row by rowid) and an index on the Message-ID a report quotes.
    """
    CREATE TABLE deliveries_v3 (
        entry_id    TEXT NOT NULL,
        address     TEXT NOT NULL,
        email       TEXT NOT NULL,
        ascii_email TEXT,
        name        TEXT NOT NULL DEFAULT '',
        locale      TEXT NOT NULL,
        region      TEXT,
        status      TEXT NOT NULL CHECK (status IN
                    ('pending', 'sent', 'failed', 'skipped', 'bounced', 'complained')),
        attempts    INTEGER NOT NULL DEFAULT 0,
        code        INTEGER,
        detail      TEXT,
        message_id  TEXT,
        selection   INTEGER NOT NULL DEFAULT 0,
        created_at  TEXT NOT NULL,
        updated_at  TEXT NOT NULL,
        PRIMARY KEY (entry_id, address)
    );
    INSERT INTO deliveries_v3 (rowid, entry_id, address, email, ascii_email, name, locale,
        region, status, attempts, code, detail, message_id, selection, created_at, updated_at)
        SELECT rowid, entry_id, address, email, ascii_email, name, locale, region, status,
        attempts, code, detail, message_id, selection, created_at, updated_at
        FROM deliveries ORDER BY rowid;
    DROP TABLE deliveries;
    ALTER TABLE deliveries_v3 RENAME TO deliveries;
    CREATE INDEX deliveries_status ON deliveries (entry_id, status);
    CREATE INDEX deliveries_address ON deliveries (address);
    CREATE INDEX deliveries_message_id ON deliveries (message_id) WHERE message_id IS NOT NULL;
    CREATE TABLE feedback_events (
        received_at TEXT NOT NULL,            -- when statusmail read the report
        event_at    TEXT NOT NULL,            -- when it happened, as the report says
        entry_id    TEXT,                     -- NULL when nothing tells which entry
        address     TEXT NOT NULL,
        kind        TEXT NOT NULL
                    CHECK (kind IN ('hard', 'soft', 'complaint', 'unsubscribe')),
        code        TEXT,                     -- the status code (5.1.1), else the reply code
        diagnostic  TEXT,
        source      TEXT NOT NULL,            -- the report's Message-ID (or its digest)
        suppressed  INTEGER NOT NULL DEFAULT 0,   -- 1: it put the address on the list
        PRIMARY KEY (address, kind, source)   -- a report read twice counts once
    ) WITHOUT ROWID;
    CREATE TABLE bounce_scores (
        address  TEXT NOT NULL,
        day      TEXT NOT NULL,               -- a UTC date: a soft bounce counts once a day
        source   TEXT NOT NULL,               -- the report that counted
        PRIMARY KEY (address, day)
    ) WITHOUT ROWID;
    CREATE TABLE preferences (
        address    TEXT PRIMARY KEY,
        locale     TEXT,                      -- NULL: the list's
        topics     TEXT,                      -- topics split by semicolons, NULL: the list's
        updated_at TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
)
# The preferences are read into memory for a selection up to this many; past it, each
# subscriber's is looked up in the ledger (an indexed read), so memory stays flat.
PREFERENCES_IN_MEMORY = 100_000
SCHEMA_VERSION = len(MIGRATIONS)

STAGING = """
CREATE TEMP TABLE IF NOT EXISTS staged (
    address     TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,   -- selected | invalid | inactive
    email       TEXT NOT NULL,
    ascii_email TEXT,
    name        TEXT NOT NULL,
    locale      TEXT NOT NULL,
    region      TEXT,
    detail      TEXT
)
"""

# What a delivery can end as; a sent row may later turn bounced or complained.
OUTCOMES = ("pending", "sent", "failed", "skipped")
FEEDBACK_OUTCOMES = (DeliveryStatus.BOUNCED.value, DeliveryStatus.COMPLAINED.value)

P = ParamSpec("P")
T = TypeVar("T")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _guarded(
    action: str,
) -> Callable[[Callable[Concatenate[Ledger, P], T]], Callable[Concatenate[Ledger, P], T]]:
    """Turn ``sqlite3.Error`` into ``LedgerError("<file>: cannot <action>: ...")``."""

    def decorate(
        method: Callable[Concatenate[Ledger, P], T],
    ) -> Callable[Concatenate[Ledger, P], T]:
        def wrapper(self: Ledger, *args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return method(self, *args, **kwargs)
            except sqlite3.Error as exc:
                raise self.error(f"cannot {action}: {exc}") from exc

        return functools.update_wrapper(wrapper, method)  # type: ignore[return-value]

    return decorate


@dataclass(frozen=True)
class StagedRow:
    """One row of a selection: ``selected``, or an ``invalid``/``inactive`` list row."""

    kind: str
    address: str
    email: str = ""
    ascii_email: str | None = None
    name: str = ""
    locale: str = ""
    region: str | None = None
    detail: str | None = None

    @classmethod
    def selected(cls, r: Recipient) -> StagedRow:
        return cls("selected", r.address, r.email, r.ascii_email, r.name, r.locale, r.region)


@dataclass(frozen=True)
class Plan:
    """What enqueueing the staged selection would change, worked out before it does."""

    selected: int  # recipients in the staged selection
    new: int  # of those, not yet in the ledger for this entry
    pending: int  # rows pending now, before the enqueue
    removed: int  # pending rows the selection no longer has (left the list or audience)
    excluded: int  # pending rows now unsubscribed, inactive or suppressed
    known: bool  # the ledger has rows for this entry already
    revived: int = 0  # skipped rows (say, an invalid row since fixed) that become pending

    @property
    def pending_after(self) -> int:
        return self.pending - self.removed - self.excluded + self.new + self.revived


class Ledger:
    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        try:
            if readonly:
                self.db = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT, isolation_level=None
                )
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.execute("PRAGMA temp_store=FILE")
            self._identity = self._stat()
            self.migrate(check_only=readonly)
        except sqlite3.Error as exc:
            raise self.error(f"cannot open the ledger: {exc}") from exc
        except OSError as exc:
            raise self.error(f"cannot open the ledger: {exc.strerror or exc}") from exc

    def error(self, message: str) -> LedgerError:
        return LedgerError(f"{self.path}: {message}")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stat(self) -> tuple[int, int]:
        st = os.stat(self.path)
        return st.st_dev, st.st_ino

    def check_same_file(self) -> None:
        """A ledger deleted or replaced under a running process would lose its records:
        stop instead (the open connection would go on writing to the unlinked file)."""
        try:
            same = self._stat() == self._identity
        except OSError:
            same = False
        if not same:
            raise self.error("the ledger file was deleted or replaced while in use")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- schema ------------------------------------------------------------------

    def schema_version(self) -> int:
        exists = self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if not exists:
            return 0
        row = self.db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def migrate(self, *, check_only: bool = False) -> int:
        """Apply the migrations this ledger lacks; refuse one newer than this code."""
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise self.error(
                f"the ledger's schema is version {version}, newer than this statusmail "
                f"knows ({SCHEMA_VERSION}); upgrade statusmail"
            )
        if check_only or version == SCHEMA_VERSION:
            return version
        with self.transaction() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version"
                " (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            for number in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[number - 1].split(";"):
                    if statement.strip():
                        db.execute(statement)
                if number == 1:
                    columns = {row[1] for row in db.execute("PRAGMA table_info(deliveries)")}
                    if "selection" not in columns:
                        db.execute(
                            "ALTER TABLE deliveries ADD COLUMN selection INTEGER NOT NULL DEFAULT 0"
                        )
                db.execute("INSERT INTO schema_version VALUES (?, ?)", (number, now_iso()))
        return SCHEMA_VERSION

    # -- staging and enqueueing a selection -------------------------------------

    @_guarded("stage the selection")
    def stage(self, rows: Iterable[StagedRow]) -> int:
        """Replace this connection's staging area with ``rows``; returns how many.

        The staging table is temporary (this connection's own): writing it takes no
        lock on the ledger, and an exception from ``rows`` leaves the ledger untouched.
        """
        self.db.execute(STAGING)
        self.db.execute("BEGIN")
        try:
            self.db.execute("DELETE FROM temp.staged")
            self.db.executemany(
                "INSERT OR IGNORE INTO temp.staged VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    (
                        r.address,
                        r.kind,
                        r.email,
                        r.ascii_email,
                        r.name,
                        r.locale,
                        r.region,
                        r.detail,
                    )
                    for r in rows
                ),
            )
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        (count,) = self.db.execute("SELECT COUNT(*) FROM temp.staged").fetchone()
        return int(count)

    @_guarded("plan the selection")
    def plan(self, entry_id: str) -> Plan:
        """Compare the staged selection with the entry's rows (reads only)."""
        q = self.db.execute

        def one(sql: str) -> int:
            return int(q(sql, {"e": entry_id}).fetchone()[0])

        selected = one("SELECT COUNT(*) FROM temp.staged WHERE kind = 'selected'")
        new = one(
            "SELECT COUNT(*) FROM temp.staged s WHERE s.kind = 'selected' AND NOT EXISTS"
            " (SELECT 1 FROM deliveries d WHERE d.entry_id = :e AND d.address = s.address)"
        )
        revived = one(
            "SELECT COUNT(*) FROM temp.staged s JOIN deliveries d"
            " ON d.entry_id = :e AND d.address = s.address"
            " WHERE s.kind = 'selected' AND d.status = 'skipped'"
        )
        pending = one("SELECT COUNT(*) FROM deliveries WHERE entry_id = :e AND status = 'pending'")
        not_selected = (
            "FROM deliveries d WHERE d.entry_id = :e AND d.status = 'pending'"
            " AND NOT EXISTS (SELECT 1 FROM temp.staged s"
            " WHERE s.address = d.address AND s.kind = 'selected')"
        )
        excluded = one(
            f"SELECT COUNT(*) {not_selected} AND (d.address IN (SELECT address FROM suppressions)"
            " OR d.address IN (SELECT address FROM temp.staged WHERE kind = 'inactive'))"
        )
        removed = one(f"SELECT COUNT(*) {not_selected}") - excluded
        known = one("SELECT COUNT(*) FROM deliveries WHERE entry_id = :e") > 0
        return Plan(selected, new, pending, removed, excluded, known, revived)

    @_guarded("enqueue the selection")
    def enqueue(self, entry_id: str, digest: str) -> None:
        """Make the staged selection the entry's queue, in short transactions.

        New recipients are added as pending; a skipped row (an invalid row since fixed)
        becomes pending again; pending rows take the subscriber's current name and
        language. Invalid list rows are recorded as skipped. Pending rows the selection
        no longer has (unsubscribed, suppressed, gone from the list or the audience) are
        skipped last. Sent and failed rows are never touched. Interrupted half way, the
        ledger is consistent, and the next run finishes the job.
        """
        stamp = now_iso()
        (last,) = self.db.execute("SELECT COALESCE(MAX(rowid), 0) FROM temp.staged").fetchone()
        for start in range(0, int(last), ENQUEUE_BATCH):
            with self.transaction() as db:
                db.execute(
                    "INSERT INTO deliveries (entry_id, address, email, ascii_email, name,"
                    " locale, region, status, created_at, updated_at)"
                    " SELECT :e, address, email, ascii_email, name, locale, region, 'pending',"
                    " :now, :now FROM temp.staged"
                    " WHERE kind = 'selected' AND rowid > :lo AND rowid <= :hi"
                    " ON CONFLICT (entry_id, address) DO UPDATE SET status = 'pending',"
                    " email = excluded.email, ascii_email = excluded.ascii_email,"
                    " name = excluded.name, locale = excluded.locale, region = excluded.region,"
                    " detail = NULL, updated_at = excluded.updated_at"
                    " WHERE deliveries.status IN ('pending', 'skipped')",
                    {"e": entry_id, "now": stamp, "lo": start, "hi": start + ENQUEUE_BATCH},
                )
                db.execute(
                    "INSERT OR IGNORE INTO deliveries (entry_id, address, email, locale, status,"
                    " detail, created_at, updated_at) SELECT :e, address, address, '', 'skipped',"
                    " detail, :now, :now FROM temp.staged"
                    " WHERE kind = 'invalid' AND rowid > :lo AND rowid <= :hi",
                    {"e": entry_id, "now": stamp, "lo": start, "hi": start + ENQUEUE_BATCH},
                )
        with self.transaction() as db:
            db.execute(
                "UPDATE deliveries SET status = 'skipped', updated_at = :now,"
                " detail = 'no longer selected: unsubscribed, suppressed or out of the list"
                " or audience' WHERE entry_id = :e AND status = 'pending' AND NOT EXISTS"
                " (SELECT 1 FROM temp.staged s WHERE s.address = deliveries.address"
                " AND s.kind = 'selected')",
                {"e": entry_id, "now": stamp},
            )
            db.execute(
                "INSERT INTO entries (entry_id, digest, selected_at) VALUES (?, ?, ?)"
                " ON CONFLICT (entry_id) DO NOTHING",
                (entry_id, digest, stamp),
            )
        self.db.execute("DELETE FROM temp.staged")

    # -- delivery ----------------------------------------------------------------

    @_guarded("read pending recipients")
    def pending_page(
        self, entry_id: str, after: int, size: int, thread: str | None = None
    ) -> list[tuple[int, Recipient]]:
        """Up to ``size`` pending, unsuppressed recipients after ``after`` (a rowid), each
        with the Message-ID the ``thread`` entry's message to them was sent with."""
        rows = self.db.execute(
            "SELECT d.rowid, d.address, d.email, d.ascii_email, d.name, d.locale, d.region,"
            " d.attempts, t.message_id FROM deliveries d LEFT JOIN deliveries t"
            " ON t.entry_id = :thread AND t.address = d.address AND t.status = 'sent'"
            " WHERE d.entry_id = :e AND d.status = 'pending' AND d.rowid > :after"
            " AND d.address NOT IN (SELECT address FROM suppressions)"
            " ORDER BY d.rowid LIMIT :size",
            {"e": entry_id, "after": after, "size": size, "thread": thread},
        ).fetchall()
        return [
            (r[0], Recipient(r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], row=r[0]))
            for r in rows
        ]

    def pending(
        self,
        entry_id: str,
        limit: int | None = None,
        page: int = 1000,
        *,
        thread: str | None = None,
    ) -> Iterator[Recipient]:
        """Pending recipients in selection order, read a page at a time (lists can be huge)."""
        last, left = 0, limit if limit is not None else -1
        while left != 0:
            size = page if left < 0 else min(page, left)
            rows = self.pending_page(entry_id, last, size, thread)
            if not rows:
                return
            for _, recipient in rows:
                yield recipient
            last = rows[-1][0]
            if left > 0:
                left -= len(rows)

    @_guarded("record outcomes")
    def record(self, entry_id: str, outcomes: Iterable[Outcome]) -> None:
        self.check_same_file()
        stamp = now_iso()
        with self.transaction() as db:
            db.executemany(
                "UPDATE deliveries SET status = ?, attempts = ?, code = ?, detail = ?,"
                " message_id = COALESCE(?, message_id), updated_at = ?"
                " WHERE entry_id = ? AND address = ?",
                (
                    (
                        o.status.value,
                        o.attempts,
                        o.code,
                        o.detail,
                        o.message_id,
                        stamp,
                        entry_id,
                        o.address,
                    )
                    for o in outcomes
                ),
            )

    @_guarded("skip suppressed recipients")
    def skip_suppressed(self, entry_id: str) -> int:
        """Pending rows whose address was suppressed meanwhile (say, by the unsubscribe
        endpoint during a run) are skipped, never sent."""
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE deliveries SET status = 'skipped', updated_at = ?,"
                " detail = 'suppressed: ' || (SELECT reason FROM suppressions s"
                " WHERE s.address = deliveries.address)"
                " WHERE entry_id = ? AND status = 'pending'"
                " AND address IN (SELECT address FROM suppressions)",
                (now_iso(), entry_id),
            )
        return cursor.rowcount

    @_guarded("mark the entry complete")
    def mark_complete_if_done(self, entry_id: str) -> bool:
        if self.counts(entry_id)["pending"]:
            return False
        with self.transaction() as db:
            db.execute(
                "UPDATE entries SET completed_at = COALESCE(completed_at, ?) WHERE entry_id = ?",
                (now_iso(), entry_id),
            )
        return True

    @_guarded("read the hourly count")
    def sent_since(self, since: dt.datetime) -> list[float]:
        """When each message sent since ``since`` (any entry) went out, as epoch seconds."""
        rows = self.db.execute(
            "SELECT updated_at FROM deliveries WHERE status = 'sent' AND updated_at >= ?",
            (since.isoformat(timespec="seconds"),),
        )
        return [dt.datetime.fromisoformat(row[0]).timestamp() for row in rows]

    # -- reporting ---------------------------------------------------------------

    @_guarded("count outcomes")
    def counts(self, entry_id: str) -> dict[str, int]:
        result = dict.fromkeys(OUTCOMES, 0)
        for status, count in self.db.execute(
            "SELECT status, COUNT(*) FROM deliveries WHERE entry_id = ? GROUP BY status",
            (entry_id,),
        ):
            result[status] = count
        return result

    @_guarded("count outcomes")
    def breakdown(self, entry_id: str) -> list[tuple[str, str | None, str, int]]:
        """(locale, region, status, count) rows, for the summary table."""
        return list(
            self.db.execute(
                "SELECT locale, region, status, COUNT(*) FROM deliveries WHERE entry_id = ?"
                " GROUP BY locale, region, status ORDER BY locale, region, status",
                (entry_id,),
            )
        )

    @_guarded("list failures")
    def failures(
        self, entry_id: str, limit: int | None = None
    ) -> list[tuple[str, int | None, str | None, int, str]]:
        """(address, code, reply, attempts, when) of each failed recipient."""
        return list(
            self.db.execute(
                "SELECT address, code, detail, attempts, updated_at FROM deliveries"
                " WHERE entry_id = ? AND status = 'failed' ORDER BY address LIMIT ?",
                (entry_id, -1 if limit is None else limit),
            )
        )

    @_guarded("read the entry's state")
    def entry_state(self, entry_id: str) -> tuple[str, str | None] | None:
        """(digest at selection, completed_at) for an entry the ledger knows."""
        row = self.db.execute(
            "SELECT digest, completed_at FROM entries WHERE entry_id = ?", (entry_id,)
        ).fetchone()
        return (row[0], row[1]) if row else None

    @_guarded("look up a locale")
    def last_locale(self, address: str) -> str | None:
        """The locale the ledger last recorded for ``address``, or None."""
        row = self.db.execute(
            "SELECT d.locale FROM deliveries d JOIN entries e ON e.entry_id = d.entry_id"
            " WHERE d.address = ? AND d.locale != ''"
            " ORDER BY e.selected_at DESC, d.rowid DESC LIMIT 1",
            (address,),
        ).fetchone()
        return str(row[0]) if row else None

    # -- suppression -------------------------------------------------------------

    @_guarded("read the suppression list")
    def suppressed(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT address FROM suppressions")}

    @_guarded("suppress an address")
    def suppress(self, address: str, reason: str, detail: str | None = None) -> bool:
        """Suppress ``address``; False if it already was (the first reason is kept)."""
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO suppressions (address, reason, detail, created_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (address) DO NOTHING",
                (address.lower(), reason, detail, now_iso()),
            )
        return cursor.rowcount > 0

    @_guarded("remove a suppression")
    def unsuppress(self, address: str) -> bool:
        with self.transaction() as db:
            cursor = db.execute("DELETE FROM suppressions WHERE address = ?", (address.lower(),))
        return cursor.rowcount > 0

    @_guarded("read the suppression list")
    def suppressions(self) -> list[tuple[str, str, str | None, str]]:
        """(address, reason, detail, created_at), oldest first."""
        return list(
            self.db.execute(
                "SELECT address, reason, detail, created_at FROM suppressions"
                " ORDER BY created_at, address"
            )
        )

    @_guarded("read the suppression list")
    def suppression_evidence(
        self,
    ) -> list[tuple[str, str, str | None, str, str | None, str | None]]:
        """(address, reason, detail, created_at, code, event_at): each suppression with the
        status code and date of the report that caused it, when one did."""
        first = (
            "(SELECT f.{} FROM feedback_events f WHERE f.address = s.address"
            " AND f.suppressed = 1 LIMIT 1)"
        )
        return list(
            self.db.execute(
                "SELECT s.address, s.reason, s.detail, s.created_at,"
                f" {first.format('code')}, {first.format('event_at')}"
                " FROM suppressions s ORDER BY s.created_at, s.address"
            )
        )

    # -- feedback: bounces, complaints and mailto unsubscribes read back ---------

    @_guarded("look up a return path")
    def delivery_by_row(self, row: int) -> tuple[str, str] | None:
        """(entry, address) of the delivery a return path names by its row."""
        found = self.db.execute(
            "SELECT entry_id, address FROM deliveries WHERE rowid = ?", (row,)
        ).fetchone()
        return (found[0], found[1]) if found else None

    @_guarded("look up a Message-ID")
    def delivery_by_message_id(self, message_id: str) -> tuple[str, str] | None:
        """(entry, address) of the message sent with ``message_id``."""
        row = self.db.execute(
            "SELECT entry_id, address FROM deliveries WHERE message_id = ? LIMIT 1",
            (message_id,),
        ).fetchone()
        return (row[0], row[1]) if row else None

    @_guarded("look up an address")
    def last_entry_sent(self, address: str) -> str | None:
        """The entry most recently sent to ``address``, or None if none ever was."""
        row = self.db.execute(
            "SELECT entry_id FROM deliveries WHERE address = ?"
            " AND status IN ('sent', 'bounced', 'complained')"
            " ORDER BY updated_at DESC, rowid DESC LIMIT 1",
            (address.lower(),),
        ).fetchone()
        return str(row[0]) if row else None

    @_guarded("read the feedback events")
    def has_feedback(self, source: str, address: str, kind: str) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM feedback_events WHERE address = ? AND kind = ? AND source = ?",
            (address, kind, source),
        ).fetchone()
        return row is not None

    @_guarded("read the bounce score")
    def soft_days(self, address: str, since: dt.date) -> set[str]:
        """The days (UTC, ISO) since ``since`` on which a soft bounce of ``address`` counted."""
        return {
            row[0]
            for row in self.db.execute(
                "SELECT day FROM bounce_scores WHERE address = ? AND day >= ?",
                (address, since.isoformat()),
            )
        }

    @_guarded("record feedback")
    def record_feedback(self, events: Iterable[FeedbackEvent]) -> list[bool]:
        """Record the events one report gave, with their effects, in one transaction; an
        event already recorded (the same report read again) changes nothing. Returns,
        per event, whether it was new."""
        self.check_same_file()
        stamp = now_iso()
        new: list[bool] = []
        with self.transaction() as db:
            for e in events:
                cursor = db.execute(
                    "INSERT INTO feedback_events (received_at, event_at, entry_id, address,"
                    " kind, code, diagnostic, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (address, kind, source) DO NOTHING",
                    (
                        stamp,
                        e.event_at,
                        e.entry_id,
                        e.address,
                        e.kind,
                        e.code,
                        e.diagnostic,
                        e.source,
                    ),
                )
                new.append(cursor.rowcount > 0)
                if not new[-1]:
                    continue
                if e.score_day:
                    db.execute(
                        "INSERT INTO bounce_scores (address, day, source) VALUES (?, ?, ?)"
                        " ON CONFLICT (address, day) DO NOTHING",
                        (e.address, e.score_day, e.source),
                    )
                if e.suppress:
                    added = db.execute(
                        "INSERT INTO suppressions (address, reason, detail, created_at)"
                        " VALUES (?, ?, ?, ?) ON CONFLICT (address) DO NOTHING",
                        (e.address, e.suppress, e.evidence, stamp),
                    )
                    if added.rowcount > 0:  # this report is the suppression's evidence
                        db.execute(
                            "UPDATE feedback_events SET suppressed = 1"
                            " WHERE address = ? AND kind = ? AND source = ?",
                            (e.address, e.kind, e.source),
                        )
                if e.mark and e.entry_id:
                    db.execute(
                        "UPDATE deliveries SET status = ?, detail = ?, updated_at = ?"
                        " WHERE entry_id = ? AND address = ? AND status = 'sent'",
                        (e.mark, e.evidence, stamp, e.entry_id, e.address),
                    )
        return new

    @_guarded("summarise the feedback")
    def feedback_counts(self, entry_id: str) -> dict[str, int]:
        """Events per kind recorded for ``entry_id``."""
        return dict(
            self.db.execute(
                "SELECT kind, COUNT(*) FROM feedback_events WHERE entry_id = ? GROUP BY kind",
                (entry_id,),
            ).fetchall()
        )

    # -- preferences --------------------------------------------------------------

    @_guarded("save a preference")
    def set_preference(self, address: str, preference: Preference) -> None:
        """Store what was chosen; a field left None keeps what was stored before."""
        topics = None if preference.topics is None else ";".join(sorted(preference.topics))
        with self.transaction() as db:
            db.execute(
                "INSERT INTO preferences (address, locale, topics, updated_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (address) DO UPDATE SET"
                " locale = COALESCE(excluded.locale, locale),"
                " topics = COALESCE(excluded.topics, topics), updated_at = excluded.updated_at",
                (address.lower(), preference.locale, topics, now_iso()),
            )

    @_guarded("read a preference")
    def preference(self, address: str) -> Preference | None:
        row = self.db.execute(
            "SELECT locale, topics FROM preferences WHERE address = ?", (address.lower(),)
        ).fetchone()
        return _preference(row[0], row[1]) if row else None

    @_guarded("read the preferences")
    def preferences(self) -> Iterator[tuple[str, Preference, str]]:
        """(address, preference, updated_at) of everyone who chose, by address."""
        for address, locale, topics, updated in self.db.execute(
            "SELECT address, locale, topics, updated_at FROM preferences ORDER BY address"
        ):
            yield address, _preference(locale, topics), updated

    @contextmanager
    def preference_lookup(self) -> Iterator[Callable[[str], Preference | None]]:
        """A lookup of the stored preferences for one selection: a dict read once when
        there are at most ``PREFERENCES_IN_MEMORY`` of them, else an indexed read per
        address on a read-only connection of its own (lists can hold a million rows)."""
        try:
            if self.schema_version() < 3:
                yield lambda _address: None
                return
            (count,) = self.db.execute("SELECT COUNT(*) FROM preferences").fetchone()
            if count <= PREFERENCES_IN_MEMORY:
                stored = {
                    address: _preference(locale, topics)
                    for address, locale, topics in self.db.execute(
                        "SELECT address, locale, topics FROM preferences"
                    )
                }
                yield stored.get
                return
            reader = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT)
        except sqlite3.Error as exc:
            raise self.error(f"cannot read the preferences: {exc}") from exc

        def lookup(address: str) -> Preference | None:
            try:
                row = reader.execute(
                    "SELECT locale, topics FROM preferences WHERE address = ?", (address,)
                ).fetchone()
            except sqlite3.Error as exc:
                raise self.error(f"cannot read the preferences: {exc}") from exc
            return _preference(row[0], row[1]) if row else None

        try:
            yield lookup
        finally:
            reader.close()


@dataclass(frozen=True)
class FeedbackEvent:
    """One recipient's part of a report read back, and what it does to the ledger."""

    kind: str  # FeedbackKind
    address: str
    entry_id: str | None
    code: str | None
    diagnostic: str | None
    source: str  # the report's Message-ID: the same report read twice counts once
    event_at: str
    suppress: str | None = None  # suppress the address for this reason
    evidence: str | None = None  # the suppression's (and the delivery row's) detail
    mark: str | None = None  # the entry's sent row becomes this (bounced, complained)
    score_day: str | None = None  # a soft bounce counted on this day


def _preference(locale: str | None, topics: str | None) -> Preference:
    return Preference(
        locale, None if topics is None else frozenset(t for t in topics.split(";") if t)
    )


@contextmanager
def read_preferences(path: Path) -> Iterator[Callable[[str], Preference | None]]:
    """The stored preferences of the ledger at ``path``, read only (dry runs)."""
    if not path.exists():
        yield lambda _address: None
        return
    with Ledger(path, readonly=True) as ledger, ledger.preference_lookup() as lookup:
        yield lookup


def read_suppressions(path: Path) -> set[str]:
    """The suppression list of the ledger at ``path``, read only; empty if there is none."""
    if not path.exists():
        return set()
    with Ledger(path, readonly=True) as ledger:
        return ledger.suppressed() if ledger.schema_version() else set()


@contextmanager
def run_lock(ledger_path: Path, name: str) -> Iterator[None]:
    """An exclusive lock per ledger and name; the kernel drops it when a process dies."""
    lock_path = ledger_path.with_name(f"{ledger_path.name}.{name}.lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise LedgerError(
            f"{lock_path}: cannot create the run lock: {exc.strerror or exc}"
        ) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise LedgerError(
                f"{lock_path}: another statusmail run holds this lock ({name}); "
                "wait for it to finish or stop it first"
            ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)
