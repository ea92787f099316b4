"""What a transport is: something that opens connections that deliver one message each.

The delivery engine (``delivery.py``) owns retries, throttling and the ledger; a
transport only knows how to hand one message to its destination and to say, by raising
``DeliveryError`` (with ``transient`` set or not), how that went.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Envelope:
    """One outgoing message: exactly one recipient."""

    sender: str  # envelope MAIL FROM
    recipient: str  # envelope RCPT TO, as the subscriber's address (may be IDN)
    recipient_ascii: str | None  # ASCII form (punycode domain); None if the local part is not ASCII
    data: bytes  # the whole message, CRLF line endings
    message_id: str


class Connection(Protocol):
    async def send(self, envelope: Envelope) -> None:
        """Deliver one message or raise ``DeliveryError``."""

    async def close(self) -> None: ...


class Transport(Protocol):
    name: str

    async def connect(self) -> Connection:
        """Open one connection, or raise ``ConnectError`` naming ``host:port``."""
