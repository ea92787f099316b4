"""The embedded default transport: every message becomes a file in a Maildir outbox.

Files are written the Maildir way (into ``tmp/``, fsync'ed, then renamed into ``new/``),
so a reader never sees half a message and a message recorded as sent is on disk. The
writes run in worker threads: ``concurrency`` of them overlap their fsyncs.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from pathlib import Path

from statusmail.delivery.transport import Ready
from statusmail.domain import Envelope
from statusmail.errors import ConnectError, DeliveryError

_counter = itertools.count()


def _unique_name() -> str:
    host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    now = time.time()
    return f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_counter)}.{host}"


class MaildirConnection:
    eight_bit = True  # a file takes any octets: parts go out at their real size

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox

    async def prepare(self, envelope: Envelope) -> None:
        return None  # nothing to open

    async def send(self, envelope: Envelope, ready: Ready | None = None) -> None:
        name = _unique_name()
        try:
            await asyncio.to_thread(self._write, name, envelope.data)
            if ready is not None:
                try:
                    await ready()
                except BaseException:
                    (self.outbox / "tmp" / name).unlink(missing_ok=True)
                    raise
            os.rename(self.outbox / "tmp" / name, self.outbox / "new" / name)
        except OSError as exc:
            raise DeliveryError(
                f"{self.outbox}: cannot write: {exc.strerror or exc}",
                recipient=envelope.recipient,
                transient=True,
            ) from exc

    def _write(self, name: str, data: bytes) -> None:
        """The message into ``tmp/``, on disk; the rename into ``new/`` delivers it."""
        tmp = self.outbox / "tmp" / name
        # Maildir files use the platform's line ending; the message itself is CRLF.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data.replace(b"\r\n", b"\n"))
            os.fsync(fd)
        finally:
            os.close(fd)

    async def close(self) -> None:
        return None


class MaildirTransport:
    name = "maildir"

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox

    async def connect(self) -> MaildirConnection:
        try:
            for sub in ("tmp", "new", "cur"):
                (self.outbox / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConnectError(
                str(self.outbox),
                f"cannot open the outbox: {exc.strerror or exc}",
                transient=False,
            ) from exc
        return MaildirConnection(self.outbox)
