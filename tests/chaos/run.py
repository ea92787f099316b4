"""One chaos run: the deployment up, faults injected at seeded random moments for a set
time while some recipients unsubscribe at the sending front, then the entry finished
and the whole history checked.

Faults (each at a random moment, on a random live process where it takes one: a
``send`` or ``watch`` process, or one of their helper processes, ``sending.processes``):

- ``stop``: SIGSTOP past the lease (1.5 to 2.5 leases), then SIGCONT;
- ``kill``: kill -9, and the process started again (a helper is not: its run goes on
  without it);
- ``restart`` (PostgreSQL): what a PostgreSQL restart does to the deployment: every
  backend of its role terminated, and the role refused for 0.5 to 2 s;
- ``exhaust`` (PostgreSQL): the role's connection limit lowered to the connections it
  holds, for 1 to 4 s (nobody may open another).

A process that ends is started again after half a second while the ledger shows the
entry pending (a sender) or always (a watcher: one that ends by itself is a problem).
On SQLite one run of the entry holds its lock at a time and another ``send`` refuses
(exit 1): one refused is started again after ``REFUSED_AFTER``, as a supervisor would.
When the time is up the faults stop and the run waits, bounded, for the entry to be
finished; every process then gets SIGTERM and must end within 2 s.

Every loop is bounded by the clock; everything talks to 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chaos.deployment import (
    ROLE_LIMIT,
    OwnLedger,
    PostgresLedger,
    Process,
    Relay,
    helpers,
    make_project,
    own_ledger,
    start,
)
from chaos.history import History, Verdict, check
from conftest import SECRET, invoke, one_click, serving, wait_for
from postgres_helpers import SAMPLE

FAULTS = ("stop", "kill", "restart", "exhaust")
POSTGRES_ONLY = ("restart", "exhaust")
LEDGERS = ("postgres", "sqlite")
TICK = 0.05  # seconds between looks at the processes
RESTART_AFTER = 0.5  # seconds before an ended process is started again
REFUSED_AFTER = 2.0  # seconds before a send refused by the SQLite run lock tries again
REFUSED = "another statusmail run holds this lock"  # its line (ledger/locks.py)
SIGTERM_WITHIN = 2.0  # README: a stop takes under two seconds in every state
HOLDING = {True: "", False: " (holding no claim: no duplicate to allow for)"}
CAUSED_WITHIN = 10.0  # seconds: a process ending this soon after a cut ended of the cut


@dataclass(frozen=True)
class Settings:
    seconds: float = 600.0
    seed: int = 0
    senders: int = 4
    watchers: int = 2
    recipients: int | None = None  # generated ones; None: what the run can send at its rate
    rate: float = 20.0
    concurrency: int = 4
    lease: float = 3.0
    every: float = 8.0  # mean seconds between faults
    faults: tuple[str, ...] = FAULTS
    unsubscribes: int | None = None  # None: one in fifty recipients
    takeover: float = 2.0
    server: str = "postgresql://127.0.0.1:5432/test"
    finish_within: float | None = None  # None: twice what the rest takes at the rate, + 30 s
    ledger: str = "postgres"  # one of LEDGERS
    processes: int | None = None  # sending.processes; None: the config's default
    dkim: bool = False  # messages signed (each sender process then has a signer process)

    def generated(self) -> int:
        if self.recipients is not None:
            return self.recipients
        return max(0, int(self.rate * self.seconds) - SAMPLE)


@dataclass
class Run:
    settings: Settings
    config: Path
    ledger: OwnLedger
    relay: Relay
    serve_port: int
    log: Callable[[str], None]
    random: random.Random = field(init=False)
    processes: list[Process] = field(default_factory=list)
    history: History = field(init=False)
    restarting: dict[int, float] = field(default_factory=dict)  # index: when to start again
    refused_until: float = 0.0  # the role's limit comes back at this moment
    paused: dict[int, float] = field(default_factory=dict)  # SIGSTOPped pid: when to SIGCONT
    refusals: int = 0  # sends refused by the SQLite run lock

    def __post_init__(self) -> None:
        self.random = random.Random(self.settings.seed)
        s = self.settings
        addresses = {f"user{i:05d}@example.net" for i in range(s.generated())}
        self.history = History(
            recipients=frozenset(addresses),  # the sample's are added once selected
            rate=s.rate,
            concurrency=s.concurrency,
            processes=(s.senders + s.watchers) * (s.processes or 1),
        )

    # -- the processes ---------------------------------------------------------------

    def launch(self) -> None:
        kinds = ["sender"] * self.settings.senders + ["watcher"] * self.settings.watchers
        for kind in kinds:
            self.processes.append(start(kind, self.config, self.ledger, self.settings.takeover))

    def supervise(self, now: float, pending: int) -> None:
        """Note what ended, and start again what should run."""
        for index, process in enumerate(self.processes):
            # Ended once its helpers have too (they hold its stderr): a killed sender's
            # helper that is stopped ends after its SIGCONT, as a unit's last process
            ended = process.running.process.poll() is not None and process.running.drained()
            if process.ended is None and ended:
                refused = self.ended(process, now)
                self.restarting[index] = now + (REFUSED_AFTER if refused else RESTART_AFTER)
            when = self.restarting.get(index)
            if when is not None and now >= when:
                del self.restarting[index]
                if process.kind == "watcher" or pending:
                    self.processes[index] = start(
                        process.kind, self.config, self.ledger, self.settings.takeover
                    )

    def ended(self, process: Process, now: float) -> bool:
        """Note how ``process`` ended; whether it was a send refused by the SQLite run
        lock (another run of the entry holds it: README, *One run per entry*)."""
        process.ended = now
        code = process.code = process.running.process.returncode
        stderr = self.collect(process)
        last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        if process.killed:
            return False
        if process.kind == "sender" and code == 1 and REFUSED in last:
            self.refusals += 1
            return True
        faults = self.history.faults
        cut = process.cuts and now - process.cuts[-1] < CAUSED_WITHIN  # counted at the cut
        if code not in (0, 1) and not cut and process.pid in self.ledger.holders():
            faults.ended += 1  # it ended holding claims: what was in flight may come again
        if process.kind == "watcher":
            self.history.problems.append(
                f"watcher {process.pid} exited with {code} by itself: {last}"
            )
        elif code not in (0, 1, 4):
            self.history.problems.append(f"sender {process.pid} exited with {code}: {last}")
        self.log(f"{process.kind} {process.pid} exited with {code}: {last}")
        if code == 1:  # nothing could start: what the ledger said of the entry then
            state = self.ledger.entry_state()
            self.log(f"  the entry (generation, selected_generation, list_rows): {state}")
        return False

    def collect(self, process: Process) -> str:
        """The process's stderr once it ended; a traceback is a problem."""
        try:  # (a stream is closed only once read to its end: else closing it would hang)
            wait_for(process.running.drained, timeout=10, what="its stderr's end")
        except AssertionError:
            self.history.problems.append(
                f"{process.kind} {process.pid}: its stderr still open 10 s after it ended"
                " (a process it started still runs)"
            )
            return process.running.stderr
        with contextlib.suppress(AssertionError):  # Running's own check: a traceback
            process.running.finish(timeout=10)
        stderr = process.running.stderr
        if "Traceback" in stderr:
            tail = [line for line in stderr.splitlines() if line.strip()][-1]
            self.history.problems.append(f"{process.kind} {process.pid}: a traceback: {tail}")
        return stderr

    def sending(self) -> list[tuple[Process, int]]:
        """The processes a fault can hit now: each live one, and its helpers, by pid;
        none that is stopped already."""
        return [
            (p, pid)
            for p in self.processes
            if p.alive()
            for pid in (p.pid, *helpers(p.pid))
            if pid not in self.paused
        ]

    @property
    def postgres(self) -> PostgresLedger:
        assert isinstance(self.ledger, PostgresLedger), "a PostgreSQL fault on SQLite"
        return self.ledger

    # -- faults ----------------------------------------------------------------------

    def inject(self, kind: str, now: float) -> None:
        faults = self.history.faults
        targets = self.sending()
        if kind in ("stop", "kill") and not targets:
            return
        faults.injected[kind] += 1
        if kind == "stop":
            target, pid = self.random.choice(targets)
            hold = self.settings.lease * self.random.uniform(1.5, 2.5)
            holding = self.holding(pid, signal.SIGSTOP)
            self.paused[pid] = now + hold
            faults.stops += len(holding)
            name = self.name(target, pid)
            self.log(f"stop {name} for {hold:.1f}s{HOLDING[bool(holding)]}")
        elif kind == "kill":
            target, pid = self.random.choice(targets)
            if pid == target.pid:
                target.killed = True
            # A killed sender's helpers stop when it is gone: each may lose what it has
            # in flight, as the sender does
            holding = self.holding(pid, signal.SIGKILL, (pid, *helpers(pid)))
            faults.kills += len(holding)
            name = self.name(target, pid)
            also = f" ({len(holding)} processes of it)" if len(holding) > 1 else ""
            self.log(f"kill -9 {name}{HOLDING[bool(holding)]}{also}")
        elif kind == "restart":
            hold = self.random.uniform(0.5, 2.0)
            self.postgres.limit(0)
            holders = self.ledger.holders()  # those who may lose what is in flight
            cut = self.postgres.terminate()
            for process in self.processes:
                if process.alive() and process.pid in holders:
                    process.cuts.append(now)
                    faults.cut += 1
            self.refused_until = now + hold
            faults.restarts += 1
            self.log(f"restart: {cut} backends terminated, refused for {hold:.1f}s")
        elif kind == "exhaust":
            hold = self.random.uniform(1.0, 4.0)
            held = self.postgres.connections()
            self.postgres.limit(held)
            self.refused_until = now + hold
            faults.exhaustions += 1
            self.log(f"exhaust: the limit at the {held} connections held, for {hold:.1f}s")

    def holding(self, pid: int, sig: int, hit: tuple[int, ...] = ()) -> set[int]:
        """Send ``sig`` to ``pid``; which of the processes it hits (``hit``, else only
        ``pid``) held claims then (only those can lose what is in flight). Asked before
        and after: a claim committed just before the signal is seen after it, one given
        back just before, before."""
        before = self.ledger.holders()
        os.kill(pid, sig)
        return set(hit or (pid,)) & (before | self.ledger.holders())

    @staticmethod
    def name(target: Process, pid: int) -> str:
        return f"{target.kind} {pid}" if pid == target.pid else f"helper {pid} of {target.pid}"

    def relieve(self, now: float, *, everything: bool = False) -> None:
        """SIGCONT what is due, the role's limit back when due (all of it at the end)."""
        for pid, until in list(self.paused.items()):
            if everything or now >= until:
                del self.paused[pid]
                # (a helper stopped past its run's end was killed by its sender)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        if self.refused_until and (everything or now >= self.refused_until):
            self.refused_until = 0.0
            self.postgres.limit(ROLE_LIMIT)

    def unsubscribe(self) -> None:
        """One recipient in a sender's hands (one the relay has not seen) unsubscribes."""
        seen = {arrival.recipient for arrival in self.relay.arrivals}
        front = [
            a for a in self.ledger.front() if a not in seen and a not in self.history.unsubscribed
        ]
        if not front:
            return
        address = self.random.choice(front[:16])
        try:
            status = one_click(self.serve_port, address)
        except OSError as exc:
            self.history.problems.append(f"serve at 127.0.0.1:{self.serve_port}: {exc}")
            return
        if status == 200:
            self.history.unsubscribed[address] = time.monotonic()
        else:
            self.log(f"unsubscribe: serve answered {status}")

    # -- the whole run -----------------------------------------------------------------

    def go(self) -> Verdict:
        s = self.settings
        self.launch()
        # The faults begin once the deployment sends (its start-up is not what is tried)
        wait_for(lambda: self.relay.arrivals, timeout=120, what="the first message")
        begin = time.monotonic()
        self.log("the first message arrived: faults begin")
        end = begin + s.seconds
        next_fault = begin + self.random.expovariate(1 / s.every)
        unsubscribes = s.unsubscribes if s.unsubscribes is not None else s.generated() // 50
        spacing = s.seconds / (unsubscribes + 1)
        next_unsubscribe = begin + spacing
        pending = 1
        while (now := time.monotonic()) < end:
            pending = self.ledger.pending() or (0 if self.selected() else 1)
            self.supervise(now, pending)
            self.relieve(now)
            if now >= next_fault and not self.refused_until:
                self.inject(self.random.choice(s.faults), now)
                next_fault = now + self.random.expovariate(1 / s.every)
            if now >= next_unsubscribe and unsubscribes:
                self.unsubscribe()
                next_unsubscribe += spacing
            time.sleep(TICK)
        self.finish(pending)
        self.relieve(time.monotonic(), everything=True)
        self.stop_all()
        if self.refusals:
            self.log(f"{self.refusals} sends refused: another run held the entry's lock")
        return self.verdict()

    def selected(self) -> bool:
        return self.ledger.selected()

    def finish(self, pending: int) -> None:
        """Without faults, until the ledger shows the entry finished (bounded)."""
        s = self.settings
        within = s.finish_within or 2 * pending / max(s.rate, 1) + 30
        deadline = time.monotonic() + within
        self.log(f"faults over: {pending} pending; finishing within {within:.0f}s")
        if self.refused_until:  # the role's limit back at once; a stop lasts its time
            self.refused_until = 0.0
            self.postgres.limit(ROLE_LIMIT)
        while (now := time.monotonic()) < deadline:
            self.relieve(now)
            pending = self.ledger.pending() or (0 if self.selected() else 1)
            if not pending:
                return
            self.supervise(now, pending)
            time.sleep(TICK)
        running = [f"{p.kind} {p.pid}" for p in self.processes if p.alive()]
        self.history.problems.append(
            f"the entry was not finished within {within:.0f}s of the faults' end"
            f" ({pending} pending; running: {', '.join(running) or 'nothing'})"
        )
        # What it is stuck on, for the reader: the pending rows' claims, and what each
        # process still running said last
        for line in self.ledger.claims():
            self.log(f"  pending: {line}")
        for process in [p for p in self.processes if p.alive()]:
            for line in process.running.stderr.splitlines()[-6:]:
                self.log(f"  {process.kind} {process.pid}: {line[:300]}")

    def stop_all(self) -> None:
        """SIGTERM to every process, one at a time (as each host stops its own): each
        must end within 2 s."""
        for process in [p for p in self.processes if p.alive()]:
            sent = time.monotonic()
            process.running.send_signal(signal.SIGTERM)
            try:
                process.running.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.running.process.kill()
            took = time.monotonic() - sent
            process.killed = True  # ended by the harness: no fault of its own
            self.collect(process)
            process.ended = time.monotonic()
            code = process.running.process.returncode
            self.log(f"SIGTERM: {process.kind} {process.pid} ended in {took:.2f}s, exit {code}")
            if took > SIGTERM_WITHIN:
                self.history.problems.append(
                    f"{process.kind} {process.pid} took {took:.1f}s to end after SIGTERM"
                )

    def verdict(self) -> Verdict:
        # Everyone the entry selected: the generated list and the sample's recipients, by
        # the address the ledger keys them on (the relay sees an IDN domain in punycode)
        everyone = self.ledger.everyone()
        alias = {
            str(spelling).lower(): str(address)
            for address, *spellings in everyone
            for spelling in (address, *spellings)
            if spelling
        }
        arrivals = []
        for arrival in self.relay.arrivals:
            if arrival.recipient not in alias:
                self.history.problems.append(f"a message to {arrival.recipient}, not selected")
            address = alias.get(arrival.recipient, arrival.recipient)
            arrivals.append(dataclasses.replace(arrival, recipient=address))
        for address, detail in self.ledger.skipped_otherwise():
            self.history.problems.append(f"skipped for another reason: {address} ({detail})")
        self.history.recipients = self.history.recipients | {row[0] for row in everyone}
        self.history.arrivals = arrivals
        self.history.ledger_sent = self.ledger.sent()
        self.history.ledger_pending = self.ledger.pending()
        return check(self.history)


