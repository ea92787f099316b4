"""``ledger copy``: every row of one ledger into an empty other (a SQLite ledger into
PostgreSQL, say)."""

from __future__ import annotations

from typing import Any

from statusmail.domain import short_source
from statusmail.ledger.database import PostgresDatabase, driver_errors, one_line
from statusmail.ledger.store import Ledger

# What ``ledger copy`` moves, in this order, with the columns both engines share.
COPIED = {
    "entries": (
        "entry_id, digest, selected_at, completed_at, generation, selected_generation, list_rows"
    ),
    "deliveries": (
        "entry_id, address, email, ascii_email, name, locale, region, status, attempts,"
        " code, detail, message_id, selection, created_at, updated_at, topics"
    ),
    "suppressions": "address, reason, detail, created_at",
    "feedback_events": (
        "received_at, event_at, entry_id, address, kind, code, diagnostic, source, suppressed,"
        " cause, state, domain"
    ),
    "suppression_lifts": "address, reason, detail, suppressed_at, lifted_at, why",
    "bounce_scores": "address, day, source",
    "preferences": "address, locale, topics, updated_at",
    "entry_controls": "entry_id, state, since",  # an entry paused or cancelled
    # a webhook token already taken: a replay after the move is still one
    "webhook_tokens": "provider, token, fresh_until",
}
COPY_BATCH = 5_000


def copy_ledger(source: Ledger, target: Ledger) -> dict[str, tuple[int, int]]:
    """Copy every row of ``source`` into the empty ``target`` (a SQLite ledger into
    PostgreSQL, say), keeping each delivery's order number (return paths name rows by
    it); returns, per table, (rows in the source, rows in the target afterwards). A
    driver's error (either side's) is a ``LedgerError`` naming both; nothing is copied."""
    try:
        return _copy(source, target)
    except driver_errors() as exc:
        raise target.error(f"cannot copy {source.where} here: {one_line(exc)}") from exc


# A report's id, in the tables that key by it (older ledgers kept ids of any length).
_SOURCES = {"feedback_events": "source", "bounce_scores": "source"}


def _stored(table: str, name: str, value: Any) -> Any:
    """A value as the target can keep it: a report's id short (``short_source``), and
    text without NUL, which PostgreSQL refuses (a ledger written before outside text
    was kept printable can hold one: every copy of it failed)."""
    if not isinstance(value, str):
        return value
    if _SOURCES.get(table) == name:
        value = short_source(value)
    return value.replace("\x00", "\\x00") if "\x00" in value else value


def _copy(source: Ledger, target: Ledger) -> dict[str, tuple[int, int]]:
    for table in COPIED:
        if int(target._one(f"SELECT COUNT(*) FROM {table}") or 0):
            raise target.error(f"cannot copy into a ledger that has rows ({table})")
    # One moment of the source, and nobody writing it meanwhile: a send going on during
    # a copy recorded outcomes the copy had already passed by, and they were sent again
    # from the copy. A writer waits for the copy (and gives up after the busy timeout).
    with source.transaction():
        held = int(
            source._one(
                "SELECT COUNT(*) FROM deliveries WHERE status = 'pending'"
                " AND claimed_by IS NOT NULL AND lease_until >= {now}"
            )
            or 0
        )
        if held:
            raise source.error(
                f"cannot copy while a send holds {held} of its recipients: stop it (or"
                " let it finish), then copy"
            )
        return _copy_rows(source, target)


def _copy_rows(source: Ledger, target: Ledger) -> dict[str, tuple[int, int]]:
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
                    insert,
                    (
                        {n: _stored(table, n, v) for n, v in zip(names, row, strict=True)}
                        for row in rows
                    ),
                )
                copied += len(rows)
            counts[table] = (copied, int(target._one(f"SELECT COUNT(*) FROM {table}") or 0))
        if isinstance(target.database, PostgresDatabase):
            target._q(
                "SELECT setval(pg_get_serial_sequence('deliveries', 'seq'),"
                " COALESCE((SELECT MAX(seq) FROM deliveries), 0) + 1, false)"
            )
    return counts
