"""Per-recipient secrets: unsubscribe tokens and stable Message-IDs, both HMACs."""

from __future__ import annotations

import base64
import hashlib
import hmac

TOKEN_MAC_BYTES = 16


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, purpose: str, value: str) -> bytes:
    return hmac.digest(secret, f"{purpose}\x00{value}".encode(), hashlib.sha256)


def unsubscribe_token(secret: bytes, address_key: str) -> str:
    """``<address>.<mac>``, both base64url: the endpoint can verify it without a lookup."""
    mac = _mac(secret, "unsubscribe", address_key)[:TOKEN_MAC_BYTES]
    return f"{_b64(address_key.encode())}.{_b64(mac)}"


def verify_unsubscribe_token(secret: bytes, token: str) -> str | None:
    """The address the token was made for, or None; compared in constant time."""
    try:
        encoded, mac_text = token.split(".", 1)
        address = _unb64(encoded).decode("utf-8")
        given = _unb64(mac_text)
    except (ValueError, UnicodeDecodeError):
        return None
    expected = _mac(secret, "unsubscribe", address)[:TOKEN_MAC_BYTES]
    return address if hmac.compare_digest(given, expected) else None


def message_id(secret: bytes, entry_id: str, address_key: str, domain: str) -> str:
    """The same on every attempt, and for threading from a later entry; reveals no address."""
    digest = _mac(secret, "message-id", f"{entry_id}\x00{address_key}").hex()[:32]
    return f"<{entry_id}.{digest}@{domain}>"
