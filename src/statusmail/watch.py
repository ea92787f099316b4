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

from statusmail import feedback, health, metrics, pipeline
from statusmail.config import Config, is_url, load_config
from statusmail.domain import Entry, ExitCode
from statusmail.entries import entry_paths, load_entry
from statusmail.errors import ConnectError, InputError, LedgerError, StatusmailError
from statusmail.ledger import Ledger, ServerLock, run_lock
from statusmail.ledger import describe as ledger_describe
from statusmail.ledger import exists as ledger_exists
from statusmail.subscribers import subscriber_files

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
        self.stop = asyncio.Event()
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

    # -- health --------------------------------------------------------------------
    # Called from the metrics thread: they only read attributes the loop replaces whole.

    def alive(self) -> str | None:
        return self.heartbeat.problem()

    def ready(self) -> str | None:
        problem = health.ledger_problem(self.config.paths.ledger)
        if problem is not None:
            return problem
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
            handlers = {
                signal.SIGTERM: self._on_stop,
                signal.SIGINT: self._on_stop,
                signal.SIGHUP: self._on_hangup,
            }
            previous = {sig: signal.getsignal(sig) for sig in handlers}
            for sig, handler in handlers.items():
                loop.add_signal_handler(sig, handler)
            leader = ServerLock(str(target), "watch") if is_url(target) else None
            try:
                if leader is None or await self._become_active(leader):
                    await self._watch()
            finally:
                if leader is not None:
                    leader.release()
                for sig in handlers:
                    loop.remove_signal_handler(sig)
                    signal.signal(sig, previous[sig] or signal.SIG_DFL)
        log.info("watch stopped", extra={"event": "stopped"})
        # For cron (--once): 4 tells that something is still pending, to be retried.
        if self.options.once and (self._backoff or self._left_pending):
            return ExitCode.STOPPED
        return ExitCode.OK

    async def _become_active(self, leader: ServerLock) -> bool:
        """On PostgreSQL one watcher is active, the others stand by: the server releases
        the active one's lock when its process or host is gone, and a standby takes
        over within ``--takeover`` seconds. False when stopped while standing by."""
        if leader.try_acquire():
            return True
        poll = max(0.2, self.options.takeover / 3)
        log.info(
            "standing by: another watcher is active on this ledger; taking over within %ss "
            "of its end",
            f"{self.options.takeover:g}",
            extra={"event": "standby"},
        )
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), poll)
            if not self.stop.is_set() and leader.try_acquire():
                log.info("the active watcher is gone: taking over", extra={"event": "active"})
                return True
        return False

    async def _watch(self) -> None:
        log.info("watching %s", self.config.paths.updates, extra={"event": "watching"})
        events = asyncio.create_task(self._file_events())
        beats = asyncio.create_task(self.heartbeat.beat())
        health.notify("READY=1")
        # What came back is read before anything is sent, then beside the sending.
        await self._feedback_pass()
        bounces = None if self.options.once else asyncio.create_task(self._feedback_loop())
        try:
            while not self.stop.is_set():
                if self.reload:
                    self._reload()
                await self._work_through_due()
                if self.options.once:
                    break
                await self._sleep()
        finally:
            for task in (events, beats, bounces):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _file_events(self) -> None:
        """Wake the loop as soon as a file in the updates folder changes (inotify via
        watchfiles); the loop also polls, so nothing depends on events arriving."""
        from watchfiles import awatch

        try:
            async for _changes in awatch(
                self.config.paths.updates, stop_event=self.stop, debounce=200, step=50
            ):
                self.wake.set()
        except (OSError, RuntimeError) as exc:
            log.info(
                "no file-system events (%s); polling every %.0fs",
                exc,
                self.options.poll_interval,
                extra={"event": "polling_only"},
            )

    async def _feedback_loop(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.config.bounces.interval)
            if not self.stop.is_set():
                await self._feedback_pass()

    async def _feedback_pass(self) -> None:
        """One pass over the bounce mailbox, in a thread (it blocks on IMAP and SQLite);
        a mailbox that cannot be read is logged and tried again next time."""
        bounces = self.config.bounces
        if bounces.maildir is None and bounces.imap is None:
            return
        try:
            report = await asyncio.to_thread(
                feedback.run_pass, self.config, should_stop=self.stop.is_set
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

    async def _work_through_due(self) -> None:
        self._left_pending = False
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
            if self.stop.is_set():
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
                            f"{entry.path}: changed after it was sent in full; "
                            "not sent again (write a new entry for news)",
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
        if report.exit_code is ExitCode.STOPPED:
            self._left_pending = True
            if not self.stop.is_set():
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
