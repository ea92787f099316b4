"""The DKIM signer process (``delivery/signing.py``): every message's signatures are made
there, never in the run's own process, whether it is sent whole or as digests, and each
verifies with both verifiers (``dkim_helpers``); a message built ahead and not sent
leaves its recipient pending. When it fails (killed in the middle of a run, or unable to
read its key) the run stops in one line that names the signer, what was recorded
stands, and the next run sends the rest: nobody is lost and nobody gets a message twice.
It is out of a terminal's reach (a session of its own)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

import pytest

from conftest import (
    BLOCK,
    UPDATE,
    UPDATE_AUDIENCE,
)
from delivery_helpers import ledger_rows, point_at, send
from dkim_helpers import (
    NAMES,
    Keys,
    assert_verifies,
    factory_of,
    sign_with,
)
from dkim_helpers import keys as keys  # the fixtures
from dkim_helpers import signing as signing
from smtp_server import RecordingServer
from statusmail.content.dkim_signing import DkimSigner, Unsigned
from statusmail.content.message import Built
from statusmail.content.variants import probe_recipient
from statusmail.delivery.attempts import Build
from statusmail.delivery.engine import Engine, RunResult
from statusmail.delivery.signing import BEHIND, SigningProcess
from statusmail.domain import Recipient
from statusmail.errors import BuildError
from statusmail.project.sending import DkimSettings

KILL_AT = 4  # the signer is killed when it is asked for this message's signatures


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


def asks_of_the_signer(
    monkeypatch: pytest.MonkeyPatch, then: Callable[[SigningProcess, int], None] | None = None
) -> list[str]:
    """The addresses whose messages the engine asks the signer process for, in order
    (``build_signed`` watched, not replaced); ``then(signer, how_many_asked)`` runs as
    each is asked, before the request goes."""
    asked: list[str] = []
    build_signed = SigningProcess.build_signed

    def watched(
        self: SigningProcess, build: Build, recipient: Recipient, *, eight_bit: bool
    ) -> asyncio.Future[Built]:
        asked.append(recipient.address)
        if then is not None:
            then(self, len(asked))
        return build_signed(self, build, recipient, eight_bit=eight_bit)

    monkeypatch.setattr(SigningProcess, "build_signed", watched)
    return asked


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

    monkeypatch.setattr(DkimSigner, "signatures", watched)
    monkeypatch.setattr(Engine, "run", running)
    asked = asks_of_the_signer(monkeypatch)
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


def test_a_signer_killed_mid_run_stops_it_in_one_line_and_the_next_run_sends_the_rest(
    project: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    sign_with(project, keys)

    def kill(signer: SigningProcess, asked: int) -> None:
        if asked == KILL_AT and signer._process is not None:
            os.kill(signer._process.pid, signal.SIGKILL)  # a real kill: the fault injected

    with RecordingServer() as server:
        point_at(project, server.port, concurrency=1)
        asked = asks_of_the_signer(monkeypatch, then=kill)
        code, _, stderr = send(project)
        monkeypatch.undo()
        lines = stderr.strip().splitlines()
        assert code != 0 and "Traceback" not in stderr, stderr
        assert any("DKIM signer" in line for line in lines), lines
        sent_first = len(server.messages)
        assert sent_first < KILL_AT <= len(asked)  # stopped: nothing after the kill went
        rows = ledger_rows(project)
        assert sum(r["status"] == "sent" for r in rows.values()) == sent_first
        code, second, stderr = send(project)
        received = [m.rcpt_tos[0] for m in server.messages]
    assert code == 0, stderr
    assert second["counts"]["sent"] == UPDATE_AUDIENCE
    assert len(received) == len(set(received)) == UPDATE_AUDIENCE


def test_a_signer_that_cannot_read_its_key_fails_each_message_with_the_reason(
    tmp_path: Path, keys: Keys
) -> None:
    """The run reads the key before it starts; should the file go before the signer
    reads it, the signer says why, once, and every message asked of it fails with it."""
    key_file = tmp_path / "dkim.key"
    key_file.write_bytes(keys.rsa_pem)
    checked = DkimSigner(DkimSettings("startmail.example", "status", key_file))
    key_file.unlink()
    message = b"From: a@startmail.example\r\nSubject: x\r\n\r\nbody\r\n"

    async def ask() -> list[BaseException | bytes]:
        signer = SigningProcess(checked)
        await signer.start()
        try:
            futures = [signer.sign(message) for _ in range(BEHIND + 2)]  # whole and digests
            done = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 30)
            later = await asyncio.gather(signer.sign(message), return_exceptions=True)
            return [*done, *later]
        finally:
            await signer.close()

    outcomes = asyncio.run(ask())
    assert len(outcomes) == BEHIND + 3
    for outcome in outcomes:
        assert isinstance(outcome, BuildError), outcome
        assert "DKIM signer" in str(outcome) and "cannot read the DKIM key" in str(outcome)


def test_the_signer_is_out_of_the_terminals_reach(tmp_path: Path, keys: Keys) -> None:
    """Ctrl-C on a terminal signals its whole foreground process group: the signer is in
    a session of its own, so the run's process handles the signal (it closes the socket
    and the signer ends) and a signer still starting never prints a KeyboardInterrupt."""
    key_file = tmp_path / "dkim.key"
    key_file.write_bytes(keys.rsa_pem)

    async def session() -> tuple[int, int | None]:
        signer = SigningProcess(DkimSigner(DkimSettings("startmail.example", "status", key_file)))
        await signer.start()
        assert signer._process is not None
        pid = signer._process.pid
        try:
            return os.getsid(pid), pid
        finally:
            await signer.close()

    sid, pid = asyncio.run(session())
    assert sid == pid != os.getsid(0)
