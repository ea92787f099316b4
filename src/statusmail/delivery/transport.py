"""What a transport is: something that opens connections that deliver one message each.

The delivery engine (``delivery.py``) owns retries, throttling and the ledger; a
transport only knows how to hand one message to its destination and to say, by raising
``DeliveryError`` (with ``transient`` set or not), how that went.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from statusmail.errors import DeliveryError


@dataclass(frozen=True, slots=True)
class Shape:
    """What the message builder knows of the bytes it made, so that no transport has to
    scan them: they are wire-ready (CRLF line endings only, no bare CR or LF, no line
    that starts with a dot, none longer than 998 octets), and:"""

    eight_bit: bool  # the body holds octets above 127 (an 8bit part: BODY=8BITMIME)
    ascii_headers: bool  # else the headers need SMTPUTF8


@dataclass(frozen=True, slots=True)
class Envelope:
    """One outgoing message: exactly one recipient."""

    sender: str  # envelope MAIL FROM
    recipient: str  # envelope RCPT TO, as the subscriber's address (may be IDN)
    recipient_ascii: str | None  # ASCII form (punycode domain); None if the local part is not ASCII
    data: bytes  # the whole message, CRLF line endings
    message_id: str
    shape: Shape | None = None  # None: made elsewhere; a transport must look at ``data``
    # For an 8-bit message: the same message built for a relay without 8BITMIME.
    seven_bit: Callable[[], Envelope] | None = None


# Awaited just before a connection hands a message over for good (the end of DATA, the
# rename into the outbox's new/): the engine's last outcome on this connection is in the
# ledger by then, so the message before this one can never be lost to a crash after this
# one was accepted. It raises if that outcome could not be recorded: the message is not
# handed over.
Ready = Callable[[], Awaitable[None]]


class SessionEnded(DeliveryError):
    """The relay refused a message for the session's sake, not the recipient's: the
    session had carried all the messages the relay takes in one ("452 4.5.3 Too many
    recipients") or the relay closed it (421). Raised only for a session that had
    carried a message: the connection has ended it and opened the next, the message
    never went, and the engine sends it again at once without charging an attempt.
    ``learnt`` is the per-session count this reply taught (it lowered the one in use)."""

    def __init__(
        self, message: str, *, code: int, recipient: str, carried: int, learnt: int | None
    ) -> None:
        super().__init__(message, code=code, recipient=recipient, transient=True)
        self.carried = carried  # messages the session had carried before the reply
        self.learnt = learnt


class Connection(Protocol):
    @property
    def eight_bit(self) -> bool:
        """Whether messages can go out with 8bit parts (as far as is known now)."""

    async def send(self, envelope: Envelope, ready: Ready | None = None) -> None:
        """Deliver one message or raise ``DeliveryError``; ``ready`` is awaited just
        before the message is handed over for good."""

    async def close(self) -> None: ...


class Transport(Protocol):
    name: str

    async def connect(self) -> Connection:
        """Open one connection, or raise ``ConnectError`` naming ``host:port``."""
