"""The dry run's rehearsal of one recipient (``MessageFactory.rehearse``): the first
``REHEARSED_WHOLE`` of each variant are built whole, the rest put together from their
own content only; either way each counts towards the variant a send builds them, and a
variant that cannot be built fails for every one of its recipients, in the sample or not.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from statusmail.content.message import REHEARSED_WHOLE, MessageFactory
from statusmail.content.render import Renderer
from statusmail.domain import Recipient
from statusmail.errors import StatusmailError
from statusmail.project.config import load_config
from statusmail.project.entries import find_entry
from statusmail.project.regions import load_regions
from statusmail.project.selection import select
from statusmail.project.tokens import Keyring

NAMES = ["", "Ann Lee", "Lee, Ann", "Мария <b>Иванова</b>", "&" * 200, "😀" * 160, ".Dot"]


def factory(config_path: Path, entry_id: str = "update-2020-04-21") -> MessageFactory:
    config = load_config(config_path)
    renderer = Renderer(config.paths.templates, load_regions(config.paths.regions), "Status")
    entry = find_entry(config.paths.updates, entry_id)
    return MessageFactory(config, entry, renderer, Keyring(b"k" * 32))


def audience(made: MessageFactory) -> list[Recipient]:
    config = made.config
    found = [
        r
        for r in select(made.entry, config.paths.subscribers, config.default_locale_by_region)
        if isinstance(r, Recipient)
    ]
    for i, name in enumerate(NAMES):
        for locale, region in (("en", "RU"), ("ru", "RU"), ("en", "KZ")):
            address = f"r{i}{locale}{region}@example.org".lower()
            found.append(Recipient(address, address, address, name, locale, region))
    return found


def test_every_recipient_counts_towards_the_variant_a_send_builds(project: Path) -> None:
    rehearsing, building = factory(project), factory(project)
    recipients = audience(rehearsing)
    expected = [building.build(r).variant for r in recipients]
    for _ in range(REHEARSED_WHOLE + 1):  # past every variant's sample built whole
        assert [rehearsing.rehearse(r) for r in recipients] == expected


def test_a_variant_that_cannot_be_built_fails_past_the_sample(project: Path) -> None:
    (project.parent / "templates" / "message.txt.j2").write_text("{{ broken", encoding="utf-8")
    made = factory(project)
    recipient = audience(made)[-1]
    for _ in range(REHEARSED_WHOLE + 2):
        with pytest.raises(StatusmailError):
            made.rehearse(recipient)
