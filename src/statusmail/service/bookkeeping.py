"""A watcher's bookkeeping from pass to pass: which entries are due, what was last said
about each file (said once, again only when it changes), the lists imported as soon as
they change, and what an entry's run reads (its fingerprint: an entry that cannot run
waits until it changes). ``Bookkeeping`` is this part of ``watch.Watcher``."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from statusmail.delivery import corrections
from statusmail.delivery.corrections import when
from statusmail.delivery.waiting import ImportStopped, import_shown
from statusmail.domain import Entry, counted
from statusmail.errors import InputError, StatusmailError
from statusmail.ledger import Ledger, controls
from statusmail.ledger import exists as ledger_exists
from statusmail.ledger.subscribers import Imported, ImportRefused
from statusmail.project.config import Config
from statusmail.project.entries import entry_paths, load_entry, twin_problems
from statusmail.project.secrets import secret_variables
from statusmail.project.subscriber_rows import subscriber_files
from statusmail.project.yamlfile import Stamps, file_stamps
from statusmail.service.steps import in_a_thread

log = logging.getLogger("statusmail.watch")

Fingerprint = Stamps


# A new or changed entry file is read once it has not changed for this long: one saved
# in place is not sent half-written (a file written elsewhere and renamed into the
# folder never is: a rename is whole). Files already there when the watcher started
# are taken at once.
SETTLE = 1.0


@dataclass
class Backoff:
    """An entry waiting for its relay: the delay, and until when."""

    delay: float
    until: float
    reason: str = ""  # what the run stopped on
    relay_unfit: bool = False  # the relay cannot take the project's messages (readiness)


def lists_fingerprint(config: Config) -> Fingerprint:
    """Size and modification time of every subscriber list file."""
    with contextlib.suppress(OSError):
        return file_stamps(subscriber_files(config.paths.subscribers))
    return file_stamps([])


def secret_files(config: Config) -> list[Path]:
    """The files the config's secrets are read from now (``$NAME_FILE``, systemd
    credentials): an entry held for a secret file is tried again once it changes."""
    found: list[Path] = []
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    for name in sorted(secret_variables(config)):
        if name.endswith("_FILE"):
            if os.environ.get(name):
                found.append(Path(os.environ[name]))
        elif credentials:
            found.append(Path(credentials) / name)
    return found


def inputs_fingerprint(config: Config, entry_path: Path | None) -> Fingerprint:
    """Size and modification time of every file a run of the entry reads: the entries
    too (the one it threads on or corrects), the keys, the secrets' files and the relay's
    CA."""
    paths: list[Path] = [config.path, config.paths.regions]
    if entry_path is not None:
        paths.append(entry_path)
    paths += entry_paths(config.paths.updates)
    if config.dkim is not None:
        paths += [p for p in (config.dkim.key_file, config.dkim.ed25519_key_file) if p]
    if config.smtp.ca_file is not None:
        paths.append(config.smtp.ca_file)
    paths += secret_files(config)
    if config.paths.templates.is_dir():
        paths += sorted(p for p in config.paths.templates.rglob("*") if p.is_file())
    with contextlib.suppress(OSError):
        paths += subscriber_files(config.paths.subscribers)
    return file_stamps(paths)


class Bookkeeping:
    """What is due, what was said, and the lists imported."""

    config: Config
    halt: asyncio.Event
    _reported: dict[Path, str]
    _unchanged: dict[Path, tuple[tuple[int, int], float]]  # (mtime, size), first seen
    settling = False  # an entry file was left for the next look: it may be half-written
    started = 0.0  # when this watcher started (time.time()): files older were whole then

    async def _import(self) -> bool:
        """The lists into the ledger as soon as they change (when not, a stat of each
        file); False when the import is refused (said once per change of the files):
        then no entry is sent. Also False when the watcher stops meanwhile: the import
        ends within a thousand rows (the next one drops what it left)."""
        folder = self.config.paths.subscribers
        try:
            imported = await in_a_thread(_import_lists, self.config, self.halt.is_set)
        except ImportStopped:
            return False
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
                "imported %s (%d invalid, %s skipped)",
                counted(imported.subscribers, "subscriber"),
                imported.invalid,
                counted(imported.duplicates, "duplicate row"),
                extra={"event": "imported", "subscribers": imported.subscribers},
            )
        return True

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
                # Complete: never sent again, unless it corrects an entry that has
                # reached more people since (then to those alone).
                if state and state[1] and not (ledger and corrections.behind(ledger, entry)):
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
        paths = entry_paths(self.config.paths.updates)
        twins = twin_problems(paths)  # x.yaml and x.yml: neither, as check and send say
        for problem in twins:
            self._say_once(Path(problem.path), str(problem), logging.ERROR)
        twice = {Path(problem.path).stem for problem in twins}
        for path in paths:
            if path.stem in twice:
                continue
            with contextlib.suppress(OSError):
                if not self._standing_still(path):
                    # still being written, perhaps (an editor saving in place, a copy
                    # under way): taken once it has stood still for SETTLE seconds
                    self.settling = True
                    continue
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

    def _standing_still(self, path: Path) -> bool:
        """Whether ``path`` was there, whole, when the watcher started, or has not
        changed for SETTLE seconds: by its time stamp, or, for a time stamp this host's
        clock has not reached yet (written by a host whose clock is ahead, or this
        clock stepped back), by seeing it unchanged that long."""
        stat = path.stat()
        seen = (stat.st_mtime_ns, stat.st_size)
        now, still = time.time(), time.monotonic()
        if stat.st_mtime < self.started or now - stat.st_mtime >= SETTLE:
            self._unchanged.pop(path, None)
            return True
        before = self._unchanged.get(path)
        if before is None or before[0] != seen:
            self._unchanged[path] = (seen, still)
            return False
        return still - before[1] >= SETTLE


def _import_lists(config: Config, stopping: Callable[[], bool]) -> Imported:
    """The lists imported in a thread of the watcher, their rows logged once it lasts
    a second, and ended within a thousand rows once ``stopping()``."""
    with Ledger(config.paths.ledger) as ledger:
        return import_shown(ledger, config.paths.subscribers, console=None, stopping=stopping)
