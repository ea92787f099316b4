"""What a transport is: something that opens connections that deliver one message each.

The delivery engine (``delivery.py``) owns retries, throttling and the ledger; a
transport only knows how to hand one message to its destination and to say, by raising
``DeliveryError`` (with ``transient`` set or not), how that went.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from statusmail.domain import Envelope
from statusmail.errors import DeliveryError

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

    async def prepare(self, envelope: Envelope) -> None:
        """Have the session ``send`` will use open (a lost or full one opened again), or
        raise ``DeliveryError`` as ``send`` would: the engine makes an attempt's checks
        after this, so that nothing as slow as a reconnection comes between them and
        the message's first command."""

    async def send(self, envelope: Envelope, ready: Ready | None = None) -> None:
        """Deliver one message or raise ``DeliveryError``; ``ready`` is awaited just
        before the message is handed over for good."""

    async def close(self) -> None: ...


class Transport(Protocol):
    name: str

    async def connect(self) -> Connection:
        """Open one connection, or raise ``ConnectError`` naming ``host:port``."""
