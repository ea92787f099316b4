"""The unsubscribe wins every race: addresses unsubscribed through ``serve`` (the one-click
POST) at the sending front, while two senders share an entry on the real PostgreSQL
server, get nothing after their POST was answered.

The front is held still by the deployment's rate limit: the test locks its row, so every
worker of both senders waits for its next slot with its next recipient in hand. Those
recipients are unsubscribed, and the lock let go once every POST was answered: a check
made before the wait would send them all; the check made after it skips them.

On a server the check is a round trip, so it is asked as the attempt starts and awaited
just before the end of DATA: its answer overlaps MAIL FROM, RCPT TO and DATA. The second
test holds the check's answer back (the suppressions table locked) and shows the relay
taking MAIL FROM and RCPT TO meanwhile, and a "suppressed" answer abandoning the
transaction: nothing delivered, the row skipped.

The last test (SQLite) holds a connection's reopening instead: the checks come after
the session is open, just before MAIL FROM, so an unsubscribe answered while it reopens
wins too."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import yaml

from conftest import SECRET, UPDATE_AUDIENCE, one_click, serving, wait_for
from delivery_helpers import ledger_rows, point_at, send
from postgres_helpers import ENTRY, configure, finish, query, recipient_of, senders
from smtp_server import RecordingServer
from statusmail.domain import SuppressionReason
from statusmail.ledger import Ledger

SENDERS = 2
CONCURRENCY = 2  # per sender


def waiting_for_a_slot(postgres: str) -> int:
    """How many sessions wait for the rate limit's row (this test holds it)."""
    rows = query(
        postgres,
        "SELECT COUNT(DISTINCT l.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.relation = 'limiters'::regclass AND a.wait_event_type = 'Lock'",
    )
    return int(rows[0][0])


def in_hand(postgres: str, arrived: set[str]) -> list[str]:
    """Each worker's recipient: the first ``CONCURRENCY`` of each sender's claim in queue
    order that the relay has not seen (a worker waiting for its slot has nothing in
    flight, and what it skipped before is recorded)."""
    rows = query(
        postgres,
        "SELECT address, claimed_by FROM deliveries WHERE entry_id = %s AND status = 'pending'"
        " AND claimed_by IS NOT NULL ORDER BY seq",
        ENTRY,
    )
    taken: dict[str, list[str]] = {}
    for address, sender in rows:
        hand = taken.setdefault(sender, [])
        if address not in arrived and len(hand) < CONCURRENCY:
            hand.append(address)
    return [address for hand in taken.values() for address in hand]


@contextmanager
def sending(project: Path, postgres: str, count: int) -> Iterator[list[subprocess.Popen[str]]]:
    """``count`` senders of ENTRY on the ledger; whichever is still running at the end is
    killed."""
    processes = senders(project, postgres, count, "send", ENTRY, "--yes")
    try:
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()


def settled(postgres: str, addresses: list[str]) -> None:
    """Wait until none of ``addresses`` is pending any more."""
    pending = "SELECT COUNT(*) FROM deliveries WHERE status = 'pending' AND address = ANY(%s)"
    wait_for(lambda: query(postgres, pending, addresses) == [(0,)], what="their outcomes")


def skipped(postgres: str) -> dict[str, str]:
    rows = query(
        postgres,
        "SELECT address, detail FROM deliveries WHERE entry_id = %s AND status = 'skipped'",
        ENTRY,
    )
    return dict(rows)


def unsubscribe_the_front(postgres: str, port: int, relay: RecordingServer) -> dict[str, float]:
    """With every worker held at the rate limit, unsubscribe the recipients they hold,
    then let them go; each address with the moment its POST was answered (monotonic,
    the relay's clock)."""
    answered: dict[str, float] = {}
    with psycopg.connect(postgres) as limiter:  # one transaction, until the commit
        limiter.execute("SELECT tat FROM limiters WHERE name = 'send' FOR UPDATE")
        wait_for(
            lambda: waiting_for_a_slot(postgres) == SENDERS * CONCURRENCY,
            what="every worker to wait for its slot",
        )
        front = in_hand(postgres, {recipient_of(m) for m in relay.messages})
        assert len(front) == SENDERS * CONCURRENCY
        for address in front:
            assert one_click(port, address) == 200
            answered[address] = time.monotonic()
        limiter.commit()
    return answered


def test_no_message_leaves_after_its_unsubscribe_was_answered(project: Path, postgres: str) -> None:
    with RecordingServer() as relay:
        configure(project, relay.port, 40, rate=20, concurrency=CONCURRENCY)
        with (
            sending(project, postgres, SENDERS) as processes,
            serving(project, SECRET, env={"STATUSMAIL_LEDGER": postgres}) as port,
        ):
            wait_for(lambda: relay.messages, what="the first message")  # the limiter is made
            answered = unsubscribe_the_front(postgres, port, relay)
            settled(postgres, list(answered))
            left = query(postgres, "SELECT COUNT(*) FROM deliveries WHERE status = 'pending'")
            assert left[0][0] > 0  # still sending: a signal is what stops them
            for process in processes:
                process.send_signal(signal.SIGTERM)
            codes = finish(processes)
        messages = relay.messages
    assert codes == [4] * SENDERS  # stopped by the signal, the rest pending
    # The relay's arrival time of each message against its recipient's 200
    late = [
        (recipient_of(m), round(m.at - answered[recipient_of(m)], 3))
        for m in messages
        if recipient_of(m) in answered and m.at > answered[recipient_of(m)]
    ]
    assert late == []  # (address, seconds after its 200)
    assert set(Counter(recipient_of(m) for m in messages).values()) == {1}
    assert skipped(postgres) == dict.fromkeys(answered, "suppressed: unsubscribed")


