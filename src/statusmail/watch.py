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
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from statusmail import metrics, pipeline, signals
from statusmail.delivery.corrections import when
from statusmail.domain import Entry, ExitCode
from statusmail.errors import (
    ConnectError,
    InputError,
    Interrupted,
    LedgerError,
    StatusmailError,
)
from statusmail.feedback import loop as feedback
from statusmail.ledger import Ledger, controls, run_lock
from statusmail.ledger import describe as ledger_describe
from statusmail.ledger import exists as ledger_exists
from statusmail.ledger.importing import import_lists
from statusmail.ledger.locks import LeaderLock
from statusmail.ledger.subscribers import Imported, ImportRefused
from statusmail.project.config import Config, is_url, load_config
from statusmail.project.entries import entry_paths, load_entry
from statusmail.project.subscribers import subscriber_files
from statusmail.web import health
from statusmail.web.republish import Republisher

log = logging.getLogger("statusmail.watch")

Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass
class WatchOptions:
    once: bool = False
    poll_interval: float = 2.0
    backoff_initial: float = 5.0
    backoff_max: float = 300.0
    # PostgreSQL: how soon a standby watcher takes over from one that is gone (seconds)
    takeover: float = 30.0
    # PostgreSQL: how often the leader checks its lock's connection, and the backoff of
    # connecting again when it is lost or refused (seconds)
    lock_check: float = 1.0
    lock_retry_initial: float = 0.5
    lock_retry_max: float = 30.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None  # None: no metrics endpoint


@dataclass
class _Backoff:
    delay: float
    until: float


def inputs_fingerprint(config: Config, entry_path: Path | None) -> Fingerprint:
    """Size and modification time of every file a run of the entry reads."""
    paths: list[Path] = [config.path, config.paths.regions]
    if entry_path is not None:
        paths.append(entry_path)
    if config.paths.templates.is_dir():
        paths += sorted(p for p in config.paths.templates.rglob("*") if p.is_file())
    with contextlib.suppress(OSError):
        paths += subscriber_files(config.paths.subscribers)
    stamps = []
    for path in paths:
        with contextlib.suppress(OSError):
            st = path.stat()
            stamps.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(stamps)


def relay_name(config: Config) -> str:
    return config.smtp.server if config.transport == "smtp" else config.transport


