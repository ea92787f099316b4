"""The ledger: who should get which entry, and what happened when we tried.

One row per (entry, recipient): ``pending`` → ``sent`` | ``failed`` | ``skipped``. A
selection streams the audience in through the connection's own staging table, a batch
at a time, each batch made the entry's queue in a short transaction and stamped with the
selection's *generation*; delivery takes (claims) pending rows of the current generation
as soon as they are there. When the selection is over, pending rows it did not choose are
skipped (or held, when the list shrank more than the guard allows). A row becomes
``sent`` only after the transport accepted the message.

The same statements run on SQLite and PostgreSQL (``database.py``); every driver error
leaves as a ``LedgerError`` naming the file or the server.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from statusmail.domain import DeliveryStatus, Outcome, Preference, Recipient
from statusmail.errors import LedgerError, StatusmailError
from statusmail.ledger import queries
from statusmail.ledger.database import (
    RETRIES,
    PostgresDatabase,
    SqliteDatabase,
    backoff,
    connect,
    describe,
    driver_errors,
    first,
    transient,
)
from statusmail.ledger.schema import MIGRATIONS, SCHEMA_VERSION, statements
from statusmail.project.config import is_url

ENQUEUE_BATCH = 2_000
# What a delivery can end as; a sent row may later turn bounced or complained.
OUTCOMES = ("pending", "sent", "failed", "skipped")
FEEDBACK_OUTCOMES = (DeliveryStatus.BOUNCED.value, DeliveryStatus.COMPLAINED.value)
# The preferences are read into memory for a selection up to this many; past it, each
# subscriber's is looked up in the ledger (an indexed read), so memory stays flat.
PREFERENCES_IN_MEMORY = 100_000

STAGING = """
CREATE TEMP TABLE IF NOT EXISTS staged (
    pos         INTEGER PRIMARY KEY,
    address     TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,   -- selected | invalid | inactive
    email       TEXT NOT NULL,
    ascii_email TEXT,
    name        TEXT NOT NULL,
    locale      TEXT NOT NULL,
    region      TEXT,
    detail      TEXT
)
"""

P = ParamSpec("P")
T = TypeVar("T")
# Outcomes of claimed rows, each with the epoch of its row's claim (None: not held, so
# recorded nowhere): recorded only where that claim still stands.
Fenced = Mapping[Outcome, int | None]


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _guarded(
    action: str,
) -> Callable[[Callable[Concatenate[Ledger, P], T]], Callable[Concatenate[Ledger, P], T]]:
    """Turn a driver error into ``LedgerError("<ledger>: cannot <action>: ...")``."""

    def decorate(
        method: Callable[Concatenate[Ledger, P], T],
    ) -> Callable[Concatenate[Ledger, P], T]:
        def wrapper(self: Ledger, *args: P.args, **kwargs: P.kwargs) -> T:
            for attempt in range(RETRIES + 1):
                try:
                    return method(self, *args, **kwargs)
                except driver_errors() as exc:
                    # Run again only what was a whole transaction: one nested in a
                    # caller's is retried by the caller, with the rest of it.
                    if attempt < RETRIES and transient(exc) and not self.in_transaction():
                        time.sleep(backoff(attempt))
                        continue
                    raise self.error(f"cannot {action}: {exc}") from exc
            raise AssertionError("unreachable")

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
    """What a selection changes, compared with the entry's rows before it."""

    selected: int  # recipients in the selection
    new: int  # of those, not yet in the ledger for this entry
    pending: int  # rows pending before the selection
    removed: int  # pending rows the selection no longer has (left the list or audience)
    excluded: int  # pending rows now unsubscribed, inactive or suppressed
    known: bool  # the ledger had rows for this entry already
    revived: int = 0  # skipped rows (say, an invalid row since fixed) that become pending

    @property
    def pending_after(self) -> int:
        return self.pending - self.removed - self.excluded + self.new + self.revived


# The SQLSTATE of a write of the selection that the server ended because its sender
# stood still inside it past the lease (idle_in_transaction_session_timeout).
SELECTION_ENDED = "25P03"


class SelectionLost(StatusmailError):
    """Another sender took over this selection of the entry (its lease ran out while
    this one stood still): the writes this one would still make are fenced off."""

    def __init__(self, entry_id: str, generation: int) -> None:
        self.entry_id = entry_id
        self.generation = generation
        super().__init__(
            f"{entry_id}: another sender has taken over the selection "
            f"(generation {generation} is no longer the current one)"
        )


