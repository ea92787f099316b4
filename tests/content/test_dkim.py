"""DKIM (RFC 6376, RSA-SHA256; RFC 8463, Ed25519-SHA256): every signature statusmail makes
verifies with dkimpy and with the tests' own verifier from the RFCs (``dkim_helpers``); a
changed body or header fails both. Covered: both sample entries, English and Russian,
with the access block and without, a recipient with a name and without, 8bit and 7-bit
bodies, built in process, received by a relay that offers 8BITMIME and one that does
not, and in the maildir outbox; a body every recipient shares is hashed once. (What the
signer process does is in ``delivery/test_signer_process.py``.)

A key file statusmail cannot sign with is one line naming it, in ``check`` and ``send``
(exit 1, nothing sent). A signal right after start-up never gives a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Hashable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import (
    BLOCK,
    UPDATE,
    UPDATE_AUDIENCE,
    Running,
    clean_environ,
    command,
    invoke,
    missing,
    outbox_count,
    outbox_files,
    problem_lines,
)
from delivery_helpers import point_at, send
from dkim_helpers import (
    DOMAIN,
    NAMES,
    RSA_SELECTOR,
    Keys,
    assert_tampering_fails,
    assert_verifies,
    factory_of,
    pem,
    relaxed_body_re,
    relaxed_field_re,
    sign_with,
)
from dkim_helpers import keys as keys  # the fixtures
from dkim_helpers import signing as signing
from smtp_server import RecordingServer
from statusmail.content import dkim_signing
from statusmail.content.dkim_signing import DkimSigner, Unsigned, relaxed_body, relaxed_header
from statusmail.content.variants import probe_recipient
from statusmail.delivery.signing import SigningProcess

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
    assert relaxed_body(body) == relaxed_body_re(body)
    value = b"\r\n ".join(lines)  # folded as a header value is
    assert relaxed_header(b"Subject ", value) == relaxed_field_re(b"Subject ", value) + b"\r\n"


# -- every signature verifies -------------------------------------------------------------


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
        lambda keys: pem(ec.generate_private_key(ec.SECP256R1())),
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


# A program that starts statusmail as ``run`` does, with a signal that lands inside a
# weakref's callback (as one can while an import runs): before statusmail's own handlers
# are in (``_Early``) or after (``Interrupted``).
IN_A_CALLBACK = """
import signal, sys, time, weakref
import statusmail.__main__ as main
import statusmail.signals as signals

when = sys.argv[2]

def in_a_callback():
    class Dropped:
        pass
    dropped = Dropped()
    ref = weakref.ref(dropped, lambda _ref: signal.raise_signal(signal.SIGTERM))
    del dropped  # the callback runs here, and the signal's exception rises inside it

install = signals.install
def install_around():
    if when == "early":
        in_a_callback()
    install()
    if when == "late":
        in_a_callback()
    time.sleep(10)  # the signal is not lost: it ends the program here

signals.install = install_around
sys.argv[1:] = ["check"]
main.run()
"""


@pytest.mark.parametrize("when", ["early", "late"])
def test_a_signal_inside_a_callback_still_ends_the_program_in_one_line(
    project: Path, when: str
) -> None:
    """Python cannot raise an exception out of a weakref's callback: it prints it as
    "Exception ignored" with a traceback and goes on. statusmail sends the signal again
    from there, so it ends the program at once with its line and exit 4."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", IN_A_CALLBACK, "-", when],
        cwd=project.parent,
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert time.monotonic() - started < 8, done.stderr
    assert done.returncode == 4, done.stderr
    assert done.stderr.strip().splitlines() == [
        "interrupted by SIGTERM while starting; nothing was done"
    ]


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
