"""Fenced claims: an outcome counts only while its row's claim is still its sender's, and
a sender stopped past its lease sends nothing of what another sender took over meanwhile
(the queue on both engines; the stopped sender on the real PostgreSQL server). The group
commit's statement, and the suppression checks that ride with it."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from conftest import SECRET_ENV, invoke, wait_for
from ops_helpers import process_state
from postgres_helpers import ENTRY, SAMPLE, configure, query, recipient_of, senders
from smtp_server import RecordingServer
from statusmail.delivery.commit import Done, GroupCommitter
from statusmail.domain import DeliveryStatus, Outcome, Recipient
from statusmail.ledger import Ledger, LocalQueue, ServerQueue, StagedRow
from statusmail.project.config import is_url


def recipient(i: int) -> Recipient:
    address = f"r{i:03d}@example.org"
    return Recipient(address, address, address, f"R {i}", "en", "NL")


def selected(
    ledger: Ledger, target: str | Path, count: int
) -> tuple[int, ServerQueue | LocalQueue]:
    """``count`` recipients selected and queued for ENTRY, and a sender's queue of it."""
    generation = ledger.begin_selection(ENTRY, "digest")
    ledger.reset_staging()
    ledger.stage(StagedRow.selected(recipient(i)) for i in range(count))
    ledger.enqueue(ENTRY, generation)
    ledger.finish_selection(ENTRY, generation, count, skip_removed=True)
    queue = (
        ServerQueue(str(target), ENTRY, lease=60, thread=None)
        if is_url(target)
        else LocalQueue(ledger, ENTRY, lease=60, thread=None)
    )
    return generation, queue


def test_a_claim_taken_over_is_fenced(ledger_target: str | Path) -> None:
    """The first sender's lease runs out and a second one takes two of its four rows:
    the first one's renewal tells it so, it claims none of them back, and its outcomes
    count only for the rows still its own; the second one's count for its own."""
    with Ledger(ledger_target) as ledger:
        generation, first = selected(ledger, ledger_target, 4)

        async def scenario() -> list[tuple[Recipient, int]]:
            try:
                held = await first.claim(generation, 4)
                assert [r.address for r in held] == [recipient(i).address for i in range(4)]
                assert all(first.holds(r.address) for r in held)
                # Its lease runs out on the server (the process stood still) ...
                ledger.renew(ENTRY, first.worker, lease=-1)
                taken = ledger.claim_fenced(ENTRY, generation, "second", 2, lease=60)
                assert [r.address for r, _ in taken] == [r.address for r in held[:2]]
                # ... and its renewal tells it what it lost.
                assert await first.renew() == 2
                assert [first.holds(r.address) for r in held] == [False, False, True, True]
                # Its own rows past their lease are still in its hands: never taken again.
                ledger.renew(ENTRY, first.worker, lease=-1)
                assert await first.claim(generation, 4) == []
                await first.record(
                    [Outcome(r.address, DeliveryStatus.SENT, 1, 250, None, "<1@x>") for r in held]
                )
                return taken
            finally:
                await first.close()

        taken = asyncio.run(scenario())
        rows = {
            address: (status, claimed_by)
            for address, status, claimed_by in ledger.database.execute(
                "SELECT address, status, claimed_by FROM deliveries"
            )
        }
        assert rows == {
            recipient(0).address: ("pending", "second"),
            recipient(1).address: ("pending", "second"),
            recipient(2).address: ("sent", None),
            recipient(3).address: ("sent", None),
        }
        # the second sender's outcomes, fenced by its own epochs, do count
        ledger.record(
            ENTRY,
            {Outcome(r.address, DeliveryStatus.SENT, 1, 250, None, "<2@x>"): e for r, e in taken},
        )
        assert ledger.counts(ENTRY)["sent"] == 4


