"""``statusmail watch``: the service that sends ready entries as they appear.

One entry at a time, oldest ``date`` first, through the same pipeline as ``send``. The
ledger decides what is left to do, so a restart simply carries on. An entry is retried
with backoff when the relay is down; nothing is marked failed for that. An entry that
cannot be sent as its files stand (invalid, a broken list) is logged once and left
alone until one of its files changes. With a bounce mailbox configured, the watcher
also reads it (``statusmail feedback``) at start and every ``bounces.interval`` seconds.

With ``--metrics-port`` it answers ``/metrics``, ``/healthz`` (the event loop is beating)
and ``/readyz`` (the ledger answers, and the relay was reachable at the last attempt or
nothing waits for it) from a thread of its own; under systemd it says ``READY=1`` and
feeds the watchdog.

On PostgreSQL one watcher leads (it holds a session advisory lock) and the others stand
by, healthy in every respect a supervisor checks: ``READY=1``, the watchdog fed, ``/healthz``
200, ``/readyz`` 429 "standby". A lost lock connection stops the leader's sending at once;
leader and standby alike connect again with backoff and stand for election anew. Neither
exits for it.

Here: the loop, sending one entry, and the signals; the service's other pieces (its
options, readiness, leadership, background tasks, bookkeeping) are parts of ``Watcher``
in ``service``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from pathlib import Path

from statusmail import metrics, pipeline, signals
from statusmail.domain import Entry, ExitCode
from statusmail.errors import (
    ConnectError,
    InputError,
    Interrupted,
    LedgerError,
    SchemaTooNew,
    StatusmailError,
)
from statusmail.ledger import controls, reading, run_lock
from statusmail.ledger import describe as ledger_describe
from statusmail.project.config import Config, is_url, load_config
from statusmail.service.background import Background
from statusmail.service.bookkeeping import (
    SETTLE,
    Backoff,
    Bookkeeping,
    Fingerprint,
    inputs_fingerprint,
    lists_fingerprint,
)
from statusmail.service.leadership import Leadership, cancelled
from statusmail.service.options import WatchOptions as WatchOptions  # what the CLI imports
from statusmail.service.readiness import Readiness, relay_name
from statusmail.web import health
from statusmail.web.republish import Republisher

log = logging.getLogger("statusmail.watch")

LISTS_LOOK = 0.5  # seconds between two looks at the subscriber lists while sending


class Watcher(Readiness, Leadership, Background, Bookkeeping):
    def __init__(self, config: Config, options: WatchOptions) -> None:
        self.options = options
        self.config = self._overridden(config)
        self.started = time.time()
        self.stop = asyncio.Event()  # the process is to stop
        self.halt = asyncio.Event()  # this term of sending is over: stopped, or lock lost
        self.wake = asyncio.Event()
        self.reload = False
        self._run_stop: asyncio.Event | None = None
        self._sending: str | None = None  # the entry a run is sending now
        self._reported: dict[Path, str] = {}  # what was last said about a file, said once
        self._unchanged: dict[Path, tuple[tuple[int, int], float]] = {}  # see _standing_still
        self._blocked: dict[str, Fingerprint] = {}  # entries that cannot run as files stand
        self._backoff: dict[str, Backoff] = {}
        self._left_pending = False  # did the last pass leave recipients pending?
        self.registry = metrics.new_registry()
        self.metrics = metrics.DeliveryMetrics(self.registry)
        self.heartbeat = health.Heartbeat()
        self.role = "starting"  # starting | standby | leader | reconnecting
        self._lock_problem: str | None = None  # why the leadership lock cannot be had
        self._said_ready = False
        self._loss_logged: LedgerError | None = None

    # -- signals -----------------------------------------------------------------

    def _on_stop(self) -> None:
        log.info(
            "stopping: in-flight messages finish, the rest stays pending",
            extra={"event": "stopping"},
        )
        self.stop.set()
        self._halt()

    def _halt(self) -> None:
        """End this term of sending: in-flight messages finish, the rest stays pending."""
        self.halt.set()
        self.wake.set()
        if self._run_stop is not None:
            self._run_stop.set()

    def _on_hangup(self) -> None:
        log.info("SIGHUP: reloading the config and templates", extra={"event": "reload"})
        self.reload = True
        self.wake.set()

    # -- the loop ----------------------------------------------------------------

    async def run(self) -> ExitCode:
        server = self._metrics_server()
        try:
            with metrics.use(self.metrics):
                return await self._run()
        finally:
            health.notify("STOPPING=1")
            if server is not None:
                server.stop()

    async def _run(self) -> ExitCode:
        target = self.config.paths.ledger
        with run_lock(target, "watch"):  # SQLite: one watcher; PostgreSQL: see below
            loop = asyncio.get_running_loop()
            previous = signal.getsignal(signal.SIGHUP)
            loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
            # The loop's pulse (/healthz, the watchdog) beats from the start, also while
            # this watcher stands by or cannot reach the ledger.
            beats = asyncio.create_task(self.heartbeat.beat())
            try:
                # SIGTERM/SIGINT stop gently; what still waits a second later (on a
                # server that does not answer, say) is cut short where it waits.
                with signals.stop_on_signal(self._on_stop):
                    if is_url(target):
                        await self._elect(str(target))
                    else:
                        self._leading(True)
                        await self._watch()
            except Interrupted:
                log.warning(
                    "stopped without waiting any longer for what was in progress",
                    extra={"event": "stop_forced"},
                )
            finally:
                await cancelled(beats)
                loop.remove_signal_handler(signal.SIGHUP)
                signal.signal(signal.SIGHUP, previous or signal.SIG_DFL)
        log.info("watch stopped", extra={"event": "stopped"})
        # For cron (--once): 4 tells that something is still pending, to be retried.
        if self.options.once and (self._backoff or self._left_pending):
            return ExitCode.STOPPED
        return ExitCode.OK

    async def _watch(self) -> None:
        log.info("watching %s", self.config.paths.updates, extra={"event": "watching"})
        events = asyncio.create_task(self._file_events())
        self._say_ready()
        # What came back is read before anything is sent, then beside the sending.
        await self._feedback_pass()
        bounces = None if self.options.once else asyncio.create_task(self._feedback_loop())
        # The status site, republished in a thread of its own after each pass that
        # changed what it is made of (README: The status site and its feeds).
        site = Republisher(self.config) if self.config.publish.watch else None
        try:
            while not self.halt.is_set():
                # Cleared before the pass, not before the sleep: a stop, a SIGHUP or a
                # changed file that comes during the pass cuts the sleep after it short.
                self.wake.clear()
                if self.reload:
                    self._reload()
                await self._work_through_due()
                if site is not None:
                    site.request(self.config)
                if self.options.once and not self.settling:
                    break  # (--once waits for a file still settling, then looks again)
                await self._sleep()
        finally:
            await cancelled(events, bounces)
            if site is not None:  # --once: the site as this pass left it; else stop now
                await asyncio.to_thread(site.close, self.options.once)

    def _overridden(self, config: Config) -> Config:
        """``config`` with the command line's --rate and --concurrency over it."""
        return config.with_overrides(rate=self.options.rate, concurrency=self.options.concurrency)

    def _reload(self) -> None:
        self.reload = False
        try:
            self.config = self._overridden(load_config(self.config.path))
        except InputError as exc:
            for problem in exc.problems:
                log.error("config not reloaded: %s", problem, extra={"event": "reload_failed"})
            return
        # Whatever was blocked is looked at again, and said again if it still is: a
        # SIGHUP is the operator's "I fixed it".
        self._blocked.clear()
        self._reported.clear()
        log.info("config reloaded", extra={"event": "reloaded"})

    async def _sleep(self) -> None:
        now = asyncio.get_running_loop().time()
        waits = [self.options.poll_interval]
        if self.settling:
            waits.append(SETTLE / 2)
        # (a backoff whose time has come is retried by the pass: never a zero wait)
        waits += [b.until - now for b in self._backoff.values() if b.until > now]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), timeout=min(waits))

    async def _work_through_due(self) -> None:
        self._left_pending = False
        self.settling = False
        if not await self._import():
            return
        ledger_path = Path(ledger_describe(self.config.paths.ledger))
        try:
            due = self.due_entries()
        except SchemaTooNew:
            raise  # upgraded by a newer statusmail: this one steps down (Leadership)
        except LedgerError as exc:
            # Stay up, unready (/readyz says why), and look again at the next scan.
            self._left_pending = True
            self._say_once(
                ledger_path,
                f"{exc}; nothing is sent until it can be read",
                logging.ERROR,
                event="ledger_error",
            )
            return
        self._reported.pop(ledger_path, None)
        # An entry no longer due (paused, cancelled, finished by a send, gone) waits
        # for nothing: a backoff left for it kept /readyz unready and the loop awake.
        ids = {entry.id for entry in due}
        for gone in [entry_id for entry_id in self._backoff if entry_id not in ids]:
            del self._backoff[gone]
        for entry in due:
            if self.halt.is_set():
                return
            backoff = self._backoff.get(entry.id)
            if backoff and backoff.until > asyncio.get_running_loop().time():
                return  # one entry at a time: the oldest waits for its relay
            if not await self._send(entry):
                return

    # -- sending one entry -------------------------------------------------------

    async def _send(self, entry: Entry) -> bool:
        """Send what is pending for ``entry``; True to go on with the next entry."""
        config = self.config
        fingerprint = inputs_fingerprint(config, entry.path)
        blocked = self._blocked.pop(entry.id, None)
        if blocked == fingerprint:
            self._blocked[entry.id] = fingerprint
            return True  # said once already; nothing it reads has changed since
        if blocked is not None and entry.path is not None:
            self._reported.pop(entry.path, None)  # a file changed: say it again if still so
        try:
            prepared = pipeline.prepare(config, entry)
            log.info(
                "sending %s",
                entry.id,
                extra={"event": "sending", "entry": entry.id, "relay": relay_name(config)},
            )
            self._run_stop = asyncio.Event()
            self._sending = entry.id
            if self.halt.is_set():
                self._run_stop.set()
            request = pipeline.Request()
            with pipeline.open_ledger(config, entry.id) as held:
                # Importing and checking a large list blocks the loop for seconds: a
                # signal meanwhile ends it where it is, as in ``send``.
                with signals.raise_on_signal():
                    started = pipeline.start(prepared, held, request)
                self.metrics.start_sending(entry.id, held.ledger.counts(entry.id)["pending"])
                watching = asyncio.create_task(self._lists_change(self._run_stop))
                try:
                    report = await pipeline.finish(
                        prepared,
                        held,
                        pipeline.make_transport(config),
                        request,
                        started,
                        stop=self._run_stop,
                    )
                finally:
                    watching.cancel()
                    [lists_changed] = await asyncio.gather(watching, return_exceptions=True)
            if lists_changed is True:
                log.info(
                    "%s: the lists changed while it was sent: importing them and selecting "
                    "again (sent %d this run)",
                    entry.id,
                    report.result.sent,
                    extra={"event": "lists_changed", "entry": entry.id},
                )
                self.wake.set()  # at once, not after a backoff
                self._left_pending = True  # (--once: still pending, exit 4)
                return False
            if report.refused:  # the list, read while delivering, was broken or empty
                self._blocked[entry.id] = fingerprint
                return True
        except InputError as exc:
            self._blocked[entry.id] = fingerprint
            # refused with readers still pending (entry-changed): --once is not done
            self._left_pending = self._left_pending or self._has_pending(entry.id)
            self._say_once(
                entry.path or Path(entry.id),
                f"{entry.id}: not sent until its files are fixed:\n  "
                + "\n  ".join(str(p) for p in exc.problems),
                logging.ERROR,
            )
            return True
        except ConnectError as exc:
            self._retry_later(entry.id, f"relay unavailable: {exc}")
            return False
        except StatusmailError as exc:
            self._retry_later(entry.id, str(exc))
            return False
        finally:
            self._run_stop = None
            self._sending = None
            self.metrics.done_sending(entry.id, None)
        counts = report.counts or {}
        self.metrics.done_sending(entry.id, counts.get("pending"))
        log.info(
            "%s: sent %d, failed %d this run; %s in all",
            entry.id,
            report.result.sent,
            report.result.failed,
            ", ".join(f"{k} {v}" for k, v in counts.items()),
            extra={
                "event": "run_finished",
                "entry": entry.id,
                "sent": report.result.sent,
                "failed": report.result.failed,
                "pending": counts.get("pending"),
                "stopped": report.stopped,
                "relay": relay_name(config),
            },
        )
        if report.result.stopped in controls.STOPPED_BY.values():
            return True  # paused or cancelled: the next look leaves it, and says so once
        if report.exit_code is ExitCode.STOPPED:
            self._left_pending = True
            if not self.halt.is_set():
                self._retry_later(
                    entry.id,
                    report.stopped or "recipients still pending",
                    relay_unfit=report.result.relay_unfit,
                )
            return False
        self._backoff.pop(entry.id, None)
        return True

    def _has_pending(self, entry_id: str) -> bool:
        target = self.config.paths.ledger
        with contextlib.suppress(StatusmailError), reading(target) as ledger:
            return bool(ledger.counts(entry_id)["pending"])
        return False

    async def _lists_change(self, stop: asyncio.Event) -> bool:
        """True once a subscriber list changes while an entry is sent; then the run
        stops taking recipients (as a pause does), and the next pass imports the lists
        and selects again. A reader unsubscribed in the list was mailed 11 s later, and
        one added was never mailed by this watcher (review)."""
        before = lists_fingerprint(self.config)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LISTS_LOOK)
            if lists_fingerprint(self.config) != before:
                stop.set()
                return True
        return False

    def _retry_later(self, entry_id: str, reason: str, *, relay_unfit: bool = False) -> None:
        previous = self._backoff.get(entry_id)
        delay = (
            min(previous.delay * 2, self.options.backoff_max)
            if previous
            else self.options.backoff_initial
        )
        until = asyncio.get_running_loop().time() + delay
        self._backoff[entry_id] = Backoff(delay, until, reason, relay_unfit)
        log.warning(
            "%s: %s; trying again in %.0fs",
            entry_id,
            reason,
            delay,
            extra={
                "event": "retry_later",
                "entry": entry_id,
                "delay": delay,
                "relay": relay_name(self.config),
            },
        )
