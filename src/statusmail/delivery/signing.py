"""DKIM signatures made in a process of their own, beside a run's event loop.

A signature is mostly an RSA operation (about 0.3 ms for 2048 bits), more than all the
rest a message costs. Made in the loop's process, it either holds up the loop or, in a
thread, contends with it for the interpreter lock at every hand-over (measured: the loop
slowed by 0.2 ms a message and the thread by 0.1 ms). So a run with a DKIM key starts a
signer: a fresh interpreter (no fork) that reads the key files itself and signs on the
other core, taking requests over a socket pair, batched with the others of the loop's
turn. A request is the whole message, which the signer canonicalizes, hashes and signs,
answering with its ``DKIM-Signature`` headers; or, while the signer is behind (more than
``BEHIND`` messages waiting) or when the body is one the loop has hashed already (the
same for every recipient of its variant), only the digests, the loop having
canonicalized and hashed the message itself (``DkimSigner.prepare``), answered with the
signatures. So the two
share the work: at one connection the loop, waiting for the relay, hands it all over;
at eight the signer would otherwise be the one holding the run up.

A signer that dies fails the messages it was signing with a ``BuildError`` (the run
stops, what was recorded stands, the rest stays pending); one whose parent is gone
stops by itself (its socket ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from statusmail.content.dkim_signing import DkimSigner, Unsigned
from statusmail.errors import BuildError

if TYPE_CHECKING:
    from statusmail.content.message import Built
    from statusmail.delivery.attempts import Build
    from statusmail.domain import Recipient

# parent -> signer: ident, what follows (MESSAGE or DIGESTS), its length
REQUEST = struct.Struct("!IcI")
MESSAGE = b"M"  # a whole message: answered with its signature headers
DIGESTS = b"D"  # the digests a message's keys sign (SHA-256, one per key): the signatures
DIGEST = 32
# signer -> parent: ident, ok (1) or failed (0, the bytes are the error), length; then
# the signature headers, or each signature as a 2-octet length and its octets
REPLY = struct.Struct("!IBI")
SIGNATURE = struct.Struct("!H")
BEHIND = 16  # messages waiting at the signer (about 5 ms of its work) beyond which the loop
# hashes them itself; measured at 8 connections, 20,000 recipients: 4: 1,989 msg/s, 8:
# 2,063, 12: 2,272-2,325, 16: 2,345-2,485, never (all whole): 2,213
STOP_WITHIN = 2.0  # a signer still running this long after its socket closed is killed
_COMMAND = "from statusmail.delivery.signing import signer_main; signer_main()"


class SigningProcess:
    """The parent's side: ``build_signed`` builds a recipient's message and returns a
    future of it signed; ``sign``, a future of a message's signature headers."""

    def __init__(self, signer: DkimSigner) -> None:
        self.signer = signer
        self._process: subprocess.Popen[bytes] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        # What each request's answer completes: the future, the digests' message (None:
        # the whole message went), the message to put the headers in (None: ``sign``).
        self._waiting: dict[int, tuple[asyncio.Future[Any], Unsigned | None, Built | None]] = {}
        self._out: list[bytes] = []
        self._next = 0
        self._failed: str | None = None

    async def start(self) -> None:
        mine, theirs = socket.socketpair()
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _COMMAND, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                # Out of the terminal's process group: a Ctrl-C is the parent's to handle
                # (it closes the socket, and the signer ends), never a KeyboardInterrupt
                # printed by a signer still starting up.
                start_new_session=True,
            )
        reader, self._writer = await asyncio.open_unix_connection(sock=mine, limit=1 << 20)
        settings = pickle.dumps(self.signer.settings)
        self._writer.write(struct.pack("!I", len(settings)) + settings)
        self._reading = asyncio.create_task(self._read(reader))

    def build_signed(
        self, build: Build, recipient: Recipient, *, eight_bit: bool
    ) -> asyncio.Future[Built]:
        """``recipient``'s message built now (``build`` unsigned) and being signed here;
        what goes wrong is raised where the message is awaited (as a ``BuildError``)."""
        try:
            built = build(recipient, eight_bit=eight_bit, signed=False)
        except Exception as exc:
            return _settled(error=exc)
        if not built.unsigned:
            return _settled(built)
        return self._ask(built.envelope.data, built.shared_body, built)

    def sign(self, data: bytes, shared_body: Hashable | None = None) -> asyncio.Future[bytes]:
        """The signature headers of ``data`` (a whole message), to come."""
        future: asyncio.Future[bytes] = self._ask(data, shared_body, None)
        return future

    def _ask(
        self, data: bytes, shared_body: Hashable | None, built: Built | None
    ) -> asyncio.Future[Any]:
        """A request to the signer; its answer completes the future (no task per
        message: the reader sets it)."""
        if self._failed is not None or self._writer is None:
            return _settled(error=BuildError(self._failed or "the DKIM signer is not running"))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        ident = self._next = self._next % 0xFFFFFFFF + 1  # never 0: see _read
        # A body every recipient of its variant shares is hashed once, here (its hash
        # is kept): such a message goes as digests.
        if shared_body is None and len(self._waiting) < BEHIND:
            unsigned, kind, payload = None, MESSAGE, data
        else:
            unsigned = self.signer.prepare(data, shared_body)
            kind, payload = DIGESTS, b"".join(unsigned.digests)
        self._waiting[ident] = (future, unsigned, built)
        if not self._out:  # one write for every message of this turn of the loop
            loop.call_soon(self._flush)
        self._out += (REQUEST.pack(ident, kind, len(payload)), payload)
        return future

    def _flush(self) -> None:
        if self._writer is not None and self._out:
            self._writer.write(b"".join(self._out))
        self._out = []

    async def _read(self, reader: asyncio.StreamReader) -> None:
        why = "the DKIM signer process ended"
        try:
            while True:
                ident, ok, size = REPLY.unpack(await reader.readexactly(REPLY.size))
                body = await reader.readexactly(size)
                if ident == 0:  # the signer could not go on at all
                    why = f"the DKIM signer stopped: {body.decode(errors='replace')}"
                    break
                future, unsigned, built = self._waiting.pop(ident, (None, None, None))
                if future is None or future.done():
                    continue
                if ok:
                    headers = body if unsigned is None else unsigned.headers(_signatures(body))
                    future.set_result(headers if built is None else built.signed(headers))
                else:
                    said = body.decode(errors="replace")
                    future.set_exception(BuildError(f"cannot sign a message: {said}"))
                    future.exception()  # retrieved: raised where it is awaited
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            code = None if self._process is None else self._process.poll()
            if code is not None:
                how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                why += f" ({how})"
        self._fail(why)

    def _fail(self, why: str) -> None:
        self._failed = why
        waiting, self._waiting = self._waiting, {}
        for future, _, _ in waiting.values():
            if not future.done():
                future.set_exception(BuildError(why))
                future.exception()  # retrieved: the one awaited raises it

    async def close(self) -> None:
        """End the signer: what it was still signing is dropped (nobody waits for it)."""
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._reading is not None:
            self._reading.cancel()
            await asyncio.gather(self._reading, return_exceptions=True)
        self._fail("the run ended")
        process = self._process
        if process is not None:
            try:
                await asyncio.to_thread(process.wait, STOP_WITHIN)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _settled(result: Any = None, *, error: BaseException | None = None) -> asyncio.Future[Any]:
    """A future already done; its error marked retrieved (a message drained when the run
    stops is never awaited; one that is awaited still raises it)."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
        future.exception()
    return future


def _signatures(body: bytes) -> list[bytes]:
    out: list[bytes] = []
    at = 0
    while at < len(body):
        (size,) = SIGNATURE.unpack_from(body, at)
        at += SIGNATURE.size
        out.append(body[at : at + size])
        at += size
    return out


def signer_main() -> None:
    """The signer's process (``python -c``): settings, then requests until the end."""
    # The parent handles the signals and ends this process by closing the socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(sys.argv[1]))
    with sock:
        try:
            _serve(sock)
        except Exception as exc:  # said to the parent (ident 0: every message), never a traceback
            with contextlib.suppress(OSError):
                said = str(exc).encode()
                sock.sendall(REPLY.pack(0, 0, len(said)) + said)


