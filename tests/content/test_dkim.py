"""DKIM (RFC 6376, RSA-SHA256; RFC 8463, Ed25519-SHA256): every signature statusmail makes
verifies with dkimpy and with ``rfc6376_verify`` below, a verifier of the test's own
written from the RFCs on ``cryptography`` (its canonicalization uses regular expressions
where statusmail's signer uses bytes methods, and it checks RSA with the whole signed
data, not a prehashed digest); a changed body or header fails both. Covered: both sample
entries, English and Russian, with the access block and without, a recipient with a
name and without, 8bit and 7-bit bodies, built in process and received by a relay that
offers 8BITMIME and one that does not.

A key file statusmail cannot sign with is one line naming it, in ``check`` and ``send``
(exit 1, nothing sent). A signal right after start-up never gives a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import dkim
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import (
    BLOCK,
    UPDATE,
    UPDATE_AUDIENCE,
    Running,
    clean_environ,
    command,
    copy_sample,
    invoke,
    missing,
    outbox_count,
    outbox_files,
    problem_lines,
)
from delivery_helpers import point_at, send
from smtp_server import RecordingServer
from statusmail.content import dkim_signing
from statusmail.content.dkim_signing import DkimSigner, Unsigned, relaxed_body, relaxed_header
from statusmail.content.message import Built, MessageFactory
from statusmail.content.render import Renderer
from statusmail.content.variants import probe_recipient
from statusmail.delivery.attempts import Build
from statusmail.delivery.engine import Engine, RunResult
from statusmail.delivery.signing import BEHIND, SigningProcess
from statusmail.domain import Recipient
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


def _pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
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
        _pem(rsa_key),
        _pem(ed_key),
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


def _relaxed_field(name: bytes, value: bytes) -> bytes:
    """RFC 6376 3.4.2, without the CRLF."""
    value = re.sub(rb"[ \t]+", b" ", re.sub(rb"\r\n", b"", value))
    return name.strip().lower() + b":" + value.strip(b" ")


def _relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4."""
    body = re.sub(rb"[ \t]+", b" ", re.sub(rb"[ \t]+\r\n", b"\r\n", body))
    body = re.sub(rb"(\r\n)*\Z", b"", body)
    return body + b"\r\n" if body else b""


LINES = st.lists(st.text(alphabet=" \tab.é", max_size=12).map(str.encode), max_size=8)


@settings(max_examples=400, deadline=None)
@given(LINES, st.booleans())
def test_the_signers_canonical_forms_are_the_regular_expressions(
    lines: list[bytes], ends_with_crlf: bool
) -> None:
    """statusmail's bytes-method canonicalization (runs found with ``find``) against the
    second verifier's regular expressions: any mix of spaces, tabs, runs at a line's
    start and end, empty lines at the end, a body without a final CRLF."""
    body = b"\r\n".join(lines) + (b"\r\n" if ends_with_crlf else b"")
    assert relaxed_body(body) == _relaxed_body(body)
    value = b"\r\n ".join(lines)  # folded as a header value is
    assert relaxed_header(b"Subject ", value) == _relaxed_field(b"Subject ", value) + b"\r\n"


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
        computed = base64.b64encode(hashlib.sha256(_relaxed_body(body)).digest())
        assert computed == tags["bh"], "the body hash does not match"
        names = [n.lower() for n in tags["h"].split(b":")]
        assert b"from" in names
        unused = [(n, v) for n, v in fields if n.lower() != b"dkim-signature"]
        signed: list[bytes] = []
        for name in names:  # RFC 6376 5.4.2: the last instance not yet used, from the bottom
            for at in range(len(unused) - 1, -1, -1):
                if unused[at][0].strip().lower() == name:
                    signed.append(_relaxed_field(*unused.pop(at)))
                    break
        without_b = re.sub(rb"(^|;)(\s*b\s*=)[^;]*", rb"\1\2", sig_value)
        data = b"".join(line + b"\r\n" for line in signed) + _relaxed_field(sig_name, without_b)
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


