"""DKIM in the tests: the keys (an RSA and an Ed25519 key, and their DNS records), a
project that signs with both, and two verifiers: dkimpy, and ``rfc6376_verify``, the
test's own, written from the RFCs on ``cryptography`` (its canonicalization uses regular
expressions where statusmail's signer uses bytes methods, and it checks RSA with the
whole signed data, not a prehashed digest). Used by ``content/test_dkim.py`` and
``delivery/test_signer_process.py``."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import dkim
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from conftest import (
    copy_sample,
)
from statusmail.content.message import MessageFactory
from statusmail.content.render import Renderer
from statusmail.project.config import load_config
from statusmail.project.entries import find_entry
from statusmail.project.regions import load_regions
from statusmail.project.tokens import Keyring

DOMAIN = "startmail.example"
RSA_SELECTOR = "status"
ED_SELECTOR = "status-ed"
NAMES = ("", "Анна Петрова")  # without the personal field, and with one (not ASCII)


@dataclass(frozen=True)
class Keys:
    rsa_pem: bytes
    ed25519_pem: bytes
    records: Mapping[str, bytes]  # selector -> its DNS TXT record

    def dns(self, name: bytes, timeout: int = 5) -> bytes:
        """dkimpy's DNS lookup: the record of ``<selector>._domainkey.<domain>.``"""
        selector, _, domain = name.decode().partition("._domainkey.")
        assert domain == f"{DOMAIN}.", name
        return self.records[selector]


def pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def keys() -> Keys:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    spki = rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    raw = ed_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return Keys(
        pem(rsa_key),
        pem(ed_key),
        {
            RSA_SELECTOR: b"v=DKIM1; k=rsa; p=" + base64.b64encode(spki),
            ED_SELECTOR: b"v=DKIM1; k=ed25519; p=" + base64.b64encode(raw),
        },
    )


def sign_with(config: Path, keys: Keys) -> Path:
    """Make the project at ``config`` sign with both keys."""
    (config.parent / "dkim.key").write_bytes(keys.rsa_pem)
    (config.parent / "dkim-ed25519.key").write_bytes(keys.ed25519_pem)
    with config.open("a", encoding="utf-8") as handle:
        handle.write(
            f"dkim: {{domain: {DOMAIN}, selector: {RSA_SELECTOR}, key_file: dkim.key, "
            f"ed25519_key_file: dkim-ed25519.key, ed25519_selector: {ED_SELECTOR}}}\n"
        )
    return config


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Path:
    """The sample project signing with both keys (not changed by the tests using it)."""
    return sign_with(copy_sample(tmp_path_factory.mktemp("signing") / "project"), keys)


# -- a second verifier, from the RFCs --------------------------------------------------

_FIELD = re.compile(rb"([^:\r\n]+):([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)(?:\r\n|\Z)")


def _tags(value: bytes) -> dict[str, bytes]:
    """RFC 6376 3.2 tag=value list; whitespace (FWS) inside values removed."""
    tags: dict[str, bytes] = {}
    for item in value.split(b";"):
        if item.strip():
            tag, _, tag_value = item.partition(b"=")
            tags[tag.strip().decode()] = re.sub(rb"\s+", b"", tag_value)
    return tags


def relaxed_field_re(name: bytes, value: bytes) -> bytes:
    """RFC 6376 3.4.2, without the CRLF."""
    value = re.sub(rb"[ \t]+", b" ", re.sub(rb"\r\n", b"", value))
    return name.strip().lower() + b":" + value.strip(b" ")


def relaxed_body_re(body: bytes) -> bytes:
    """RFC 6376 3.4.4."""
    body = re.sub(rb"[ \t]+", b" ", re.sub(rb"[ \t]+\r\n", b"\r\n", body))
    body = re.sub(rb"(\r\n)*\Z", b"", body)
    return body + b"\r\n" if body else b""