def test_senders_claiming_at_once_never_share_a_slot_of_the_hourly_cap(
    ledger_target: str | Path,
) -> None:
    """sending.max_per_hour across senders: each counted what went out and then claimed,
    two statements apart, so senders claiming at the same moment could all count the
    same free slots (4 senders at a cap of 10 sent 20). The count is now taken in the
    claim's transaction, under a lock on PostgreSQL."""
    cap, senders = 10, 6
    with Ledger(ledger_target) as ledger:
        generation, first = selected(ledger, ledger_target, 60)
        ledger.claim_fenced(ENTRY, generation, "earlier", 4, lease=60)  # live: they count
        others = [Ledger(ledger_target) for _ in range(senders - 1)]
        queues = [first] + [
            ServerQueue(str(ledger_target), ENTRY, lease=60, thread=None)
            if is_url(ledger_target)
            else LocalQueue(other, ENTRY, lease=60, thread=None)
            for other in others
        ]

        async def scenario() -> list[list[Recipient]]:
            try:
                return list(
                    await asyncio.gather(*(q.claim(generation, 5, hourly_cap=cap) for q in queues))
                )
            finally:
                await asyncio.gather(*(q.close() for q in queues))

        try:
            batches = asyncio.run(scenario())
        finally:
            for other in others:
                other.close()
        taken = [r.address for batch in batches for r in batch]
        assert len(taken) == cap - 4, [len(batch) for batch in batches]
        assert len(set(taken)) == len(taken)
        assert ledger.hourly_used() == cap


def test_a_sender_stopped_past_its_lease_sends_nothing_another_took_over(
    project: Path, postgres: str
) -> None:
    """The first sender stops (SIGSTOP) right after the end of DATA of its third message,
    holding the rest of its claim, and stays stopped while a second sender takes those
    recipients over (once the lease ran out) and finishes the entry. Resumed (SIGCONT),
    the first one finds its claim lost and sends nothing more."""
    pids: list[int] = []  # the first sender's, as soon as it is started
    stopped = threading.Event()

    def stop_the_first(n: int, envelope: SmtpEnvelope) -> None:
        # In the relay, before its reply to the end of DATA: the first sender is alone
        # until it stops. Its selection must be complete (else the second one waits for
        # it), which it is by the third message on a list this small.
        if n >= 3 and not stopped.is_set():
            done = query(
                postgres,
                "SELECT generation = selected_generation FROM entries WHERE entry_id = %s",
                ENTRY,
            )
            if done == [(True,)]:
                os.kill(pids[0], signal.SIGSTOP)
                stopped.set()

    with RecordingServer(data_reply=stop_the_first) as relay:
        addresses = configure(project, relay.port, 20, concurrency=1, lease=1)
        on_postgres = {"STATUSMAIL_LEDGER": postgres}
        (first,) = senders(project, postgres, 1, "send", ENTRY, "--yes")
        pids.append(first.pid)
        try:
            wait_for(
                lambda: stopped.is_set() and process_state(first.pid) == "T",
                what="the first sender to stop",
            )
            held = query(
                postgres,
                "SELECT COUNT(*) FROM deliveries WHERE status = 'pending'"
                " AND claimed_by IS NOT NULL",
            )[0][0]
            assert held > 0  # the rest of its claim, in its hands when it stopped
            # The second sender runs in this process: its being a process is not the point.
            second = invoke(project, "send", ENTRY, "--yes", env={**SECRET_ENV, **on_postgres})
            assert second.exit_code == 0, second.stderr
            resumed = time.monotonic()
            first.send_signal(signal.SIGCONT)
            _, stderr = first.communicate(timeout=30)
        finally:
            if first.poll() is None:
                first.kill()
                first.communicate()
        messages = relay.messages
    assert first.returncode == 0, stderr
    assert [recipient_of(m) for m in messages if m.at > resumed] == []  # nothing after SIGCONT
    lost = [line for line in stderr.splitlines() if "taken over by another sender" in line]
    assert len(lost) == 1 and "@" not in lost[0], stderr
    counts = Counter(recipient_of(m) for m in messages)
    assert len(counts) == SAMPLE + len(addresses)  # nobody missed
    # The bound: only the message past its end of DATA when the claim was lost, at most
    # one per connection (one here), can arrive twice.
    assert sum(n - 1 for n in counts.values()) <= 1, counts
    assert query(
        postgres,
        "SELECT COUNT(*) FROM deliveries WHERE status = 'pending' OR claimed_by IS NOT NULL",
    ) == [(0,)]


