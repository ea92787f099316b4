"""The embedded default transport: every message becomes a file in a Maildir outbox."""

from __future__ import annotations

import mailbox
from pathlib import Path

from statusmail.errors import ConnectError, DeliveryError
from statusmail.transport import Envelope


class MaildirConnection:
    def __init__(self, box: mailbox.Maildir, where: Path) -> None:
        self.box = box
        self.where = where

    async def send(self, envelope: Envelope) -> None:
        # Maildir files use the platform's line ending; the message itself is CRLF.
        try:
            self.box.add(envelope.data.replace(b"\r\n", b"\n"))
        except OSError as exc:
            raise DeliveryError(
                f"{self.where}: cannot write: {exc.strerror or exc}",
                recipient=envelope.recipient,
                transient=True,
            ) from exc

    async def close(self) -> None:
        return None


class MaildirTransport:
    name = "maildir"

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox
        self._box: mailbox.Maildir | None = None

    async def connect(self) -> MaildirConnection:
        if self._box is None:
            try:
                self._box = mailbox.Maildir(self.outbox, create=True)
            except OSError as exc:
                raise ConnectError(
                    str(self.outbox),
                    f"cannot open the outbox: {exc.strerror or exc}",
                    transient=False,
                ) from exc
        return MaildirConnection(self._box, self.outbox)