def test_the_check_overlaps_the_transaction_and_a_suppressed_answer_abandons_it(
    project: Path, postgres: str
) -> None:
    with RecordingServer() as relay:
        configure(project, relay.port, 20, rate=20, concurrency=CONCURRENCY)
        with sending(project, postgres, 1) as processes:
            wait_for(lambda: relay.messages, what="the first message")  # the limiter is made
            with psycopg.connect(postgres) as limiter, psycopg.connect(postgres) as table:
                limiter.execute("SELECT tat FROM limiters WHERE name = 'send' FOR UPDATE")
                wait_for(
                    lambda: waiting_for_a_slot(postgres) == CONCURRENCY,
                    what="every worker to wait for its slot",
                )
                front = in_hand(postgres, {recipient_of(m) for m in relay.messages})
                assert len(front) == CONCURRENCY
                # Every check waits for this transaction; it suppresses the front.
                table.execute("LOCK TABLE suppressions IN ACCESS EXCLUSIVE MODE")
                for address in front:
                    table.execute(
                        "INSERT INTO suppressions (address, reason, detail, created_at)"
                        " VALUES (%s, 'unsubscribed', 'test', '2026-12-06T00:00:00+00:00')",
                        (address,),
                    )
                limiter.commit()
                wait_for(
                    lambda: set(front) <= set(relay.accepted_rcpts),
                    what="MAIL FROM and RCPT TO of the front while their checks wait",
                )
                table.commit()
            settled(postgres, front)
            processes[0].send_signal(signal.SIGTERM)
            codes = finish(processes)
        messages = relay.messages
    assert codes in ([0], [4])  # done, or stopped by the signal with the rest pending
    assert not {recipient_of(m) for m in messages} & set(front)
    assert set(Counter(recipient_of(m) for m in messages).values()) == {1}
    assert skipped(postgres) == dict.fromkeys(front, "suppressed: unsubscribed")


# -- a reconnection between the check and MAIL FROM (SQLite) --------------------------


class HoldingProxy:
    """A TCP proxy on 127.0.0.1 to the relay at ``upstream``. Its ``held``-th connection
    (1-based) reaches the relay, and so gets its greeting, only once ``meanwhile`` has
    returned: a reconnection as slow as the test needs."""

    def __init__(self, upstream: int, held: int, meanwhile: Callable[[], None]) -> None:
        self.upstream, self.held, self.meanwhile = upstream, held, meanwhile
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.connections = 0
        self._sockets: list[socket.socket] = [self._listener]
        self._accepting = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> HoldingProxy:
        self._accepting.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # (a close alone leaves accept() waiting)
            sock.close()
        self._accepting.join(timeout=5)
        assert not self._accepting.is_alive()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed: the test is over
            self.connections += 1
            if self.connections == self.held:
                self.meanwhile()
            self._sockets.append(client)
            relay = socket.create_connection(("127.0.0.1", self.upstream))
            self._sockets.append(relay)
            for source, sink in ((client, relay), (relay, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def test_an_unsubscribe_answered_while_the_connection_reopens_wins(project: Path) -> None:
    """One connection, one message a session: after each message the next session is
    opened. The second opening is held until the next recipient in line has been
    unsubscribed: its checks come after the session is open, so it is skipped (checked
    before the reconnection, as they were, it got the message)."""
    ledger = project.parent / "statusmail.db"
    unsubscribed: list[str] = []

    def unsubscribe_the_next_one() -> None:
        arrived = {address.lower() for address in relay.count_by_recipient()}
        with Ledger(ledger) as db:
            rows = db.database.execute(
                "SELECT address, ascii_email FROM deliveries WHERE status = 'pending'"
                " ORDER BY rowid"
            )
            address = next(a for a, ascii in rows if (ascii or a).lower() not in arrived)
            db.suppress(address, SuppressionReason.UNSUBSCRIBED, "one-click, mid-run")
        unsubscribed.append(address)

    with (
        RecordingServer() as relay,
        HoldingProxy(relay.port, held=2, meanwhile=unsubscribe_the_next_one) as proxy,
    ):
        point_at(project, proxy.port, concurrency=1, rate=0)
        data = yaml.safe_load(project.read_text(encoding="utf-8"))
        data["smtp"]["max_messages_per_connection"] = 1
        project.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        code, _, stderr = send(project)
    assert code == 0, stderr
    [address] = unsubscribed
    rows = ledger_rows(project)
    assert rows[address]["status"] == "skipped"
    assert rows[address]["detail"] == "suppressed: unsubscribed"
    received = relay.count_by_recipient()
    assert len(received) == UPDATE_AUDIENCE - 1 and set(received.values()) == {1}
    assert address not in received and proxy.connections >= 3