def test_a_group_commit_writes_only_the_rows_still_claimed_at_their_epoch(
    ledger_target: str | Path,
) -> None:
    """The group commit's statement itself (PostgreSQL: one UPDATE over arrays): of three
    outcomes, the one whose row was claimed again since (a newer epoch) changes nothing;
    the others are written whole, a missing Message-ID keeping the row's. The suppression
    checks that go with it are answered by the same call (one statement on PostgreSQL)."""
    with Ledger(ledger_target) as ledger:
        generation, queue = selected(ledger, ledger_target, 3)
        epochs = dict(
            (r.address, e) for r, e in ledger.claim_fenced(ENTRY, generation, "me", 3, lease=60)
        )
        stale = recipient(1).address
        outcomes = {
            Outcome(recipient(0).address, DeliveryStatus.SENT, 1, 250, None, "<0@x>"): epochs[
                recipient(0).address
            ],
            Outcome(stale, DeliveryStatus.SENT, 1, 250, None, "<1@x>"): epochs[stale] - 1,
            Outcome(recipient(2).address, DeliveryStatus.FAILED, 2, 550, "no such user", None): (
                epochs[recipient(2).address]
            ),
        }

        ledger.suppress("gone@example.org", "unsubscribed", "test")

        async def record() -> dict[str, str]:
            try:
                return await queue._record(outcomes, ["gone@example.org", stale])
            finally:
                await queue.close()

        found = asyncio.run(record())
        rows = {
            row[0]: tuple(row[1:])
            for row in ledger.database.execute(
                "SELECT address, status, attempts, code, detail, message_id, claimed_by"
                " FROM deliveries"
            )
        }
    assert rows == {
        recipient(0).address: ("sent", 1, 250, None, "<0@x>", None),
        stale: ("pending", 0, None, None, None, "me"),
        recipient(2).address: ("failed", 2, 550, "no such user", None, None),
    }
    assert found == {"gone@example.org": "unsubscribed"}


def test_a_row_another_selection_skipped_is_not_handed_back_as_pending(
    ledger_target: str | Path,
) -> None:
    """A sender waited out a retry's backoff holding a row; meanwhile the reader
    unsubscribed in the list and another sender's selection skipped the row. Stopped,
    the first handed it back: pending again, under the old generation, and every later
    run ended with one recipient still pending (review). What went out still counts."""
    with Ledger(ledger_target) as ledger:
        generation, queue = selected(ledger, ledger_target, 2)
        epochs = dict(
            (r.address, e) for r, e in ledger.claim_fenced(ENTRY, generation, "me", 2, lease=60)
        )
        ledger.database.execute(  # as the other sender's finish_selection skips them
            "UPDATE deliveries SET status = 'skipped', detail = 'no longer selected'"
        )
        handed_back = recipient(0).address
        sent = recipient(1).address
        outcomes = {
            Outcome(handed_back, DeliveryStatus.PENDING, 1, None, "stopped before retry"): epochs[
                handed_back
            ],
            Outcome(sent, DeliveryStatus.SENT, 1, 250, None, "<1@x>"): epochs[sent],
        }

        async def record() -> None:
            try:
                await queue._record(outcomes, [])
            finally:
                await queue.close()

        asyncio.run(record())
        ledger.record(ENTRY, {o: e for o, e in outcomes.items() if o.address == handed_back})
        rows: dict[str, str] = dict(
            ledger.database.execute("SELECT address, status FROM deliveries")
        )
    assert rows == {handed_back: "skipped", sent: "sent"}


