"""The ledger's side of a selection: the audience staged in the connection's own table,
compared with the entry's rows (``Plan``), made the entry's queue a batch at a time,
each batch fenced by the selection's generation and its lease (``SelectionLost`` once
another sender took it over), and finished. ``Selecting`` is this part of ``Ledger``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from statusmail.domain import Recipient
from statusmail.errors import StatusmailError
from statusmail.ledger import queries
from statusmail.ledger.base import LedgerBase, guarded, now_iso
from statusmail.ledger.database import first
from statusmail.project.selection import topics_text

ENQUEUE_BATCH = 2_000

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
    detail      TEXT,
    topics      TEXT
)
"""


# The first row of an address wins, except a row that could not be read (``invalid``,
# staged first, under the address as written): the address's own row replaces it. A
# typo in a second row for someone must not cost them the entry.
STAGE = (
    "INSERT INTO staged VALUES (:pos, :address, :kind, :email, :ascii_email, :name, :locale,"
    " :region, :detail, :topics) ON CONFLICT (address) DO UPDATE SET pos = excluded.pos,"
    " kind = excluded.kind, email = excluded.email, ascii_email = excluded.ascii_email,"
    " name = excluded.name, locale = excluded.locale, region = excluded.region,"
    " detail = excluded.detail, topics = excluded.topics"
    " WHERE staged.kind = 'invalid' AND excluded.kind <> 'invalid'"
)


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
    topics: str | None = None  # Recipient.topics as the ledger keeps them; None: the entry's

    @classmethod
    def selected(cls, r: Recipient) -> StagedRow:
        topics = None if r.topics is None else topics_text(r.topics)
        return cls(
            "selected", r.address, r.email, r.ascii_email, r.name, r.locale, r.region, None, topics
        )


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


class Selecting(LedgerBase):
    """Staging, planning, enqueueing and finishing an entry's selection."""

    _staged: int  # rows this connection staged since the staging area was emptied
    _analyzed: int

    @guarded("empty the staging area")
    def reset_staging(self) -> None:
        self._q(STAGING)
        self._q("DELETE FROM staged")
        self._staged = 0

    @guarded("stage the selection")
    def stage(self, rows: Iterable[StagedRow]) -> int:
        """Stage ``rows`` (appended to what this connection staged since ``begin``); the
        staging table is temporary, this connection's own: writing it takes no lock on
        the ledger, and an exception from ``rows`` leaves the ledger untouched."""
        self._q(STAGING)
        with self.database.local_transaction():
            start = self._staged
            self.database.executemany(STAGE, (self._staged_params(r) for r in rows))
        return self._staged - start

    def _staged_params(self, row: StagedRow) -> dict[str, Any]:
        self._staged += 1
        return {"pos": self._staged, **row.__dict__}

    @guarded("start a selection")
    def begin_selection(
        self,
        entry_id: str,
        digest: str,
        selector: str | None = None,
        lease: float = 0.0,
        imported: int | None = None,
    ) -> int:
        """A new generation of the entry's selection (the rows its selection enqueues
        carry it; delivery takes only rows of the current one), leased to ``selector``
        for ``lease`` seconds whoever held it before: for one run of the entry at a time
        (SQLite's run lock), where a lease left by a crashed run means nothing.
        ``imported``: the import it reads, kept until the selection is complete."""
        take = queries.TAKE_SELECTION_ANYWAY
        rows = self._new_selection(take, entry_id, digest, selector, lease, imported)
        return int(first(rows))

    @guarded("take the selection")
    def take_selection(
        self,
        entry_id: str,
        digest: str,
        selector: str,
        lease: float,
        imported: int | None = None,
    ) -> int | None:
        """A new generation of the entry's selection, leased to ``selector`` for
        ``lease`` seconds, unless another sender's lease of it still runs (None)."""
        take = queries.TAKE_SELECTION[self.dialect]
        rows = self._new_selection(take, entry_id, digest, selector, lease, imported)
        return int(rows[0][0]) if rows else None

    def _new_selection(
        self,
        take: str,
        entry_id: str,
        digest: str,
        selector: str | None,
        lease: float,
        imported: int | None,
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
            return self._q(take, e=entry_id, me=selector, lease=lease, imported=imported)

    @guarded("read the entry's selection")
    def selection_unfinished(self, entry_id: str) -> bool:
        """Whether a selection of the entry began and never ended (a run stopped while
        it read the list): more of the list may be selected by the next run."""
        value = self._one(
            "SELECT 1 FROM entries WHERE entry_id = :e AND generation <> selected_generation",
            e=entry_id,
        )
        return value is not None

    @guarded("record the entry's text")
    def record_digest(self, entry_id: str, digest: str) -> None:
        """The entry's file as it goes out from now on (``--accept-edit``)."""
        with self.transaction():
            self._q("UPDATE entries SET digest = :d WHERE entry_id = :e", d=digest, e=entry_id)

    @guarded("read the selection's lease")
    def selection_leased(self, entry_id: str) -> bool:
        """Whether a sender's lease of the entry's selection still runs."""
        return bool(self._one(queries.SELECTION_LEASED, e=entry_id))

    @guarded("let the selection go")
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

    @guarded("plan the selection")
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

    @guarded("enqueue the selection")
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
        became pending that were not. A pending row takes the topics its footer names
        anew too (a reader who changed them on the preferences page since).
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
                    " locale, region, topics, status, selection, created_at, updated_at)"
                    " SELECT :e, address, email, ascii_email, name, locale, region, topics,"
                    " 'pending', :g, :now, :now FROM staged"
                    " WHERE kind = 'selected' AND pos > :lo AND pos <= :hi"
                    " ON CONFLICT (entry_id, address) DO UPDATE SET status = 'pending',"
                    " email = excluded.email, ascii_email = excluded.ascii_email,"
                    " name = excluded.name, locale = excluded.locale, region = excluded.region,"
                    " topics = excluded.topics, selection = excluded.selection, detail = NULL,"
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

    @guarded("finish the selection")
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
                " selector = NULL, selector_until = NULL, selected_from = :basis,"
                " selecting_from = NULL"
                " WHERE entry_id = :e AND generation = :g RETURNING generation",
                e=entry_id,
                g=generation,
                rows=list_rows,
                basis=basis,
            ):
                raise SelectionLost(entry_id, generation)
            self._q(
                "UPDATE deliveries SET status = 'skipped', updated_at = :now,"
                " detail = 'no longer selected: unsubscribed, suppressed, or left its topic'"
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

    @guarded("count the removals")
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

    @guarded("read the entry's selection")
    def selection_basis(self, entry_id: str) -> str | None:
        """What the entry's last selection was made from, if it was complete and no
        selection has begun since (None otherwise)."""
        value = self._one(
            "SELECT selected_from FROM entries WHERE entry_id = :e"
            " AND generation = selected_generation",
            e=entry_id,
        )
        return None if value is None else str(value)

    @guarded("read the entry's selection")
    def list_rows(self, entry_id: str) -> int | None:
        """How many list rows the entry's last complete selection read."""
        value = self._one("SELECT list_rows FROM entries WHERE entry_id = :e", e=entry_id)
        return None if value is None else int(value)
