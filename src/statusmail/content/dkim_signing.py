"""DKIM signatures (RFC 6376, relaxed/relaxed) with the keys' operations done by OpenSSL.

The RSA-SHA256 signature is made through ``cryptography`` (about 0.3 ms for a 2048-bit
key, where dkimpy's own Python RSA takes about 8 ms); an Ed25519 key, when configured,
adds an Ed25519-SHA256 signature (RFC 8463) under its own selector, for receivers that
check it. Canonicalization and hashing are this module's, written to RFC 6376 3.4 and
checked against dkimpy and a second verifier in the tests.

The message's body hash is computed once for a body every recipient shares (the caller
passes a key naming it) and per message otherwise; the headers are hashed per message,
once for both signatures.

A key file that cannot be used (unreadable, not PEM, PEM with broken base64, the wrong
type of key, an RSA key under 1024 bits) is a ``ConfigError`` naming the file.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from statusmail.errors import ConfigError, Problem

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

    from statusmail.project.sending import DkimSettings

# Signed when present; one that is absent is listed all the same, so it cannot be added
# later without breaking the signature (List-Unsubscribe(-Post) are required signed for
# one-click unsubscribe by the large mailbox providers).
SIGNED_HEADERS = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"in-reply-to",
    b"references",
    b"reply-to",
    b"list-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"content-type",
    b"mime-version",
    b"content-language",
)
MIN_RSA_BITS = 1024  # RFC 8301 3.2: verifiers must not accept shorter keys
_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)
_FOLD = re.compile(rb"\r\n(?=[ \t])")


def _one_space(data: bytes) -> bytes:
    """``data`` with every run of WSP (SP, HTAB) made one SP. Runs are few in a message
    (indentation), so each is found with ``find`` and the pieces between are joined
    once: a regular expression is about 20x slower, and ``replace`` copies the whole
    body at every pass."""
    if b"\t" in data:
        data = data.replace(b"\t", b" ")
    return _cut(data, b"  ", 1)


def _cut(data: bytes, needle: bytes, keep: int) -> bytes:
    """``data`` with every run of spaces that starts with ``needle`` cut to its first
    ``keep`` octets, spaces and all (``needle`` is spaces, then what ends the run)."""
    start = data.find(needle)
    if start < 0:
        return data
    pieces: list[bytes] = []
    end = 0
    while start >= 0:
        stop = start + 1
        while data[stop : stop + 1] == b" ":
            stop += 1
        pieces.append(data[end : start + keep])
        end = stop
        start = data.find(needle, stop)
    pieces.append(data[end:])
    return b"".join(pieces)


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4: whitespace runs become one space, none is left at a line's end,
    empty lines at the end go, and a non-empty body ends with CRLF. (``body`` has CRLF
    line ends only, as every message statusmail builds.)"""
    body = _cut(_one_space(body), b" \r\n", 0)
    end = len(body)
    while body.endswith(b"\r\n\r\n", 0, end):
        end -= 2
    body = body[:end]
    if body == b"\r\n" or not body:
        return b""
    return body if body.endswith(b"\r\n") else body + b"\r\n"


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """RFC 6376 3.4.2: ``name:value`` with the name in lower case, the value unfolded,
    its whitespace runs one space and none at either end; CRLF-terminated."""
    value = _one_space(value.replace(b"\r\n", b"")).strip(b" ")
    return name.strip(b" \t").lower() + b":" + value + b"\r\n"


def header_fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """The header block's fields in order, as (name, value with its folding)."""
    fields: list[tuple[bytes, bytes]] = []
    for field in _FOLD.sub(b"\0", head).split(b"\r\n"):  # (no NUL is in a header)
        if field:
            name, _, value = field.replace(b"\0", b"\r\n").partition(b":")
            fields.append((name, value))
    return fields


def _hashed_headers(fields: list[tuple[bytes, bytes]]) -> bytes:
    """The canonical fields ``SIGNED_HEADERS`` names, as RFC 6376 5.4.2 picks them: for
    each name the last instance not yet used (there is one of each in our messages)."""
    by_name: dict[bytes, list[tuple[bytes, bytes]]] = {}
    for name, value in fields:
        by_name.setdefault(name.strip(b" \t").lower(), []).append((name, value))
    out: list[bytes] = []
    for name in SIGNED_HEADERS:
        instances = by_name.get(name)
        if instances:
            out.append(relaxed_header(*instances.pop()))
    return b"".join(out)


