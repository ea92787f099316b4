"""``send ID --test-to ADDRESS``: every variant of an entry (or the one ``--variant``
names) to a few test addresses, through the configured transport, before the real send.

Each message is the variant as a subscriber of it gets it (the made-up greeting name of
the previews), its subject starting "[TEST] ", its Message-ID its own (a test never
shares one with the real message, which a mail client would then hide). Nothing is
recorded in the ledger and no subscriber list is read. An address not in the config's
``test_recipients`` is refused unless ``--force``, so a typo cannot mail a subscriber.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from email_validator import EmailNotValidError
from rich.console import Console

from statusmail.content.message import MessageFactory
from statusmail.content.render import Renderer
from statusmail.content.variants import PROBE_NAMES, VariantKey
from statusmail.delivery.transport import SessionEnded, Transport
from statusmail.domain import Entry, ExitCode, Recipient, counted
from statusmail.errors import DeliveryError, InputError, Problem
from statusmail.project.config import Config
from statusmail.project.locales import FALLBACK_LOCALE
from statusmail.project.subscriber_rows import address_key, check_address

TEST_PREFIX = "[TEST] "


@dataclass(frozen=True)
class Request:
    addresses: tuple[str, ...]
    variant: str | None = None  # a variant's label (ru-RU, en): only that one
    force: bool = False  # addresses not in test_recipients too


class Prepared(Protocol):
    """What a prepared run has that a test send needs."""

    @property
    def config(self) -> Config: ...

    @property
    def entry(self) -> Entry: ...

    @property
    def renderer(self) -> Renderer: ...

    @property
    def factory(self) -> MessageFactory: ...


def refuse_unlisted(config: Config, request: Request) -> None:
    """Raise ``InputError`` for each address that is not a test recipient (unless
    ``force``) or not an address at all: said before anything is read or connected."""
    problems = []
    line = config.lines.get("test_recipients")
    for address in request.addresses:
        try:
            check_address(address)
        except EmailNotValidError as exc:
            problems.append(Problem(config.path, None, f"--test-to {address!r}: {exc}"))
            continue
        if not request.force and address_key(address) not in config.test_recipients:
            listed = ", ".join(sorted(config.test_recipients)) or "none"
            problems.append(
                Problem(
                    config.path,
                    line,
                    f"--test-to {address}: not one of test_recipients ({listed}); add it "
                    "there, or pass --force if this address is meant",
                )
            )
    if problems:
        raise InputError(problems)


def chosen_variants(prepared: Prepared, request: Request) -> list[VariantKey]:
    keys = prepared.renderer.variant_keys(prepared.entry)
    if request.variant is None:
        # the entry's own footer per variant; a topic's own footer (of a several-topic
        # entry) only when --variant names it
        return [key for key in keys if key.topics is None]
    chosen = [key for key in keys if key.label == request.variant]
    if not chosen:
        entry = prepared.entry
        labels = ", ".join(key.label for key in keys)
        raise InputError(
            [
                Problem(
                    entry.where,
                    None,
                    f"--variant {request.variant}: {entry.id} has no such variant "
                    f"(it has {labels})",
                )
            ]
        )
    return chosen


def recipient_for(address: str, key: VariantKey) -> Recipient:
    """``address`` as a subscriber who gets variant ``key``."""
    email, ascii_email = check_address(address)
    name = PROBE_NAMES.get(key.locale, PROBE_NAMES[FALLBACK_LOCALE]) if key.named else ""
    return Recipient(
        address=address_key(email),
        email=email,
        ascii_email=ascii_email,
        name=name,
        locale=key.locale,
        region=key.region,
        topics=key.topics,
    )


@dataclass
class Sent:
    delivered: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, str, DeliveryError]] = dataclasses.field(default_factory=list)


async def deliver(
    prepared: Prepared, transport: Transport, keys: Sequence[VariantKey], request: Request
) -> Sent:
    """One message per variant and address, over one connection. Raises
    ``ConnectError`` when it cannot connect (nothing was sent)."""
    entry, renderer = prepared.entry, prepared.renderer.marked(TEST_PREFIX)
    # Each variant's its own id, so that no two messages share a Message-ID (a mail client
    # would show one): not the variants', not the real message's, not the last test's.
    stamp = time.time_ns() // 1_000_000
    factories = {
        key: MessageFactory(
            prepared.config,
            dataclasses.replace(entry, id=f"{entry.id}.test{stamp}-{key.label}"),
            renderer,
            prepared.factory.keys,
        )
        for key in keys
    }
    sent = Sent()
    connection = await transport.connect()
    try:
        for address in request.addresses:
            for key, factory in factories.items():
                built = factory.build(recipient_for(address, key), eight_bit=connection.eight_bit)
                try:
                    try:
                        await connection.send(built.envelope)
                    except SessionEnded:  # the relay's per-session limit: the connection
                        await connection.send(built.envelope)  # opened the next session
                except DeliveryError as exc:
                    sent.failed.append((key.label, address, exc))
                else:
                    sent.delivered.append((key.label, address))
    finally:
        await connection.close()
    return sent


def report(prepared: Prepared, sent: Sent, target: str, console: Console) -> ExitCode:
    """Say what went where; exit 0, 3 (refused for good) or 4 (a transient failure)."""
    for label, address in sent.delivered:
        console.print(f"sent {label} to {address}", markup=False, highlight=False)
    for label, address, exc in sent.failed:
        console.print(f"failed {label} to {address}: {exc}", markup=False, highlight=False)
    n = len(sent.delivered)
    console.print(
        f"Test send of {prepared.entry.id}: {counted(n, 'message')} through "
        f"{target}, subject starting {TEST_PREFIX.strip()}; nothing recorded in the ledger.",
        markup=False,
        highlight=False,
    )
    if any(exc.transient for _, _, exc in sent.failed):
        return ExitCode.STOPPED
    return ExitCode.FAILED if sent.failed else ExitCode.OK
