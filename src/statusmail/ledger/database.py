"""The two engines a ledger lives in: an embedded SQLite file, or a PostgreSQL server.

The ledger's SQL is written once, in the subset both engines speak, with ``:name``
parameters and a few ``{tokens}`` where the dialects differ (the row order column, the
clock). A ``Database`` runs it on one connection and turns every driver error into a
``LedgerError`` naming the file or the server.
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs

from statusmail.errors import LedgerError
from statusmail.project.config import is_url, sqlite_durability

# A writer waits at most this long for another (a group commit or an enqueue batch takes
# milliseconds), so the unsubscribe endpoint never waits on a send for long.
BUSY_TIMEOUT = 2.0

# PRAGMA synchronous for each ``ledger.durability``, in WAL mode: NORMAL syncs the log
# only before a checkpoint copies it into the file (a checkpoint runs once the log holds
# about 1,000 pages), so a power loss can take back the commits made since; FULL syncs
# it at the end of every commit, so what was committed stays.
SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}

# Every connection to PostgreSQL (the ledger's, the senders' pool, the locks'). No
# server-side prepared statements: their generic plan is made once, early in a send,
# when the queue is still nearly empty (a sequential scan looks cheapest), and kept
# until the table is next analyzed, so every claim and outcome would scan the whole
# entry. Planned afresh, each statement uses the indexes (one sender at 20,000
# recipients: 3x the msg/s).
#
# A server that stops answering must not hold anyone forever: TCP keepalives (libpq's
# side) notice a peer gone from the network within about 11 s, and unacknowledged data
# ends the connection after 10 s (tcp_user_timeout), where a query would otherwise wait
# for the kernel's 15 minutes of retransmissions.
CONNECTION: dict[str, Any] = {
    "autocommit": True,
    "connect_timeout": 10,
    "prepare_threshold": None,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}

Params = Mapping[str, Any]
Row = tuple[Any, ...]


def describe(target: str | Path) -> str:
    """The ledger's name for messages: the file, or the server without the user name and
    password. Every connection to a server starts here, so a URL the driver would misread
    is refused first, in one line that shows no part of the password (see ``server_of``)."""
    if not is_url(target):
        return str(target)
    server = server_of(str(target))
    # (deployments in schemas of one database: which one a message is about). The query
    # is read after the path, where no password is.
    query = str(target).partition("://")[2].partition("/")[2].partition("?")[2]
    schema = _SEARCH_PATH.search(parse_qs(query).get("options", [""])[-1])
    return f"{server} (schema {schema.group(1)})" if schema else server


_SEARCH_PATH = re.compile(r"-c\s*search_path\s*=\s*([^\s,]+)")


_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})|%00")


def server_of(url: str) -> str:
    """``postgresql://HOST:PORT[,HOST:PORT…]/DATABASE`` of a ledger URL, read the way libpq
    reads it (credentials end at the first ``@`` before the first ``/``); raises
    ``LedgerError`` for a URL libpq would refuse or misread, such as a password holding
    ``@`` or ``/`` unencoded (libpq would take the rest of it for the host name or port
    and show it in its error), a bad port, or a bad IPv6 literal."""
    scheme, _, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    database = tail.partition("?")[0]
    if authority.count("@") > 1:
        raise _bad_url(scheme, "its user name or password holds '@': write it as %40")
    if "@" in tail:
        raise _bad_url(
            scheme,
            "its user name or password holds '/' (write it as %2F), or an '@' stands after "
            "the host (write it as %40)",
        )
    authority = authority.rpartition("@")[2]
    if _PERCENT.search(url):
        raise _bad_url(scheme, "a '%' in it starts no %XX escape, or makes %00 (write % as %25)")
    if " " in url or not url.isprintable():  # (no other space is printable)
        # libpq quotes what it cannot read back in its error: a password with a space
        raise _bad_url(scheme, "it holds a space or a control character (write a space as %20)")
    hosts = authority.partition("?")[0]
    shown = f"{scheme}://{hosts}{slash}{database}"
    for host in hosts.split(","):
        problem = _host_problem(host)
        if problem:
            raise _bad_url(shown, problem)
    return f"postgresql://{hosts or 'localhost'}{slash}{database}"


def _host_problem(host: str) -> str | None:
    """What is wrong with one ``HOST[:PORT]`` of a URL's host list, if anything."""
    port = ""
    if host.startswith("["):
        literal, closed, after = host[1:].partition("]")
        if not closed:
            return f"the IPv6 address {host} lacks its closing ']'"
        try:
            ipaddress.IPv6Address(literal.replace("%25", "%"))
        except ValueError:
            return f"[{literal}] is not an IPv6 address"
        if after and not after.startswith(":"):
            return f"only ':PORT' may follow the IPv6 address [{literal}], not {after!r}"
        port = after[1:]
    elif host.count(":") > 1:
        return f"{host}: an IPv6 address goes in brackets, [address]:port"
    else:
        port = host.partition(":")[2]
    if port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        return f"the port {port!r} is not a number from 1 to 65535"
    return None