def run(settings: Settings, log: Callable[[str], None] = print) -> Verdict:
    """Stand the deployment up, run the faults, check the history."""
    with (
        tempfile.TemporaryDirectory(prefix="statusmail-chaos-") as folder,
        own_ledger(settings.ledger, settings.server, Path(folder)) as ledger,
        Relay() as relay,
    ):
        processes = {} if settings.processes is None else {"processes": settings.processes}
        config = make_project(
            Path(folder) / "project",
            relay.port,
            settings.generated(),
            dkim=settings.dkim,
            rate=settings.rate,
            concurrency=settings.concurrency,
            lease=settings.lease,
            **processes,
        )
        migrate(config, ledger)
        with serving(config, SECRET, env={"STATUSMAIL_LEDGER": ledger.admin}) as port:
            chaos = Run(settings, config, ledger, relay, port, log)
            try:
                return chaos.go()
            finally:
                for pid in chaos.paused:  # else a stopped helper keeps its sender's stderr
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)
                for process in chaos.processes:
                    if process.ended is None:  # the run itself failed: end what it started
                        process.running.process.kill()
                        with contextlib.suppress(AssertionError):
                            process.running.finish(timeout=10)


def migrate(config: Path, ledger: OwnLedger) -> None:
    """The schema made as the role, so that its tables are the role's (in this process:
    its being a process is not the point)."""
    done = invoke(config, "ledger", "migrate", env={"STATUSMAIL_LEDGER": ledger.url})
    if done.exit_code:
        sys.exit(f"statusmail ledger migrate: {done.output.strip()}")