# -- every signature verifies -------------------------------------------------------------


def factory_of(config_path: Path, entry_id: str) -> MessageFactory:
    config = load_config(config_path)
    renderer = Renderer(config.paths.templates, load_regions(config.paths.regions), "StartMail")
    entry = find_entry(config.paths.updates, entry_id)
    return MessageFactory(config, entry, renderer, Keyring(b"secret"))


def test_every_variant_verifies_with_both_verifiers(signing: Path, keys: Keys) -> None:
    seen: set[tuple[str, bool, bool, str]] = set()
    for entry_id in (BLOCK, UPDATE):
        factory = factory_of(signing, entry_id)
        for key in factory.renderer.variant_keys(factory.entry):
            for name in NAMES:
                recipient = dataclasses.replace(probe_recipient(key), name=name)
                for eight_bit in (True, False):
                    data = factory.build(recipient, eight_bit=eight_bit).envelope.data
                    assert_verifies(data, keys)
                    has_8bit = b"Content-Transfer-Encoding: 8bit" in data
                    assert eight_bit or not has_8bit
                    seen.add((key.locale, key.region is not None, has_8bit, name))
        assert_tampering_fails(data, keys)
        # A name whose To header folds over several lines; whitespace to canonicalize.
        for name in ("😀" * 160, "  Ann\tLee  "):
            recipient = dataclasses.replace(recipient, name=name)
            assert_verifies(factory.build(recipient, eight_bit=True).envelope.data, keys)
    locales = {locale for locale, *_ in seen}
    assert locales == {"en", "ru"}
    assert {has_8bit for *_, has_8bit, _ in seen} == {True, False}
    assert {(locale, access, name) for locale, access, _, name in seen} == {
        (locale, access, name) for locale in locales for access in (True, False) for name in NAMES
    }