def _public_key(record: bytes) -> rsa.RSAPublicKey | ed25519.Ed25519PublicKey:
    tags = _tags(record)
    der = base64.b64decode(tags["p"])
    if tags.get("k", b"rsa") == b"ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(der)
    key = serialization.load_der_public_key(der)
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def rfc6376_verify(message: bytes, records: Mapping[str, bytes]) -> list[str]:
    """Verifies every DKIM-Signature of ``message``; returns their algorithms (raises
    AssertionError, or InvalidSignature, naming what does not hold)."""
    head, _, body = message.partition(b"\r\n\r\n")
    fields = _FIELD.findall(head + b"\r\n")
    assert b"".join(n + b":" + v + b"\r\n" for n, v in fields) == head + b"\r\n", "unparsed"
    signatures = [(n, v) for n, v in fields if n.lower() == b"dkim-signature"]
    algorithms: list[str] = []
    for sig_name, sig_value in signatures:
        tags = _tags(sig_value)
        assert tags["v"] == b"1" and tags["c"] == b"relaxed/relaxed", tags
        assert tags["d"] == DOMAIN.encode() and int(tags["t"]) <= time.time() + 1, tags
        computed = base64.b64encode(hashlib.sha256(relaxed_body_re(body)).digest())
        assert computed == tags["bh"], "the body hash does not match"
        names = [n.lower() for n in tags["h"].split(b":")]
        assert b"from" in names
        unused = [(n, v) for n, v in fields if n.lower() != b"dkim-signature"]
        signed: list[bytes] = []
        for name in names:  # RFC 6376 5.4.2: the last instance not yet used, from the bottom
            for at in range(len(unused) - 1, -1, -1):
                if unused[at][0].strip().lower() == name:
                    signed.append(relaxed_field_re(*unused.pop(at)))
                    break
        without_b = re.sub(rb"(^|;)(\s*b\s*=)[^;]*", rb"\1\2", sig_value)
        data = b"".join(line + b"\r\n" for line in signed) + relaxed_field_re(sig_name, without_b)
        key = _public_key(records[tags["s"].decode()])
        signature = base64.b64decode(tags["b"])
        if tags["a"] == b"rsa-sha256":
            assert isinstance(key, rsa.RSAPublicKey)
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            assert tags["a"] == b"ed25519-sha256" and isinstance(key, ed25519.Ed25519PublicKey)
            key.verify(signature, hashlib.sha256(data).digest())
        algorithms.append(tags["a"].decode())
    return algorithms


def dkimpy_verify(message: bytes, keys: Keys) -> list[bool]:
    """dkimpy's verdict on each signature of ``message``, in order."""
    count = len(re.findall(rb"^DKIM-Signature:", message.partition(b"\r\n\r\n")[0], re.M))
    verdicts: list[bool] = []
    for index in range(count):
        try:
            verdicts.append(bool(dkim.DKIM(message).verify(idx=index, dnsfunc=keys.dns)))
        except dkim.ValidationError:  # (what dkim.verify turns into False)
            verdicts.append(False)
    return verdicts


def assert_verifies(message: bytes, keys: Keys) -> None:
    assert dkimpy_verify(message, keys) == [True, True]
    assert rfc6376_verify(message, keys.records) == ["rsa-sha256", "ed25519-sha256"]


def assert_tampering_fails(message: bytes, keys: Keys) -> None:
    """A body line and a signed header changed: neither verifier takes a signature."""
    head, _, body = message.partition(b"\r\n\r\n")
    at = body.index(b"\r\n--", 10)  # the first part's last line ends here
    body_changed = head + b"\r\n\r\n" + body[:at] + b"!" + body[at:]
    subject_changed = re.sub(rb"\r\nSubject: ", b"\r\nSubject: Re: ", message, count=1)
    assert subject_changed != message
    for tampered in (body_changed, subject_changed):
        assert dkimpy_verify(tampered, keys) == [False, False]
        with pytest.raises((AssertionError, InvalidSignature)):
            rfc6376_verify(tampered, keys.records)


def factory_of(config_path: Path, entry_id: str) -> MessageFactory:
    config = load_config(config_path)
    renderer = Renderer(config.paths.templates, load_regions(config.paths.regions), "StartMail")
    entry = find_entry(config.paths.updates, entry_id)
    return MessageFactory(config, entry, renderer, Keyring(b"secret"))
