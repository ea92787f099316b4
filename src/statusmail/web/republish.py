"""Keeping the status site current: the ``publish`` command, the ``publish.after`` hook,
and ``watch``'s republisher, which works in a thread of its own so that neither
rendering nor a slow or failing hook ever holds up sending."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Protocol

from statusmail.domain import ExitCode
from statusmail.errors import InputError, StatusmailError
from statusmail.project.config import Config, is_url
from statusmail.project.secrets import secret_variables
from statusmail.project.yamlfile import Stamps, file_stamps
from statusmail.web.publish import Published, after_done, held_entries, publish

log = logging.getLogger("statusmail.publish")

AFTER_TIMEOUT = 600.0  # seconds a publish.after command may take
RETRY_MAX = 3600.0


class Printer(Protocol):
    def print(self, *objects: object, markup: bool = ..., highlight: bool = ...) -> None: ...


def run_after(config: Config, site: Path) -> bool:
    """Run ``publish.after`` (in the config's folder, $STATUSMAIL_SITE naming the site);
    True if it ran through. A failure is logged with its exit status and last words."""
    command = config.publish.after
    if not command:
        return True
    # The hook publishes files: it gets none of the secrets (a hook that failed printed
    # its environment into the log, PGPASSWORD and the unsubscribe secret with it).
    hidden = secret_variables(config) | {"PGPASSWORD", "CREDENTIALS_DIRECTORY"}
    if is_url(os.environ.get("STATUSMAIL_LEDGER", "")):
        hidden.add("STATUSMAIL_LEDGER")  # (its URL may hold a password)
    env = {k: v for k, v in os.environ.items() if k not in hidden} | {"STATUSMAIL_SITE": str(site)}
    try:
        done = subprocess.run(
            command,
            shell=True,
            cwd=config.root,
            env=env,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=AFTER_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        reason = (
            f"did not finish in {AFTER_TIMEOUT:.0f}s"
            if isinstance(exc, subprocess.TimeoutExpired)
            else str(exc)
        )
        log.warning("publish.after %s", reason, extra={"event": "publish_after_failed"})
        return False
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
        log.warning(
            "%s:%s: publish.after failed (exit status %d)%s",
            config.path,
            config.line("publish") or "",
            done.returncode,
            ": " + " / ".join(said) if said else "",
            extra={"event": "publish_after_failed", "status": done.returncode},
        )
        return False
    log.info("publish.after done", extra={"event": "publish_after_done"})
    return True


def publish_command(config: Config, out: Path | None, console: Printer) -> ExitCode:
    """``statusmail publish``: 0 when the site is current and the hook (if any) ran;
    3 when the site is published but ``publish.after`` failed (run publish again, or let
    watch retry it)."""
    result = publish(config, out)
    what = "published" if result.changed else "unchanged"
    console.print(
        f"{what}: {', '.join(result.editions)} ({result.pages} files) at {result.site}",
        markup=False,
        highlight=False,
    )
    if not result.after_pending:
        return ExitCode.OK
    ok = run_after(config, result.site)
    after_done(config, out, ok)
    if not ok:
        console.print(
            "error: publish.after failed (see the log); the site itself is published", markup=False
        )
        return ExitCode.FAILED
    return ExitCode.OK


class Republisher:
    """Publishes in a thread of its own when asked (``request``) and the inputs changed
    since the last publish, then runs ``publish.after``, retrying a failed one with
    backoff (``publish.retry``, doubling to an hour)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._wanted = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._seen: tuple[Stamps, tuple[tuple[str, str], ...] | None] | None = None
        self._after_due: float | None = None
        self._delay = config.publish.retry
        self._finish = True
        self.last: Published | None = None
        self._thread = threading.Thread(target=self._loop, name="statusmail-publish", daemon=True)
        self._thread.start()

    def request(self, config: Config | None = None) -> None:
        """Publish soon if anything the site is made of changed (a reloaded config too)."""
        if config is not None:
            self.config = config
        self._idle.clear()
        self._wanted.set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until what was requested is done (tests, ``watch --once``)."""
        return self._idle.wait(timeout)

    def close(self, finish: bool = True) -> None:
        """Stop. With ``finish`` (``watch --once``), first do what was requested and a
        due ``publish.after`` (once, not its retries); without (a signal), stop within a
        second: a publish cut short leaves the current site as it was."""
        self._finish = finish
        self._stop.set()
        self._wanted.set()
        self._thread.join(AFTER_TIMEOUT + 60 if finish else 1.0)

    def _inputs(self) -> tuple[Stamps, tuple[tuple[str, str], ...] | None]:
        """The files the site is made of, and the entries the ledger holds back (a
        pause or a cancel changes the site too; None when the ledger cannot be read)."""
        config = self.config
        paths = [config.path, config.paths.regions]
        for folder in (config.paths.updates, config.paths.templates):
            with contextlib.suppress(OSError):
                paths += sorted(p for p in folder.rglob("*") if p.is_file())
        try:
            held = tuple(sorted(held_entries(config).items()))
        except StatusmailError:
            held = None  # publish says why
        return file_stamps(paths), held

    def _publish(self) -> None:
        seen = self._inputs()
        due = self.last.next_due if self.last else None
        if seen == self._seen and (due is None or dt.datetime.now(dt.UTC) < due):
            return
        try:
            # (held as just read for the comparison: the ledger is read once a pass)
            result = publish(self.config, held=None if seen[1] is None else dict(seen[1]))
        except InputError as exc:
            for problem in exc.problems:
                log.error("site not published: %s", problem, extra={"event": "publish_failed"})
        except StatusmailError as exc:
            log.error("site not published: %s", exc, extra={"event": "publish_failed"})
        except Exception as exc:  # sending goes on whatever the site's files hold
            log.error("site not published: %r", exc, extra={"event": "publish_failed"})
        else:
            self.last = result
            if result.after_pending and self._after_due is None:
                self._after_due, self._delay = time.monotonic(), self.config.publish.retry
        self._seen = seen  # a failure is said again only when something changes

    def _after(self) -> None:
        if self._after_due is None or time.monotonic() < self._after_due or self.last is None:
            return
        ok = run_after(self.config, self.last.site)
        with contextlib.suppress(StatusmailError, OSError):
            after_done(self.config, None, ok)
        if ok:
            self._after_due = None
            return
        log.warning(
            "publish.after: trying again in %.0fs",
            self._delay,
            extra={"event": "publish_after_retry", "delay": self._delay},
        )
        self._after_due = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, RETRY_MAX)

    def _loop(self) -> None:
        while True:
            wait = None if self._after_due is None else max(0.0, self._after_due - time.monotonic())
            self._wanted.wait(wait)
            requested = self._wanted.is_set()
            self._wanted.clear()
            if self._stop.is_set() and not self._finish:
                return
            if requested:
                self._publish()
            if self._stop.is_set():
                if self._after_due is not None and self._after_due <= time.monotonic():
                    self._after()
                self._idle.set()
                return
            self._after()
            if not self._wanted.is_set():
                self._idle.set()