def _fold_b64(value: bytes, width: int = 72) -> bytes:
    return b"\r\n ".join(value[i : i + width] for i in range(0, len(value), width))


def _signed_list(width: int = 70) -> bytes:
    """``h=`` folded into lines of at most ``width`` octets (FWS may follow a colon)."""
    lines: list[bytes] = [b" h="]
    for index, name in enumerate(SIGNED_HEADERS):
        piece = name + (b":" if index < len(SIGNED_HEADERS) - 1 else b";")
        if len(lines[-1]) + len(piece) > width:
            lines.append(b" ")
        lines[-1] += piece
    return b"\r\n".join(lines)


def _key_problem(path: Path, message: str) -> ConfigError:
    return ConfigError([Problem(path, None, message, code="dkim-key")])


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _key_problem(path, f"cannot read the DKIM key: {exc.strerror}") from exc


@functools.lru_cache(maxsize=16)
def _pem_private_key(path: Path, data: bytes) -> object:
    """The private key in PEM file ``data``, or a ``ConfigError`` saying what is wrong.
    Kept for the same content: loading checks an RSA key (about 45 ms for 2048 bits),
    and ``check`` makes a signer per entry."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    armour = _PEM.search(data)
    if armour is None:
        raise _key_problem(path, "not a PEM private key (no '-----BEGIN … PRIVATE KEY-----' block)")
    label = armour.group(1).decode("ascii")
    if "PRIVATE KEY" not in label:
        raise _key_problem(path, f"holds a PEM {label}, not a private key")
    inside = armour.group(2)
    if b":" not in inside:  # (an old encrypted PEM has Proc-Type headers)
        try:
            base64.b64decode(b"".join(inside.split()), validate=True)
        except binascii.Error:
            raise _key_problem(
                path, f"the base64 inside its PEM {label} armour is broken"
            ) from None
    try:
        return load_pem_private_key(data, password=None)
    except TypeError:
        raise _key_problem(
            path, "the DKIM key is encrypted; statusmail needs it unencrypted"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _key_problem(path, f"the PEM {label} holds no usable key ({exc})") from None


def _kind(key: object) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    kinds = (
        (rsa.RSAPrivateKey, "an RSA"),
        (ed25519.Ed25519PrivateKey, "an Ed25519"),
        (ec.EllipticCurvePrivateKey, "an EC"),
        (ed448.Ed448PrivateKey, "an Ed448"),
    )
    return next((name for cls, name in kinds if isinstance(key, cls)), "another kind of")


def load_rsa_key(path: Path) -> RSAPrivateKey:
    """The RSA private key (PEM, PKCS#1 or PKCS#8) in ``path``, at least 1024 bits."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = _pem_private_key(path, _read(path))
    if not isinstance(key, rsa.RSAPrivateKey):
        raise _key_problem(
            path,
            f"holds {_kind(key)} key; dkim.key_file must be an RSA key "
            "(an Ed25519 key goes in dkim.ed25519_key_file)",
        )
    if key.key_size < MIN_RSA_BITS:
        raise _key_problem(
            path,
            f"is a {key.key_size}-bit RSA key; DKIM needs at least {MIN_RSA_BITS} bits "
            "(RFC 8301; 2048 recommended)",
        )
    return key


def load_ed25519_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in ``path``: PEM (PKCS#8, as ``openssl genpkey`` writes
    it) or the base64 of its 32-octet seed (as dkimpy's ``dknewkey`` writes it)."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    data = _read(path)
    if b"-----BEGIN" not in data:
        try:
            seed = base64.b64decode(b"".join(data.split()), validate=True)
        except binascii.Error:
            seed = b""
        if len(seed) != 32:
            raise _key_problem(
                path,
                "not an Ed25519 private key (PEM, or the base64 of its 32-octet seed)",
            )
        return ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    key = _pem_private_key(path, data)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise _key_problem(
            path, f"holds {_kind(key)} key; dkim.ed25519_key_file must be an Ed25519 key"
        )
    return key


@dataclass(frozen=True, slots=True)
class Unsigned:
    """A message whose signatures are still to be made: each signature's header up to
    ``b=`` and the digest its key signs (``DkimSigner.signatures``: only the keys'
    operations, which another process can do); ``signed`` puts them in."""

    data: bytes
    heads: tuple[bytes, ...]
    digests: tuple[bytes, ...]

    def headers(self, signatures: Sequence[bytes]) -> bytes:
        """The ``DKIM-Signature`` headers, to go in front of the message."""
        out = [
            head + _fold_b64(base64.b64encode(signature)) + b"\r\n"
            for head, signature in zip(self.heads, signatures, strict=True)
        ]
        return b"".join(out)


class DkimSigner:
    """Signs messages for ``settings``; the keys are read once (``ConfigError`` if bad)."""

    def __init__(self, settings: DkimSettings) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding
        from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

        self.settings = settings
        self.domain = settings.domain.encode()
        self.selector = settings.selector.encode()
        rsa_key = load_rsa_key(settings.key_file)
        pkcs1, prehashed = padding.PKCS1v15(), Prehashed(hashes.SHA256())
        # Each key's header up to t= (the rest is per message), and what signs a digest.
        self._signatures = [self._start(b"rsa-sha256", self.selector)]
        signers: list[Callable[[bytes], bytes]] = [
            lambda digest: rsa_key.sign(digest, pkcs1, prehashed)
        ]
        if settings.ed25519_key_file is not None and settings.ed25519_selector:
            ed_key = load_ed25519_key(settings.ed25519_key_file)
            self._signatures.append(
                self._start(b"ed25519-sha256", settings.ed25519_selector.encode())
            )
            signers.append(ed_key.sign)  # RFC 8463: PureEdDSA over the digest
        self._signers = signers
        self._body_hashes: dict[Hashable, bytes] = {}

    @property
    def ascii(self) -> bool:
        """Whether the signature headers are ASCII (a domain or selector may not be)."""
        return all(start.isascii() for start in self._signatures)

    def _start(self, algorithm: bytes, selector: bytes) -> bytes:
        return (
            b"DKIM-Signature: v=1; a="
            + algorithm
            + b"; c=relaxed/relaxed; d="
            + self.domain
            + b"; s="
            + selector
            + b";\r\n"
            + _signed_list()
            + b"\r\n"
        )

    def body_hash(self, body: bytes, shared: Hashable | None = None) -> bytes:
        """The base64 SHA-256 of ``body`` canonicalized; with ``shared``, a key naming a
        body that is the same for every message it is given with, computed once."""
        if shared is not None:
            known = self._body_hashes.get(shared)
            if known is not None:
                return known
        digest = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
        if shared is not None:
            self._body_hashes[shared] = digest
        return digest

    def prepare(self, data: bytes, shared_body: Hashable | None = None) -> Unsigned:
        """What signing ``data`` takes but the keys' operations: the canonical forms and
        their hashes (``data``: a whole message, CRLF line ends, headers, an empty line,
        the body; ``shared_body``: see ``body_hash``)."""
        head, _, body = data.partition(b"\r\n\r\n")
        headers = hashlib.sha256(_hashed_headers(header_fields(head + b"\r\n")))
        body_hash = self.body_hash(body, shared_body)
        tail = b" t=" + str(int(time.time())).encode() + b"; bh=" + body_hash + b";\r\n b="
        heads: list[bytes] = []
        digests: list[bytes] = []
        for start in self._signatures:
            unsigned = start + tail
            name, _, value = unsigned.partition(b":")
            hashed = headers.copy()  # the same signed headers, then this signature's own
            hashed.update(relaxed_header(name, value).removesuffix(b"\r\n"))
            heads.append(unsigned)
            digests.append(hashed.digest())
        return Unsigned(data, tuple(heads), tuple(digests))

    def signatures(self, digests: Sequence[bytes]) -> list[bytes]:
        """Each key's signature of its digest (``Unsigned.digests``)."""
        return [sign(digest) for sign, digest in zip(self._signers, digests, strict=True)]

    def signature_headers(self, data: bytes, shared_body: Hashable | None = None) -> bytes:
        """The ``DKIM-Signature`` headers for ``data``; see ``prepare``."""
        unsigned = self.prepare(data, shared_body)
        return unsigned.headers(self.signatures(unsigned.digests))

    def sign(self, data: bytes, shared_body: Hashable | None = None) -> bytes:
        """``data`` with its signatures in front; see ``prepare``."""
        return self.signature_headers(data, shared_body) + data