class Ledger:
    def __init__(self, target: str | Path, *, readonly: bool = False) -> None:
        self.target = target
        self.where = describe(target)
        self.readonly = readonly
        self.database = connect(target, readonly=readonly)
        self.dialect = self.database.dialect.name
        self._staged = 0
        self._analyzed = 0  # staged rows when PostgreSQL last analyzed deliveries
        try:
            self._migrate(check_only=readonly)
        except driver_errors() as exc:
            self.database.close()
            raise self.error(f"cannot open the ledger: {exc}") from exc
        except LedgerError:
            self.database.close()
            raise

    @property
    def path(self) -> Path | None:
        return None if is_url(self.target) else Path(self.target)

    def error(self, message: str) -> LedgerError:
        return LedgerError(f"{self.where}: {message}")

    def close(self) -> None:
        self.database.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _q(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        return self.database.execute(sql, params)

    def _one(self, sql: str, **params: Any) -> Any:
        return first(self.database.execute(sql, params))

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.database.transaction():
            yield

    def check_same_file(self) -> None:
        self.database.check_same_file()

    def in_transaction(self) -> bool:
        return self.database.in_transaction()

    # -- schema ------------------------------------------------------------------

    def schema_version(self) -> int:
        if not self.database.table_exists("schema_version"):
            return 0
        return int(self._one("SELECT MAX(version) FROM schema_version") or 0)

    @_guarded("migrate the schema")
    def migrate(self) -> int:
        """Apply the migrations this ledger lacks; refuse one newer than this code."""
        return self._migrate(check_only=False)

    def _migrate(self, *, check_only: bool) -> int:
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise self.error(
                f"the ledger's schema is version {version}, newer than this statusmail "
                f"knows ({SCHEMA_VERSION}); upgrade statusmail"
            )
        if check_only or version == SCHEMA_VERSION:
            return version
        with self.transaction():
            # One migrating process at a time (SQLite: BEGIN IMMEDIATE; PostgreSQL: an
            # advisory lock); the others wait here, then find it done.
            if isinstance(self.database, PostgresDatabase):
                self._q("SELECT pg_advisory_xact_lock(7356283701)")
            version = self.schema_version()
            self._q(
                "CREATE TABLE IF NOT EXISTS schema_version"
                " (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            for number in range(version + 1, SCHEMA_VERSION + 1):
                for statement in statements(MIGRATIONS[number - 1], self.dialect):
                    self._q(statement)
                legacy = number == 1 and isinstance(self.database, SqliteDatabase)
                if legacy and "selection" not in self.database.columns("deliveries"):
                    self._q(
                        "ALTER TABLE deliveries ADD COLUMN selection INTEGER NOT NULL DEFAULT 0"
                    )
                self._q("INSERT INTO schema_version VALUES (:n, :at)", n=number, at=now_iso())
        return SCHEMA_VERSION

    # -- selecting: staging, batches, the generation ---------------------------------

    @_guarded("empty the staging area")
    def reset_staging(self) -> None:
        self._q(STAGING)
        self._q("DELETE FROM staged")
        self._staged = 0

    @_guarded("stage the selection")
    def stage(self, rows: Iterable[StagedRow]) -> int:
        """Stage ``rows`` (appended to what this connection staged since ``begin``); the
        staging table is temporary, this connection's own: writing it takes no lock on
        the ledger, and an exception from ``rows`` leaves the ledger untouched."""
        self._q(STAGING)
        with self.database.local_transaction():
            start = self._staged
            self.database.executemany(
                "INSERT INTO staged VALUES (:pos, :address, :kind, :email, :ascii_email,"
                " :name, :locale, :region, :detail) ON CONFLICT (address) DO NOTHING",
                (self._staged_params(r) for r in rows),
            )
        return self._staged - start

    def _staged_params(self, row: StagedRow) -> dict[str, Any]:
        self._staged += 1
        return {"pos": self._staged, **row.__dict__}

    @_guarded("start a selection")
    def begin_selection(
        self, entry_id: str, digest: str, selector: str | None = None, lease: float = 0.0
    ) -> int:
        """A new generation of the entry's selection (the rows its selection enqueues
        carry it; delivery takes only rows of the current one), leased to ``selector``
        for ``lease`` seconds whoever held it before: for one run of the entry at a time
        (SQLite's run lock), where a lease left by a crashed run means nothing."""
        take = queries.TAKE_SELECTION_ANYWAY
        return int(first(self._new_selection(take, entry_id, digest, selector, lease)))

    @_guarded("take the selection")
    def take_selection(self, entry_id: str, digest: str, selector: str, lease: float) -> int | None:
        """A new generation of the entry's selection, leased to ``selector`` for
        ``lease`` seconds, unless another sender's lease of it still runs (None)."""
        take = queries.TAKE_SELECTION[self.dialect]
        rows = self._new_selection(take, entry_id, digest, selector, lease)
        return int(rows[0][0]) if rows else None

    def _new_selection(
        self, take: str, entry_id: str, digest: str, selector: str | None, lease: float
    ) -> list[tuple[Any, ...]]:
        with self.transaction():
            # Only where there is no row: a conflicting one would be waited for while a
            # selector stands still inside a write of it.
            self._q(
                "INSERT INTO entries (entry_id, digest, selected_at) SELECT :e, :d, :at"
                " WHERE NOT EXISTS (SELECT 1 FROM entries WHERE entry_id = :e)"
                " ON CONFLICT (entry_id) DO NOTHING",
                e=entry_id,
                d=digest,
                at=now_iso(),
            )
            return self._q(take, e=entry_id, me=selector, lease=lease)

    @_guarded("read the selection's lease")
    def selection_leased(self, entry_id: str) -> bool:
        """Whether a sender's lease of the entry's selection still runs."""
        return bool(self._one(queries.SELECTION_LEASED, e=entry_id))

    @_guarded("let the selection go")
    def release_selection(self, entry_id: str, generation: int) -> None:
        """Nobody holds the lease of this selection now (a run that stops selecting
        lets the others take it over at once); nothing if it was taken over already."""
        self._q(queries.RELEASE_SELECTION, e=entry_id, g=generation)

    def _bound_idle(self, lease: float | None) -> None:
        """In a selection's write on PostgreSQL: the server ends it (and so its lock of
        the entry's row, which a takeover needs) should its sender stand still inside
        it longer than ``lease`` (the sender then gets ``SELECTION_ENDED``)."""
        if lease is not None and self.dialect == "postgresql":
            idle = max(1000, int(lease * 1000))
            self._q(f"SET LOCAL idle_in_transaction_session_timeout = {idle}")

    def _fence(self, entry_id: str, generation: int, lease: float | None) -> None:
        """First in a selection's write: raise ``SelectionLost`` when the entry's
        selection is no longer ``generation`` (another sender took it over); with a
        ``lease``, its lease is renewed for that long, and the write's idle is bounded."""
        self._bound_idle(lease)
        if lease is None:
            rows = self._q(queries.SELECTION_HELD[self.dialect], e=entry_id, g=generation)
        else:
            rows = self._q(queries.RENEW_SELECTION, e=entry_id, g=generation, lease=lease)
        if not rows:
            raise SelectionLost(entry_id, generation)

    @_guarded("plan the selection")
    def plan(self, entry_id: str) -> Plan:
        """Compare the staged selection with the entry's rows (reads only)."""

        def one(sql: str) -> int:
            return int(self._one(sql, e=entry_id) or 0)

        selected = one("SELECT COUNT(*) FROM staged WHERE kind = 'selected'")
        new = one(
            "SELECT COUNT(*) FROM staged s WHERE s.kind = 'selected' AND NOT EXISTS"
            " (SELECT 1 FROM deliveries d WHERE d.entry_id = :e AND d.address = s.address)"
        )
        revived = one(
            "SELECT COUNT(*) FROM staged s JOIN deliveries d"
            " ON d.entry_id = :e AND d.address = s.address"
            " WHERE s.kind = 'selected' AND d.status = 'skipped'"
        )
        pending = one("SELECT COUNT(*) FROM deliveries WHERE entry_id = :e AND status = 'pending'")
        not_selected = (
            "FROM deliveries d WHERE d.entry_id = :e AND d.status = 'pending'"
            " AND NOT EXISTS (SELECT 1 FROM staged s"
            " WHERE s.address = d.address AND s.kind = 'selected')"
        )
        excluded = one(
            f"SELECT COUNT(*) {not_selected} AND (d.address IN (SELECT address FROM suppressions)"
            " OR d.address IN (SELECT address FROM staged WHERE kind = 'inactive'))"
        )
        removed = one(f"SELECT COUNT(*) {not_selected}") - excluded
        known = one("SELECT COUNT(*) FROM deliveries WHERE entry_id = :e") > 0
        return Plan(selected, new, pending, removed, excluded, known, revived)

    @_guarded("enqueue the selection")
    def enqueue(
        self, entry_id: str, generation: int, after: int = 0, *, lease: float | None = None
    ) -> tuple[int, int]:
        """Make the staged rows after position ``after`` part of the entry's queue, in
        short transactions, each fenced by the selection's ``generation`` (and renewing
        its lease for ``lease`` seconds, if given): raises ``SelectionLost`` once another
        sender has taken the selection over.

        New recipients are added as pending; a skipped row (an invalid row since fixed)
        becomes pending again; pending rows take the subscriber's current name and
        language. All of them carry ``generation``: delivery takes only rows of the
        current selection. Invalid list rows are recorded as skipped. Sent and failed
        rows are never touched. Returns the last position enqueued and how many rows
        became pending that were not.
        """
        last = int(self._one("SELECT COALESCE(MAX(pos), 0) FROM staged") or 0)
        stamp = now_iso()
        added = 0
        for start in range(after, last, ENQUEUE_BATCH):
            bounds = {"e": entry_id, "g": generation, "now": stamp}
            bounds |= {"lo": start, "hi": start + ENQUEUE_BATCH}
            self._keep_statistics(start)
            with self.transaction():
                self._fence(entry_id, generation, lease)
                added += int(
                    self.database.execute(
                        "SELECT COUNT(*) FROM staged s WHERE s.kind = 'selected'"
                        " AND s.pos > :lo AND s.pos <= :hi AND NOT EXISTS (SELECT 1"
                        " FROM deliveries d WHERE d.entry_id = :e AND d.address = s.address"
                        " AND d.status <> 'skipped')",
                        bounds,
                    )[0][0]
                )
                self.database.execute(
                    "INSERT INTO deliveries (entry_id, address, email, ascii_email, name,"
                    " locale, region, status, selection, created_at, updated_at)"
                    " SELECT :e, address, email, ascii_email, name, locale, region, 'pending',"
                    " :g, :now, :now FROM staged"
                    " WHERE kind = 'selected' AND pos > :lo AND pos <= :hi"
                    " ON CONFLICT (entry_id, address) DO UPDATE SET status = 'pending',"
                    " email = excluded.email, ascii_email = excluded.ascii_email,"
                    " name = excluded.name, locale = excluded.locale, region = excluded.region,"
                    " selection = excluded.selection, detail = NULL,"
                    " updated_at = excluded.updated_at"
                    " WHERE deliveries.status IN ('pending', 'skipped')",
                    bounds,
                )
                self.database.execute(
                    "INSERT INTO deliveries (entry_id, address, email, locale, status,"
                    " detail, created_at, updated_at) SELECT :e, address, address, '', 'skipped',"
                    " detail, :now, :now FROM staged"
                    " WHERE kind = 'invalid' AND pos > :lo AND pos <= :hi"
                    " ON CONFLICT (entry_id, address) DO NOTHING",
                    bounds,
                )
        return last, added

    def _keep_statistics(self, enqueued: int) -> None:
        """PostgreSQL plans the lookup of each staged row by the table's statistics, and
        an entry they do not know yet looks like one row: it would then read all of the
        entry's rows for every staged row (quadratic in the list). Analyzed each time
        the selection has doubled; skipped when autovacuum holds the table."""
        if self.dialect == "postgresql" and enqueued >= max(200, 2 * self._analyzed):
            self._q("ANALYZE (SKIP_LOCKED) deliveries")
            self._analyzed = enqueued

    @_guarded("finish the selection")
    def finish_selection(
        self,
        entry_id: str,
        generation: int,
        list_rows: int,
        *,
        skip_removed: bool,
        lease: float | None = None,
        basis: str | None = None,
    ) -> None:
        """The selection is complete: pending rows it did not choose are skipped (those
        who left the list or the audience only when ``skip_removed``: else they stay
        pending, held by the shrink guard), the generation is the current one, and
        nobody holds its lease. Raises ``SelectionLost`` (changing nothing) when another
        sender has taken the selection over: its rows carry a newer generation.
        ``basis`` says what it was made from (``selection_basis``)."""
        self._q(STAGING)  # a selection that staged nothing has none yet
        stamp = now_iso()
        not_chosen = "WHERE entry_id = :e AND status = 'pending' AND selection <> :g"
        excluded = (
            "(address IN (SELECT address FROM suppressions)"
            " OR address IN (SELECT address FROM staged WHERE kind = 'inactive'))"
        )
        with self.transaction():
            # The fence: the selection is still this one (and nobody takes it over until
            # this commits).
            self._bound_idle(lease)
            if not self._q(
                "UPDATE entries SET selected_generation = :g, list_rows = :rows,"
                " selector = NULL, selector_until = NULL, selected_from = :basis"
                " WHERE entry_id = :e AND generation = :g RETURNING generation",
                e=entry_id,
                g=generation,
                rows=list_rows,
                basis=basis,
            ):
                raise SelectionLost(entry_id, generation)
            self._q(
                "UPDATE deliveries SET status = 'skipped', updated_at = :now,"
                " detail = 'no longer selected: unsubscribed or suppressed'"
                f" {not_chosen} AND {excluded}",
                e=entry_id,
                g=generation,
                now=stamp,
            )
            if skip_removed:
                self._q(
                    "UPDATE deliveries SET status = 'skipped', updated_at = :now,"
                    " detail = 'no longer selected: gone from the list or the audience'"
                    f" {not_chosen}",
                    e=entry_id,
                    g=generation,
                    now=stamp,
                )
        self._q("DELETE FROM staged")
        self._staged = 0

    @_guarded("count the removals")
    def removals(self, entry_id: str, generation: int) -> int:
        """Pending rows this selection did not choose that left the list or the
        audience (not unsubscribed or suppressed): what the shrink guard counts."""
        self._q(STAGING)
        not_chosen = (
            "FROM deliveries WHERE entry_id = :e AND status = 'pending' AND selection <> :g"
        )
        removed = int(
            self._one(
                f"SELECT COUNT(*) {not_chosen}"
                " AND address NOT IN (SELECT address FROM suppressions)"
                " AND address NOT IN (SELECT address FROM staged WHERE kind = 'inactive')",
                e=entry_id,
                g=generation,
            )
        )
        return removed

    @_guarded("read the entry's selection")
    def selection_basis(self, entry_id: str) -> str | None:
        """What the entry's last selection was made from, if it was complete and no
        selection has begun since (None otherwise)."""
        value = self._one(
            "SELECT selected_from FROM entries WHERE entry_id = :e"
            " AND generation = selected_generation",
            e=entry_id,
        )
        return None if value is None else str(value)

    @_guarded("read the entry's selection")
    def list_rows(self, entry_id: str) -> int | None:
        """How many list rows the entry's last complete selection read."""
        value = self._one("SELECT list_rows FROM entries WHERE entry_id = :e", e=entry_id)
        return None if value is None else int(value)

    # -- delivering: claims, leases, outcomes --------------------------------------

    @_guarded("read the entry's queue")
    def queue_state(self, entry_id: str) -> tuple[int, int]:
        """(the current generation, the last generation whose selection completed)."""
        rows = self._q(queries.STATE, e=entry_id)
        return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)

    def claim(
        self,
        entry_id: str,
        generation: int,
        worker: str,
        count: int,
        lease: float,
        thread: str | None = None,
    ) -> list[Recipient]:
        return [r for r, _ in self.claim_fenced(entry_id, generation, worker, count, lease, thread)]

    @_guarded("take recipients")
    def claim_fenced(
        self,
        entry_id: str,
        generation: int,
        worker: str,
        count: int,
        lease: float,
        thread: str | None = None,
    ) -> list[tuple[Recipient, int]]:
        """Claimed recipients, each with its claim's epoch: the fencing token its
        outcome is recorded with."""
        with self.transaction():
            rows = self._q(
                queries.CLAIM[self.dialect],
                e=entry_id,
                g=generation,
                me=worker,
                n=count,
                lease=lease,
            )
        rows.sort(key=lambda row: int(row[0]))
        parents = self.parent_message_ids(thread, [row[1] for row in rows]) if thread else {}
        return [claimed(row, parents) for row in rows]

    def parent_message_ids(self, thread: str, addresses: list[str]) -> dict[str, str]:
        """The Message-IDs ``thread``'s messages to ``addresses`` were sent with."""
        if not addresses:
            return {}
        marks = {f"a{i}": address for i, address in enumerate(addresses)}
        rows = self._q(queries.parents(len(addresses)), thread=thread, **marks)
        return {row[0]: row[1] for row in rows if row[1]}

    @_guarded("renew the lease")
    def renew(self, entry_id: str, worker: str, lease: float) -> dict[str, int]:
        """Renew what ``worker`` still holds; returns it, each address with its epoch."""
        with self.transaction():
            rows = self._q(queries.RENEW, e=entry_id, me=worker, lease=lease)
        return {str(row[0]): int(row[1]) for row in rows}

    @_guarded("hand recipients back")
    def release(self, entry_id: str, worker: str | None = None) -> None:
        """Give back what ``worker`` holds (or, with no worker, every claim: only when
        this process is known to be the only one sending the entry)."""
        with self.transaction():
            if worker is None:
                self._q(
                    "UPDATE deliveries SET claimed_by = NULL, lease_until = NULL"
                    " WHERE entry_id = :e AND status = 'pending' AND claimed_by IS NOT NULL",
                    e=entry_id,
                )
            else:
                self._q(queries.RELEASE, e=entry_id, me=worker)

    @_guarded("record outcomes")
    def record(self, entry_id: str, outcomes: Iterable[Outcome] | Fenced) -> None:
        """Record outcomes; fenced ones (each mapped to the epoch its row was claimed
        at) only where the row's claim is still that one."""
        self.check_same_file()
        stamp = now_iso()
        sql = queries.RECORD_FENCED if isinstance(outcomes, Mapping) else queries.RECORD
        with self.transaction():
            self.database.executemany(sql, record_params(entry_id, outcomes, stamp))

    @_guarded("count what is left")
    def remaining(self, entry_id: str, generation: int) -> int:
        return int(self._one(queries.REMAINING, e=entry_id, g=generation) or 0)

    @_guarded("read the suppression list")
    def suppression_of(self, address: str) -> str | None:
        value = self._one(queries.SUPPRESSED, address=address)
        return None if value is None else str(value)

    @_guarded("read the hourly count")
    def hourly_used(self) -> int:
        since = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat(timespec="seconds")
        return int(self._one(queries.HOURLY, since=since) or 0)

    @_guarded("take a sending slot")
    def take_slot(self, name: str, interval: float) -> float:
        """Seconds to wait for this caller's slot in the shared rate limit ``name``."""
        with self.transaction():
            self._q(queries.LIMITER_CREATE, name=name)
            return float(self._one(queries.LIMITER_TAKE, name=name, interval=interval))

    @_guarded("skip suppressed recipients")
    def skip_suppressed(self, entry_id: str) -> int:
        """Pending rows whose address was suppressed meanwhile (say, by the unsubscribe
        endpoint during a run) are skipped, never sent."""
        with self.transaction():
            rows = self._q(
                "UPDATE deliveries SET status = 'skipped', updated_at = :now,"
                " claimed_by = NULL, lease_until = NULL,"
                " detail = 'suppressed: ' || (SELECT reason FROM suppressions s"
                " WHERE s.address = deliveries.address)"
                " WHERE entry_id = :e AND status = 'pending'"
                " AND address IN (SELECT address FROM suppressions) RETURNING address",
                now=now_iso(),
                e=entry_id,
            )
        return len(rows)

    @_guarded("mark the entry complete")
    def mark_complete_if_done(self, entry_id: str) -> bool:
        if self.counts(entry_id)["pending"]:
            return False
        with self.transaction():
            self._q(
                "UPDATE entries SET completed_at = COALESCE(completed_at, :now)"
                " WHERE entry_id = :e",
                now=now_iso(),
                e=entry_id,
            )
        return True

    @_guarded("read the hourly count")
    def sent_since(self, since: dt.datetime) -> list[float]:
        """When each message sent since ``since`` (any entry) went out, as epoch seconds."""
        rows = self._q(
            "SELECT updated_at FROM deliveries WHERE status = 'sent' AND updated_at >= :since",
            since=since.isoformat(timespec="seconds"),
        )
        return [dt.datetime.fromisoformat(row[0]).timestamp() for row in rows]

    # -- reporting ---------------------------------------------------------------

    @_guarded("count outcomes")
    def counts(self, entry_id: str) -> dict[str, int]:
        result = dict.fromkeys(OUTCOMES, 0)
        for status, count in self._q(
            "SELECT status, COUNT(*) FROM deliveries WHERE entry_id = :e GROUP BY status",
            e=entry_id,
        ):
            result[status] = int(count)
        return result

    @_guarded("count outcomes")
    def breakdown(self, entry_id: str) -> list[tuple[str, str | None, str, int]]:
        """(locale, region, status, count) rows, for the summary table."""
        return [
            (row[0], row[1], row[2], int(row[3]))
            for row in self._q(
                "SELECT locale, region, status, COUNT(*) FROM deliveries WHERE entry_id = :e"
                " GROUP BY locale, region, status ORDER BY locale, region, status",
                e=entry_id,
            )
        ]

    @_guarded("list failures")
    def failures(
        self, entry_id: str, limit: int | None = None
    ) -> list[tuple[str, int | None, str | None, int, str]]:
        """(address, code, reply, attempts, when) of each failed recipient."""
        rows = self._q(
            "SELECT address, code, detail, attempts, updated_at FROM deliveries"
            " WHERE entry_id = :e AND status = 'failed' ORDER BY address LIMIT :n",
            e=entry_id,
            n=limit if limit is not None else 2**62,
        )
        return [(r[0], r[1], r[2], int(r[3]), r[4]) for r in rows]

    @_guarded("read the entry's state")
    def entry_state(self, entry_id: str) -> tuple[str, str | None] | None:
        """(digest at selection, completed_at) for an entry the ledger knows."""
        rows = self._q("SELECT digest, completed_at FROM entries WHERE entry_id = :e", e=entry_id)
        return (rows[0][0], rows[0][1]) if rows else None

    @_guarded("look up a locale")
    def last_locale(self, address: str) -> str | None:
        """The locale the ledger last recorded for ``address``, or None."""
        value = self._one(
            "SELECT d.locale FROM deliveries d JOIN entries e ON e.entry_id = d.entry_id"
            " WHERE d.address = :a AND d.locale <> ''"
            " ORDER BY e.selected_at DESC, d.{seq} DESC LIMIT 1",
            a=address,
        )
        return None if value is None else str(value)

    # -- suppression -------------------------------------------------------------

    @_guarded("read the suppression list")
    def suppressed(self) -> set[str]:
        return {row[0] for row in self._q("SELECT address FROM suppressions")}

    @_guarded("suppress an address")
    def suppress(self, address: str, reason: str, detail: str | None = None) -> bool:
        """Suppress ``address``; False if it already was (the first reason is kept)."""
        with self.transaction():
            added = self._q(
                queries.SUPPRESS + " RETURNING address",
                address=address.lower(),
                reason=str(reason),
                detail=detail,
                stamp=now_iso(),
            )
        return bool(added)

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
        return [
            (r[0], r[1], r[2], r[3], r[4], r[5])
            for r in self._q(
                "SELECT s.address, s.reason, s.detail, s.created_at,"
                f" {first.format('code')}, {first.format('event_at')}"
                " FROM suppressions s ORDER BY s.created_at, s.address"
            )
        ]

    @_guarded("remove a suppression")
    def unsuppress(self, address: str, why: str = "removed by hand") -> bool:
        return bool(self.lift([address], why))

    @_guarded("remove suppressions")
    def lift(self, addresses: Iterable[str], why: str) -> int:
        """Take ``addresses`` off the list in one transaction, keeping each suppression
        in ``suppression_lifts``; their soft-bounce days go too, so the next report
        starts a fresh score. Returns how many were suppressed."""
        stamp = now_iso()
        lifted = 0
        with self.transaction():
            for address in addresses:
                key = address.lower()
                rows = self._q(
                    "DELETE FROM suppressions WHERE address = :a"
                    " RETURNING reason, detail, created_at",
                    a=key,
                )
                if not rows:
                    continue
                lifted += 1
                reason, detail, created = rows[0]
                self._q(
                    "INSERT INTO suppression_lifts (address, reason, detail, suppressed_at,"
                    " lifted_at, why) VALUES (:a, :r, :d, :c, :now, :why)",
                    a=key,
                    r=reason,
                    d=detail,
                    c=created,
                    now=stamp,
                    why=why,
                )
                self._q(
                    "UPDATE feedback_events SET suppressed = 0"
                    " WHERE address = :a AND suppressed = 1",
                    a=key,
                )
                self._q("DELETE FROM bounce_scores WHERE address = :a", a=key)
        return lifted

    @_guarded("read the suppression list")
    def suppressions_by(
        self, reason: str, since: str | None, domain: str | None
    ) -> list[tuple[str, str, str | None, str | None, str | None]]:
        """(address, created_at, cause, code, diagnostic) of the suppressions for
        ``reason`` made since ``since`` (an ISO date) at ``domain``, with the cause,
        code and text of the report that caused each, when one did."""
        evidence = (
            "(SELECT f.{} FROM feedback_events f WHERE f.address = s.address"
            " AND f.suppressed = 1 LIMIT 1)"
        )
        sql = (
            "SELECT s.address, s.created_at, "
            + ", ".join(evidence.format(c) for c in ("cause", "code", "diagnostic"))
            + " FROM suppressions s WHERE s.reason = :r"
        )
        if since:
            sql += " AND s.created_at >= :since"
        if domain:
            sql += " AND s.address LIKE :p"
        rows = self._q(sql + " ORDER BY s.address", r=reason, since=since, p=f"%@{domain}")
        return [
            (r[0], r[1], r[2], r[3], r[4])
            for r in rows
            if not domain or r[0].rpartition("@")[2] == domain
        ]

    @_guarded("read the suppression list")
    def suppressions(self) -> list[tuple[str, str, str | None, str]]:
        """(address, reason, detail, created_at), oldest first."""
        return [
            (r[0], r[1], r[2], r[3])
            for r in self._q(
                "SELECT address, reason, detail, created_at FROM suppressions"
                " ORDER BY created_at, address"
            )
        ]

    # -- feedback: bounces, complaints and mailto unsubscribes read back ---------

    @_guarded("look up a return path")
    def delivery_by_row(self, row: int) -> tuple[str, str] | None:
        """(entry, address) of the delivery a return path names by its row."""
        rows = self._q("SELECT entry_id, address FROM deliveries WHERE {seq} = :row", row=row)
        return (rows[0][0], rows[0][1]) if rows else None

    @_guarded("look up a Message-ID")
    def delivery_by_message_id(self, message_id: str) -> tuple[str, str] | None:
        """(entry, address) of the message sent with ``message_id``."""
        rows = self._q(
            "SELECT entry_id, address FROM deliveries WHERE message_id = :m LIMIT 1",
            m=message_id,
        )
        return (rows[0][0], rows[0][1]) if rows else None

    @_guarded("look up an address")
    def last_entry_sent(self, address: str) -> str | None:
        """The entry most recently sent to ``address``, or None if none ever was."""
        value = self._one(
            "SELECT entry_id FROM deliveries WHERE address = :a"
            " AND status IN ('sent', 'bounced', 'complained')"
            " ORDER BY updated_at DESC, {seq} DESC LIMIT 1",
            a=address.lower(),
        )
        return None if value is None else str(value)

    @_guarded("read the feedback events")
    def has_feedback(self, source: str, address: str, kind: str, *, applied: bool = False) -> bool:
        """Whether this report's event was recorded (``applied``: and acted on)."""
        return bool(
            self._q(
                "SELECT 1 FROM feedback_events WHERE address = :a AND kind = :k AND source = :s"
                + (" AND state = 'applied'" if applied else ""),
                a=address,
                k=str(kind),
                s=source,
            )
        )

    @_guarded("read the feedback events")
    def bounced_in_group(self, entry_id: str, domain: str, cause: str) -> tuple[set[str], bool]:
        """The addresses of ``domain`` recorded as bouncing ``entry_id`` for ``cause``
        (applied or held), and whether any of them is held."""
        rows = self._q(
            "SELECT address, state FROM feedback_events WHERE domain = :d AND entry_id = :e"
            " AND cause = :c AND state IN ('applied', 'held')",
            d=domain,
            e=entry_id,
            c=cause,
        )
        return {row[0] for row in rows}, any(row[1] == "held" for row in rows)

    @_guarded("count an entry's recipients")
    def recipients_at(self, entry_id: str, domain: str) -> int:
        """How many recipients of ``entry_id`` are at ``domain``."""
        return int(
            self._one(
                "SELECT COUNT(*) FROM deliveries WHERE entry_id = :e AND address LIKE :p",
                e=entry_id,
                p=f"%@{domain}",
            )
            or 0
        )

    @_guarded("read the held feedback")
    def held_events(self, domain: str) -> list[FeedbackEvent]:
        """The events the storm guard holds for ``domain``, oldest first."""
        return [
            FeedbackEvent(
                kind=r[0],
                address=r[1],
                entry_id=r[2],
                code=r[3],
                diagnostic=r[4],
                source=r[5],
                event_at=r[6],
                cause=r[7],
                state="held",
            )
            for r in self._q(
                "SELECT kind, address, entry_id, code, diagnostic, source, event_at, cause"
                " FROM feedback_events WHERE domain = :d AND state = 'held'"
                " ORDER BY event_at, address",
                d=domain,
            )
        ]

    @_guarded("count the held feedback")
    def held_count(self) -> int:
        return int(self._one("SELECT COUNT(*) FROM feedback_events WHERE state = 'held'") or 0)

    @_guarded("release held feedback")
    def release_held(self, events: Iterable[FeedbackEvent]) -> int:
        """Apply held events (their effects decided again): one transaction."""
        stamp = now_iso()
        released = 0
        with self.transaction():
            for e in events:
                if self._q(
                    "UPDATE feedback_events SET state = 'applied' WHERE address = :a"
                    " AND kind = :k AND source = :s AND state = 'held' RETURNING address",
                    a=e.address,
                    k=str(e.kind),
                    s=e.source,
                ):
                    released += 1
                    self._apply_feedback(e, stamp)
        return released

    @_guarded("read an address's history")
    def history(self, address: str) -> dict[str, Any]:
        """Everything recorded about ``address``: its suppression, every feedback event
        and every lifted suppression."""
        address = address.lower()
        current = self._q(
            "SELECT reason, detail, created_at FROM suppressions WHERE address = :a", a=address
        )
        events = self._q(
            "SELECT received_at, event_at, entry_id, kind, cause, code, diagnostic, source,"
            " state, suppressed FROM feedback_events WHERE address = :a"
            " ORDER BY event_at, received_at",
            a=address,
        )
        lifts = self._q(
            "SELECT reason, detail, suppressed_at, lifted_at, why FROM suppression_lifts"
            " WHERE address = :a ORDER BY lifted_at",
            a=address,
        )
        names = [
            *("received_at", "event_at", "entry", "kind", "cause", "code", "diagnostic"),
            *("source", "state", "suppressed"),
        ]
        return {
            "address": address,
            "suppressed": (
                {"reason": current[0][0], "detail": current[0][1], "since": current[0][2]}
                if current
                else None
            ),
            "events": [
                {**dict(zip(names, row, strict=True)), "suppressed": bool(row[9])} for row in events
            ],
            "lifted": [
                dict(zip(("reason", "detail", "suppressed_at", "lifted_at", "why"), r, strict=True))
                for r in lifts
            ],
        }

    @_guarded("read the bounce score")
    def soft_days(self, address: str, since: dt.date) -> set[str]:
        """The days (UTC, ISO) since ``since`` on which a soft bounce of ``address`` counted."""
        rows = self._q(
            "SELECT day FROM bounce_scores WHERE address = :a AND day >= :since",
            a=address,
            since=since.isoformat(),
        )
        return {row[0] for row in rows}

    @_guarded("record feedback")
    def record_feedback(self, events: Iterable[FeedbackEvent]) -> list[bool]:
        """Record the events of a chunk of reports, with their effects, in one
        transaction; an event already recorded (the same report read again) changes
        nothing, and only an applied event has effects. Returns, per event, whether it
        was new."""
        self.check_same_file()
        stamp = now_iso()
        new: list[bool] = []
        with self.transaction():
            for e in events:
                inserted = self._q(
                    "INSERT INTO feedback_events (received_at, event_at, entry_id, address,"
                    " kind, code, diagnostic, source, cause, state, domain) VALUES (:now, :at,"
                    " :e, :a, :k, :code, :diag, :s, :cause, :state, :domain)"
                    " ON CONFLICT (address, kind, source) DO NOTHING RETURNING address",
                    now=stamp,
                    at=e.event_at,
                    e=e.entry_id,
                    code=e.code,
                    diag=e.diagnostic,
                    a=e.address,
                    k=str(e.kind),
                    s=e.source,
                    cause=e.cause,
                    state=str(e.state),
                    domain=e.domain,
                )
                new.append(bool(inserted))
                if inserted and e.state == "applied":
                    self._apply_feedback(e, stamp)
        return new

    def _apply_feedback(self, e: FeedbackEvent, stamp: str) -> None:
        """What an applied event does: its soft-bounce day, its suppression (with this
        report as the evidence), its delivery row's new outcome."""
        key = {"a": e.address, "k": str(e.kind), "s": e.source}
        if e.score_day:
            self._q(
                "INSERT INTO bounce_scores (address, day, source) VALUES (:a, :d, :s)"
                " ON CONFLICT (address, day) DO NOTHING",
                a=e.address,
                d=e.score_day,
                s=e.source,
            )
        if e.suppress:
            added = self._q(
                queries.SUPPRESS + " RETURNING address",
                address=e.address,
                reason=str(e.suppress),
                detail=e.evidence,
                stamp=stamp,
            )
            if added:  # this report is the suppression's evidence
                self._q(
                    "UPDATE feedback_events SET suppressed = 1"
                    " WHERE address = :a AND kind = :k AND source = :s",
                    **key,
                )
        if e.mark and e.entry_id:
            self._q(
                "UPDATE deliveries SET status = :mark, detail = :detail, updated_at = :now"
                " WHERE entry_id = :e AND address = :a AND status = 'sent'",
                mark=str(e.mark),
                detail=e.evidence,
                now=stamp,
                e=e.entry_id,
                a=e.address,
            )

    @_guarded("summarise the feedback")
    def feedback_counts(self, entry_id: str) -> dict[str, int]:
        """Applied events per kind recorded for ``entry_id`` (not those held)."""
        rows = self._q(
            "SELECT kind, COUNT(*) FROM feedback_events WHERE entry_id = :e"
            " AND state = 'applied' GROUP BY kind",
            e=entry_id,
        )
        return {row[0]: int(row[1]) for row in rows}

    # -- preferences --------------------------------------------------------------

    @_guarded("save a preference")
    def set_preference(self, address: str, preference: Preference) -> None:
        """Store what was chosen; a field left None keeps what was stored before."""
        topics = None if preference.topics is None else ";".join(sorted(preference.topics))
        with self.transaction():
            self._q(
                "INSERT INTO preferences (address, locale, topics, updated_at)"
                " VALUES (:a, :locale, :topics, :now) ON CONFLICT (address) DO UPDATE SET"
                " locale = COALESCE(excluded.locale, preferences.locale),"
                " topics = COALESCE(excluded.topics, preferences.topics),"
                " updated_at = excluded.updated_at",
                a=address.lower(),
                locale=preference.locale,
                topics=topics,
                now=now_iso(),
            )

    @_guarded("read a preference")
    def preference(self, address: str) -> Preference | None:
        rows = self._q(
            "SELECT locale, topics FROM preferences WHERE address = :a", a=address.lower()
        )
        return _preference(rows[0][0], rows[0][1]) if rows else None

    @_guarded("read the preferences")
    def preferences(self) -> list[tuple[str, Preference, str]]:
        """(address, preference, updated_at) of everyone who chose, by address."""
        return [
            (address, _preference(locale, topics), updated)
            for address, locale, topics, updated in self._q(
                "SELECT address, locale, topics, updated_at FROM preferences ORDER BY address"
            )
        ]

    @contextmanager
    def preference_lookup(self) -> Iterator[Callable[[str], Preference | None]]:
        """A lookup of the stored preferences for one selection: a dict read once when
        there are at most ``PREFERENCES_IN_MEMORY`` of them, else an indexed read per
        address on a read-only connection of its own (lists can hold a million rows)."""
        try:
            if self.schema_version() < 3:
                yield lambda _address: None
                return
            count = int(self._one("SELECT COUNT(*) FROM preferences") or 0)
            if count <= PREFERENCES_IN_MEMORY:
                stored = {
                    address: _preference(locale, topics)
                    for address, locale, topics in self._q(
                        "SELECT address, locale, topics FROM preferences"
                    )
                }
                yield stored.get
                return
            reader = connect(self.target, readonly=True)
        except driver_errors() as exc:
            raise self.error(f"cannot read the preferences: {exc}") from exc

        def lookup(address: str) -> Preference | None:
            try:
                rows = reader.execute(
                    "SELECT locale, topics FROM preferences WHERE address = :a", {"a": address}
                )
            except driver_errors() as exc:
                raise self.error(f"cannot read the preferences: {exc}") from exc
            return _preference(rows[0][0], rows[0][1]) if rows else None

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
    cause: str | None = None  # a bounce's Cause
    state: str = "applied"  # EventState: only an applied event changes anything

    @property
    def domain(self) -> str:
        """The recipient's domain: the storm guard and bulk undo group by it."""
        return self.address.rpartition("@")[2].lower()


def _preference(locale: str | None, topics: str | None) -> Preference:
    return Preference(
        locale, None if topics is None else frozenset(t for t in topics.split(";") if t)
    )


@contextmanager
def read_preferences(target: str | Path) -> Iterator[Callable[[str], Preference | None]]:
    """The stored preferences of the ledger at ``target``, read only (dry runs)."""
    if not exists(target):
        yield lambda _address: None
        return
    with Ledger(target, readonly=True) as ledger, ledger.preference_lookup() as lookup:
        yield lookup


# What ``ledger copy`` moves, in this order, with the columns both engines share.
COPIED = {
    "entries": (
        "entry_id, digest, selected_at, completed_at, generation, selected_generation, list_rows"
    ),
    "deliveries": (
        "entry_id, address, email, ascii_email, name, locale, region, status, attempts,"
        " code, detail, message_id, selection, created_at, updated_at"
    ),
    "suppressions": "address, reason, detail, created_at",
    "feedback_events": (
        "received_at, event_at, entry_id, address, kind, code, diagnostic, source, suppressed,"
        " cause, state, domain"
    ),
    "suppression_lifts": "address, reason, detail, suppressed_at, lifted_at, why",
    "bounce_scores": "address, day, source",
    "preferences": "address, locale, topics, updated_at",
}
COPY_BATCH = 5_000


def copy_ledger(source: Ledger, target: Ledger) -> dict[str, tuple[int, int]]:
    """Copy every row of ``source`` into the empty ``target`` (a SQLite ledger into
    PostgreSQL, say), keeping each delivery's order number (return paths name rows by
    it); returns, per table, (rows in the source, rows in the target afterwards)."""
    for table in COPIED:
        if int(target._one(f"SELECT COUNT(*) FROM {table}") or 0):
            raise target.error(f"cannot copy into a ledger that has rows ({table})")
    counts: dict[str, tuple[int, int]] = {}
    with target.transaction():
        for table, columns in COPIED.items():
            names = [c.strip() for c in columns.split(",")]
            order = "{seq}" if table == "deliveries" else names[0]
            select = f"SELECT {columns}" + (", {seq}" if table == "deliveries" else "")
            if table == "deliveries":
                names.append(target.database.dialect.seq)
            marks = ", ".join(f":{name}" for name in names)
            insert = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks})"
            copied = 0
            query = f"{select} FROM {table} ORDER BY {order}"
            for rows in source.database.iterate(query, COPY_BATCH):
                target.database.executemany(
                    insert, (dict(zip(names, row, strict=True)) for row in rows)
                )
                copied += len(rows)
            counts[table] = (copied, int(target._one(f"SELECT COUNT(*) FROM {table}") or 0))
        if isinstance(target.database, PostgresDatabase):
            target._q(
                "SELECT setval(pg_get_serial_sequence('deliveries', 'seq'),"
                " COALESCE((SELECT MAX(seq) FROM deliveries), 0) + 1, false)"
            )
    return counts


