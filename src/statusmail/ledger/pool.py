"""A few connections to a PostgreSQL ledger, kept open for the life of a process that
answers many short requests (``serve``): a request borrows one instead of connecting,
which costs the server a new backend process and the client the round trips of
authentication each time (a connection per request answered a third to a sixth of the
requests per second serve answers on SQLite; see benchmarks/serve.py).

The pool is psycopg_pool's. A connection is not checked before it is lent (that costs a
round trip on every request): a request that finds its connection broken (the server
restarted, or an administrator ended the backend) has the pool check every idle one
and runs once more on a sound one, so a restarted server, once back, costs no request.
The ledger's schema is checked on each new connection (refused when newer than this
code) and, before the process's first write, migrated, as opening a ``Ledger`` does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from statusmail.errors import LedgerError
from statusmail.ledger.database import (
    BUSY_TIMEOUT,
    CONNECTION,
    PostgresDatabase,
    describe,
    one_line,
)
from statusmail.ledger.store import Ledger

if TYPE_CHECKING:  # imported when a pool is made: SQLite users never load the driver
    import psycopg

T = TypeVar("T")
log = logging.getLogger(__name__)

POOL_SIZE = 4  # serve's requests hold a connection for a millisecond or two
# How long a request waits for a connection: a server that is down gets a 503 soon.
# Once one waited in vain, the next wait only a moment, until a connection is had again.
WAIT = BUSY_TIMEOUT
WAIT_WHILE_DOWN = 0.2
READY_WAIT = 0.5  # /readyz answers within a probe's usual timeout (1 s)
# A connection attempt that keeps failing is given up after this long (psycopg_pool
# doubles the wait between attempts until then); the next request starts afresh. So a
# server back after a long outage is used within seconds, not minutes.
RECONNECT_FOR = 10.0


class PooledDatabase(PostgresDatabase):
    """A pooled connection, in the shape the ledger's statements run on; closing it
    leaves the connection to the pool."""

    def __init__(self, url: str, connection: psycopg.Connection[Any]) -> None:
        # Not PostgresDatabase.__init__: that opens a connection of its own.
        self.url = url
        self.where = describe(url)
        self.readonly = False
        self.db = connection

    def close(self) -> None:
        return None


class PooledLedger(Ledger):
    """The ledger on a connection the pool lends (its schema already checked)."""

    def __init__(self, url: str, connection: psycopg.Connection[Any]) -> None:
        # Not Ledger.__init__: it opens a connection and checks the schema each time.
        self.target = url
        self.where = describe(url)
        self.readonly = False
        self.database = PooledDatabase(url, connection)
        self.dialect = self.database.dialect.name
        self._staged = 0
        self._analyzed = 0

    def check_schema(self) -> int:
        """The schema's version; ``LedgerError`` when it is newer than this code."""
        return self._migrate(check_only=True)


class LedgerPool:
    """Up to ``size`` connections to the ledger at ``url``, named (``application_name``,
    as ``pg_stat_activity`` shows them) as the URL says, else ``statusmail NAME <pid>``."""

    def __init__(self, url: str, name: str, *, size: int = POOL_SIZE) -> None:
        import psycopg
        import psycopg_pool
        from psycopg.conninfo import conninfo_to_dict

        self.url = url
        self.where = describe(url)  # refuses a URL libpq would misread
        try:
            named = conninfo_to_dict(url).get("application_name")
        except psycopg.Error as exc:
            raise LedgerError(f"{self.where}: {one_line(exc)}") from exc
        self.application_name = str(named or f"statusmail {name} {os.getpid()}")
        self._migrated = False
        self._down = False  # the last wait for a connection was in vain
        self._pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=size,
            open=False,
            name=name,
            kwargs=CONNECTION | {"application_name": self.application_name},
            configure=self._configure,
            timeout=WAIT,
            reconnect_timeout=RECONNECT_FOR,
        )

    def _configure(self, connection: psycopg.Connection[Any]) -> None:
        # a writer waits for another at most BUSY_TIMEOUT, as on SQLite
        connection.execute(f"SET lock_timeout = '{int(BUSY_TIMEOUT * 1000)}ms'")
        PooledLedger(self.url, connection).check_schema()

    def open(self) -> LedgerPool:
        """Start connecting (in the pool's threads: a server that is down delays nothing)."""
        self._pool.open(wait=False)
        return self

    def close(self) -> None:
        self._pool.close(timeout=5)

    def run(
        self,
        work: Callable[[PooledLedger], T],
        *,
        write: bool = False,
        repeat: bool = True,
        wait: float = WAIT,
    ) -> T:
        """``work`` on a lent connection; every failure is a ``LedgerError`` naming the
        server. With ``repeat``, ``work`` runs again on another connection when its own
        was found broken, so it must be safe to repeat (an upsert, a read); without, that
        failure is the caller's (a webhook's sender tries again later)."""
        import psycopg
        import psycopg_pool

        if self._down:
            wait = min(wait, WAIT_WHILE_DOWN)
        for attempt in range(2):
            connection = None
            try:
                with self._pool.connection(timeout=wait) as connection:
                    self._down = False
                    ledger = PooledLedger(self.url, connection)
                    if write and not self._migrated:
                        ledger.migrate()
                        self._migrated = True
                    return work(ledger)
            except psycopg_pool.PoolTimeout as exc:
                self._down = True
                raise LedgerError(
                    f"{self.where}: no connection to the ledger within {wait:g}s"
                    " (the server is down, unreachable, or refuses connections)"
                ) from exc
            except (LedgerError, psycopg.Error) as exc:
                if attempt == 0 and connection is not None and connection.broken:
                    log.warning(
                        "%s: a kept connection was lost (%s)%s",
                        self.where,
                        one_line(exc.__cause__ or exc).removeprefix(f"{self.where}: "),
                        "; trying again on another" if repeat else "",
                    )
                    self._pool.check()  # the others may be as dead (a restart)
                    if repeat:
                        continue
                if isinstance(exc, LedgerError):
                    raise
                raise LedgerError(f"{self.where}: {one_line(exc)}") from exc
        raise AssertionError("unreachable")

    def problem(self) -> str | None:
        """Why the ledger does not answer through the pool (for ``/readyz``), or None.
        When the pool has no connection to lend, a connection of its own tells why (the
        pool only keeps trying): refused, a bad password, a schema newer than this code."""
        import psycopg_pool

        try:
            self.run(PooledLedger.check_schema, wait=READY_WAIT)
        except LedgerError as exc:
            if not isinstance(exc.__cause__, psycopg_pool.PoolTimeout):
                return str(exc)
            try:
                Ledger(self.url, readonly=True).close()
            except LedgerError as why:
                return str(why)
            return f"{exc}; a new connection works: the pool is reconnecting"
        return None