def test_the_signer_process_signs_whole_messages_and_digests_alike(
    signing: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every variant of both entries, with and without the name, 8bit and 7-bit, asked of the signer
    process in one turn: the first ``BEHIND`` go whole (the signer hashes them), the
    rest as digests (hashed here while the signer is behind). Each verifies with both
    verifiers."""
    factories = [factory_of(signing, entry_id) for entry_id in (BLOCK, UPDATE)]
    built = [
        factory.build(
            dataclasses.replace(probe_recipient(key), name=name), eight_bit=eight_bit, signed=False
        )
        for factory in factories
        for key in factory.renderer.variant_keys(factory.entry)
        for name in NAMES
        for eight_bit in (True, False)
    ]
    hashed_here: list[bytes] = []
    prepare = DkimSigner.prepare

    def watched(self: DkimSigner, data: bytes, shared_body: Hashable | None = None) -> Unsigned:
        hashed_here.append(data)
        return prepare(self, data, shared_body)

    monkeypatch.setattr(DkimSigner, "prepare", watched)
    dkim = factories[0].signer
    assert dkim is not None

    async def sign_all() -> list[bytes]:
        signer = SigningProcess(dkim)
        await signer.start()
        try:
            futures = [signer.sign(b.envelope.data, b.shared_body) for b in built]
            return list(await asyncio.wait_for(asyncio.gather(*futures), 30))
        finally:
            await signer.close()

    for message, headers in zip(built, asyncio.run(sign_all()), strict=True):
        assert message.unsigned and not message.envelope.data.startswith(b"DKIM-Signature")
        assert_verifies(message.signed(headers).envelope.data, keys)
    assert len(built) > BEHIND
    assert hashed_here == [b.envelope.data for b in built[BEHIND:]]


def test_a_body_every_recipient_shares_is_hashed_once(
    signing: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two messages with one body (a variant without per-recipient text) and different
    headers, signed in process and through the signer process: the body is
    canonicalized once, and all four signatures verify."""
    factory = factory_of(signing, UPDATE)
    key = next(iter(factory.renderer.variant_keys(factory.entry)))
    first = factory.build(probe_recipient(key), signed=False).envelope.data
    second = re.sub(rb"^To: [^\r]*", b"To: other@example.org", first, count=1, flags=re.M)
    assert second != first and second.partition(b"\r\n\r\n")[2] == first.partition(b"\r\n\r\n")[2]
    canonicalized: list[int] = []
    relaxed = dkim_signing.relaxed_body

    def counted(body: bytes) -> bytes:
        canonicalized.append(len(body))
        return relaxed(body)

    monkeypatch.setattr(dkim_signing, "relaxed_body", counted)
    dkim = factory.signer
    assert dkim is not None
    in_process = [dkim.sign(data, "one body") for data in (first, second)]

    prepared: list[bytes] = []  # the messages hashed in this process for the signer
    prepare = DkimSigner.prepare

    def watched(self: DkimSigner, data: bytes, shared_body: Hashable | None = None) -> Unsigned:
        prepared.append(data)
        return prepare(self, data, shared_body)

    monkeypatch.setattr(DkimSigner, "prepare", watched)

    async def through_signer() -> list[bytes]:
        signer = SigningProcess(dkim)
        await signer.start()
        try:
            futures = [signer.sign(data, "one body") for data in (first, second)]
            return list(await asyncio.wait_for(asyncio.gather(*futures), 30))
        finally:
            await signer.close()

    headers = asyncio.run(through_signer())
    assert len(canonicalized) == 1
    assert prepared == [first, second]  # as digests: the signer never hashes it again
    for message in [*in_process, *(h + d for h, d in zip(headers, (first, second), strict=True))]:
        assert_verifies(message, keys)


@pytest.mark.parametrize("eight_bit_relay", [True, False], ids=["8BITMIME", "7-bit relay"])
def test_what_the_relay_receives_verifies(project: Path, keys: Keys, eight_bit_relay: bool) -> None:
    sign_with(project, keys)
    with RecordingServer(eightbitmime=eight_bit_relay) as server:
        point_at(project, server.port)
        code, payload, stderr = send(project)
        received = server.messages
    assert code == 0, stderr
    assert len(received) == payload["counts"]["sent"] == UPDATE_AUDIENCE
    eight_bit = 0
    for message in received:
        assert_verifies(message.data, keys)
        eight_bit += b"Content-Transfer-Encoding: 8bit" in message.data
    if eight_bit_relay:
        assert eight_bit > 0  # the Russian readers' messages
    else:
        assert eight_bit == 0


def test_what_the_maildir_outbox_holds_verifies(project: Path, keys: Keys) -> None:
    """The embedded default transport signs through the signer process too."""
    sign_with(project, keys)
    code, payload, stderr = send(project)
    assert code == 0, stderr
    files = outbox_files(project)
    assert len(files) == payload["counts"]["sent"] == UPDATE_AUDIENCE
    for data in files:
        assert_verifies(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), keys)


