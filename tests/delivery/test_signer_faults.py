"""The DKIM signer process (``delivery/signing.py``) when it fails: killed in the middle
of a run, or unable to read its key. Either way the run stops in one line that names
the signer, what was recorded stands, and the next run sends the rest: nobody is lost
and nobody gets a message twice."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import UPDATE_AUDIENCE
from delivery_helpers import ledger_rows, point_at, send
from smtp_server import RecordingServer
from statusmail.content.dkim_signing import DkimSigner
from statusmail.content.message import Built
from statusmail.delivery.attempts import Build
from statusmail.delivery.signing import BEHIND, SigningProcess
from statusmail.domain import Recipient
from statusmail.errors import BuildError
from statusmail.project.sending import DkimSettings

KILL_AT = 4  # the signer is killed when it is asked for this message's signatures


def _rsa_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_a_signer_killed_mid_run_stops_it_in_one_line_and_the_next_run_sends_the_rest(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project.parent / "dkim.key").write_bytes(_rsa_pem())
    with project.open("a", encoding="utf-8") as handle:
        handle.write("dkim: {domain: startmail.example, selector: status, key_file: dkim.key}\n")
    asked: list[str] = []
    build_signed = SigningProcess.build_signed

    def killing(
        self: SigningProcess, build: Build, recipient: Recipient, *, eight_bit: bool
    ) -> asyncio.Future[Built]:
        asked.append(recipient.address)
        if len(asked) == KILL_AT and self._process is not None:
            os.kill(self._process.pid, signal.SIGKILL)  # a real kill: the fault injected
        return build_signed(self, build, recipient, eight_bit=eight_bit)

    with RecordingServer() as server:
        point_at(project, server.port, concurrency=1)
        monkeypatch.setattr(SigningProcess, "build_signed", killing)
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
    tmp_path: Path,
) -> None:
    """The run reads the key before it starts; should the file go before the signer
    reads it, the signer says why, once, and every message asked of it fails with it."""
    key_file = tmp_path / "dkim.key"
    key_file.write_bytes(_rsa_pem())
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


def test_the_signer_is_out_of_the_terminals_reach(tmp_path: Path) -> None:
    """Ctrl-C on a terminal signals its whole foreground process group: the signer is in
    a session of its own, so the run's process handles the signal (it closes the socket
    and the signer ends) and a signer still starting never prints a KeyboardInterrupt."""
    key_file = tmp_path / "dkim.key"
    key_file.write_bytes(_rsa_pem())

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