def test_the_hourly_cap_counts_by_the_database_s_clock(
    ledger_target: str | Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sender host two hours behind stamped its messages two hours ago, and a host
    whose clock was right counted none of them: it sent the cap again (review). The
    outcome's time and the hour are both the database's now."""
    import datetime as dt

    from statusmail.ledger import outcomes

    behind = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    with Ledger(ledger_target) as ledger:
        generation, queue = selected(ledger, ledger_target, 3)
        claimed = ledger.claim_fenced(ENTRY, generation, "behind", 3, lease=60)
        sent = {Outcome(r.address, DeliveryStatus.SENT, 1, 250, None, None): e for r, e in claimed}
        with monkeypatch.context() as host_behind:
            host_behind.setattr(outcomes, "now_iso", lambda: behind.isoformat(timespec="seconds"))
            ledger.record(ENTRY, sent)

        async def counted() -> int:
            try:
                return await queue.hourly_used()
            finally:
                await queue.close()

        assert ledger.hourly_used() == 3
        assert asyncio.run(counted()) == 3


class Counted:
    """The queue, with each transaction's outcomes and checks written down."""

    def __init__(self, queue: ServerQueue | LocalQueue) -> None:
        self.queue = queue
        self.transactions: list[tuple[list[str], list[str]]] = []

    async def record(
        self, outcomes: Sequence[Outcome], check: Sequence[str] = ()
    ) -> dict[str, str]:
        self.transactions.append(([o.address for o in outcomes], list(check)))
        return await self.queue.record(outcomes, check)


def test_the_group_commit_answers_the_checks_asked_meanwhile(ledger_target: str | Path) -> None:
    """The suppression checks of the attempts starting meanwhile go in the transaction
    that records the outcomes waiting: each sees every suppression committed before it
    was asked and gets its own address's answer; a check given up on harms nobody."""
    with Ledger(ledger_target) as ledger:
        generation, queue = selected(ledger, ledger_target, 4)
        counted = Counted(queue)
        recorded: list[Done] = []
        failures: list[BaseException] = []

        async def scenario() -> tuple[list[str | None], bool]:
            try:
                taken = await queue.claim(generation, 4)
                committer = GroupCommitter(counted, recorded.extend, failures.append)  # type: ignore[arg-type]
                sent = Outcome(taken[0].address, DeliveryStatus.SENT, 1, 250, None, "<0@x>")
                batch = committer.submit((sent, taken[0], None))
                first = committer.check(taken[1].address)
                # Suppressed after the first check was asked, before the next ones.
                ledger.suppress(taken[2].address, "unsubscribed", "test")
                second = committer.check(taken[2].address)
                given_up = committer.check(taken[3].address)
                given_up.cancel()
                answers = [await first, await second]
                await committer.recorded(batch)
                await committer.close()
                return answers, given_up.cancelled()
            finally:
                await queue.close()

        answers, cancelled = asyncio.run(scenario())
        statuses: dict[str, str] = dict(
            ledger.database.execute(
                "SELECT address, status FROM deliveries WHERE entry_id = :e", {"e": ENTRY}
            )
        )
    assert answers == [None, "unsubscribed"]
    assert cancelled and not failures
    assert [done[0].address for done in recorded] == [recipient(0).address]
    assert statuses[recipient(0).address] == "sent"
    # The outcome and the first check in one transaction; the second may share it (it
    # was asked before that transaction started) or go in the next one, never earlier.
    outcomes, checks = counted.transactions[0]
    assert outcomes == [recipient(0).address] and checks[0] == recipient(1).address
    asked = [address for _, checks in counted.transactions for address in checks]
    assert asked[:2] == [recipient(1).address, recipient(2).address]
    assert len(counted.transactions) <= 2
