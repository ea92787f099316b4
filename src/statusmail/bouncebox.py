"""The mailboxes ``statusmail feedback`` reads: a local Maildir, or a folder over IMAP.

Both list the messages they hold, hand out their bytes, and move a handled one into the
``processed`` folder (a Maildir++ sub-folder ``.processed``, or an IMAP folder). Nothing
is ever deleted, and a message that is not handled stays exactly where it was: a Maildir
file is not renamed, and an IMAP message is fetched with ``BODY.PEEK`` so that it stays
unread. Read-only (``--dry-run``) boxes move nothing.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from statusmail.config import ImapSettings
from statusmail.errors import ConnectError

# A bounce, a complaint or an unsubscribe is small; a message larger than this is none.
MAX_MESSAGE = 10 * 1024 * 1024
FETCH_BATCH = 50


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
        atomic, and the bytes stay as they were)."""
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
                self.client.create_folder(processed)
        except self._errors as exc:
            self.close()
            raise self._error(self._reason(exc)) from exc

    def _error(self, reason: str) -> ConnectError:
        return ConnectError(self.settings.server, reason, transient=True)

    @staticmethod
    def _reason(exc: BaseException) -> str:
        from imapclient.exceptions import LoginError

        if isinstance(exc, LoginError):
            return f"login refused: {exc}"
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
                small = [
                    u for u in batch if int(sizes.get(u, {}).get(b"RFC822.SIZE", 0)) <= MAX_MESSAGE
                ]
                bodies = self.client.fetch(small, ["BODY.PEEK[]"]) if small else {}
                for uid in batch:
                    data = bodies.get(uid, {}).get(b"BODY[]")
                    yield str(uid), data if isinstance(data, bytes) else None
        except self._errors as exc:
            raise self._error(f"cannot read {self.settings.folder}: {self._reason(exc)}") from exc

    def move_to_processed(self, keys: list[str]) -> None:
        """MOVE (RFC 6851) where offered; else COPY, flag \\Deleted and expunge just
        those (UID EXPUNGE); without UIDPLUS they stay flagged, never expunged with
        whatever else someone flagged."""
        if self.readonly or not keys:
            return
        uids = [int(key) for key in keys]
        try:
            if self.client.has_capability("MOVE"):
                self.client.move(uids, self.processed)
                return
            self.client.copy(uids, self.processed)
            self.client.add_flags(uids, [b"\\Deleted"])
            if self.client.has_capability("UIDPLUS"):
                self.client.uid_expunge(uids)
        except self._errors as exc:
            raise self._error(f"cannot move to {self.processed}: {self._reason(exc)}") from exc

    def close(self) -> None:
        with contextlib.suppress(*self._errors):
            self.client.logout()
