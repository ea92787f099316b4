"""DKIM signatures made in a process of their own, beside a run's event loop.

A signature is mostly an RSA operation (about 0.3 ms for 2048 bits), more than all the
rest a message costs. Made in the loop's process, it either holds up the loop or, in a
thread, contends with it for the interpreter lock at every hand-over (measured: the loop
slowed by 0.2 ms a message and the thread by 0.1 ms). So a run with a DKIM key starts a
signer: a fresh interpreter (no fork) that reads the key files itself, takes each
message's digests (``Unsigned.digests``: the loop canonicalizes and hashes, which costs
less than sending it the message) over a socket pair, batched with the others of the
loop's turn, and answers with the keys' signatures, made on the other core.

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
from collections.abc import Sequence

from statusmail.errors import BuildError
from statusmail.project.sending import DkimSettings

# parent -> signer: ident, the digests' count; then the digests (SHA-256, one per key)
REQUEST = struct.Struct("!IB")
DIGEST = 32
# signer -> parent: ident, ok (1) or failed (0, the bytes are the error), length; then
# each signature as a 2-octet length and its octets
REPLY = struct.Struct("!IBI")
SIGNATURE = struct.Struct("!H")
STOP_WITHIN = 2.0  # a signer still running this long after its socket closed is killed
_COMMAND = "from statusmail.delivery.signing import signer_main; signer_main()"


class SigningProcess:
    """The parent's side: ``sign`` returns a future of a message's signatures."""

    def __init__(self, settings: DkimSettings) -> None:
        self.settings = settings
        self._process: subprocess.Popen[bytes] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[list[bytes]]] = {}
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
            )
        reader, self._writer = await asyncio.open_unix_connection(sock=mine, limit=1 << 20)
        settings = pickle.dumps(self.settings)
        self._writer.write(struct.pack("!I", len(settings)) + settings)
        self._reading = asyncio.create_task(self._read(reader))

    def sign(self, digests: Sequence[bytes]) -> asyncio.Future[list[bytes]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[bytes]] = loop.create_future()
        if self._failed is not None or self._writer is None:
            future.set_exception(BuildError(self._failed or "the DKIM signer is not running"))
            return future
        ident = self._next = self._next % 0xFFFFFFFF + 1  # never 0: see _read
        self._waiting[ident] = future
        if not self._out:  # one write for every message of this turn of the loop
            loop.call_soon(self._flush)
        self._out += (REQUEST.pack(ident, len(digests)), *digests)
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
                future = self._waiting.pop(ident, None)
                if future is None or future.done():
                    continue
                if ok:
                    future.set_result(_signatures(body))
                else:
                    future.set_exception(
                        BuildError(f"cannot sign a message: {body.decode(errors='replace')}")
                    )
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            code = None if self._process is None else self._process.poll()
            if code is not None:
                how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                why += f" ({how})"
        self._fail(why)

    def _fail(self, why: str) -> None:
        self._failed = why
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
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
    from statusmail.content.dkim_signing import DkimSigner

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
            ident, count = REQUEST.unpack_from(buffer, at)
            end = at + REQUEST.size + count * DIGEST
            if len(buffer) < end:
                break
            start = at + REQUEST.size
            digests = [bytes(buffer[i : i + DIGEST]) for i in range(start, end, DIGEST)]
            at = end
            try:
                made = signer.signatures(digests)
                body, ok = b"".join(SIGNATURE.pack(len(m)) + m for m in made), 1
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
