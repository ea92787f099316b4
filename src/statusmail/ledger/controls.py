"""Pause, resume, cancel and retry (``statusmail pause|resume|cancel|retry ID``) as the
ledger holds them: an entry's state in ``entry_controls`` (paused or cancelled, and
since when), which every sender of the entry asks about about twice a second; the
pending rows a cancel makes ``cancelled``; the failed rows a retry makes pending again.

A row a running sender holds (claimed, its lease running) is left to that sender: it
stops taking recipients within a second of the pause or cancel, finishes those in
flight and hands the rest back, and a cancelled entry's rows handed back are cancelled
then (``cancel_pending``, after the run), so a row is never both cancelled and sent.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from statusmail.errors import LedgerError
from statusmail.ledger import Ledger, now_iso
from statusmail.ledger.database import driver_errors, one_line

PAUSED = "paused"
CANCELLED = "cancelled"
# What a run stopped by a control says (its RunResult.stopped).
STOPPED_BY = {
    PAUSED: "paused (statusmail pause); statusmail resume, or the next send, continues",
    CANCELLED: "cancelled (statusmail cancel); the rest are never sent",
}

_NOT_HELD = "(claimed_by IS NULL OR lease_until < {now})"
_UNSUPPRESSED = "address NOT IN (SELECT address FROM suppressions)"


@dataclass(frozen=True)
class Control:
    state: str  # PAUSED or CANCELLED
    since: str  # when, as the ledger's ISO time


def _q(ledger: Ledger, action: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    try:
        return ledger.database.execute(sql, params)
    except driver_errors() as exc:
        raise LedgerError(f"{ledger.where}: cannot {action}: {one_line(exc)}") from exc


def control(ledger: Ledger, entry_id: str) -> Control | None:
    """The entry's pause or cancel, if it has one. A ledger older than the controls
    (opened read-only, not migrated) has none."""
    try:
        rows = ledger.database.execute(
            "SELECT state, since FROM entry_controls WHERE entry_id = :e", {"e": entry_id}
        )
    except driver_errors() as exc:
        if not ledger.database.table_exists("entry_controls"):
            return None
        raise LedgerError(
            f"{ledger.where}: cannot read whether it is paused: {one_line(exc)}"
        ) from exc
    return Control(str(rows[0][0]), str(rows[0][1])) if rows else None


def held(ledger: Ledger) -> dict[str, str]:
    """Every paused or cancelled entry (its id: the state). A ledger older than the
    controls (opened read-only, not migrated) holds none."""
    if not ledger.database.table_exists("entry_controls"):
        return {}
    rows = _q(ledger, "read which entries are held", "SELECT entry_id, state FROM entry_controls")
    return {str(row[0]): str(row[1]) for row in rows}


def stop_reason(ledger: Ledger, entry_id: str) -> str | None:
    """Why a running sender of the entry is to stop taking recipients, if it is."""
    found = control(ledger, entry_id)
    return None if found is None else STOPPED_BY[found.state]


def asker(ledger: Ledger, entry_id: str) -> Callable[[], Awaitable[str | None]]:
    """``stop_reason`` for a running sender's event loop: on PostgreSQL a round trip, so
    in a thread (the connection is thread-safe); on SQLite a local read of microseconds
    (and the connection belongs to the loop's thread)."""

    async def ask() -> str | None:
        if ledger.dialect == "postgresql":
            return await asyncio.to_thread(stop_reason, ledger, entry_id)
        return stop_reason(ledger, entry_id)

    return ask


def _set(ledger: Ledger, entry_id: str, state: str) -> None:
    _q(
        ledger,
        f"record the {state} state",
        "INSERT INTO entry_controls (entry_id, state, since) VALUES (:e, :s, :now)"
        " ON CONFLICT (entry_id) DO UPDATE SET state = excluded.state, since = excluded.since",
        e=entry_id,
        s=state,
        now=now_iso(),
    )


def pause(ledger: Ledger, entry_id: str) -> Control:
    """Pause the entry (a cancelled one stays cancelled); returns its control now."""
    found = control(ledger, entry_id)
    if found is None:
        _set(ledger, entry_id, PAUSED)
        found = control(ledger, entry_id)
    assert found is not None
    return found


def resume(ledger: Ledger, entry_id: str) -> Control | None:
    """Lift a pause; returns what it lifted (None: the entry was not paused). A cancel
    is never lifted."""
    found = control(ledger, entry_id)
    if found is not None and found.state == PAUSED:
        _q(
            ledger,
            "resume the entry",
            "DELETE FROM entry_controls WHERE entry_id = :e AND state = :s",
            e=entry_id,
            s=PAUSED,
        )
    return found


def cancel(ledger: Ledger, entry_id: str) -> int:
    """Cancel the entry: nothing more of it is selected or sent. Its pending rows that
    no running sender holds become cancelled now (the rest when that sender hands them
    back); returns how many."""
    with ledger.transaction():
        _set(ledger, entry_id, CANCELLED)
        return cancel_pending(ledger, entry_id)


def cancel_pending(ledger: Ledger, entry_id: str) -> int:
    """A cancelled entry's pending rows that no running sender holds become cancelled
    (nothing for an entry not cancelled); returns how many."""
    rows = _q(
        ledger,
        "cancel the pending recipients",
        "UPDATE deliveries SET status = 'cancelled', updated_at = :now,"
        " detail = 'cancelled (statusmail cancel)', claimed_by = NULL, lease_until = NULL"
        f" WHERE entry_id = :e AND status = 'pending' AND {_NOT_HELD}"
        " AND EXISTS (SELECT 1 FROM entry_controls c"
        " WHERE c.entry_id = :e AND c.state = 'cancelled') RETURNING address",
        e=entry_id,
        now=now_iso(),
    )
    return len(rows)


def held_by_senders(ledger: Ledger, entry_id: str) -> int:
    """Pending rows a running sender holds now (claimed, their lease running)."""
    rows = _q(
        ledger,
        "count what running senders hold",
        "SELECT COUNT(*) FROM deliveries WHERE entry_id = :e AND status = 'pending'"
        f" AND NOT {_NOT_HELD}",
        e=entry_id,
    )
    return int(rows[0][0])


# -- retry --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Retried:
    requeued: int  # failed rows made pending again
    suppressed: int  # failed rows matching, left failed: their address is suppressed
    unmatched: int  # failed rows another code than the one asked for


def matches(code: str | None, reply_code: int | None, detail: str | None) -> bool:
    """Whether a failure is of ``code``: a reply code (550) or an enhanced status code
    (5.2.2) in the reply; every failure when ``code`` is None."""
    if code is None:
        return True
    if code.isascii() and code.isdigit():
        return reply_code == int(code)
    return re.search(rf"(?<![\d.]){re.escape(code)}(?![\d.])", detail or "") is not None


def retry(ledger: Ledger, entry_id: str, code: str | None = None) -> Retried:
    """Failed recipients (of ``code``, if given) become pending again in the entry's
    current selection, their attempts counted afresh, so the next send (or watch) sends
    them; never a suppressed address. The entry is no longer complete."""
    failed = _q(
        ledger,
        "read the failed recipients",
        "SELECT address, code, detail, address IN (SELECT address FROM suppressions)"
        " FROM deliveries WHERE entry_id = :e AND status = 'failed'",
        e=entry_id,
    )
    chosen = [row for row in failed if matches(code, row[1], row[2])]
    requeue = [str(row[0]) for row in chosen if not row[3]]
    with ledger.transaction():
        _requeue(ledger, entry_id, requeue)
        if requeue:
            _q(
                ledger,
                "reopen the entry",
                "UPDATE entries SET completed_at = NULL WHERE entry_id = :e",
                e=entry_id,
            )
    return Retried(len(requeue), len(chosen) - len(requeue), len(failed) - len(chosen))


def _requeue(ledger: Ledger, entry_id: str, addresses: Iterable[str]) -> None:
    stamp = now_iso()
    try:
        ledger.database.executemany(
            "UPDATE deliveries SET status = 'pending', attempts = 0, code = NULL,"
            " detail = NULL, claimed_by = NULL, lease_until = NULL, updated_at = :now,"
            " selection = (SELECT generation FROM entries WHERE entry_id = :e)"
            f" WHERE entry_id = :e AND address = :a AND status = 'failed' AND {_UNSUPPRESSED}",
            ({"e": entry_id, "a": address, "now": stamp} for address in addresses),
        )
    except driver_errors() as exc:
        raise LedgerError(
            f"{ledger.where}: cannot re-queue the failed recipients: {one_line(exc)}"
        ) from exc
