"""The mailboxes ``statusmail feedback`` reads: a local Maildir, or a folder over IMAP.

Both list the messages they hold, hand out their bytes, and move a handled one into the
``processed`` folder (a Maildir++ sub-folder ``.processed``, or an IMAP folder). Nothing
is ever deleted, and a message that is not handled stays exactly where it was: a Maildir
file is not renamed, and an IMAP message is fetched with ``BODY.PEEK`` so that it stays
unread. Read-only (``--dry-run``) boxes move nothing.

Over IMAP, messages are fetched a batch at a time (a few round trips per batch, never the
whole folder in memory) and a list of handled messages moves in as few commands as the
server allows: one ``UID MOVE`` of a UID set such as ``1:500,502``, split only where a
command line would grow past what every server accepts.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from statusmail.errors import ConnectError
from statusmail.project.feedback_settings import ImapSettings

# A bounce, a complaint or an unsubscribe is small; a message larger than this is none.
MAX_MESSAGE = 10 * 1024 * 1024
# Messages whose sizes one FETCH asks for; their bodies come in FETCHes of at most
# FETCH_BYTES (one, for reports of a few kilobytes), so memory stays bounded.
FETCH_BATCH = 200
FETCH_BYTES = 16 * 1024 * 1024
# RFC 7162 section 4: clients keep command lines to about 8,192 octets, which is what
# servers are sure to accept; a UID set gets what the rest of the command leaves.
MAX_COMMAND = 8000
_DELETED = b"\\Deleted"


def uid_sets(uids: Iterable[int], limit: int) -> list[str]:
    """The UIDs as IMAP sequence sets, each run of consecutive UIDs as one range
    (``1:500,502``), cut into as few sets as keep each within ``limit`` characters."""
    runs: list[str] = []
    ordered = sorted(set(uids))
    start = 0
    for i, uid in enumerate(ordered):
        if i + 1 == len(ordered) or ordered[i + 1] != uid + 1:
            first = ordered[start]
            runs.append(str(uid) if first == uid else f"{first}:{uid}")
            start = i + 1
    sets: list[str] = []
    current = ""
    for run in runs:
        if current and len(current) + 1 + len(run) > limit:
            sets.append(current)
            current = ""
        current = f"{current},{run}" if current else run
    if current:
        sets.append(current)
    return sets


class Mailbox(Protocol):
    name: str

    def messages(self) -> Iterator[tuple[str, bytes | None]]:
        """(key, bytes) of every message; bytes None for one too large to be a report."""

    def empty(self) -> bool: ...

    def move_to_processed(self, keys: list[str]) -> None: ...

    def close(self) -> None: ...


class MaildirBox:
    """A Maildir as an MTA delivers to it (``new/``, ``cur/``, ``tmp/``)."""

    def __init__(self, path: Path, processed: str, *, readonly: bool) -> None:
        self.path = path
        self.processed = path / f".{processed}"
        self.readonly = readonly
        self.name = f"maildir {path}"
        # The MTA makes the Maildir with the first message it delivers: none yet is fine.
        self.exists = path.exists()
        if self.exists and not ((path / "new").is_dir() and (path / "cur").is_dir()):
            raise ConnectError(str(path), "not a Maildir (it needs new/ and cur/ folders)")

    def empty(self) -> bool:
        return next(self._names(), None) is None

    def _names(self) -> Iterator[tuple[str, str]]:
        if not self.exists:
            return
        for sub in ("new", "cur"):
            try:
                names = sorted(os.listdir(self.path / sub))
            except OSError as exc:
                raise ConnectError(str(self.path / sub), f"cannot list: {exc.strerror}") from exc
            for name in names:
                if not name.startswith("."):
                    yield sub, name

    def messages(self) -> Iterator[tuple[str, bytes | None]]:
        for sub, name in self._names():
            file = self.path / sub / name
            try:
                if file.stat().st_size > MAX_MESSAGE:
                    yield f"{sub}/{name}", None
                    continue
                data = file.read_bytes()
            except FileNotFoundError:
                continue  # another reader (a mail client) moved it meanwhile
            except OSError as exc:
                raise ConnectError(str(file), f"cannot read: {exc.strerror}") from exc
            yield f"{sub}/{name}", data

    def move_to_processed(self, keys: list[str]) -> None:
        """Into ``.processed/cur/`` under the same unique name, marked seen (a rename:
        atomic, and the bytes stay as they were). One that is gone already (a mail
        client moved it meanwhile) is skipped, and the rest still move."""
        if self.readonly or not keys:
            return
        try:
            for sub in ("new", "cur", "tmp"):
                (self.processed / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
            (self.processed / "maildirfolder").touch()
            for key in keys:
                sub, name = key.split("/", 1)
                base, _, flags = name.partition(":2,")
                flags = "".join(sorted(set(flags) | {"S"}))
                with contextlib.suppress(FileNotFoundError):
                    os.rename(self.path / sub / name, self.processed / "cur" / f"{base}:2,{flags}")
        except OSError as exc:
            raise ConnectError(str(self.processed), f"cannot move: {exc.strerror}") from exc

    def close(self) -> None:
        return None


class ImapBox:
    """One IMAP folder, through IMAPClient; the password comes from ``password_env``."""

    def __init__(
        self, settings: ImapSettings, processed: str, password: str | None, *, readonly: bool
    ) -> None:
        from imapclient import IMAPClient
        from imapclient.exceptions import IMAPClientError

        self.settings = settings
        self.processed = processed
        self.readonly = readonly
        self.name = f"imap {settings.server}/{settings.folder}"
        self._errors: tuple[type[BaseException], ...] = (IMAPClientError, OSError)
        try:
            context = ssl.create_default_context(
                cafile=str(settings.ca_file) if settings.ca_file else None
            )
            self.client = IMAPClient(
                settings.host,
                port=settings.port,
                ssl=settings.security == "tls",
                ssl_context=context,
                timeout=settings.timeout,
            )
        except (TimeoutError, *self._errors) as exc:
            raise self._error(f"cannot connect: {exc}") from exc
        try:
            if settings.security == "starttls":
                self.client.starttls(context)
            self.client.login(settings.username, password or "")
            self.client.select_folder(settings.folder, readonly=readonly)
            if not readonly and not self.client.folder_exists(processed):
                try:
                    self.client.create_folder(processed)
                except IMAPClientError:
                    # another reader of the box made it first: that is fine
                    if not self.client.folder_exists(processed):
                        raise
        except self._errors as exc:
            self.close()
            raise self._error(self._reason(exc)) from exc

    def _error(self, reason: str) -> ConnectError:
        return ConnectError(self.settings.server, reason, transient=True)

    @staticmethod
    def _reason(exc: BaseException) -> str:
        from imapclient.exceptions import IMAPClientAbortError, LoginError

        if isinstance(exc, LoginError):
            return f"login refused: {exc}"
        if isinstance(exc, IMAPClientAbortError):
            return f"the connection was lost ({exc}); run again to go on"
        if isinstance(exc, ssl.SSLError):
            return f"TLS failed: {exc}"
        return str(exc) or type(exc).__name__

    def _uids(self) -> list[int]:
        return sorted(self.client.search(["NOT", "DELETED"]))

    def empty(self) -> bool:
        try:
            return not self._uids()
        except self._errors as exc:
            raise self._error(f"cannot read {self.settings.folder}: {self._reason(exc)}") from exc

    def messages(self) -> Iterator[tuple[str, bytes | None]]:
        try:
            uids = self._uids()
            for start in range(0, len(uids), FETCH_BATCH):
                batch = uids[start : start + FETCH_BATCH]
                sizes = self.client.fetch(batch, ["RFC822.SIZE"])
                bodies: dict[int, bytes] = {}
                for part in self._by_size(batch, sizes):
                    found = self.client.fetch(part, ["BODY.PEEK[]"])
                    for uid, values in found.items():
                        data = values.get(b"BODY[]")
                        if isinstance(data, bytes):
                            bodies[uid] = data
                for uid in batch:
                    if uid in sizes:  # else another client expunged it meanwhile
                        yield str(uid), bodies.pop(uid, None)
        except self._errors as exc:
            raise self._error(f"cannot read {self.settings.folder}: {self._reason(exc)}") from exc

    @staticmethod
    def _by_size(batch: list[int], sizes: dict[int, dict[bytes, object]]) -> Iterator[list[int]]:
        """The batch's messages small enough to be reports, in parts of at most
        ``FETCH_BYTES`` (a part of one when a single message is larger)."""
        part: list[int] = []
        total = 0
        for uid in batch:
            size = sizes.get(uid, {}).get(b"RFC822.SIZE")
            if not isinstance(size, int) or size > MAX_MESSAGE:
                continue
            if part and total + size > FETCH_BYTES:
                yield part
                part, total = [], 0
            part.append(uid)
            total += size
        if part:
            yield part

    def move_to_processed(self, keys: list[str]) -> None:
        """All of ``keys`` at once: one ``UID MOVE`` (RFC 6851) of their UID set where
        the server offers MOVE; else ``UID COPY``, ``UID STORE +FLAGS.SILENT (\\Deleted)``
        and ``UID EXPUNGE`` of just that set (UIDPLUS, RFC 4315). Without UIDPLUS a plain
        EXPUNGE runs only when no other message of the folder is flagged \\Deleted (it
        would remove those too); else they stay flagged, and are never read again.

        The pass records reports before it moves them, and the ledger records each
        once: when the connection dies halfway, a rerun reads what did not move, counts
        nothing twice and moves it."""
        if self.readonly or not keys:
            return
        uids = {int(key) for key in keys}
        folder = self.processed
        # "A1 UID STORE <set> +FLAGS.SILENT (\Deleted)" is the longest command around a set
        room = MAX_COMMAND - 64 - 4 * len(folder)  # the folder, quoted, even in UTF-7
        try:
            move = self.client.has_capability("MOVE")
            uidplus = self.client.has_capability("UIDPLUS")
            for uid_set in uid_sets(uids, room):
                if move:
                    self._move(uid_set, folder)
                    continue
                self.client.copy(uid_set, folder)
                self.client.add_flags(uid_set, [_DELETED], silent=True)
                if uidplus:
                    self.client.uid_expunge(uid_set)
            if not move and not uidplus and set(self.client.search(["DELETED"])) <= uids:
                self.client.expunge()
        except self._errors as exc:
            raise self._error(f"cannot move to {folder}: {self._reason(exc)}") from exc

    def _move(self, uid_set: str, folder: str) -> None:
        """One ``UID MOVE``; when another reader of the box moved some of the set first,
        the server refuses the whole (Dovecot: ``NO [EXPUNGEISSUED]``), and what is still
        here is moved again, once (two hosts' passes ended in exit 4: review)."""
        from imapclient.exceptions import IMAPClientAbortError, IMAPClientError

        try:
            self.client.move(uid_set, folder)
        except IMAPClientAbortError:
            raise
        except IMAPClientError:
            self.client.noop()  # take in the expunges the server has to tell
            still = self.client.search(["UID", uid_set])
            if still:
                self.client.move(still, folder)

    def close(self) -> None:
        try:
            self.client.logout()
        except self._errors:
            # a dead connection: LOGOUT failed before it closed the socket
            with contextlib.suppress(*self._errors):
                self.client.shutdown()