class Watcher:
    def __init__(self, config: Config, options: WatchOptions) -> None:
        self.config = config
        self.options = options
        self.stop = asyncio.Event()  # the process is to stop
        self.halt = asyncio.Event()  # this term of sending is over: stopped, or lock lost
        self.wake = asyncio.Event()
        self.reload = False
        self._run_stop: asyncio.Event | None = None
        self._reported: dict[Path, str] = {}  # what was last said about a file, said once
        self._blocked: dict[str, Fingerprint] = {}  # entries that cannot run as files stand
        self._backoff: dict[str, _Backoff] = {}
        self._left_pending = False  # did the last pass leave recipients pending?
        self.registry = metrics.new_registry()
        self.metrics = metrics.DeliveryMetrics(self.registry)
        self.heartbeat = health.Heartbeat()
        self.role = "starting"  # starting | standby | leader | reconnecting
        self._lock_problem: str | None = None  # why the leadership lock cannot be had
        self._said_ready = False
        self._loss_logged: LedgerError | None = None

    # -- health --------------------------------------------------------------------
    # Called from the metrics thread: they only read attributes the loop replaces whole.

    def alive(self) -> str | None:
        return self.heartbeat.problem()

    def ready(self) -> str | None:
        if self._lock_problem is not None:
            return self._lock_problem
        problem = health.ledger_problem(self.config.paths.ledger)
        if problem is not None:
            return problem
        if self.role == "standby":
            return health.Standby(
                "another watcher leads on this ledger; this one takes over within "
                f"{self.options.takeover:g}s of its end"
            )
        waiting = len(self._backoff)
        if self.metrics.relay_reachable is False and waiting:
            return (
                f"the relay {relay_name(self.config)} was unreachable at the last attempt; "
                f"{waiting} entr{'y waits' if waiting == 1 else 'ies wait'} for it"
            )
        return None

    def _metrics_server(self) -> health.BackgroundServer | None:
        port = self.options.metrics_port
        if port is None:
            return None
        from starlette.applications import Starlette

        sock = health.listen(self.options.metrics_host, port)
        app = Starlette(routes=health.routes(self.registry, ready=self.ready, alive=self.alive))
        server = health.BackgroundServer(app, sock).start()
        log.info(
            "metrics and health on http://%s/metrics",
            server.address,
            extra={"event": "metrics_listening", "address": server.address},
        )
        return server

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
                await _cancelled(beats)
                loop.remove_signal_handler(signal.SIGHUP)
                signal.signal(signal.SIGHUP, previous or signal.SIG_DFL)
        log.info("watch stopped", extra={"event": "stopped"})
        # For cron (--once): 4 tells that something is still pending, to be retried.
        if self.options.once and (self._backoff or self._left_pending):
            return ExitCode.STOPPED
        return ExitCode.OK

    # -- leadership (PostgreSQL) ----------------------------------------------------

    def _say_ready(self) -> None:
        """``READY=1`` once: the watcher is up, leading, standing by, or waiting for the
        ledger's server with backoff (``/readyz`` tells which)."""
        if not self._said_ready:
            self._said_ready = True
            health.notify("READY=1")

    def _leading(self, leading: bool) -> None:
        if leading:
            self.role = "leader"
        self.metrics.leader(leading)

    async def _elect(self, url: str) -> None:
        """Stand for leadership until stopped: connect, stand by until the lock is had,
        lead until the lock's connection is lost, and over again. A refused or lost
        connection is retried with backoff (``--retry-after``'s doubling, from
        ``lock_retry_initial`` up to ``lock_retry_max``); nothing here ends the process."""
        delay = self.options.lock_retry_initial
        while not self.stop.is_set():
            try:
                lock = await LeaderLock.connect(url, "watch")
            except LedgerError as exc:
                self.role = "reconnecting"
                self._lock_problem = f"{exc}; trying again in {delay:g}s"
                log.error("%s", self._lock_problem, extra={"event": "leadership_unavailable"})
                self._say_ready()
                await self._pause(delay)
                delay = min(delay * 2, self.options.lock_retry_max)
                continue
            self._lock_problem = None
            try:
                if not await self._stand_by(lock):
                    return
                delay = self.options.lock_retry_initial
                await self._lead(lock)
            except LedgerError as exc:
                self.role = "reconnecting"
                self._lock_problem = f"{exc}; connecting again"
                if exc is not self._loss_logged:  # the leader's guard said it already
                    log.error("%s; connecting again", exc, extra={"event": "leadership_lost"})
            finally:
                self._leading(False)
                await lock.close()
            if not self.stop.is_set():  # a server that comes and goes is not hammered
                await self._pause(delay)
                delay = min(delay * 2, self.options.lock_retry_max)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    async def _stand_by(self, lock: LeaderLock) -> bool:
        """Wait for the lock: the server releases the leader's when its process or host
        is gone, and a standby takes over within ``--takeover`` seconds. True once held;
        False when stopped; ``LedgerError`` when the lock's connection is lost."""
        if await lock.try_acquire():
            log.info("leading: this watcher sends", extra={"event": "active"})
            return True
        self.role = "standby"
        self._say_ready()
        log.info(
            "standing by: another watcher is active on this ledger; taking over within %ss "
            "of its end",
            f"{self.options.takeover:g}",
            extra={"event": "standby"},
        )
        poll = max(0.2, self.options.takeover / 3)
        while not self.stop.is_set():
            await self._pause(poll)
            if not self.stop.is_set() and await lock.try_acquire():
                log.info("the active watcher is gone: taking over", extra={"event": "active"})
                return True
        return False

    async def _lead(self, lock: LeaderLock) -> None:
        """Send while the lock's connection lives: a guard looks at it every
        ``lock_check`` seconds and, when it is gone, stops the sending at once (another
        watcher may hold the lock a moment later): gently, then, if the sending still
        runs after ``signals.FORCE_AFTER`` seconds (on a server that is gone, say), cut
        short where it waits. Raises the lost connection's ``LedgerError``."""
        self._leading(True)
        self.halt = asyncio.Event()
        lost: list[LedgerError] = []
        watching = asyncio.create_task(self._watch())

        async def guard() -> None:
            while True:
                await asyncio.sleep(self.options.lock_check)
                try:
                    await lock.check()
                except LedgerError as exc:
                    log.error(
                        "%s: stopping the sending now; connecting again",
                        exc,
                        extra={"event": "leadership_lost"},
                    )
                    lost.append(exc)
                    self._loss_logged = exc
                    self._halt()
                    break
            await asyncio.sleep(signals.FORCE_AFTER)
            while not watching.done():
                watching.cancel()
                await asyncio.sleep(signals.RECANCEL)

        guarding = asyncio.create_task(guard())
        me = asyncio.current_task()
        try:
            await watching
        except asyncio.CancelledError:
            if not lost or (me is not None and me.cancelling()):
                raise  # this task is cancelled, not only the sending the guard cut short
        finally:
            await _cancelled(guarding, watching)
        if lost and not self.stop.is_set():
            raise lost[0]

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
                if self.reload:
                    self._reload()
                await self._work_through_due()
                if site is not None:
                    site.request(self.config)
                if self.options.once:
                    break
                await self._sleep()
        finally:
            await _cancelled(events, bounces)
            if site is not None:  # --once: the site as this pass left it; else stop now
                await asyncio.to_thread(site.close, self.options.once)

    async def _file_events(self) -> None:
        """Wake the loop as soon as a file in the updates folder changes (inotify via
        watchfiles); the loop also polls, so nothing depends on events arriving."""
        from watchfiles import awatch

        folders = [self.config.paths.updates]
        if self.config.paths.subscribers.is_dir():  # an edited list is imported at once
            folders.append(self.config.paths.subscribers)
        try:
            async for _changes in awatch(*folders, stop_event=self.halt, debounce=200, step=50):
                self.wake.set()
        except (OSError, RuntimeError) as exc:
            log.info(
                "no file-system events (%s); polling every %.0fs",
                exc,
                self.options.poll_interval,
                extra={"event": "polling_only"},
            )

    async def _feedback_loop(self) -> None:
        while not self.halt.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.halt.wait(), self.config.bounces.interval)
            if not self.halt.is_set():
                await self._feedback_pass()

    async def _feedback_pass(self) -> None:
        """One pass over the bounce mailbox, in a thread (it blocks on IMAP and SQLite);
        a mailbox that cannot be read is logged and tried again next time."""
        bounces = self.config.bounces
        if bounces.maildir is None and bounces.imap is None:
            return
        try:
            report = await asyncio.to_thread(
                feedback.run_pass, self.config, should_stop=self.halt.is_set
            )
        except StatusmailError as exc:
            log.warning("feedback: %s", exc, extra={"event": "feedback_failed"})
            return
        except Exception as exc:  # the service keeps sending whatever the mailbox holds
            log.error("feedback pass failed: %r", exc, extra={"event": "feedback_failed"})
            return
        summary = report.as_json()
        if report.read:
            log.info(
                "feedback: read %d, handled %d (%d hard, %d soft, %d complaints, "
                "%d unsubscribes), %d newly suppressed",
                report.read,
                report.handled,
                summary["hard"],
                summary["soft"],
                summary["complaints"],
                summary["unsubscribes"],
                report.suppressed,
                extra={
                    "event": "feedback",
                    "read": report.read,
                    "handled": report.handled,
                    "suppressed": report.suppressed,
                },
            )

    def _reload(self) -> None:
        self.reload = False
        try:
            self.config = load_config(self.config.path)
        except InputError as exc:
            for problem in exc.problems:
                log.error("config not reloaded: %s", problem, extra={"event": "reload_failed"})
            return
        log.info("config reloaded", extra={"event": "reloaded"})

    async def _sleep(self) -> None:
        now = asyncio.get_running_loop().time()
        waits = [self.options.poll_interval]
        waits += [max(0.0, b.until - now) for b in self._backoff.values()]
        self.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), timeout=min(waits))

    async def _import(self) -> bool:
        """The lists into the ledger as soon as they change (when not, a stat of each
        file); False when the import is refused (said once per change of the files):
        then no entry is sent."""
        folder = self.config.paths.subscribers
        try:
            imported = await asyncio.to_thread(_import_lists, self.config)
        except ImportRefused as exc:
            if not exc.again:
                self._reported.pop(folder, None)  # read anew: say it again if still so
            self._say_once(
                folder,
                "subscriber lists not imported, nothing is sent until they are fixed:\n  "
                + "\n  ".join(str(p) for p in exc.problems),
                logging.ERROR,
                event="import_refused",
            )
            return False
        except StatusmailError:
            return True  # the ledger: the pass says it
        self._reported.pop(folder, None)
        if imported.changed:
            log.info(
                "imported %d subscribers (%d invalid, %d duplicate rows skipped)",
                imported.subscribers,
                imported.invalid,
                imported.duplicates,
                extra={"event": "imported", "subscribers": imported.subscribers},
            )
        return True

    async def _work_through_due(self) -> None:
        self._left_pending = False
        if not await self._import():
            return
        ledger_path = Path(ledger_describe(self.config.paths.ledger))
        try:
            due = self.due_entries()
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
        for entry in due:
            if self.halt.is_set():
                return
            backoff = self._backoff.get(entry.id)
            if backoff and backoff.until > asyncio.get_running_loop().time():
                return  # one entry at a time: the oldest waits for its relay
            if not await self._send(entry):
                return

    # -- what is due -------------------------------------------------------------

    def _say_once(
        self,
        path: Path,
        message: str,
        level: int = logging.WARNING,
        *,
        event: str = "entry_problem",
    ) -> None:
        if self._reported.get(path) != message:
            self._reported[path] = message
            log.log(level, "%s", message, extra={"event": event, "file": str(path)})

    def due_entries(self) -> list[Entry]:
        """Ready entries whose time has come and that the ledger does not show complete."""
        due: list[Entry] = []
        now = dt.datetime.now(dt.UTC)
        target = self.config.paths.ledger
        ledger = Ledger(target, readonly=True) if ledger_exists(target) else None
        try:
            for entry in self._entries():
                state = ledger.entry_state(entry.id) if ledger else None
                if state and state[1]:  # completed
                    if state[0] != entry.digest and entry.path:
                        self._say_once(
                            entry.path,
                            f"{entry.path}: changed after it was sent in full; not sent "
                            "again (write a new entry for news, or one with "
                            f"'corrects: {entry.id}' to correct it)",
                        )
                    continue
                held = controls.control(ledger, entry.id) if ledger else None
                if held is not None:  # paused or cancelled (statusmail pause|cancel)
                    self._say_once(
                        entry.path or Path(entry.id),
                        f"{entry.id}: {held.state} {when(held.since)}, not sent"
                        + (" (statusmail resume continues it)" if held.state == "paused" else ""),
                        logging.INFO,
                    )
                    continue
                if not entry.ready:
                    if entry.path:
                        self._say_once(entry.path, f"{entry.path}: draft, not sent", logging.INFO)
                    continue
                if entry.send_at and entry.send_at > now:
                    continue
                due.append(entry)
        finally:
            if ledger:
                ledger.close()
        return sorted(due, key=lambda e: (e.date, e.id))

    def _entries(self) -> Iterator[Entry]:
        for path in entry_paths(self.config.paths.updates):
            try:
                entry = load_entry(path)
            except InputError as exc:
                self._say_once(
                    path,
                    "invalid entry, not sent until fixed:\n  "
                    + "\n  ".join(str(p) for p in exc.problems),
                    logging.ERROR,
                )
                continue
            yield entry

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
            if self.halt.is_set():
                self._run_stop.set()
            request = pipeline.Request()
            with pipeline.open_ledger(config, entry.id) as held:
                started = pipeline.start(prepared, held, request)
                self.metrics.start_sending(entry.id, held.ledger.counts(entry.id)["pending"])
                report = await pipeline.finish(
                    prepared,
                    held,
                    pipeline.make_transport(config),
                    request,
                    started,
                    stop=self._run_stop,
                )
            if report.refused:  # the list, read while delivering, was broken or empty
                self._blocked[entry.id] = fingerprint
                return True
        except InputError as exc:
            self._blocked[entry.id] = fingerprint
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
                "stopped": report.result.stopped,
                "relay": relay_name(config),
            },
        )
        if report.result.stopped in controls.STOPPED_BY.values():
            return True  # paused or cancelled: the next look leaves it, and says so once
        if report.exit_code is ExitCode.STOPPED:
            self._left_pending = True
            if not self.halt.is_set():
                self._retry_later(entry.id, report.result.stopped or "recipients still pending")
            return False
        self._backoff.pop(entry.id, None)
        return True

    def _retry_later(self, entry_id: str, reason: str) -> None:
        previous = self._backoff.get(entry_id)
        delay = (
            min(previous.delay * 2, self.options.backoff_max)
            if previous
            else self.options.backoff_initial
        )
        until = asyncio.get_running_loop().time() + delay
        self._backoff[entry_id] = _Backoff(delay, until)
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


def _import_lists(config: Config) -> Imported:
    with Ledger(config.paths.ledger) as ledger:
        return import_lists(ledger, config.paths.subscribers)


async def _cancelled(*tasks: asyncio.Task[None] | None) -> None:
    """Cancel background tasks and wait for them to end. A cancellation of the caller
    itself while it waits still propagates (``gather`` re-raises it)."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