def _bad_url(shown: str, problem: str) -> LedgerError:
    """``shown`` is the URL without its credentials, or only its scheme when they cannot
    be told apart from the rest."""
    return LedgerError(f"the ledger URL {shown}{'' if '/' in shown else '://…'}: {problem}")


_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


class Dialect:
    """What differs between the engines, as text the SQL can include."""

    name: str
    seq: str  # the column that orders a table's rows
    now: str  # the database's clock, in epoch seconds
    stamp: str  # the database's clock as ``now_iso`` writes it (text, UTC, seconds)
    hour_ago: str  # the same, an hour ago
    greatest: str  # the larger of two values

    def sql(self, text: str) -> str:
        return (
            text.replace("{seq}", self.seq)
            .replace("{now}", self.now)
            .replace("{stamp}", self.stamp)
            .replace("{hour_ago}", self.hour_ago)
            .replace("{greatest}", self.greatest)
        )


class SqliteDialect(Dialect):
    name = "sqlite"
    seq = "rowid"
    now = "((julianday('now') - 2440587.5) * 86400.0)"
    stamp = "strftime('%Y-%m-%dT%H:%M:%S+00:00', 'now')"
    hour_ago = "strftime('%Y-%m-%dT%H:%M:%S+00:00', 'now', '-1 hour')"
    greatest = "MAX"


class PostgresDialect(Dialect):
    name = "postgresql"
    seq = "seq"
    now = "extract(epoch from clock_timestamp())::float8"
    stamp = "to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"+00:00\"')"
    hour_ago = (
        "to_char(clock_timestamp() AT TIME ZONE 'UTC' - interval '1 hour',"
        ' \'YYYY-MM-DD"T"HH24:MI:SS"+00:00"\')'
    )
    greatest = "GREATEST"

    def sql(self, text: str) -> str:
        return _PARAM.sub(r"%(\1)s", super().sql(text))


class Database(Protocol):
    dialect: Dialect
    where: str  # the file or the server, for messages

    def execute(self, sql: str, params: Params | None = None) -> list[Row]: ...

    def executemany(self, sql: str, rows: Iterable[Params]) -> None: ...

    def transaction(self) -> Any: ...

    def in_transaction(self) -> bool: ...

    def table_exists(self, name: str) -> bool: ...

    def close(self) -> None: ...


