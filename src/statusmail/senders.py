"""The sender processes of one run on this host (``sending.processes``): how many, what
each helper process runs, and the run's side of them (``Team``, inside
``pipeline.finish``). The process machinery is ``delivery.processes``.

``sending.processes`` set: that many processes from the start. Unset (the cores
available, half of them with a DKIM key: each sender has a signer process), a run
starts its helpers once it knows it has at least ``HELP_FROM`` recipients to send (a
helper costs about half a second of CPU to start; one process sends 5,000 in a few
seconds), and a paced run only as many as its rate needs (``RATE_PER_PROCESS``). Never
for ``--limit`` (one process counts it) or the maildir outbox.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass

from statusmail import pipeline
from statusmail.delivery.engine import Engine
from statusmail.delivery.processes import Ended, Helpers, Link, available_cores
from statusmail.domain import DeliveryStatus, mask_address
from statusmail.errors import StatusmailError
from statusmail.ledger import Ledger
from statusmail.project.config import Config, adopt_durability, is_url

HELP_FROM = 5_000
RATE_PER_PROCESS = 200.0  # msg/s one process keeps up with easily (it does ~1,000)
CHECK = 0.05  # how often a run looks whether it is big enough for helpers
STOP_WITHIN = 0.8  # a stopped helper still running then is killed (the run ends in 1 s)
DONE_WITHIN = 10.0  # the queue is done: a helper still starting up has this long to end


def extra_processes(config: Config, request: pipeline.Request) -> int:
    """How many helper processes a run may start, besides itself."""
    sending = config.sending
    if request.limit is not None or config.transport != "smtp":
        return 0
    if sending.processes is not None:
        return sending.processes - 1
    wanted = available_cores()
    if config.dkim is not None:
        # Each sender process signs in a signer process of its own (delivery.signing),
        # which keeps a core busy: two senders and two signers on two cores sent
        # 0.68-0.70x what one and its signer did (honest.py; benchmarks/README.md).
        wanted = max(1, wanted // 2)
    if sending.rate and not math.isinf(sending.rate):
        wanted = min(wanted, math.ceil(sending.rate / RATE_PER_PROCESS))
    return max(0, wanted - 1)


@dataclass(frozen=True)
class Job:
    """What a helper needs to deliver the run's entry (sent to it pickled)."""

    config: Config
    entry_id: str
    show_addresses: bool


async def deliver(job: Job, link: Link) -> Ended:
    """A helper's run: the entry prepared afresh, the ledger's queue through its own
    connection, an engine of its own; stopping when the run's queue is done."""
    config = job.config
    adopt_durability(config)
    entry = pipeline.load(config, job.entry_id)
    prepared = pipeline.prepare(config, entry, send_now=True)  # the run checked send_at
    with Ledger(config.paths.ledger) as ledger:
        held = pipeline.Held(ledger, shared=is_url(config.paths.ledger))
        queue = pipeline.make_queue(prepared, held, shared=True)
        engine = Engine(
            queue=queue,
            transport=pipeline.make_transport(config),
            build=prepared.factory.build,
            settings=config.sending,
            stop=link.stop,
            on_outcome=link.on_outcome,
            mask=(lambda a: a) if job.show_addresses else mask_address,
            dkim=prepared.factory.signer,
        )
        try:
            link.sending()
            await engine.run()
        except StatusmailError as exc:  # the relay, the ledger: the run stops with it
            engine.result.stopped = str(exc)
        finally:
            await queue.close()
    result = engine.result
    return Ended(result.sent, result.failed, result.stopped)


class Team:
    """A run's helper processes, from ``pipeline.finish``: started once the run is big
    enough, stopped with it, their counts added to its progress and result."""

    def __init__(
        self,
        prepared: pipeline.Prepared,
        request: pipeline.Request,
        started: pipeline.Started,
        engine: Engine,
        count: int,
        on_counts: Callable[[dict[str, int]], None] | None,
    ) -> None:
        self.started, self.engine, self.count = started, engine, count
        self.help_from = 0 if prepared.config.sending.processes else HELP_FROM
        self.on_counts = on_counts
        config = prepared.config
        job = Job(config, prepared.entry.id, request.mask is not mask_address)
        self.helpers = Helpers(
            deliver,
            job,
            on_counts=self._counted,
            on_stopped=engine.halt,
            lease=config.sending.lease,
        )
        self._tasks: list[asyncio.Task[None]] = []

    def begin(self) -> None:
        if self.count:
            self._tasks = [asyncio.create_task(self._start()), asyncio.create_task(self._stop())]

    def _size(self) -> int:
        plan = self.started.plan
        known = plan.pending_after if plan is not None else self.started.stats.total
        return max(known, self.engine.taken)

    async def _start(self) -> None:
        while self._size() < self.help_from:
            if self.engine.stop.is_set():
                return
            await asyncio.sleep(CHECK)
        if not self.engine.stop.is_set():
            self.helpers.start(self.count)

    async def _stop(self) -> None:
        await self.engine.stop.wait()
        self.helpers.stop(now=True)

    def _counted(self, counts: dict[str, int]) -> None:
        metrics = self.engine.metrics
        for status, n in counts.items():
            for _ in range(n):
                if status == DeliveryStatus.SENT:
                    metrics.sent()
                elif status == DeliveryStatus.FAILED:
                    metrics.failed(None)
                elif status == DeliveryStatus.SKIPPED:
                    metrics.skipped()
        if self.on_counts is not None:
            self.on_counts(counts)

    async def end(self, *, failed: bool = False) -> None:
        """After the run's own engine (``failed``: it raised, or was cancelled): the
        helpers end too (asked to, if the run stops), and what they sent counts in the
        run's result."""
        for task in self._tasks:
            task.cancel()
        if not self.helpers.helpers:
            return
        result = self.engine.result
        stopping = failed or self.engine.stop.is_set() or bool(result.stopped)
        # Either way the run is over: stopped, or its queue is done (nothing is left for
        # a helper to send, and nothing it held is unrecorded).
        self.helpers.stop(now=stopping)
        ended = await self.helpers.join(STOP_WITHIN if stopping else DONE_WITHIN)
        result.sent += ended.sent
        result.failed += ended.failed
        result.stopped = result.stopped or ended.stopped
