"""Per-recipient secrets: link tokens and stable Message-IDs, on standard cryptography.

A token carries what it names (an address; an entry and an address) *encrypted and
authenticated* with AES-SIV (the ``cryptography`` package): deterministic, so a
recipient's link is the same in every message, and no lookup is needed to read it, yet
proxy logs and mailto subjects never show an address. Each purpose (the unsubscribe
link, the Message-ID, the VERP return path, the preferences link) has its own key,
derived with HKDF from the configured secret, so no key serves two purposes and a token
made for one purpose is refused for another.

``base64url(version | key id | SIV tag | ciphertext)``: the key id (one byte derived from
the secret) tells which secret made it, so secrets can be rotated: the current one
signs, retired ones (``unsubscribe.previous_secrets_env``) still verify. Unsubscribe
tokens minted by statusmail before this scheme (an HMAC-SHA256 SIV construction) are
still read until ``unsubscribe.legacy_tokens_until``, so no link already in a mailbox
breaks on upgrade.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import hashlib
import hmac
from dataclasses import dataclass, field
from functools import cached_property

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = 1
MAX_PLAIN_BYTES = 512
MIN_SECRET_BYTES = 32


class Purpose(enum.StrEnum):
    UNSUBSCRIBE = "unsubscribe"
    MESSAGE_ID = "message-id"
    VERP = "verp"
    PREFERENCES = "preferences"
    FORM = "form"  # the preferences form's own token (see form_token)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    """The bytes ``_b64`` wrote as ``text``, or None: only that one spelling (the base64
    decoder alone drops characters outside its alphabet, takes '+' for '-', ignores a
    last character's unused bits and extra '=': one token, many strings)."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, binascii.Error):
        return None
    return raw if _b64(raw) == text else None


def _derive(secret: bytes, info: str, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info.encode()).derive(
        secret
    )


@dataclass(frozen=True)
class _Key:
    secret: bytes

    @cached_property
    def id(self) -> int:
        return _derive(self.secret, "statusmail key id", 1)[0]

    @cached_property
    def _keys(self) -> dict[Purpose, bytes]:
        # 64 bytes: AES-256-SIV (two 256-bit keys: one for the tag, one for the cipher)
        return {p: _derive(self.secret, f"statusmail v{VERSION} {p.value}", 64) for p in Purpose}

    @cached_property
    def _sivs(self) -> dict[Purpose, AESSIV]:
        # One cipher object per purpose: its key is checked and set up once, not per token.
        return {p: AESSIV(key) for p, key in self._keys.items()}

    def siv(self, purpose: Purpose) -> AESSIV:
        return self._sivs[purpose]

    def mac(self, purpose: Purpose, data: bytes) -> bytes:
        return hmac.digest(self._keys[purpose], data, hashlib.sha256)


@dataclass(frozen=True)
class Keyring:
    """The current secret (signs and verifies) and retired ones (verify only)."""

    secret: bytes
    previous: tuple[bytes, ...] = ()
    # Unsubscribe tokens of the scheme before this one are read through this date
    # (None: no end set).
    legacy_until: dt.date | None = None
    _keys: dict[bytes, _Key] = field(default_factory=dict, compare=False, repr=False)

    def _key(self, secret: bytes) -> _Key:
        if secret not in self._keys:
            self._keys[secret] = _Key(secret)
        return self._keys[secret]

    @property
    def current(self) -> _Key:
        return self._key(self.secret)

    def seal(self, purpose: Purpose, plain: bytes) -> str:
        return _b64(self.seal_bytes(purpose, plain))

    def seal_bytes(self, purpose: Purpose, plain: bytes) -> bytes:
        key = self.current
        head = bytes((VERSION, key.id))
        return head + key.siv(purpose).encrypt(plain, [head])

    def open(self, purpose: Purpose, token: str) -> bytes | None:
        """What ``token`` carries, if a secret of this keyring made it for ``purpose``."""
        raw = _unb64(token)
        if raw is None or len(raw) < 2 + 16 or len(raw) > 2 + 16 + MAX_PLAIN_BYTES:
            return None
        head = raw[:2]
        if head[0] != VERSION:
            return None
        for secret in (self.secret, *self.previous):
            key = self._key(secret)
            if key.id != head[1]:
                continue
            try:
                return key.siv(purpose).decrypt(raw[2:], [head])
            except InvalidTag:
                continue
        return None

    def mac(self, purpose: Purpose, data: bytes) -> bytes:
        return self.current.mac(purpose, data)


# -- what each purpose carries ---------------------------------------------------------


def unsubscribe_token(keys: Keyring, address_key: str) -> str:
    return keys.seal(Purpose.UNSUBSCRIBE, address_key.encode("utf-8"))


def verify_unsubscribe_token(
    keys: Keyring, token: str, *, today: dt.date | None = None
) -> str | None:
    """The address the token was made for, or None if no secret of ``keys`` made it."""
    plain = keys.open(Purpose.UNSUBSCRIBE, token)
    if plain is None and (
        keys.legacy_until is None or (today or dt.datetime.now(dt.UTC).date()) <= keys.legacy_until
    ):
        for secret in (keys.secret, *keys.previous):
            address = legacy_verify_unsubscribe_token(secret, token)
            if address is not None:
                return address
    return _address(plain)


def entry_token(keys: Keyring, purpose: Purpose, entry_id: str, address_key: str) -> str:
    """A token naming an entry and a recipient (the VERP return path, for one)."""
    return keys.seal(purpose, f"{entry_id}\x00{address_key}".encode())


def verify_entry_token(keys: Keyring, purpose: Purpose, token: str) -> tuple[str, str] | None:
    plain = keys.open(purpose, token)
    if plain is None:
        return None
    entry_id, sep, address = plain.decode("utf-8", "replace").partition("\x00")
    return (entry_id, address) if sep else None


# RFC 5321 limits a local part to 64 octets; the sealed return-path token (2 + 16 bytes
# more than the entry and the address, base64) rarely fits after "bounces+".
MAX_LOCAL_PART = 64
ROW_TOKEN_LENGTH = 48  # base32 of 2 + 16 + 8 + 4 bytes


def _row_check(entry_id: str, address_key: str) -> bytes:
    """Four bytes of what the row holds, sealed with its number: a ledger whose rowids
    changed (a VACUUM, a copy) can never pin a bounce on someone else."""
    return hashlib.sha256(f"{entry_id}\x00{address_key}".encode()).digest()[:4]


def row_token(keys: Keyring, row: int, entry_id: str, address_key: str) -> str:
    """The short return-path token: the delivery's ledger row, sealed (AES-SIV) under
    the return path's key, in lower-case base32 (48 characters, whatever case a mail
    system folds to). Authenticated like every token; the ledger says whom it names."""
    plain = row.to_bytes(8, "big") + _row_check(entry_id, address_key)
    raw = keys.seal_bytes(Purpose.VERP, plain)
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def open_row_token(keys: Keyring, token: str) -> tuple[int, bytes] | None:
    """(row, check) if a secret of ``keys`` made ``token`` with ``row_token``."""
    if len(token) != ROW_TOKEN_LENGTH:
        return None
    try:
        raw = base64.b32decode(token.upper() + "=" * (-len(token) % 8))
    except (ValueError, binascii.Error):
        return None
    plain = keys.open(Purpose.VERP, _b64(raw))
    if plain is None or len(plain) != 12:
        return None
    return int.from_bytes(plain[:8], "big"), plain[8:]


def row_token_names(check: bytes, entry_id: str, address_key: str) -> bool:
    return hmac.compare_digest(check, _row_check(entry_id, address_key))


def return_path_token(
    keys: Keyring, entry_id: str, address_key: str, local_part: str, row: int | None
) -> str:
    """The token for ``<local_part><delimiter><token>@…``: the sealed entry token, which
    needs no lookup, when the local part stays within 64 octets; else the row token
    (outside a run, with no row, as for a preview: the sealed token whatever its length)."""
    plain = len(entry_id.encode()) + 1 + len(address_key.encode())
    if len(local_part) + 1 + _sealed_length(plain) <= MAX_LOCAL_PART or row is None:
        return entry_token(keys, Purpose.VERP, entry_id, address_key)
    return row_token(keys, row, entry_id, address_key)


def _sealed_length(plain: int) -> int:
    """The length of ``Keyring.seal``'s token for ``plain`` bytes (unpadded base64 of the
    head, the tag and the ciphertext), known without sealing."""
    raw = 2 + 16 + plain
    return 4 * (raw // 3) + (0, 2, 3)[raw % 3]


def preferences_token(keys: Keyring, address_key: str) -> str:
    return keys.seal(Purpose.PREFERENCES, address_key.encode("utf-8"))


def verify_preferences_token(keys: Keyring, token: str) -> str | None:
    """The address the preferences link was made for, or None."""
    return _address(keys.open(Purpose.PREFERENCES, token))


def _address(plain: bytes | None) -> str | None:
    """The address an opened token holds (None: it did not open, or holds no text)."""
    if plain is None:
        return None
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError:
        return None


def message_id(keys: Keyring, entry_id: str, address_key: str, domain: str) -> str:
    """The same on every attempt, and for threading from a later entry; reveals no address."""
    digest = keys.mac(Purpose.MESSAGE_ID, f"{entry_id}\x00{address_key}".encode()).hex()[:32]
    return f"<{entry_id}.{digest}@{domain}>"


def message_id_names(keys: Keyring, value: str, entry_id: str, address_key: str) -> bool:
    """Whether ``value`` is the Message-ID a secret of ``keys`` (current or retired) gave
    the message of ``entry_id`` to ``address_key``."""
    domain = value.strip().strip("<>").rpartition("@")[2]
    data = f"{entry_id}\x00{address_key}".encode()
    for secret in (keys.secret, *keys.previous):
        digest = keys._key(secret).mac(Purpose.MESSAGE_ID, data).hex()[:32]
        if hmac.compare_digest(value.strip(), f"<{entry_id}.{digest}@{domain}>"):
            return True
    return False


# -- the scheme before this one, read only -----------------------------------------------

_LEGACY_IV_BYTES = 16


def _legacy_mac(secret: bytes, purpose: str, value: bytes) -> bytes:
    return hmac.digest(secret, purpose.encode() + b"\x00" + value, hashlib.sha256)


def _legacy_stream(secret: bytes, iv: bytes, data: bytes) -> bytes:
    stream = b"".join(
        _legacy_mac(secret, "unsubscribe-stream", iv + block.to_bytes(4, "big"))
        for block in range((len(data) + 31) // 32)
    )[: len(data)]
    return bytes(a ^ b for a, b in zip(data, stream, strict=True))


def legacy_unsubscribe_token(secret: bytes, address_key: str) -> str:
    """A token as statusmail 0.1 minted it (kept to test the compatibility reader)."""
    plain = address_key.encode("utf-8")
    iv = _legacy_mac(secret, "unsubscribe-iv", plain)[:_LEGACY_IV_BYTES]
    return _b64(iv + _legacy_stream(secret, iv, plain))


def legacy_verify_unsubscribe_token(secret: bytes, token: str) -> str | None:
    raw = _unb64(token)
    if raw is None or not _LEGACY_IV_BYTES < len(raw) <= _LEGACY_IV_BYTES + 320:
        return None
    iv, cipher = raw[:_LEGACY_IV_BYTES], raw[_LEGACY_IV_BYTES:]
    plain = _legacy_stream(secret, iv, cipher)
    if not hmac.compare_digest(iv, _legacy_mac(secret, "unsubscribe-iv", plain)[:_LEGACY_IV_BYTES]):
        return None
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError:
        return None


# -- the preferences form's token ---------------------------------------------------------

# How long a preferences page's form may be sent after it was shown; the README says so.
FORM_TOKEN_LIFETIME = dt.timedelta(hours=24)
# A form token from the future still counts: another server behind the same proxy may
# run ahead, or this one's clock was stepped back, between showing the page and its post
# (5 minutes refused a reader's choice on a host 10 minutes behind). Only a server with
# the secret made it, and it binds one page, so an hour of tolerance lets nobody else in.
FORM_TOKEN_SKEW = dt.timedelta(hours=1)


def _form_data(issued: int, page_token: str) -> bytes:
    return f"{issued}\x00{page_token}".encode()


def form_token(keys: Keyring, page_token: str, *, now: dt.datetime | None = None) -> str:
    """The token a preferences page's form carries: when the page was shown, and an HMAC
    (the form's own key) of that time and the page's link token, so it is good for that
    page only, for ``FORM_TOKEN_LIFETIME``. It names no address."""
    issued = int((now or dt.datetime.now(dt.UTC)).timestamp())
    return f"{issued}.{_b64(keys.mac(Purpose.FORM, _form_data(issued, page_token)))}"


def verify_form_token(
    keys: Keyring, token: str, page_token: str, *, now: dt.datetime | None = None
) -> bool:
    """Whether a secret of ``keys`` made ``token`` for the page of ``page_token`` within
    ``FORM_TOKEN_LIFETIME`` (retired secrets still verify, as for links)."""
    issued_text, sep, mac_text = token.partition(".")
    if not sep or not (issued_text.isascii() and issued_text.isdigit()) or len(issued_text) > 12:
        return False
    issued = int(issued_text)
    age = (now or dt.datetime.now(dt.UTC)).timestamp() - issued
    if not -FORM_TOKEN_SKEW.total_seconds() <= age <= FORM_TOKEN_LIFETIME.total_seconds():
        return False
    mac = _unb64(mac_text)
    if mac is None:
        return False
    data = _form_data(issued, page_token)
    return any(
        hmac.compare_digest(mac, keys._key(secret).mac(Purpose.FORM, data))
        for secret in (keys.secret, *keys.previous)
    )
