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

``Ledger`` is built from what it stores: ``staging`` (a selection), ``outcomes``
(delivering and what it came to), ``suppressions``, ``events`` (feedback read back) and
``preferences``, each on the connection of ``base``; here it is opened (and migrated),
and a ledger at a path is read without being written.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from statusmail.domain import Preference
from statusmail.errors import LedgerError, SchemaTooNew
from statusmail.ledger.base import guarded, now_iso
from statusmail.ledger.database import (
    PostgresDatabase,
    SqliteDatabase,
    connect,
    describe,
    driver_errors,
    one_line,
    transient,
)
from statusmail.ledger.events import FeedbackEvents
from statusmail.ledger.outcomes import Outcomes
from statusmail.ledger.preferences import Preferences
from statusmail.ledger.schema import MIGRATIONS, SCHEMA_VERSION, statements
from statusmail.ledger.staging import Selecting
from statusmail.ledger.suppressions import Suppressions
from statusmail.project.config import is_url

log = logging.getLogger(__name__)

# How long a process opening a ledger waits for another one migrating it (a long ledger's
# upgrade takes seconds to minutes); past it, the busy ledger is the error.
MIGRATION_WAIT = 600.0


class Ledger(Selecting, Outcomes, Suppressions, FeedbackEvents, Preferences):
    """One connection to the ledger at ``target`` (a file or a ``postgresql://`` URL),
    migrated on opening unless ``readonly``."""

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
            raise self.error(f"cannot open the ledger: {one_line(exc)}") from exc
        except LedgerError:
            self.database.close()
            raise

    @property
    def path(self) -> Path | None:
        return None if is_url(self.target) else Path(self.target)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema ------------------------------------------------------------------

    @guarded("migrate the schema")
    def migrate(self) -> int:
        """Apply the migrations this ledger lacks; refuse one newer than this code."""
        return self._migrate(check_only=False)

    def _migrate(self, *, check_only: bool) -> int:
        """As ``migrate``; waiting (up to ``MIGRATION_WAIT``) for another process that
        is migrating: each try of the lock gives up after the ledger's busy timeout, and
        a migration of a long ledger takes longer (the others failed after 2 s)."""
        deadline = time.monotonic() + MIGRATION_WAIT
        said = False
        while True:
            try:
                return self._migrate_once(check_only=check_only)
            except driver_errors() as exc:
                if not _busy(exc) or time.monotonic() > deadline:
                    raise
                if not said:
                    said = True
                    log.warning(
                        "%s: waiting for another statusmail that is upgrading the ledger",
                        self.where,
                        extra={"event": "ledger_migration_wait"},
                    )

    def _migrate_once(self, *, check_only: bool) -> int:
        version = self._known(self.schema_version())
        if check_only or version == SCHEMA_VERSION:
            return version
        with self.transaction():
            # One migrating process at a time (SQLite: BEGIN IMMEDIATE; PostgreSQL: an
            # advisory lock); the others wait here, then find it done, or newer than
            # they know (a newer statusmail migrated meanwhile: review).
            if isinstance(self.database, PostgresDatabase):
                self._q("SELECT pg_advisory_xact_lock(7356283701)")
            version = self._known(self.schema_version())
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

    def _known(self, version: int) -> int:
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{self.where}: the ledger's schema is version {version}, newer than this "
                f"statusmail knows ({SCHEMA_VERSION}); upgrade statusmail"
            )
        return version


def _busy(exc: BaseException) -> bool:
    """Another process holds the ledger's writer lock (SQLite) or the migration's
    advisory lock (PostgreSQL, past ``lock_timeout``)."""
    return transient(exc) or "locked" in str(exc) or "busy" in str(exc)


@contextmanager
def read_preferences(target: str | Path) -> Iterator[Callable[[str], Preference | None]]:
    """The stored preferences of the ledger at ``target``, read only (dry runs)."""
    if not exists(target):
        yield lambda _address: None
        return
    with Ledger(target, readonly=True) as ledger, ledger.preference_lookup() as lookup:
        yield lookup


def read_suppressions(target: str | Path) -> set[str]:
    """The suppression list of the ledger at ``target``, read only; empty if there is none."""
    if not is_url(target) and not Path(target).exists():
        return set()
    with Ledger(target, readonly=True) as ledger:
        return ledger.suppressed() if ledger.schema_version() else set()


@contextmanager
def reading(target: str | Path) -> Iterator[Ledger]:
    """The ledger at ``target`` for a report: read only, never created nor migrated. One
    that is not there yet, or holds no schema (a new server database, a first migration
    that was killed), reads as an empty ledger: nothing was ever sent."""
    if exists(target):
        with Ledger(target, readonly=True) as ledger:
            if ledger.schema_version() > 0:
                yield ledger
                return
    with tempfile.TemporaryDirectory() as scratch, Ledger(Path(scratch) / "empty.db") as empty:
        yield empty


def exists(target: str | Path) -> bool:
    """Whether there is a ledger at ``target`` to read (a server always counts)."""
    return is_url(target) or Path(target).exists()
