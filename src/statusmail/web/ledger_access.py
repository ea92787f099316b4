"""How serve reaches the ledger for a request (``LedgerAccess``), and what it reads there
for the pages: an address's last locale and its stored preference."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from statusmail.domain import Preference
from statusmail.errors import LedgerError
from statusmail.ledger import Ledger, LedgerPool
from statusmail.ledger import exists as ledger_exists
from statusmail.project.config import is_url
from statusmail.project.locales import normalize_locale
from statusmail.web.health import ledger_problem

T = TypeVar("T")


class LedgerAccess:
    """How serve reaches the ledger for a request. On PostgreSQL, through a few
    connections kept for the life of the process (``LedgerPool``, opened and closed with
    this object as a context manager): connecting for each request answered a third to a
    sixth of SQLite's requests. A SQLite file is opened for each request (0.4-0.7 ms of
    CPU): a fresh open notices a ledger deleted or replaced under serve, and a GET never
    creates the file."""

    def __init__(self, target: Path | str) -> None:
        self.target = target
        self.pool = LedgerPool(str(target), "serve") if is_url(target) else None

    def __enter__(self) -> LedgerAccess:
        if self.pool is not None:
            self.pool.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.pool is not None:
            self.pool.close()

    def run(self, work: Callable[[Ledger], T], *, readonly: bool = False, repeat: bool = True) -> T:
        """``work`` on the ledger; on PostgreSQL, with ``repeat``, it may run twice (see
        ``LedgerPool.run``)."""
        if self.pool is not None:
            return self.pool.run(work, write=not readonly, repeat=repeat)
        with Ledger(self.target, readonly=readonly) as ledger:
            return work(ledger)

    def problem(self) -> str | None:
        """Why the ledger does not answer, for ``/readyz``; None when it does."""
        return self.pool.problem() if self.pool is not None else ledger_problem(self.target)


def ledger_locale(ledgers: LedgerAccess, address: str) -> str | None:
    """The locale the ledger last recorded for ``address`` (read only), or None."""
    if not ledger_exists(ledgers.target):
        return None
    try:
        return normalize_locale(
            ledgers.run(lambda ledger: ledger.last_locale(address), readonly=True)
        )
    except LedgerError:
        return None


def ledger_preference(ledgers: LedgerAccess, address: str) -> Preference | None:
    """What ``address`` chose on the preferences page (read only), or None."""
    if not ledger_exists(ledgers.target):
        return None

    def read(ledger: Ledger) -> Preference | None:
        return ledger.preference(address) if ledger.schema_version() >= 3 else None

    try:
        return ledgers.run(read, readonly=True)
    except LedgerError:
        return None
