"""Test sends (issue 24): ``send ID --test-to ADDRESS`` delivers every variant to the
address through the configured transport (here the maildir outbox), its subject
starting "[TEST] ", and records nothing; an address not in ``test_recipients`` is
refused unless ``--force``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from conftest import SECRET_ENV, UPDATE, invoke, outbox_messages, recipient
from delivery_helpers import point_at
from smtp_server import RecordingServer
from statusmail.content.message import MessageFactory
from statusmail.content.render import Renderer
from statusmail.delivery import test_send
from statusmail.errors import InputError
from statusmail.project.config import load_config
from statusmail.project.entries import find_entry
from statusmail.project.regions import load_regions
from statusmail.project.tokens import Keyring

QA = "qa@startmail.example"
# UPDATE's variants: each language, with Russia's access block or without.
VARIANTS = {"en", "en-RU", "ru", "ru-RU"}


@pytest.fixture
def tested(project: Path) -> Path:
    """The sample with a test recipient."""
    with project.open("a", encoding="utf-8") as handle:
        handle.write(f"\ntest_recipients: [{QA.upper()}]\n")
    return project


def ledger_digest(config: Path) -> str:
    return hashlib.sha256((config.parent / "statusmail.db").read_bytes()).hexdigest()


def test_test_to_sends_every_variant_once_and_records_nothing(tested: Path) -> None:
    assert invoke(tested, "ledger", "migrate").exit_code == 0  # a ledger not to touch
    before = ledger_digest(tested)
    result = invoke(tested, "send", UPDATE, "--test-to", QA)
    assert result.exit_code == 0, result.output
    messages = outbox_messages(tested)
    assert {recipient(m) for m in messages} == {QA}
    assert {str(m["Subject"])[:7] for m in messages} == {"[TEST] "}
    labels = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("sent ")}
    assert labels == VARIANTS and len(messages) == len(VARIANTS)
    assert len({str(m["Message-ID"]) for m in messages}) == len(VARIANTS)  # none hidden
    assert {str(m["Content-Language"]) for m in messages} == {"en", "ru"}
    assert ledger_digest(tested) == before
    status = invoke(tested, "status", UPDATE)
    assert status.exit_code == 0 and f"{UPDATE}: not sent yet" in status.output


def test_an_address_not_in_test_recipients_is_refused_without_force(tested: Path) -> None:
    typo = "qa@startmial.example"
    result = invoke(tested, "send", UPDATE, "--test-to", QA, "--test-to", typo)
    assert result.exit_code == 1
    line = tested.read_text(encoding="utf-8").splitlines().index(f"test_recipients: [{QA.upper()}]")
    assert f"{tested}:{line + 1}: --test-to {typo}: not one of test_recipients ({QA})" in (
        result.output
    )
    assert outbox_messages(tested) == []
    config = load_config(tested)
    forced = test_send.Request((typo,), force=True)
    test_send.refuse_unlisted(config, forced)  # --force: taken
    with pytest.raises(InputError, match="no such variant"):
        test_send.chosen_variants(prepared(tested), test_send.Request((QA,), "ru-BY"))
    chosen = test_send.chosen_variants(prepared(tested), test_send.Request((QA,), "ru-RU"))
    assert [key.label for key in chosen] == ["ru-RU"]


def test_test_to_goes_through_the_relay_and_says_what_it_refused(tested: Path) -> None:
    refused = "gone@startmail.example"
    server = RecordingServer(reject_rcpt={refused: "550 5.1.1 User unknown"}).start()
    try:
        point_at(tested, server.port)
        args = ("send", UPDATE, "--test-to", QA, "--test-to", refused, "--force")
        result = invoke(tested, *args, "--variant", "ru", env=SECRET_ENV)
    finally:
        server.stop()
    assert result.exit_code == 3, result.output
    [message] = server.messages
    assert message.rcpt_tos == [QA] and str(message.message["Subject"]).startswith("[TEST] ")
    assert f"failed ru to {refused}: 550 " in result.stdout
    assert outbox_messages(tested) == []


def test_test_to_goes_on_past_the_relays_limit_per_session(tested: Path) -> None:
    """A relay that takes three messages a session answers the fourth "452 4.5.3": the
    connection opens the next session, and the test send goes on in it (it reported
    the fourth variant failed and exited 4)."""
    server = RecordingServer(session_limit=3).start()
    try:
        point_at(tested, server.port)
        result = invoke(tested, "send", UPDATE, "--test-to", QA, env=SECRET_ENV)
    finally:
        server.stop()
    assert result.exit_code == 0, result.output
    assert len(server.messages) == len(VARIANTS) and server.session_limit_replies == 1
    assert "failed" not in result.stdout


class _Prepared:
    def __init__(self, config: Path) -> None:
        self.config = load_config(config)
        self.entry = find_entry(self.config.paths.updates, UPDATE)
        regions = load_regions(self.config.paths.regions)
        self.renderer = Renderer(self.config.paths.templates, regions, "StartMail")
        self.factory = MessageFactory(self.config, self.entry, self.renderer, Keyring(b"t" * 32))


def prepared(config: Path) -> _Prepared:
    """What ``chosen_variants`` reads of a prepared run, without rendering anything."""
    return _Prepared(config)
