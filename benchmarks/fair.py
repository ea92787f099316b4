#!/usr/bin/env python3
"""The raw floor and the fair floor, each part measured in this one process (a child of
honest.py, so that no part pays another's start-up and all share one interpreter):

  raw     the messages statusmail builds for the list's first 84 rows (its own factory,
          8bit, each with its VERP return path), sent over C reused aiosmtplib sessions
          on the raw DATA path (floor.py's ``raw``: MAIL, RCPT, DATA, the bytes as they
          are): CPU (getrusage around the loop) and wall time.
  pipelined  the same messages over the same sessions, pipelined (floor.py's
          ``pipelined``: statusmail's own exchange), when the tree has it.
  build   ``MessageFactory.build`` over N recipients of the list, in a tight loop,
          every variant prepared before (caches warm: the least it costs); with
          --dkim-config, also signed (DKIM), over --dkim-n of them.
  record  ``Ledger.record`` of N outcomes on a fresh SQLite ledger of N pending rows,
          fenced as the engine records them, in transactions of C outcomes (what C
          connections' group commit carries).
  loop    the three in one loop: C workers, each builds its next recipient's message,
          sends it on the raw path and hands its outcome to the group, recorded every C
          outcomes: a sender with nothing else (no claims, no selection, no engine). It
          gives the fair floor a throughput.

fair floor = raw + build + record (CPU per message); the loop is the same work done
together. Prints one JSON line. Imports statusmail by its package paths (issue 23).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import aiosmtplib

sys.path.insert(0, str(Path(__file__).resolve().parent))
import floor

ENTRY = "update-2020-04-21"


def pipelining() -> bool:
    """Whether this tree pipelines (an older one, measured with --rev, may not)."""
    import importlib.util

    return importlib.util.find_spec("statusmail.delivery.pipelining") is not None


def cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def factory_and_recipients(config: Path, secret: str, count: int) -> tuple[Any, list[Any]]:
    """statusmail's own factory for the entry and the list's first ``count`` selected
    recipients, each with its row as a claim gives it."""
    import dataclasses

    from statusmail.content.message import MessageFactory
    from statusmail.content.render import Renderer
    from statusmail.domain import Recipient
    from statusmail.project.config import load_config
    from statusmail.project.entries import find_entry
    from statusmail.project.regions import load_regions
    from statusmail.project.selection import select
    from statusmail.project.tokens import Keyring

    loaded = load_config(config)
    entry = find_entry(loaded.paths.updates, ENTRY)
    renderer = Renderer(
        loaded.paths.templates, load_regions(loaded.paths.regions), loaded.sender.name
    )
    factory = MessageFactory(loaded, entry, renderer, Keyring(secret.encode()))
    recipients: list[Any] = []
    for row, item in enumerate(
        select(entry, loaded.paths.subscribers, loaded.default_locale_by_region), start=1
    ):
        if isinstance(item, Recipient):
            recipients.append(dataclasses.replace(item, row=row))
            if len(recipients) == count:
                break
    return factory, recipients


def pending_ledger(path: Path, recipients: list[Any]) -> Any:
    """A fresh SQLite ledger holding each recipient as a pending row of the entry."""
    from statusmail.ledger import Ledger

    ledger = Ledger(path)
    ledger.migrate()
    db: Any = ledger.database.db  # SQLite here
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO deliveries (entry_id, address, email, locale, status, selection,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, 'pending', 1, 'x', 'x')",
        [(ENTRY, r.address, r.email, r.locale) for r in recipients],
    )
    db.execute("COMMIT")
    return ledger


def measure_build(factory: Any, recipients: list[Any]) -> float:
    for recipient in recipients[:840]:  # every variant prepared
        factory.build(recipient, eight_bit=True)
    start = time.process_time()
    for recipient in recipients:
        factory.build(recipient, eight_bit=True)
    return (time.process_time() - start) / len(recipients) * 1e6


def measure_record(ledger: Any, factory: Any, recipients: list[Any], group: int) -> float:
    from statusmail.domain import DeliveryStatus, Outcome

    outcomes = [
        Outcome(r.address, DeliveryStatus.SENT, 1, 250, None, f"<{i}@bench>")
        for i, r in enumerate(recipients)
    ]
    start = time.process_time()
    for i in range(0, len(outcomes), group):
        ledger.record(ENTRY, dict.fromkeys(outcomes[i : i + group], 0))
    return (time.process_time() - start) / len(outcomes) * 1e6


async def fair_loop(port: int, factory: Any, recipients: list[Any], conc: int, ledger: Any) -> int:
    from statusmail.domain import DeliveryStatus, Outcome

    sent = 0
    turn = iter(recipients)
    group: dict[Any, int | None] = {}

    async def worker() -> None:
        nonlocal sent
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30)
        await smtp.connect()
        try:
            for recipient in turn:  # shared: each recipient taken once
                envelope = factory.build(recipient, eight_bit=True).envelope
                eight_bit = envelope.shape is not None and envelope.shape.eight_bit
                await floor.raw(smtp, envelope.sender, envelope.recipient, envelope.data, eight_bit)
                group[
                    Outcome(
                        recipient.address, DeliveryStatus.SENT, 1, 250, None, envelope.message_id
                    )
                ] = 0
                sent += 1
                if len(group) >= conc:
                    ledger.record(ENTRY, dict(group))
                    group.clear()
        finally:
            await smtp.quit()

    await asyncio.gather(*(worker() for _ in range(conc)))
    if group:
        ledger.record(ENTRY, dict(group))
    return sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--ledgers", type=Path, required=True, help="a folder for the ledgers")
    parser.add_argument(
        "--dkim-config",
        type=Path,
        help="the same project signing with DKIM: also the CPU of a signed build (--dkim-n)",
    )
    parser.add_argument("--dkim-n", type=int, default=2000)
    args = parser.parse_args()
    n, conc = args.n, args.concurrency
    factory, recipients = factory_and_recipients(args.config, args.secret, n)
    if len(recipients) < n:
        sys.exit(f"{args.config}: the list selects {len(recipients)} recipients, not {n}")
    mix = []
    for recipient in recipients[:84]:  # one period of the list's mix
        envelope = factory.build(recipient, eight_bit=True).envelope
        mix.append(
            (envelope.sender, envelope.data, bool(envelope.shape and envelope.shape.eight_bit))
        )
    out: dict[str, Any] = {}

    cpu, start = cpu_now(), time.perf_counter()
    sent = asyncio.run(floor.send_all(args.port, mix, n, conc, "raw"))
    out["raw"] = {"sent": sent, "wall": time.perf_counter() - start, "cpu": cpu_now() - cpu}

    if pipelining():
        cpu, start = cpu_now(), time.perf_counter()
        sent = asyncio.run(floor.send_all(args.port, mix, n, conc, "pipelined"))
        wall = time.perf_counter() - start
        out["pipelined"] = {"sent": sent, "wall": wall, "cpu": cpu_now() - cpu}

    out["build_us"] = measure_build(factory, recipients)
    if args.dkim_config is not None:
        signing, _ = factory_and_recipients(args.dkim_config, args.secret, 1)
        out["build_dkim_us"] = measure_build(signing, recipients[: args.dkim_n])
    with pending_ledger(args.ledgers / f"record-{conc}.db", recipients) as ledger:
        out["record_us"] = measure_record(ledger, factory, recipients, conc)

    with pending_ledger(args.ledgers / f"loop-{conc}.db", recipients) as ledger:
        cpu, start = cpu_now(), time.perf_counter()
        sent = asyncio.run(fair_loop(args.port, factory, recipients, conc, ledger))
        out["loop"] = {"sent": sent, "wall": time.perf_counter() - start, "cpu": cpu_now() - cpu}
        counts = ledger.counts(ENTRY)
    out["loop"]["recorded"] = int(counts.get("sent", 0))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
