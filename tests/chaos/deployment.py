"""The deployment a chaos run stands up, all on loopback: a ledger of its own (on
PostgreSQL a fresh schema, reached by the senders as a role of its own; on SQLite a file
in the run's folder), a recording relay that also notes when each MAIL FROM came, the
sample project sending one entry to a generated list, ``serve`` for the one-click
unsubscribes, and the ``send`` and ``watch`` processes.

The shared server is never disturbed: a "restart" terminates the role's backends and
refuses the role for a moment (``CONNECTION LIMIT 0``); exhaustion lowers the role's
limit to the connections it has."""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session

from chaos.history import Arrival
from conftest import SECRET, Running, copy_sample, in_schema, spawn
from delivery_helpers import add_subscribers, point_at
from postgres_helpers import ENTRY
from smtp_server import RecordingServer

# What the role may hold when nothing is refused: every process's connections with room
# to spare, far below the shared server's max_connections.
ROLE_LIMIT = 60
HELPER = b"helper_main"  # in the command line of a helper process
BUSY = 5.0  # seconds the harness waits for a writer of the SQLite ledger


class OwnLedger:
    """The run's ledger as the harness reads it: what the senders and watchers are
    pointed at (``url``), what ``serve`` is (``admin``), and the questions the run and
    its verdict ask, the same on both engines (``execute`` takes ``%s`` parameters)."""

    url: str
    admin: str
    seq: str  # the column that orders the queue
    now: str  # the database's clock, in epoch seconds, as the leases are written

    def execute(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def pending(self) -> int:
        rows = self.execute(
            "SELECT COUNT(*) FROM deliveries WHERE entry_id = %s AND status = 'pending'", ENTRY
        )
        return int(rows[0][0])

    def sent(self) -> frozenset[str]:
        rows = self.execute(
            "SELECT address FROM deliveries WHERE entry_id = %s AND status = 'sent'", ENTRY
        )
        return frozenset(str(row[0]) for row in rows)

    def holders(self) -> set[int]:
        """The pids of the processes holding claims on the entry's pending rows (a claim
        names its process: host, pid, a random part)."""
        rows = self.execute(
            "SELECT DISTINCT claimed_by FROM deliveries WHERE entry_id = %s"
            " AND status = 'pending' AND claimed_by IS NOT NULL",
            ENTRY,
        )
        return {int(str(row[0]).rsplit(":", 2)[1]) for row in rows}

    def claims(self) -> list[str]:
        """Who holds the pending rows and for how much longer (the ledger's clock): what
        a run that does not finish is stuck on."""
        rows = self.execute(
            "SELECT COALESCE(claimed_by, '(nobody)'), COUNT(*),"
            f" MIN(lease_until - {self.now}),"
            " MIN(claim_epoch), MAX(attempts), MIN(selection)"
            " FROM deliveries WHERE entry_id = %s AND status = 'pending' GROUP BY 1",
            ENTRY,
        )
        return [
            f"{holder}: {n} rows, lease {'-' if left is None else f'{left:.1f}s'} left,"
            f" epoch {epoch}, attempts {attempts}, selection {selection}"
            for holder, n, left, epoch, attempts, selection in rows
        ]

    def front(self) -> list[str]:
        """The recipients in senders' hands now (claimed, pending), in queue order; else
        the next pending ones."""
        rows = self.execute(
            "SELECT address FROM deliveries WHERE entry_id = %s AND status = 'pending'"
            f" ORDER BY claimed_by IS NULL, {self.seq} LIMIT 64",
            ENTRY,
        )
        return [str(row[0]) for row in rows]

    def selected(self) -> bool:
        """Whether the entry's selection is complete (else a sender is still at it)."""
        rows = self.execute(
            "SELECT generation = selected_generation FROM entries WHERE entry_id = %s", ENTRY
        )
        return len(rows) == 1 and bool(rows[0][0])

    def entry_state(self) -> list[tuple[Any, ...]]:
        return self.execute(
            "SELECT generation, selected_generation, list_rows FROM entries WHERE entry_id = %s",
            ENTRY,
        )

    def everyone(self) -> list[tuple[str, str | None, str | None]]:
        """Every row of the entry: the address it is keyed on and its other spellings."""
        rows = self.execute(
            "SELECT address, email, ascii_email FROM deliveries WHERE entry_id = %s", ENTRY
        )
        return [(str(a), e, ascii_email) for a, e, ascii_email in rows]

    def skipped_otherwise(self) -> list[tuple[str, str]]:
        """The rows skipped for another reason than an unsubscribe."""
        rows = self.execute(
            "SELECT address, detail FROM deliveries WHERE entry_id = %s AND status = 'skipped'"
            " AND detail <> 'suppressed: unsubscribed'",
            ENTRY,
        )
        return [(str(address), str(detail)) for address, detail in rows]


@dataclass
class PostgresLedger(OwnLedger):
    """A schema made for the run, reached as ``role`` (the senders and watchers) or as
    the server's administrator (``admin``: the harness and ``serve``)."""

    admin: str  # the schema's URL as the administrator
    url: str  # the same schema as the role
    role: str
    _conn: psycopg.Connection[tuple[Any, ...]] | None = None
    seq = "seq"
    now = "extract(epoch from clock_timestamp())"

    def execute(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """``sql`` on the harness's own connection, made again once if it was lost (the
        shared server's other users may end it)."""
        for again in (False, True):
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self.admin, autocommit=True, connect_timeout=5)
                cursor = self._conn.execute(sql, params)
                return list(cursor.fetchall()) if cursor.description else []
            except psycopg.OperationalError:
                if again:
                    raise
                self.close()
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def limit(self, connections: int) -> None:
        self.execute(f"ALTER ROLE {self.role} CONNECTION LIMIT {connections}")

    def connections(self) -> int:
        rows = self.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE usename = %s", self.role)
        return int(rows[0][0])

    def terminate(self) -> int:
        """End every backend of the role, as a server restart does; how many."""
        rows = self.execute(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = %s",
            self.role,
        )
        return int(rows[0][0])


@dataclass
class SqliteLedger(OwnLedger):
    """A ledger file in the run's folder, which everything opens by its path (``serve``
    too); the harness reads it read-only, waiting up to ``BUSY`` seconds for a writer."""

    path: Path
    url: str = field(init=False)
    admin: str = field(init=False)
    _conn: sqlite3.Connection | None = None
    seq = "rowid"
    now = "((julianday('now') - 2440587.5) * 86400.0)"  # statusmail's own SqliteDialect

    def __post_init__(self) -> None:
        self.url = self.admin = str(self.path)

    def execute(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if self._conn is None:
            self._conn = sqlite3.connect(
                f"{self.path.as_uri()}?mode=ro", uri=True, timeout=BUSY, isolation_level=None
            )
        return list(self._conn.execute(sql.replace("%s", "?"), params).fetchall())

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@contextlib.contextmanager
def own_ledger(engine: str, server: str, folder: Path) -> Iterator[OwnLedger]:
    """The run's ledger: on PostgreSQL a fresh schema on ``server`` and a role for it
    (both dropped after); on SQLite a file in ``folder``, which goes with it."""
    if engine == "sqlite":
        ledger = SqliteLedger(folder / "ledger.sqlite3")
        try:
            yield ledger
        finally:
            ledger.close()
    else:
        with own_schema(server) as schema:
            yield schema


@contextlib.contextmanager
def own_schema(server: str) -> Iterator[PostgresLedger]:
    """A fresh schema on ``server`` and a role for it; both dropped after."""
    token = secrets.token_hex(4)
    schema, role = f"statusmail_chaos_{token}", f"statusmail_chaos_{token}"
    parts = urlsplit(server)
    host = parts.netloc.rsplit("@", 1)[-1]
    as_role = urlunsplit(parts._replace(netloc=f"{role}@{host}"))
    with psycopg.connect(server, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        admin.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT {ROLE_LIMIT}")
        admin.execute(f"GRANT ALL ON SCHEMA {schema} TO {role}")
    ledger = PostgresLedger(in_schema(server, schema), in_schema(as_role, schema), role)
    try:
        yield ledger
    finally:
        ledger.close()
        with psycopg.connect(server, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f"ALTER ROLE {role} CONNECTION LIMIT 0")
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            admin.execute(f"DROP SCHEMA {schema} CASCADE")
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")


class Relay(RecordingServer):
    """The tests' recording relay, also noting each message's MAIL FROM time and the
    moment its last reply on that session before it was sent: an unsubscribe answered
    once the message's attempt had begun may still let it through (README), and the
    sender asks the ledger only after it has read that reply, so the checker needs both.
    Arrivals are kept as ``Arrival`` rows (the messages' bytes are not kept: a long run
    accepts thousands)."""

    def __init__(self) -> None:
        super().__init__(data_reply=self._accepted)
        self.arrivals: list[Arrival] = []

    def start(self) -> Relay:
        super().start()
        # A handler hook, on the handler every new connection takes its hooks from
        assert self._controller is not None
        handler = self._controller.handler
        handler.handle_MAIL = self._mail
        for verb in ("HELO", "RSET", "NOOP", "DATA"):
            setattr(handler, f"handle_{verb}", _stamped(getattr(handler, f"handle_{verb}", None)))
        offer = handler.handle_EHLO

        async def ehlo(
            server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
        ) -> list[str]:  # five parameters: aiosmtpd tells the EHLO hook's kind by them
            offered: list[str] = await offer(server, session, envelope, hostname, responses)
            session.replied_at = time.monotonic()  # type: ignore[attr-defined]
            return offered

        handler.handle_EHLO = ehlo
        return self

    def __enter__(self) -> Relay:
        return self.start()

    @staticmethod
    async def _mail(
        server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        envelope.mail_from = address  # what aiosmtpd does itself without the hook
        envelope.mail_options.extend(options)
        envelope.mail_at = time.monotonic()  # type: ignore[attr-defined]
        envelope.floor = getattr(session, "replied_at", 0.0)  # type: ignore[attr-defined]
        return "250 OK"

    def _accepted(self, n: int, envelope: Envelope) -> None:
        # Called just before the message is taken (nothing awaits in between)
        raw = envelope.original_content or b""
        headers = BytesHeaderParser(policy=compat32).parsebytes(raw.split(b"\r\n\r\n", 1)[0])
        arrival = Arrival(
            recipient=envelope.rcpt_tos[0].lower(),
            message_id=str(headers["Message-ID"]).strip(),
            mail_at=envelope.mail_at,  # type: ignore[attr-defined]
            at=time.monotonic(),
            floor=envelope.floor,  # type: ignore[attr-defined]
        )
        with self._lock:
            self.arrivals.append(arrival)
            self._messages.clear()  # the bytes are not needed: memory stays flat


def _stamped(hook: Callable[..., Awaitable[Any]] | None) -> Callable[..., Awaitable[Any]]:
    """``hook``, noting on the session when its reply was decided: before aiosmtpd sends
    it, so before the sender can have read it. A verb without a hook answers aiosmtpd's
    own reply (what ``MISSING`` means)."""

    async def stamped(server: SMTP, session: Session, envelope: Envelope, *args: Any) -> Any:
        reply = MISSING if hook is None else await hook(server, session, envelope, *args)
        session.replied_at = time.monotonic()  # type: ignore[attr-defined]
        return reply

    return stamped


def make_project(
    folder: Path, port: int, recipients: int, *, dkim: bool = False, **sending: Any
) -> Path:
    """The sample project sending ``ENTRY`` (its only ready entry) to the sample's
    recipients and ``recipients`` generated ones through the relay at ``port``; with
    ``dkim``, signed with an RSA and an Ed25519 key made for it."""
    config = copy_sample(folder)
    add_subscribers(config, recipients)
    point_at(config, port, timeout=10, **sending)
    if dkim:
        from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

        from dkim_helpers import Keys, pem, sign_with  # (imports dkimpy: only when asked)

        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        # (no DNS records: nothing here verifies the signatures)
        sign_with(config, Keys(pem(rsa_key), pem(ed25519.Ed25519PrivateKey.generate()), {}))
    for entry in (folder / "updates").glob("*.yaml"):
        if entry.stem != ENTRY:  # kept for the thread, never sent
            text = entry.read_text(encoding="utf-8")
            entry.write_text(text.replace("status: ready", "status: draft"), encoding="utf-8")
    return config


@dataclass
class Process:
    """A ``send`` or ``watch`` process of the run, and what happened to it."""

    kind: str  # "sender" | "watcher"
    running: Running
    started: float
    killed: bool = False
    cuts: list[float] = field(default_factory=list)  # when its connections were cut
    ended: float | None = None
    code: int | None = None

    @property
    def pid(self) -> int:
        return self.running.pid

    def alive(self) -> bool:
        return self.ended is None and self.running.process.poll() is None


def helpers(pid: int) -> list[int]:
    """The helper processes (``sending.processes``) that the process ``pid`` runs now:
    its children started as ``delivery/processes.py`` starts them (a DKIM signer process
    is a child too, and is not one)."""
    found = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in children.read_text().split():
                with contextlib.suppress(OSError):
                    if HELPER in Path(f"/proc/{child}/cmdline").read_bytes():
                        found.append(int(child))
    return found


def start(kind: str, config: Path, ledger: OwnLedger, takeover: float) -> Process:
    env = {"STATUSMAIL_UNSUBSCRIBE_SECRET": SECRET, "STATUSMAIL_LEDGER": ledger.url}
    if kind == "sender":
        running = spawn(config, "send", ENTRY, "--yes", env=env)
    else:
        running = spawn(
            config, "watch", "--poll-interval", "0.5", "--takeover", str(takeover), env=env
        )
    return Process(kind, running, time.monotonic())
