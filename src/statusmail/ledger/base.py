"""What every part of the ``Ledger`` (``store``) stands on: the connection its
statements run on (transactions, the error naming the file or the server), the schema's
version, ``now_iso``, and ``guarded``: a driver error leaves a method as a
``LedgerError``, a transient one run again when it was a whole transaction."""

from __future__ import annotations

import datetime as dt
import functools
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from statusmail.errors import LedgerError
from statusmail.ledger.database import (
    RETRIES,
    PostgresDatabase,
    SqliteDatabase,
    backoff,
    driver_errors,
    first,
    one_line,
    transient,
)

P = ParamSpec("P")
T = TypeVar("T")
L = TypeVar("L", bound="LedgerBase")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def guarded(
    action: str,
) -> Callable[[Callable[Concatenate[L, P], T]], Callable[Concatenate[L, P], T]]:
    """Turn a driver error into ``LedgerError("<ledger>: cannot <action>: ...")``."""

    def decorate(
        method: Callable[Concatenate[L, P], T],
    ) -> Callable[Concatenate[L, P], T]:
        def wrapper(self: L, *args: P.args, **kwargs: P.kwargs) -> T:
            for attempt in range(RETRIES + 1):
                try:
                    return method(self, *args, **kwargs)
                except driver_errors() as exc:
                    # Run again only what was a whole transaction: one nested in a
                    # caller's is retried by the caller, with the rest of it.
                    if attempt < RETRIES and transient(exc) and not self.in_transaction():
                        time.sleep(backoff(attempt))
                        continue
                    raise self.error(f"cannot {action}: {one_line(exc)}") from exc
            raise AssertionError("unreachable")

        return functools.update_wrapper(wrapper, method)  # type: ignore[return-value]

    return decorate


class LedgerBase:
    """One connection to the ledger, opened by ``Ledger`` (``store``); each part of the
    ledger is a ``LedgerBase`` with the methods of what it stores."""

    target: str | Path
    where: str
    readonly: bool
    database: SqliteDatabase | PostgresDatabase
    dialect: str

    def error(self, message: str) -> LedgerError:
        return LedgerError(f"{self.where}: {message}")

    def close(self) -> None:
        self.database.close()

    def _q(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        return self.database.execute(sql, params)

    def _one(self, sql: str, **params: Any) -> Any:
        return first(self.database.execute(sql, params))

    def hold_addresses(self, addresses: Iterable[str]) -> None:
        """Inside a transaction: on a server, hold these addresses until it ends, so that
        a lift and a feedback pass on one address come one after the other (SQLite's
        writer lock already makes every write transaction do so). Sorted: two holders
        never wait for each other."""
        if self.database.dialect.name != "postgresql":
            return
        for address in sorted(set(addresses)):
            self._q("SELECT pg_advisory_xact_lock(hashtextextended(:a, 1874))", a=address)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.database.transaction():
            yield

    def check_same_file(self) -> None:
        self.database.check_same_file()

    def in_transaction(self) -> bool:
        return self.database.in_transaction()

    def schema_version(self) -> int:
        if not self.database.table_exists("schema_version"):
            return 0
        return int(self._one("SELECT MAX(version) FROM schema_version") or 0)