def claimed(row: tuple[Any, ...], parents: dict[str, str]) -> tuple[Recipient, int]:
    """A claimed row (order, address, email, ascii_email, name, locale, region, attempts,
    epoch) as the recipient and the claim's epoch."""
    seq, address, email, ascii_email, name, locale, region, attempts, epoch = row
    recipient = Recipient(
        address,
        email,
        ascii_email,
        name,
        locale,
        region,
        int(attempts),
        parents.get(address),
        row=int(seq),
    )
    return recipient, int(epoch)


def record_params(
    entry_id: str, outcomes: Iterable[Outcome] | Fenced, stamp: str
) -> Iterator[dict[str, Any]]:
    """The parameters of RECORD, or of RECORD_FENCED for fenced outcomes."""
    fenced = outcomes if isinstance(outcomes, Mapping) else None
    # In address order: two writers of overlapping rows then lock them in the same
    # order and cannot deadlock on each other.
    for o in sorted(outcomes, key=lambda o: o.address):
        yield {
            "status": o.status.value,
            "attempts": o.attempts,
            "code": o.code,
            "detail": o.detail,
            "message_id": o.message_id,
            "stamp": stamp,
            "e": entry_id,
            "address": o.address,
            **({} if fenced is None else {"epoch": fenced[o]}),
        }


def read_suppressions(target: str | Path) -> set[str]:
    """The suppression list of the ledger at ``target``, read only; empty if there is none."""
    if not is_url(target) and not Path(target).exists():
        return set()
    with Ledger(target, readonly=True) as ledger:
        return ledger.suppressed() if ledger.schema_version() else set()


def exists(target: str | Path) -> bool:
    """Whether there is a ledger at ``target`` to read (a server always counts)."""
    return is_url(target) or Path(target).exists()
