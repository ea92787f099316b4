"""The ledger's side of delivering and of what it came to: claims and their leases,
outcomes recorded (fenced by each claim's epoch), the shared rate limit, an entry marked
complete, and the counts the reports read. ``Outcomes`` is this part of ``Ledger``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from statusmail.domain import DeliveryStatus, Outcome, Recipient
from statusmail.ledger import queries
from statusmail.ledger.base import LedgerBase, guarded, now_iso
from statusmail.project.selection import topics_of

# What a delivery can end as; a sent row may later turn bounced or complained.
OUTCOMES = ("pending", "sent", "failed", "skipped")
FEEDBACK_OUTCOMES = (DeliveryStatus.BOUNCED.value, DeliveryStatus.COMPLAINED.value)
# Outcomes of claimed rows, each with the epoch of its row's claim (None: not held, so
# recorded nowhere): recorded only where that claim still stands.
Fenced = Mapping[Outcome, int | None]


class Outcomes(LedgerBase):
    """Claims, leases and outcomes of an entry's queue, and what they add up to."""

    @guarded("take slots of the rate limit")
    def take_slots(self, name: str, span: float) -> float:
        """Reserve ``span`` seconds of limiter ``name``; seconds to wait for the first slot."""
        with self.transaction():
            self._q(queries.LIMITER_CREATE, name=name)
            rows = self._q(queries.SLOTS, name=name, span=span)
        return float(rows[0][0])

    @guarded("read the entry's queue")
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

    @guarded("take recipients")
    def claim_fenced(
        self,
        entry_id: str,
        generation: int,
        worker: str,
        count: int,
        lease: float,
        thread: str | None = None,
        hourly_cap: int | None = None,
    ) -> list[tuple[Recipient, int]]:
        """Claimed recipients, each with its claim's epoch: the fencing token its
        outcome is recorded with. With ``hourly_cap``, no more than the cap leaves of
        what went out in the last hour and is claimed (counted in the claim's
        transaction, so that senders claiming at once cannot share a slot)."""
        with self.transaction():
            if hourly_cap is not None:
                if self.dialect == "postgresql":
                    self._q(queries.HOURLY_LOCK)
                used = int(self._one(queries.HOURLY) or 0)
                count = min(count, hourly_cap - used)
            rows = (
                self._q(
                    queries.CLAIM[self.dialect],
                    e=entry_id,
                    g=generation,
                    me=worker,
                    n=count,
                    lease=lease,
                )
                if count > 0
                else []
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

    @guarded("renew the lease")
    def renew(self, entry_id: str, worker: str, lease: float) -> dict[str, int]:
        """Renew what ``worker`` still holds; returns it, each address with its epoch."""
        with self.transaction():
            rows = self._q(queries.RENEW, e=entry_id, me=worker, lease=lease)
        return {str(row[0]): int(row[1]) for row in rows}

    @guarded("hand recipients back")
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

    @guarded("record outcomes")
    def record(self, entry_id: str, outcomes: Iterable[Outcome] | Fenced) -> None:
        """Record outcomes; fenced ones (each mapped to the epoch its row was claimed
        at) only where the row's claim is still that one."""
        self.check_same_file()
        sql = queries.RECORD_FENCED if isinstance(outcomes, Mapping) else queries.RECORD
        with self.transaction():
            self.database.executemany(sql, record_params(entry_id, outcomes))

    @guarded("count what is left")
    def remaining(self, entry_id: str, generation: int) -> int:
        return int(self._one(queries.REMAINING, e=entry_id, g=generation) or 0)

    @guarded("read the suppression list")
    def suppression_of(self, address: str) -> str | None:
        value = self._one(queries.SUPPRESSED, address=address)
        return None if value is None else str(value)

    @guarded("read the hourly count")
    def hourly_used(self) -> int:
        return int(self._one(queries.HOURLY) or 0)

    @guarded("take a sending slot")
    def take_slot(self, name: str, interval: float) -> float:
        """Seconds to wait for this caller's slot in the shared rate limit ``name``."""
        with self.transaction():
            self._q(queries.LIMITER_CREATE, name=name)
            return float(self._one(queries.LIMITER_TAKE, name=name, interval=interval))

    @guarded("skip suppressed recipients")
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

    @guarded("mark the entry complete")
    def mark_complete_if_done(self, entry_id: str) -> bool:
        """Complete: nobody pending, and its selection ended (a run its limit or the
        hourly cap ended while the list was still being read was marked complete, and
        watch never sent to the rest)."""
        if self.counts(entry_id)["pending"]:
            return False
        with self.transaction():
            done = self._q(
                "UPDATE entries SET completed_at = COALESCE(completed_at, :now)"
                " WHERE entry_id = :e AND generation = selected_generation RETURNING entry_id",
                now=now_iso(),
                e=entry_id,
            )
        return bool(done)

    # -- reporting ---------------------------------------------------------------

    @guarded("count outcomes")
    def counts(self, entry_id: str) -> dict[str, int]:
        result = dict.fromkeys(OUTCOMES, 0)
        for status, count in self._q(
            "SELECT status, COUNT(*) FROM deliveries WHERE entry_id = :e GROUP BY status",
            e=entry_id,
        ):
            result[status] = int(count)
        return result

    @guarded("count outcomes")
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

    @guarded("list failures")
    def failures(
        self, entry_id: str, limit: int | None = None
    ) -> list[tuple[tuple[str, ...], int | None, str | None, int, str]]:
        """(addresses, code, reply, attempts, when) of each failed recipient: the
        addresses are the ledger's key first, then the forms it went out in (the
        address as written, its ASCII form), any of which a relay's reply may quote."""
        rows = self._q(
            "SELECT address, email, ascii_email, code, detail, attempts, updated_at"
            " FROM deliveries WHERE entry_id = :e AND status = 'failed'"
            " ORDER BY address LIMIT :n",
            e=entry_id,
            n=limit if limit is not None else 2**62,
        )
        return [(tuple(a for a in r[:3] if a), r[3], r[4], int(r[5]), r[6]) for r in rows]

    @guarded("read the entry's state")
    def entry_state(self, entry_id: str) -> tuple[str, str | None] | None:
        """(digest at selection, completed_at) for an entry the ledger knows; not
        complete while a selection of it has not ended (a ledger that marked one so)."""
        rows = self._q(
            "SELECT digest, CASE WHEN generation = selected_generation THEN completed_at END"
            " FROM entries WHERE entry_id = :e",
            e=entry_id,
        )
        return (rows[0][0], rows[0][1]) if rows else None

    @guarded("look up a locale")
    def last_locale(self, address: str) -> str | None:
        """The locale the ledger last recorded for ``address``, or None."""
        value = self._one(
            "SELECT d.locale FROM deliveries d JOIN entries e ON e.entry_id = d.entry_id"
            " WHERE d.address = :a AND d.locale <> ''"
            " ORDER BY e.selected_at DESC, d.{seq} DESC LIMIT 1",
            a=address,
        )
        return None if value is None else str(value)


def claimed(row: tuple[Any, ...], parents: dict[str, str]) -> tuple[Recipient, int]:
    """A claimed row (order, address, email, ascii_email, name, locale, region, attempts,
    epoch, topics) as the recipient and the claim's epoch."""
    seq, address, email, ascii_email, name, locale, region, attempts, epoch, topics = row
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
        topics=topics_of(topics) or None,
    )
    return recipient, int(epoch)


def record_params(entry_id: str, outcomes: Iterable[Outcome] | Fenced) -> Iterator[dict[str, Any]]:
    """The parameters of RECORD, or of RECORD_FENCED for fenced outcomes (their time is
    the database's: ``{stamp}``)."""
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
            "e": entry_id,
            "address": o.address,
            **({} if fenced is None else {"epoch": fenced[o]}),
        }
