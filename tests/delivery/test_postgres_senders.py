"""Several senders on one entry, on the real PostgreSQL server (each test in a schema of
its own): everyone exactly once, and a killed sender's recipients finished by the others."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import SECRET_ENV, invoke, wait_for
from postgres_helpers import (
    ENTRY,
    SAMPLE,
    configure,
    finish,
    ledger_sent,
    query,
    recipient_of,
    senders,
)
from smtp_server import RecordingServer
from statusmail.domain import Recipient
from statusmail.ledger.queue import ServerQueue

# Enough for three senders' claims to race all along: a run's claims start at 16 and
# double up to 128 (delivery/engine.py), so each of the three makes several claims
# (16 + 32 + 64 + 128 = 240 each) and a sender that joins half a second late still gets
# a share.
RECIPIENTS = 600


@pytest.mark.timeout(120)
def test_three_senders_share_one_entry_and_send_everyone_once(
    project: Path,
    postgres: str,
) -> None:
    with RecordingServer() as server:
        configure(project, server.port, RECIPIENTS - SAMPLE)
        processes = senders(
            project, postgres, 3, "send", ENTRY, "--yes", "--json", stdout=subprocess.PIPE
        )
        outputs: list[str] = []
        assert finish(processes, outputs=outputs) == [0, 0, 0]
        counts = server.count_by_recipient()
    assert len(counts) == RECIPIENTS and set(counts.values()) == {1}
    # the entry was shared: each sender delivered a part of it, and the parts add up
    shares = [json.loads(output)["this_run"]["sent"] for output in outputs]
    print("each sender's share:", shares)
    assert min(shares) > 0 and sum(shares) == RECIPIENTS, shares
    sent = ledger_sent(postgres)
    assert len(sent) == RECIPIENTS
    # the ledger agrees with the server: the same messages (a Message-ID per recipient)
    assert sorted(sent.values()) == sorted(m.message_id for m in server.messages)
    # nothing is left held: every claim was given back or ended in an outcome
    assert query(postgres, "SELECT COUNT(*) FROM deliveries WHERE claimed_by IS NOT NULL") == [(0,)]


@pytest.mark.timeout(120)
def test_a_killed_sender_s_recipients_are_finished_by_the_others(
    project: Path,
    postgres: str,
) -> None:
    with RecordingServer() as server:
        # killed a second into a 2.5 s run: it holds claims, and most are still to go
        addresses = configure(project, server.port, 450, rate=200)
        processes = senders(project, postgres, 3, "send", ENTRY, "--yes")
        wait_for(lambda: len(server.messages) >= 150, timeout=60, what="the first messages")
        killed = processes[0]  # the first to start: most likely the one selecting
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=10)
        assert finish(processes[1:]) == [0, 0]
        counts = server.count_by_recipient()
        messages = server.messages
    assert set(counts) >= {a.lower() for a in addresses}  # nobody missed
    assert len(counts) == SAMPLE + 450
    duplicates = {address: n for address, n in counts.items() if n > 1}
    assert sum(n - 1 for n in duplicates.values()) <= 4  # the killed one's connections
    for address in duplicates:  # a duplicate carries the same Message-ID
        assert len({m.message["Message-ID"] for m in messages if recipient_of(m) == address}) == 1
    assert query(postgres, "SELECT COUNT(*) FROM deliveries WHERE status = 'pending'") == [(0,)]


@pytest.mark.timeout(120)
def test_a_send_reads_the_queue_through_its_indexes(project: Path, postgres: str) -> None:
    # A plan made from statistics that do not know the entry yet (a prepared
    # statement's generic plan, an enqueue's lookup, a claim that picked another index)
    # reads the entry's rows again and again: quadratic in the list.
    with RecordingServer() as server:
        configure(project, server.port, 600)
        assert finish(senders(project, postgres, 1, "send", ENTRY, "--yes")) == [0]
        assert len(server.messages) == SAMPLE + 600
    rows = query(
        postgres,
        "SELECT idx_tup_fetch FROM pg_stat_user_tables"
        " WHERE relname = 'deliveries' AND schemaname = current_schema()",
    )
    # measured at 3,000: about 18 rows fetched per recipient; 300 with the enqueue's
    # lookup or the claim's index chosen badly, 1,700 to 3,200 (growing with the list)
    # through generic plans (about 0.6 a row of the list: 340 at 600); 600 recipients are
    # enough to tell them apart
    assert rows and rows[0][0] < 100 * (SAMPLE + 600), rows
    # The feedback pass finds a return path's delivery by seq alone: an index lookup,
    # not a scan of every delivery per report.
    plan = "\n".join(
        str(row[0])
        for row in query(
            postgres, "EXPLAIN SELECT entry_id, address FROM deliveries WHERE seq = 42"
        )
    )
    assert "deliveries_row" in plan and "Seq Scan" not in plan, plan


def test_a_lone_sender_never_takes_its_own_finished_selection_over(
    project: Path, postgres: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The engine must not read "nobody selects" after the ledger's "the selection is
    unfinished" of its own stream, which may end between the two: it then took its
    own selection over and selected the whole list again (3 runs in 12 did, a lone
    sender on PostgreSQL). A slow round trip for the state makes the window wide."""
    real = ServerQueue.claim

    async def slow_claim(
        self: ServerQueue, generation: int, count: int, hourly_cap: int | None = None
    ) -> list[Recipient]:
        taken = await real(self, generation, count, hourly_cap)
        if not taken:  # the fault: a slow round trip, while the stream may end
            await asyncio.sleep(0.1)
        return taken

    monkeypatch.setattr(ServerQueue, "claim", slow_claim)
    with RecordingServer() as server:
        configure(project, server.port, 300, rate=0)
        with caplog.at_level(logging.WARNING, logger="statusmail"):
            result = invoke(
                project, "send", ENTRY, "--yes", env={**SECRET_ENV, "STATUSMAIL_LEDGER": postgres}
            )
        assert result.exit_code == 0, result.output
        assert len(server.messages) == SAMPLE + 300
    assert not [r for r in caplog.records if "selecting it here" in r.getMessage()]
    assert query(postgres, "SELECT generation, selected_generation FROM entries") == [(1, 1)]
