"""One SMTP transaction with PIPELINING (RFC 2920): MAIL, RCPT and DATA in one write, then
the message once the three replies are in. Two round trips a message instead of four,
and two writes instead of four: it halves the wait on a distant relay and takes about
half the CPU of the sequential exchange on a near one.

aiosmtplib (5.1) reads one reply per command and drops whatever arrives while a parsed
reply waits to be picked up, so pipelined replies cannot go through it. For the
transaction's duration its session's transport hands what it reads to a ``Replies`` of
ours instead, which keeps every reply in order; aiosmtplib gets its protocol back before
anything else is said on the session (RSET after a refusal, QUIT). A lost connection
reaches both.

Used for statusmail's own messages (bytes ready for DATA as they are) to plain ASCII
addresses, on sessions that offer PIPELINING; anything else goes the sequential way.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

import aiosmtplib
from aiosmtplib.response import SMTPResponse

from statusmail.delivery.transport import Ready

# As aiosmtplib bounds them: a reply line, and a whole (multi-line) reply.
MAX_LINE = 8192
MAX_REPLY = MAX_LINE * 4
# What may follow a reply's code: its text, more lines to come, or nothing.
_MARKS = (b" ", b"-", b"\r", b"")


class MalformedReply(aiosmtplib.SMTPException):
    """The relay said something that is not an SMTP reply: the session is out of step."""


class Replies(asyncio.Protocol):
    """The replies read from a session while it is lent to a pipelined transaction, in
    order. ``owner`` is aiosmtplib's protocol: a lost connection is reported to it too."""

    def __init__(self, owner: asyncio.BaseProtocol) -> None:
        self._owner = owner
        self._buffer = bytearray()
        self._lines: list[bytes] = []  # the lines of a reply still being read
        self._ready: collections.deque[SMTPResponse] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._failure: BaseException | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._failure is not None:
            return
        self._buffer += data
        try:
            self._parse()
        except MalformedReply as exc:
            self._fail(exc)
            return
        if self._ready:
            self._wake()

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        return False  # close the transport, as aiosmtplib does

    def connection_lost(self, exc: Exception | None) -> None:
        lost = aiosmtplib.SMTPServerDisconnected("Connection lost")
        lost.__cause__ = exc
        self._fail(lost)
        self._owner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._owner.pause_writing()

    def resume_writing(self) -> None:
        self._owner.resume_writing()

    # -- reading --------------------------------------------------------------------------

    async def next(self, timeout: float | None) -> SMTPResponse:
        """The next reply, or SMTPReadTimeoutError after ``timeout`` seconds of waiting."""
        while not self._ready:
            if self._failure is not None:
                raise self._failure
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = None if timeout is None else loop.call_later(timeout, self._expire, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        return self._ready.popleft()

    def _parse(self) -> None:
        buffer = self._buffer
        end = buffer.rfind(b"\n")
        if end >= 0:
            complete = bytes(buffer[:end])
            del buffer[: end + 1]
            for line in complete.split(b"\n"):
                mark = line[3:4]
                if not line[:3].isdigit() or mark not in _MARKS:
                    raise MalformedReply(f"not an SMTP reply: {line[:80]!r}")
                # Over RFC 5321's 512 octets, and over this: the code stands, the text
                # is cut (a 250 taken for a lost connection was sent again and again)
                line = line[:MAX_LINE]
                if mark == b"-":  # a line of a multi-line reply, more to come
                    self._lines.append(line)
                    continue
                text = line[4:].strip(b" \t\r")
                if self._lines:
                    text = b"\n".join([*(x[4:].strip(b" \t\r") for x in self._lines), text])
                    self._lines = []
                code = int(line[:3])
                self._ready.append(SMTPResponse(code, text.decode("utf-8", "surrogateescape")))
        if len(buffer) + sum(map(len, self._lines)) > MAX_REPLY:
            raise MalformedReply("a reply longer than any SMTP reply")

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    @staticmethod
    def _expire(waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(
                aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response")
            )


async def pipelined(
    smtp: aiosmtplib.SMTP,
    mail: bytes,
    rcpt: bytes,
    data: bytes,
    ready: Ready | None,
    timeout: float | None,
    written: Callable[[], None] = lambda: None,
) -> None:
    """Send ``data`` (ready for DATA as it is) in one pipelined transaction; ``mail`` and
    ``rcpt`` are the whole command lines. Raises what aiosmtplib's own commands raise
    for the same replies: SMTPSenderRefused, SMTPRecipientRefused, SMTPDataError, or a
    lost or timed-out session. ``ready`` is awaited once DATA is accepted, before the
    message is written; ``written`` is called once all of it, its end too, is."""
    transport, owner = smtp.transport, smtp.protocol
    if not isinstance(transport, asyncio.WriteTransport) or owner is None or transport.is_closing():
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    replies = Replies(owner)
    transport.set_protocol(replies)
    try:
        transport.write(mail + rcpt + b"DATA\r\n")
        refusal: aiosmtplib.SMTPResponseException | None = None
        sender = await replies.next(timeout)
        if sender.code != 250:
            refusal = aiosmtplib.SMTPSenderRefused(sender.code, sender.message, _address(mail))
        try:
            recipient = await replies.next(timeout)
            if refusal is None and recipient.code not in (250, 251):
                refusal = aiosmtplib.SMTPRecipientRefused(
                    recipient.code, recipient.message, _address(rcpt)
                )
            start = await replies.next(timeout)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPReadTimeoutError):
            if refusal is None:
                raise
            # A refusal that closed the session (421: "too many messages in this
            # connection"): it is what the relay said, not a lost connection, and how
            # many a session takes is learnt from it, as one command at a time would
            raise refusal from None
        if refusal is None and start.code != 354:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        if refusal is not None:
            if start.code == 354:
                # A relay that opened DATA with no recipient (RFC 2920 says it must
                # not): the session is dropped mid-DATA, which delivers nothing (a lone
                # dot ending it was delivered, empty, by one that kept the recipient).
                transport.abort()
            raise refusal
        if ready is not None:
            await ready()
        transport.write(data + (b".\r\n" if data.endswith(b"\r\n") else b"\r\n.\r\n"))
        written()
        end = await replies.next(timeout)
        if end.code != 250:
            raise aiosmtplib.SMTPDataError(end.code, end.message)
    finally:
        transport.set_protocol(owner)


def wire_ready(data: bytes) -> bool:
    """True when ``data`` can go after DATA as it is: CRLF line endings only, and no line
    that starts with a dot (which SMTP would take for the end or need doubled).

    Not used when sending: statusmail's messages are so by construction (their
    ``Shape``), which the tests check once for every encoding; others go through
    aiosmtplib's own pass."""
    return (
        not data.startswith(b".")
        and b"\n." not in data
        and data.count(b"\n") == data.count(b"\r\n")
        and data.count(b"\r") == data.count(b"\r\n")
    )


def _address(line: bytes) -> str:
    """The address of a MAIL or RCPT command line, for the error."""
    start, end = line.find(b"<"), line.find(b">")
    return line[start + 1 : end].decode("ascii", "replace")