def _serve(sock: socket.socket) -> None:
    buffer = bytearray()

    def take(size: int) -> bytes | None:
        while len(buffer) < size:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return None
            buffer.extend(chunk)
        return bytes(buffer[:size])

    head = take(4)
    if head is None:
        return
    (size,) = struct.unpack("!I", head)
    settings = take(4 + size)
    if settings is None:
        return
    del buffer[: 4 + size]
    signer = DkimSigner(pickle.loads(settings[4:]))
    while True:
        replies: list[bytes] = []
        at = 0
        while len(buffer) - at >= REQUEST.size:
            ident, kind, size = REQUEST.unpack_from(buffer, at)
            end = at + REQUEST.size + size
            if len(buffer) < end:
                break
            payload = bytes(buffer[at + REQUEST.size : end])
            at = end
            try:
                if kind == MESSAGE:
                    body = signer.signature_headers(payload)
                else:
                    digests = [payload[i : i + DIGEST] for i in range(0, len(payload), DIGEST)]
                    made = signer.signatures(digests)
                    body = b"".join(SIGNATURE.pack(len(m)) + m for m in made)
                ok = 1
            except Exception as exc:  # said to the parent, which stops the run with it
                body, ok = str(exc).encode(), 0
            replies += (REPLY.pack(ident, ok, len(body)), body)
        del buffer[:at]
        try:
            if replies:
                sock.sendall(b"".join(replies))
            chunk = sock.recv(1 << 20)
        except OSError:
            return
        if not chunk:
            return
        buffer.extend(chunk)
