"""The SQLite ledger: who should get which entry, and what happened when we tried.

One row per (entry, recipient): ``pending`` → ``sent`` | ``failed`` | ``skipped``. The
selection step writes the whole audience as ``pending`` before anything is sent, so the
ledger is also the queue: a re-run simply drains what is still pending. A row becomes
``sent`` only after the transport accepted the message.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from statusmail.errors import LedgerError

SCHEMA = """
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
    selection   INTEGER NOT NULL DEFAULT 0,  -- the latest selection that chose this row
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (entry_id, address)
);
CREATE INDEX IF NOT EXISTS deliveries_status ON deliveries (entry_id, status);
CREATE TABLE IF NOT EXISTS suppressions (
    address    TEXT PRIMARY KEY,
    reason     TEXT NOT NULL CHECK (reason IN ('unsubscribed', 'bounced', 'complained', 'manual')),
    detail     TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    entry_id     TEXT PRIMARY KEY,
    digest       TEXT NOT NULL,
    selected_at  TEXT NOT NULL,
    completed_at TEXT
);
"""

OUTCOMES = ("sent", "failed", "pending", "skipped")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class Recipient:
    """A ledger row as the delivery step needs it."""

    address: str
    email: str
    ascii_email: str | None
    name: str
    locale: str
    region: str | None
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class Outcome:
    address: str
    status: str  # sent | failed | pending (transient, attempts left) | skipped
    attempts: int
    code: int | None = None
    detail: str | None = None
    message_id: str | None = None


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(deliveries)")}
            if "selection" not in columns:
                self.db.execute(
                    "ALTER TABLE deliveries ADD COLUMN selection INTEGER NOT NULL DEFAULT 0"
                )
        except sqlite3.Error as exc:
            raise LedgerError(f"{path}: cannot open the ledger: {exc}") from exc

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- selection ---------------------------------------------------------------

    def mark_selected(self, entry_id: str, digest: str) -> None:
        self.db.execute(
            "INSERT INTO entries (entry_id, digest, selected_at) VALUES (?, ?, ?)"
            " ON CONFLICT (entry_id) DO NOTHING",
            (entry_id, digest, now_iso()),
        )

    def add_pending(
        self,
        entry_id: str,
        recipients: Iterable[Recipient],
        before_commit: Callable[[int], None] | None = None,
    ) -> int:
        """Make this selection the entry's queue, in one transaction.

        New recipients are added as pending; a row that was skipped (an invalid row since
        fixed) becomes pending again; pending rows keep their attempts and take the
        subscriber's current name and language. Pending rows this selection did not
        choose (unsubscribed, suppressed, gone from the list or the audience since) are
        skipped. Sent and failed rows are never touched. ``before_commit(new)`` may raise
        to roll it all back. Returns how many recipients are new.
        """
        stamp = now_iso()
        with self.transaction() as db:
            (selection,) = db.execute(
                "SELECT COALESCE(MAX(selection), 0) + 1 FROM deliveries WHERE entry_id = ?",
                (entry_id,),
            ).fetchone()
            (before,) = db.execute(
                "SELECT COUNT(*) FROM deliveries WHERE entry_id = ?", (entry_id,)
            ).fetchone()
            db.executemany(
                "INSERT INTO deliveries (entry_id, address, email, ascii_email, name, locale,"
                " region, status, selection, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)"
                " ON CONFLICT (entry_id, address) DO UPDATE SET status = 'pending',"
                " email = excluded.email, ascii_email = excluded.ascii_email,"
                " name = excluded.name, locale = excluded.locale, region = excluded.region,"
                " selection = excluded.selection, detail = NULL,"
                " updated_at = excluded.updated_at"
                " WHERE deliveries.status IN ('pending', 'skipped')",
                (
                    (
                        entry_id,
                        r.address,
                        r.email,
                        r.ascii_email,
                        r.name,
                        r.locale,
                        r.region,
                        selection,
                        stamp,
                        stamp,
                    )
                    for r in recipients
                ),
            )
            db.execute(
                "UPDATE deliveries SET status = 'skipped', updated_at = ?,"
                " detail = 'no longer selected: unsubscribed, suppressed or out of the audience'"
                " WHERE entry_id = ? AND status = 'pending' AND selection <> ?",
                (stamp, entry_id, selection),
            )
            (after,) = db.execute(
                "SELECT COUNT(*) FROM deliveries WHERE entry_id = ?", (entry_id,)
            ).fetchone()
            new = int(after - before)
            if before_commit is not None:
                before_commit(new)
            return new

    def add_skipped(self, entry_id: str, rows: Iterable[tuple[str, str]]) -> None:
        """Record (address, reason) as skipped unless the address already has a row."""
        stamp = now_iso()
        with self.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO deliveries (entry_id, address, email, locale, status,"
                " detail, created_at, updated_at) VALUES (?, ?, ?, '', 'skipped', ?, ?, ?)",
                ((entry_id, address, address, reason, stamp, stamp) for address, reason in rows),
            )

    # -- delivery ----------------------------------------------------------------

    def pending(
        self, entry_id: str, limit: int | None = None, page: int = 1000
    ) -> Iterator[Recipient]:
        """Pending recipients in selection order, read a page at a time (lists can be huge)."""
        last, left = 0, limit if limit is not None else -1
        while left != 0:
            size = page if left < 0 else min(page, left)
            rows = self.db.execute(
                "SELECT rowid, address, email, ascii_email, name, locale, region, attempts"
                " FROM deliveries WHERE entry_id = ? AND status = 'pending' AND rowid > ?"
                " AND address NOT IN (SELECT address FROM suppressions)"
                " ORDER BY rowid LIMIT ?",
                (entry_id, last, size),
            ).fetchall()
            if not rows:
                return
            for row in rows:
                yield Recipient(*row[1:])
            last = rows[-1][0]
            if left > 0:
                left -= len(rows)

    def record(self, entry_id: str, outcomes: Iterable[Outcome]) -> None:
        stamp = now_iso()
        with self.transaction() as db:
            db.executemany(
                "UPDATE deliveries SET status = ?, attempts = ?, code = ?, detail = ?,"
                " message_id = COALESCE(?, message_id), updated_at = ?"
                " WHERE entry_id = ? AND address = ?",
                (
                    (
                        o.status,
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

    def skip_suppressed(self, entry_id: str) -> int:
        """Pending rows whose address was suppressed meanwhile (say, by the unsubscribe
        endpoint during a run) are skipped, never sent."""
        cursor = self.db.execute(
            "UPDATE deliveries SET status = 'skipped', updated_at = ?,"
            " detail = 'suppressed: ' || (SELECT reason FROM suppressions s"
            " WHERE s.address = deliveries.address)"
            " WHERE entry_id = ? AND status = 'pending'"
            " AND address IN (SELECT address FROM suppressions)",
            (now_iso(), entry_id),
        )
        return cursor.rowcount

    def mark_complete_if_done(self, entry_id: str) -> bool:
        if self.counts(entry_id)["pending"]:
            return False
        self.db.execute(
            "UPDATE entries SET completed_at = COALESCE(completed_at, ?) WHERE entry_id = ?",
            (now_iso(), entry_id),
        )
        return True

    def sent_since(self, since: dt.datetime) -> list[float]:
        """When each message sent since ``since`` (any entry) went out, as epoch seconds."""
        rows = self.db.execute(
            "SELECT updated_at FROM deliveries WHERE status = 'sent' AND updated_at >= ?",
            (since.isoformat(timespec="seconds"),),
        )
        return [dt.datetime.fromisoformat(row[0]).timestamp() for row in rows]

    # -- reporting ---------------------------------------------------------------

    def counts(self, entry_id: str) -> dict[str, int]:
        result = dict.fromkeys(OUTCOMES, 0)
        for status, count in self.db.execute(
            "SELECT status, COUNT(*) FROM deliveries WHERE entry_id = ? GROUP BY status",
            (entry_id,),
        ):
            result[status] = count
        return result

    def breakdown(self, entry_id: str) -> list[tuple[str, str | None, str, int]]:
        """(locale, region, status, count) rows, for the summary table."""
        return list(
            self.db.execute(
                "SELECT locale, region, status, COUNT(*) FROM deliveries WHERE entry_id = ?"
                " GROUP BY locale, region, status ORDER BY locale, region, status",
                (entry_id,),
            )
        )

    def failures(self, entry_id: str) -> list[tuple[str, int | None, str | None]]:
        return list(
            self.db.execute(
                "SELECT address, code, detail FROM deliveries"
                " WHERE entry_id = ? AND status = 'failed' ORDER BY address",
                (entry_id,),
            )
        )

    def entry_state(self, entry_id: str) -> tuple[str, str | None] | None:
        """(digest at selection, completed_at) for an entry the ledger knows."""
        row = self.db.execute(
            "SELECT digest, completed_at FROM entries WHERE entry_id = ?", (entry_id,)
        ).fetchone()
        return (row[0], row[1]) if row else None

    # -- suppression -------------------------------------------------------------

    def suppressed(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT address FROM suppressions")}

    def suppress(self, address: str, reason: str, detail: str | None = None) -> bool:
        """Suppress ``address``; False if it already was (the first reason is kept)."""
        cursor = self.db.execute(
            "INSERT INTO suppressions (address, reason, detail, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (address) DO NOTHING",
            (address.lower(), reason, detail, now_iso()),
        )
        return cursor.rowcount > 0

    def unsuppress(self, address: str) -> bool:
        cursor = self.db.execute("DELETE FROM suppressions WHERE address = ?", (address.lower(),))
        return cursor.rowcount > 0

    def suppressions(self) -> list[tuple[str, str, str | None, str]]:
        """(address, reason, detail, created_at), oldest first."""
        return list(
            self.db.execute(
                "SELECT address, reason, detail, created_at FROM suppressions"
                " ORDER BY created_at, address"
            )
        )


@contextmanager
def run_lock(ledger_path: Path, name: str) -> Iterator[None]:
    """An exclusive lock per ledger and name; the kernel drops it when a process dies."""
    lock_path = ledger_path.with_name(f"{ledger_path.name}.{name}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
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
