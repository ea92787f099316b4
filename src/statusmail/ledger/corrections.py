"""What the ledger recorded of an entry once it went out: how many it reached and when,
and who, for a correction (``corrects: ID``), which goes to exactly those people."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from statusmail.errors import LedgerError
from statusmail.ledger import queries
from statusmail.ledger.database import driver_errors, one_line
from statusmail.ledger.store import Ledger


@dataclass(frozen=True)
class Sent:
    """An entry as the ledger has it: messages sent (or sent and then bounced or
    complained about), still pending, when its last one went, when it was complete,
    and the digest of the entry's file when it was first selected."""

    entry_id: str
    sent: int
    pending: int
    last_sent_at: str | None
    completed_at: str | None
    digest: str | None

    @property
    def complete(self) -> bool:
        return self.completed_at is not None and not self.pending


# Statuses of a message that went out: the correction's audience is drawn from these.
WENT_OUT = ("sent", "bounced", "complained")
_WENT_OUT_SQL = queries.WENT_OUT_SQL


def _q(ledger: Ledger, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    try:
        return ledger.database.execute(sql, params)
    except driver_errors() as exc:
        raise LedgerError(f"{ledger.where}: cannot read what was sent: {one_line(exc)}") from exc


def sent_record(ledger: Ledger, entry_id: str) -> Sent:
    went = _q(
        ledger,
        f"SELECT COUNT(*), MAX(updated_at) FROM deliveries WHERE entry_id = :e"
        f" AND status IN {_WENT_OUT_SQL}",
        e=entry_id,
    )[0]
    pending = _q(
        ledger,
        "SELECT COUNT(*) FROM deliveries WHERE entry_id = :e AND status = 'pending'",
        e=entry_id,
    )[0][0]
    state = _q(ledger, "SELECT digest, completed_at FROM entries WHERE entry_id = :e", e=entry_id)
    digest, completed = state[0] if state else (None, None)
    return Sent(entry_id, int(went[0]), int(pending), went[1], completed, digest)


def received(ledger: Ledger, entry_id: str) -> set[str]:
    """The addresses (lower-cased) the entry's messages went out to."""
    rows = _q(
        ledger,
        f"SELECT address FROM deliveries WHERE entry_id = :e AND status IN {_WENT_OUT_SQL}",
        e=entry_id,
    )
    return {row[0] for row in rows}