def _read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection. On a read-only file system SQLite cannot make the shared
    memory file a WAL ledger is read through: a ledger left cleanly there (no write-ahead
    log to replay) is then read as immutable, which needs none."""
    db = sqlite3.connect(
        f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT, isolation_level=None
    )
    try:
        db.execute("PRAGMA schema_version").fetchone()  # (the open is lazy: this does it)
        return db
    except sqlite3.OperationalError:
        db.close()
        wal = Path(f"{path}-wal")
        frozen = os.statvfs(path.parent).f_flag & os.ST_RDONLY
        if not frozen or (wal.exists() and wal.stat().st_size):
            raise
    return sqlite3.connect(
        f"file:{path}?mode=ro&immutable=1", uri=True, timeout=BUSY_TIMEOUT, isolation_level=None
    )


class SqliteDatabase:
    dialect: Dialect = SqliteDialect()

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.where = str(path)
        try:
            if readonly:
                self.db = _read_only(path)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
                self._write_ahead_log()
                self.db.execute(f"PRAGMA synchronous={SYNCHRONOUS[sqlite_durability(path)]}")
                self.db.execute("PRAGMA temp_store=FILE")
            self._identity = self._stat()
        except sqlite3.Error as exc:
            raise LedgerError(f"{path}: cannot open the ledger: {one_line(exc)}") from exc
        except OSError as exc:
            raise LedgerError(f"{path}: cannot open the ledger: {exc.strerror or exc}") from exc

    def _write_ahead_log(self) -> None:
        """WAL mode, once per file. Connections switching a new file at the same moment
        can each hold what the other needs: SQLite then refuses one at once ("database
        is locked") instead of waiting, so the switch is tried again until the busy
        timeout."""
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                if self.db.execute("PRAGMA journal_mode").fetchall() != [("wal",)]:
                    self.db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _stat(self) -> tuple[int, int]:
        st = os.stat(self.path)
        return st.st_dev, st.st_ino

    def check_same_file(self) -> None:
        """A ledger deleted or replaced under a running process would lose its records:
        stop instead (the open connection would go on writing to the unlinked file)."""
        try:
            same = self._stat() == self._identity
        except OSError:
            same = False
        if not same:
            raise LedgerError(f"{self.path}: the ledger file was deleted or replaced while in use")

    def execute(self, sql: str, params: Params | None = None) -> list[Row]:
        return self.db.execute(self.dialect.sql(sql), params or {}).fetchall()

    def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        self.db.executemany(self.dialect.sql(sql), rows)

    def iterate(self, sql: str, size: int) -> Iterator[list[Row]]:
        """The rows of a query, ``size`` at a time (a table too big to hold at once)."""
        cursor = self.db.execute(self.dialect.sql(sql))
        while rows := cursor.fetchmany(size):
            yield rows

    def transaction(self) -> AbstractContextManager[None]:
        return self._within("BEGIN IMMEDIATE")

    def local_transaction(self) -> AbstractContextManager[None]:
        """A transaction that takes no lock on the ledger until it writes (for the
        connection's own temporary tables)."""
        return self._within("BEGIN")

    @contextmanager
    def _within(self, begin: str) -> Iterator[None]:
        self.db.execute(begin)
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def in_transaction(self) -> bool:
        return self.db.in_transaction

    def table_exists(self, name: str) -> bool:
        rows = self.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :name", {"name": name}
        )
        return bool(rows)

    def columns(self, table: str) -> set[str]:
        return {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}

    def close(self) -> None:
        self.db.close()


class PostgresDatabase:
    dialect: Dialect = PostgresDialect()

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        import psycopg

        self.url = url
        self.where = describe(url)
        self.readonly = readonly
        try:
            self.db = psycopg.connect(url, **CONNECTION)
            if readonly:
                self.db.execute("SET default_transaction_read_only = on")
            # a writer waits for another at most BUSY_TIMEOUT, as on SQLite
            self.db.execute(f"SET lock_timeout = '{int(BUSY_TIMEOUT * 1000)}ms'")
        except psycopg.Error as exc:
            raise LedgerError(f"{self.where}: cannot open the ledger: {one_line(exc)}") from exc

    def check_same_file(self) -> None:
        return None  # a server's database cannot be deleted from under a connection unseen

    def execute(self, sql: str, params: Params | None = None) -> list[Row]:
        cursor = self.db.execute(self.dialect.sql(sql), params or {})
        return list(cursor.fetchall()) if cursor.description is not None else []

    def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        with self.db.cursor() as cursor:
            cursor.executemany(self.dialect.sql(sql), rows)

    def iterate(self, sql: str, size: int) -> Iterator[list[Row]]:
        """The rows of a query, ``size`` at a time."""
        with self.db.cursor() as cursor:
            cursor.execute(self.dialect.sql(sql))
            while rows := cursor.fetchmany(size):
                yield rows

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.db.transaction():
            yield

    local_transaction = transaction

    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return self.db.info.transaction_status != TransactionStatus.IDLE

    def table_exists(self, name: str) -> bool:
        # The catalog, not to_regclass(): a session that looked the name up before can
        # keep that miss after another session created the table (seen in migrations).
        rows = self.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables"
            " WHERE schemaname = current_schema() AND tablename = :name)",
            {"name": name},
        )
        return bool(rows[0][0])

    def columns(self, table: str) -> set[str]:
        rows = self.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_name = :t AND table_schema = current_schema()",
            {"t": table},
        )
        return {row[0] for row in rows}

    def close(self) -> None:
        self.db.close()


def connect(target: str | Path, *, readonly: bool = False) -> SqliteDatabase | PostgresDatabase:
    if is_url(target):
        return PostgresDatabase(str(target), readonly=readonly)
    return SqliteDatabase(Path(target), readonly=readonly)


def driver_errors() -> tuple[type[BaseException], ...]:
    """The exceptions the engines' drivers raise, for turning into ``LedgerError``."""
    errors: list[type[BaseException]] = [sqlite3.Error]
    try:
        import psycopg
        import psycopg_pool

        errors += [psycopg.Error, psycopg_pool.PoolTimeout]
    except ImportError:  # pragma: no cover - psycopg is a dependency
        pass
    return tuple(errors)


RETRIES = 5  # for a transaction that lost a deadlock or waited too long for a row lock


def transient(exc: BaseException) -> bool:
    """A PostgreSQL error that running the same transaction again can cure: the server
    chose it as a deadlock's victim, a row lock was not had within ``lock_timeout``, or
    a serialization failure. (SQLite waits for its one writer lock instead.)"""
    sqlstate = getattr(exc, "sqlstate", None)
    return sqlstate in {"40P01", "55P03", "40001"}


def backoff(attempt: int) -> float:
    """Seconds to wait before the next try: short, growing, jittered so the rivals part."""
    return random.uniform(0.01, 0.05) * (1 << attempt)


def first(rows: Sequence[Row]) -> Any:
    """The first column of the first row, or None."""
    return rows[0][0] if rows else None


# What PostgreSQL says when max_connections, or a role's or a database's CONNECTION LIMIT,
# is reached (at connection time libpq gives the text, not the SQLSTATE 53300).
TOO_MANY = ("too many clients", "too many connections")


def one_line(exc: BaseException) -> str:
    """A driver's error as one line: libpq's messages run over several (a hint on the
    next line, one attempt per address)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if any(words in text for words in TOO_MANY):
        return f"the server refuses more connections ({text})"
    return text
