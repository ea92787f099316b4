"""Per-recipient secrets: unsubscribe tokens and stable Message-IDs, all keyed HMACs.

An unsubscribe token carries the address *encrypted*, so the endpoint needs no lookup
and yet proxy logs and the mailto subject never show it. The construction is SIV
(deterministic authenticated encryption) with HMAC-SHA256 as the only primitive:
``iv = HMAC(secret, "iv" | address)[:16]``, the address XOR an HMAC keystream under that
iv, and the token is ``base64url(iv | ciphertext)``. Decrypting and recomputing the iv
authenticates it; the iv is compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

IV_BYTES = 16
MAX_ADDRESS_BYTES = 320


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, purpose: str, value: bytes) -> bytes:
    return hmac.digest(secret, purpose.encode() + b"\x00" + value, hashlib.sha256)


def _xor_stream(secret: bytes, iv: bytes, data: bytes) -> bytes:
    stream = b"".join(
        _mac(secret, "unsubscribe-stream", iv + block.to_bytes(4, "big"))
        for block in range((len(data) + 31) // 32)
    )[: len(data)]
    mixed = int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")
    return mixed.to_bytes(len(data), "big")


def unsubscribe_token(secret: bytes, address_key: str) -> str:
    plain = address_key.encode("utf-8")
    iv = _mac(secret, "unsubscribe-iv", plain)[:IV_BYTES]
    return _b64(iv + _xor_stream(secret, iv, plain))


def verify_unsubscribe_token(secret: bytes, token: str) -> str | None:
    """The address the token was made for, or None if it was not made with ``secret``."""
    try:
        raw = _unb64(token)
    except (ValueError, binascii.Error):
        return None
    if not IV_BYTES < len(raw) <= IV_BYTES + MAX_ADDRESS_BYTES:
        return None
    iv, cipher = raw[:IV_BYTES], raw[IV_BYTES:]
    plain = _xor_stream(secret, iv, cipher)
    if not hmac.compare_digest(iv, _mac(secret, "unsubscribe-iv", plain)[:IV_BYTES]):
        return None
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError:
        return None


def message_id(secret: bytes, entry_id: str, address_key: str, domain: str) -> str:
    """The same on every attempt, and for threading from a later entry; reveals no address."""
    value = f"{entry_id}\x00{address_key}".encode()
    digest = _mac(secret, "message-id", value).hex()[:32]
    return f"<{entry_id}.{digest}@{domain}>"