@pytest.mark.parametrize("concurrency", [1, 3])
def test_signatures_are_made_by_the_signer_process_and_each_message_goes_once(
    project: Path, keys: Keys, concurrency: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a key, each message's signatures are made in the signer process, never in
    the run's own (its key operations are watched, not replaced): every message is still
    the factory's, verifies with both verifiers, and goes to its recipient once."""
    here: list[int] = []  # key operations made in this process while it delivers
    delivering: list[bool] = []
    signatures, run = DkimSigner.signatures, Engine.run

    def watched(self: DkimSigner, digests: Sequence[bytes]) -> list[bytes]:
        if delivering:  # (the checks of every variant before the run sign here)
            here.append(len(digests))
        return signatures(self, digests)

    async def running(self: Engine) -> RunResult:
        delivering.append(True)
        try:
            return await run(self)
        finally:
            delivering.clear()

    asked: list[str] = []
    build_signed = SigningProcess.build_signed

    def counted(
        self: SigningProcess, build: Build, recipient: Recipient, *, eight_bit: bool
    ) -> asyncio.Future[Built]:
        asked.append(recipient.address)
        return build_signed(self, build, recipient, eight_bit=eight_bit)

    monkeypatch.setattr(DkimSigner, "signatures", watched)
    monkeypatch.setattr(Engine, "run", running)
    monkeypatch.setattr(SigningProcess, "build_signed", counted)
    sign_with(project, keys)
    with RecordingServer() as server:
        point_at(project, server.port, concurrency=concurrency)
        code, payload, stderr = send(project)
        received = server.messages
    assert code == 0, stderr
    assert payload["counts"]["sent"] == UPDATE_AUDIENCE
    assert len({m.rcpt_tos[0] for m in received}) == len(received) == UPDATE_AUDIENCE
    for message in received:
        assert_verifies(message.data, keys)
    assert here == []
    assert len(asked) == len(set(asked)) == UPDATE_AUDIENCE  # once for each message


def test_a_message_built_ahead_but_not_sent_leaves_its_recipient_pending(
    project: Path, keys: Keys
) -> None:
    """``--limit 5`` at one connection: the sixth message may be built ahead, but only five
    leave; the next run sends the other nine, and nobody twice."""
    sign_with(project, keys)
    with RecordingServer() as server:
        point_at(project, server.port, concurrency=1)
        code, first, stderr = send(project, UPDATE, "--limit", "5")
        assert code != 1, stderr
        assert first["this_run"]["sent"] == 5 and len(server.messages) == 5
        assert first["counts"]["pending"] == UPDATE_AUDIENCE - 5
        code, second, stderr = send(project)
        assert code == 0, stderr
        received = [m.rcpt_tos[0] for m in server.messages]
    assert second["counts"]["sent"] == UPDATE_AUDIENCE
    assert len(received) == len(set(received)) == UPDATE_AUDIENCE


# -- a key statusmail cannot sign with ------------------------------------------------------


def _rsa_512() -> bytes:
    """A 512-bit RSA key (cryptography will not make one; OpenSSL's command line will)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        missing("openssl is not installed (apt-get install openssl): it makes the 512-bit key")
    run = subprocess.run([openssl, "genrsa", "512"], capture_output=True, check=True, timeout=30)
    return run.stdout


def _broken_base64(keys: Keys) -> bytes:
    lines = keys.rsa_pem.splitlines(keepends=True)
    lines[3] = b"!!" + lines[3][2:]  # armour intact, one line of the base64 not
    return b"".join(lines)


# case -> (which file: "rsa" or "ed25519", its content, what the line says)
BROKEN = {
    "armour with broken base64": ("rsa", _broken_base64, "base64 inside its PEM"),
    "an EC key as the RSA key": (
        "rsa",
        lambda keys: _pem(ec.generate_private_key(ec.SECP256R1())),
        "holds an EC key; dkim.key_file must be an RSA key",
    ),
    "an Ed25519 key as the RSA key": (
        "rsa",
        lambda keys: keys.ed25519_pem,
        "holds an Ed25519 key; dkim.key_file must be an RSA key",
    ),
    "an RSA key as the Ed25519 key": (
        "ed25519",
        lambda keys: keys.rsa_pem,
        "holds an RSA key; dkim.ed25519_key_file must be an Ed25519 key",
    ),
    "RSA under 1024 bits": ("rsa", lambda keys: _rsa_512(), "is a 512-bit RSA key"),
    "not a key at all": ("rsa", lambda keys: b"selector status, see the wiki\n", "not a PEM"),
    "not an Ed25519 key at all": ("ed25519", lambda keys: b"hello\n", "not an Ed25519"),
    "a certificate": (
        "rsa",
        lambda keys: b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        "holds a PEM CERTIFICATE, not a private key",
    ),
    "unreadable": ("rsa", None, "cannot read the DKIM key: Is a directory"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_key_is_one_line_naming_it(project: Path, keys: Keys, case: str) -> None:
    which, content, says = BROKEN[case]
    sign_with(project, keys)
    path = project.parent / ("dkim.key" if which == "rsa" else "dkim-ed25519.key")
    if content is None:
        path.unlink()
        path.mkdir()  # root reads any file whatever its mode; nobody reads a directory
    else:
        path.write_bytes(content(keys))
    check = invoke(project, "check")
    assert check.exit_code == 1, check.output
    lines = problem_lines(check.output)
    assert len(lines) == 1 and str(path) in lines[0] and says in lines[0], check.output
    sent = invoke(project, "send", UPDATE, "--yes")
    assert sent.exit_code == 1, sent.stderr
    said = [line for line in sent.stderr.splitlines() if str(path) in line]
    assert len(said) == 1 and says in said[0], sent.stderr
    assert outbox_count(project) == 0


def test_an_ed25519_key_needs_its_selector(project: Path, keys: Keys) -> None:
    (project.parent / "dkim.key").write_bytes(keys.rsa_pem)
    with project.open("a", encoding="utf-8") as handle:
        handle.write(
            f"dkim: {{domain: {DOMAIN}, selector: {RSA_SELECTOR}, key_file: dkim.key,\n"
            "       ed25519_key_file: dkim-ed25519.key}\n"
        )
    check = invoke(project, "check")
    assert check.exit_code == 1
    lines = problem_lines(check.output)
    assert lines == [
        f"{project}:{len(project.read_text().splitlines())}: 'dkim.ed25519_key_file' needs "
        "'dkim.ed25519_selector' too"
    ], check.output


def test_a_dknewkey_ed25519_key_signs(project: Path, keys: Keys) -> None:
    """dkimpy's ``dknewkey --ktype ed25519`` writes the base64 of the 32-octet seed."""
    sign_with(project, keys)
    private = serialization.load_pem_private_key(keys.ed25519_pem, None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    (project.parent / "dkim-ed25519.key").write_bytes(base64.b64encode(seed) + b"\n")
    factory = factory_of(project, UPDATE)
    key = next(iter(factory.renderer.variant_keys(factory.entry)))
    assert_verifies(factory.build(probe_recipient(key)).envelope.data, keys)


# -- a signal right after start-up ----------------------------------------------------------


@pytest.fixture
def spawned() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for process in started:
        if process.process.returncode is None:
            process.process.kill()
            process.finish()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_from_the_first_statement_on_never_gives_a_traceback(
    project: Path, spawned: list[Running], sig: signal.Signals
) -> None:
    """A signal at once after the process starts (its first ~45 ms, repeated), and one
    just after statusmail's first statement (its handlers for both signals are in).
    SIGTERM: Python's default action before that statement (ended by the signal,
    nothing printed), else statusmail's one line and exit 4. SIGINT only from that
    statement on (before it, Python itself prints KeyboardInterrupt, as ``__main__``
    documents): the line and exit 4."""
    # None: as soon as the program catches SIGTERM (Python catches SIGINT itself).
    moments = (0.0, 0.01, 0.02, 0.045, None) if sig == signal.SIGTERM else (None, None, None)
    for moment in moments:
        process = Running(command(project, "check"), clean_environ())
        spawned.append(process)
        if moment is None:
            process.wait_until_catching(signal.SIGTERM)
        else:
            time.sleep(moment)  # the moment of the signal is the point
        process.send_signal(sig)
        code = process.finish(timeout=20)  # (fails on a traceback)
        if code == -sig:
            assert moment is not None and sig == signal.SIGTERM, process.stderr
            assert process.stderr == "", process.stderr
        else:
            assert code == 4, process.stderr
            lines = process.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"interrupted by {sig.name}"), lines
