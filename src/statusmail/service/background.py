"""What runs beside a watcher's sending: file events that wake it as soon as an entry
or a list changes, and the passes over the bounce mailbox (``statusmail feedback``) every
``bounces.interval`` seconds. ``Background`` is this part of ``watch.Watcher``."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from statusmail.errors import StatusmailError
from statusmail.feedback import loop as feedback
from statusmail.project.config import Config
from statusmail.service.options import WatchOptions
from statusmail.service.steps import done_before, in_a_thread

log = logging.getLogger("statusmail.watch")


class Background:
    """The file events and the feedback passes of a watcher."""

    config: Config
    options: WatchOptions
    halt: asyncio.Event
    wake: asyncio.Event

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
        passing = asyncio.ensure_future(
            in_a_thread(feedback.run_pass, self.config, should_stop=self.halt.is_set)
        )
        if not await done_before(passing, self.halt):
            # Stopped while the pass waits on the mailbox (a server that does not
            # answer): nothing of it is in flight, what it recorded stands and the rest is
            # read next time; the stop need not wait a second for it (review).
            passing.cancel()
            return
        try:
            report = passing.result()
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
