"""The suppression list: who is never sent to and why, lifted by hand (each lift kept in
``suppression_lifts``), with the report that caused each suppression when one did.
``Suppressions`` is this part of ``Ledger``."""

from __future__ import annotations

from collections.abc import Iterable

from statusmail.ledger import queries
from statusmail.ledger.base import LedgerBase, guarded, now_iso


class Suppressions(LedgerBase):
    """Reading, adding and lifting suppressions."""

    @guarded("read the suppression list")
    def suppressed(self) -> set[str]:
        return {row[0] for row in self._q("SELECT address FROM suppressions")}

    @guarded("suppress an address")
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

    @guarded("read the suppression list")
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

    @guarded("remove a suppression")
    def unsuppress(self, address: str, why: str = "removed by hand") -> bool:
        return bool(self.lift([address], why))

    @guarded("remove suppressions")
    def lift(self, addresses: Iterable[str], why: str) -> int:
        """Take ``addresses`` off the list in one transaction, keeping each suppression
        in ``suppression_lifts``; their soft-bounce days go too, so the next report
        starts a fresh score. Returns how many were suppressed."""
        stamp = now_iso()
        lifted = 0
        addresses = [address.lower() for address in addresses]
        with self.transaction():
            self.hold_addresses(addresses)
            for key in addresses:
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
            if lifted:
                self._q(queries.BUMP, name=queries.CHOICES)
        return lifted

    @guarded("read the suppression list")
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

    @guarded("read the suppression list")
    def suppressions(self) -> list[tuple[str, str, str | None, str]]:
        """(address, reason, detail, created_at), oldest first."""
        return [
            (r[0], r[1], r[2], r[3])
            for r in self._q(
                "SELECT address, reason, detail, created_at FROM suppressions"
                " ORDER BY created_at, address"
            )
        ]
