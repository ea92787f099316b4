"""DKIM: every sample variant verifies against the matching public key; tampering fails."""

from __future__ import annotations

from pathlib import Path

import dkim
import pytest

from statusmail.config import load_config
from statusmail.entries import find_entry
from statusmail.message import MessageFactory
from statusmail.regions import load_regions
from statusmail.render import Renderer
from statusmail.tokens import Keyring
from statusmail.validation import probe_recipient


def test_every_variant_verifies_and_tampering_fails(signed_project: tuple[Path, bytes]) -> None:
    config_path, record = signed_project

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"status._domainkey.startmail.example."
        return record

    config = load_config(config_path)
    regions = load_regions(config.paths.regions)
    renderer = Renderer(config.paths.templates, regions, config.sender.name)
    checked = 0
    for entry_id in ("block-2020-01-23", "update-2020-04-21"):
        entry = find_entry(config.paths.updates, entry_id)
        factory = MessageFactory(config, entry, renderer, Keyring(b"secret"))
        for key in renderer.variant_keys(entry):
            # 8bit, so the body's "2020" can be found and changed in the bytes
            data = factory.build(probe_recipient(key), eight_bit=True).envelope.data
            assert data.startswith(b"DKIM-Signature:")
            signature = data.split(b"\r\n\r\n", 1)[0].split(b"DKIM-Signature:", 1)[1]
            signed = signature.split(b"h=", 1)[1].split(b";", 1)[0].replace(b"\r\n", b"")
            signed_headers = {h.strip().lower() for h in signed.split(b":")}
            assert {b"list-unsubscribe", b"list-unsubscribe-post", b"from", b"to"} <= signed_headers
            assert dkim.verify(data, dnsfunc=dns)
            # one character of the body changed: the first "2020" in it becomes "2021"
            body_at = data.index(b"\r\n\r\n")
            year_at = data.index(b"2020", body_at)
            tampered = data[:year_at] + b"2021" + data[year_at + 4 :]
            assert tampered != data
            assert not dkim.verify(tampered, dnsfunc=dns)
            checked += 1
    assert checked == 8  # 2 entries × (en, ru) × (with, without the RU access block)


def test_unreadable_key_is_a_clear_error(project: Path) -> None:
    from statusmail.errors import ConfigError

    with project.open("a", encoding="utf-8") as handle:
        handle.write("dkim: {domain: startmail.example, selector: status, key_file: nope.key}\n")
    config = load_config(project)
    entry = find_entry(config.paths.updates, "update-2020-04-21")
    renderer = Renderer(config.paths.templates, {}, config.sender.name)
    with pytest.raises(ConfigError, match=r"nope\.key"):
        MessageFactory(config, entry, renderer, Keyring(b"secret"))
