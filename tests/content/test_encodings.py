"""Each part at its real size (issue 14).

A part goes out as ``8bit`` on a connection that takes it (a relay offering 8BITMIME,
the Maildir outbox), else as the smaller of quoted-printable and base64. Here: every
encoding parses back to the rendered text and is byte for byte what encoding the whole
part from scratch gives; every message is wire-ready by construction, once, for every
encoding; DKIM verifies for each; a relay without 8BITMIME never gets an 8-bit body,
not even after a reconnect; the sample's Russian messages stay within 1.4x their text.
"""

from __future__ import annotations

import base64
import email.header
import email.policy
import email.utils
import json
import re
from collections.abc import Iterator
from email import message_from_bytes
from email.message import EmailMessage
from pathlib import Path

import dkim
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from conftest import SECRET, invoke, outbox_messages
from delivery_helpers import add_subscribers, point_at, send
from smtp_server import RecordingServer
from statusmail.content.message import Built, MessageFactory
from statusmail.content.parts import (
    MAX_LINE,
    _b64,
    _Base64,
    _canonical,
    _eight_bit_chunks,
    _encode_with_slots,
    _fill,
    _fill_8bit,
    _lf,
    _qp,
)
from statusmail.content.parts import Part as _Part
from statusmail.content.render import (
    NAME_SLOT,
    PREFERENCES_SLOT,
    URL_SLOT,
    Renderer,
)
from statusmail.content.variants import VariantKey, probe_recipient
from statusmail.delivery.pipelining import wire_ready
from statusmail.domain import Recipient
from statusmail.project.config import load_config
from statusmail.project.entries import find_entry
from statusmail.project.regions import load_regions
from statusmail.project.selection import select
from statusmail.project.subscriber_rows import RowProblem
from statusmail.project.tokens import Keyring

ENTRIES = ("update-2020-04-21", "block-2020-01-23")
HOSTILE_NAMES = [
    "<script>alert(1)</script>",
    'Eve "the" O\'Hacker & Co',
    "Мария <b>Иванова</b>",
    ".Dot",
    "Ann\u00a0Lee",
    "Очень Длинное Имя " * 11,
    "&" * 200,  # 1,000 characters once escaped for HTML: that line cannot go as 8bit
    "😀" * 160,  # 640 octets: the To header's display name is folded into several words
]


def factory_for(config_path: Path, entry_id: str, keys: bytes = b"k" * 32) -> MessageFactory:
    config = load_config(config_path)
    regions = load_regions(config.paths.regions)
    renderer = Renderer(config.paths.templates, regions, config.sender.name)
    return MessageFactory(
        config, find_entry(config.paths.updates, entry_id), renderer, Keyring(keys)
    )


def recipients_of(factory: MessageFactory) -> list[Recipient]:
    """The sample's recipients of the entry, and hostile names in both languages."""
    config = factory.config
    found = [
        r
        for r in select(factory.entry, config.paths.subscribers, config.default_locale_by_region)
        if isinstance(r, Recipient)
    ]
    assert found and not any(isinstance(r, RowProblem) for r in found)
    hostile = []
    for i, name in enumerate(HOSTILE_NAMES):
        for locale in ("en", "ru"):
            # the first with a non-ASCII local part: headers that need SMTPUTF8
            address = f"jürgen{locale}@example.org" if i == 0 else f"h{i}{locale}@example.org"
            ascii_address = None if i == 0 else address
            hostile.append(Recipient(address, address, ascii_address, name, locale, "RU"))
    return found + hostile


def parts_of(data: bytes) -> tuple[EmailMessage, EmailMessage, EmailMessage]:
    parsed = message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    plain, html = parsed.get_body(("plain",)), parsed.get_body(("html",))
    assert isinstance(plain, EmailMessage) and isinstance(html, EmailMessage)
    return parsed, plain, html


def display_name(data: bytes) -> str:
    """The To header's display name decoded as RFC 2047 says: the space between two
    encoded words is dropped (Python's newer header parser keeps it)."""
    raw = message_from_bytes(data, policy=email.policy.compat32)["To"]
    name, _ = email.utils.parseaddr(re.sub(r"\r?\n[ \t]", " ", str(raw)))
    return str(email.header.make_header(email.header.decode_header(name)))


def encoded_body(data: bytes, index: int) -> bytes:
    """The transfer-encoded body of part ``index`` (0: text, 1: HTML), as on the wire."""
    boundary = data.split(b'boundary="', 1)[1].split(b'"', 1)[0]
    part = data.split(b"\r\n--" + boundary + b"\r\n")[index + 1]
    return part.split(b"\r\n\r\n", 1)[1].split(b"\r\n--" + boundary, 1)[0]


def from_scratch(cte: str, text: str) -> bytes:
    """The whole part encoded at once, with nothing cached."""
    if cte == "quoted-printable":
        return _qp(text)
    if cte == "base64":
        return base64.encodebytes(_canonical(text)).replace(b"\n", b"\r\n")
    return _canonical(text)  # 8bit, 7bit


def assertwire_ready(built: Built) -> None:
    """What SMTP would check per send, checked here once: CRLF only, no bare CR or LF,
    no line starting with a dot, none over 998 octets; and the Shape tells the truth."""
    data = built.envelope.data
    assert wire_ready(data)
    assert data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n")
    assert b"\0" not in data
    assert max(len(line) for line in data.split(b"\r\n")) <= MAX_LINE
    shape = built.envelope.shape
    assert shape is not None
    head, body = data.split(b"\r\n\r\n", 1)
    assert shape.eight_bit == (not body.isascii())
    assert shape.ascii_headers == head.isascii()
    assert (built.envelope.seven_bit is not None) == shape.eight_bit


# -- whole messages of the sample -------------------------------------------------------


def test_every_encoding_parses_to_the_rendered_text_and_equals_encoding_from_scratch(
    project: Path,
) -> None:
    seen: set[str] = set()
    for entry_id in ENTRIES:
        factory = factory_for(project, entry_id)
        for recipient in recipients_of(factory):
            texts = []
            for eight_bit in (False, True):
                built = factory.build(recipient, eight_bit=eight_bit)
                rendered = built.rendered
                data = built.envelope.data
                assertwire_ready(built)
                _, plain, html = parts_of(data)
                for index, (part, text) in enumerate(
                    ((plain, rendered.text), (html, rendered.html))
                ):
                    cte = str(part["Content-Transfer-Encoding"])
                    seen.add(cte)
                    assert part.get_content().replace("\r\n", "\n") == text
                    assert encoded_body(data, index) == from_scratch(cte, text)
                    if eight_bit:
                        assert (
                            cte in ("8bit", "7bit")
                            or len(text.encode()) > 998
                            or any(
                                len(line.encode()) > MAX_LINE or line.startswith(".")
                                for line in text.split("\n")
                            )
                        )
                    else:
                        assert cte in ("quoted-printable", "base64")
                if recipient.name:
                    assert display_name(data) == recipient.name
                texts.append((plain.get_content(), html.get_content()))
            assert texts[0] == texts[1]  # the same text, whatever the encoding
    # (the sample's English has no-break spaces and dashes: 8bit too)
    assert {"8bit", "quoted-printable", "base64"} <= seen


def test_russian_parts_are_base64_off_8bitmime_and_english_quoted_printable(
    project: Path,
) -> None:
    factory = factory_for(project, "update-2020-04-21")
    for key in factory.renderer.variant_keys(factory.entry):
        data = factory.build(probe_recipient(key)).envelope.data
        _, plain, html = parts_of(data)
        expected = "base64" if key.locale == "ru" else "quoted-printable"
        assert plain["Content-Transfer-Encoding"] == expected, key
        assert html["Content-Transfer-Encoding"] == expected, key


def test_the_samples_russian_messages_are_at_most_1_4_times_their_text(project: Path) -> None:
    """Over 8BITMIME (and in the Maildir outbox) the whole message, headers included, is
    at most 1.4x the UTF-8 size of its text and HTML. Without 8BITMIME base64 is the
    floor of any 7-bit encoding (4/3, and CRLF every 76 characters): each part is then
    at most 1.4x its text, the headers come on top."""
    checked = 0
    for entry_id in ENTRIES:
        factory = factory_for(project, entry_id)
        for key in factory.renderer.variant_keys(factory.entry):
            if key.locale != "ru":
                continue
            for named in (True, False):
                recipient = probe_recipient(VariantKey(key.locale, key.region, key.access, named))
                built = factory.build(recipient, eight_bit=True)
                rendered = built.rendered
                utf8 = len(_canonical(rendered.text)) + len(_canonical(rendered.html))
                assert len(built.envelope.data) <= 1.4 * utf8, (key, len(built.envelope.data), utf8)
                seven = factory.build(recipient, eight_bit=False).envelope.data
                for index, text in enumerate((rendered.text, rendered.html)):
                    assert len(encoded_body(seven, index)) <= 1.4 * len(_canonical(text))
                checked += 1
    assert checked == 8  # 2 entries x (ru, ru-RU) x (named, not)


# -- parts, one rule at a time -----------------------------------------------------------


def test_an_ascii_part_is_7bit_unless_a_value_is_not() -> None:
    part = _Part("plain", "Hello, " + NAME_SLOT + "\n")
    assert part.encode(slots("Ann", ""), True) == (
        b'Content-Type: text/plain; charset="utf-8"\r\n'
        b"Content-Transfer-Encoding: 7bit\r\n\r\nHello, Ann\r\n",
        False,
    )
    encoded, eight = part.encode(slots("Анна", ""), True)
    assert b"Content-Transfer-Encoding: 8bit" in encoded and eight
    assert part.encode(slots("Анна", ""), False)[0].endswith(b"Hello, =D0=90=D0=BD=D0=BD=D0=B0\r\n")


def test_a_part_with_a_line_over_998_octets_falls_back_to_its_7bit_encoding() -> None:
    long_ascii = _Part("plain", "Hi " + NAME_SLOT + "\n" + "x" * 1200 + "\nend\n")
    encoded, eight = long_ascii.encode(slots("Ann", ""), True)
    assert b"Content-Transfer-Encoding: quoted-printable" in encoded and not eight
    long_cyrillic = _Part("plain", "Привет\n" + "я" * 600 + "\n")  # 1,200 octets
    encoded, eight = long_cyrillic.encode(slots("", ""), True)
    assert b"Content-Transfer-Encoding: base64" in encoded and not eight
    short = _Part("plain", "Привет, " + NAME_SLOT + "\n" + "я" * 499 + "\n")  # 998 octets
    encoded, eight = short.encode(slots("Анна", ""), True)
    assert b"Content-Transfer-Encoding: 8bit" in encoded and eight
    for part in (long_ascii, long_cyrillic, short):
        body = part.encode(slots("Анна", ""), True)[0].split(b"\r\n\r\n", 1)[1]
        assert max(len(line) for line in body.split(b"\r\n")) <= MAX_LINE


def test_a_long_url_or_a_leading_dot_from_a_slot_falls_back_for_that_recipient_only() -> None:
    part = _Part("plain", NAME_SLOT + " wrote\nopen " + URL_SLOT + "\n")
    assert b"8bit" in part.encode(slots("Анна", "https://x.example/u"), True)[0]
    dotted = part.encode(slots(".Анна", "https://x.example/u"), True)[0]
    assert b"8bit" not in dotted and wire_ready(dotted)
    long_url = "https://x.example/" + "u" * 1000
    encoded, eight = part.encode(slots("Анна", long_url), True)
    assert not eight and b"8bit" not in encoded
    assert max(len(line) for line in encoded.split(b"\r\n")) <= MAX_LINE
    assert (
        b"8bit" in part.encode(slots("Анна", "https://x.example/u"), True)[0]
    )  # others still 8bit


def test_static_lines_that_cannot_go_as_8bit() -> None:
    assert _eight_bit_chunks("fine\n.dot\n") is None
    assert _eight_bit_chunks("bare\rcr\n") is None
    assert _eight_bit_chunks("nul\0\n") is None
    assert _eight_bit_chunks(NAME_SLOT + " may start with a dot\n") is not None
    assert _eight_bit_chunks("." + NAME_SLOT + "\n") is None
    assert _qp("a\rb\n") == b"a=0Db\r\n"  # and QP never lets a bare CR through
    assert _qp("a\rb\r\r\nc\r") == b"a=0Db\r\nc=0D"  # a CR before a line end is dropped


def slots(name: str, url: str) -> dict[str, str]:
    """What a recipient's slots hold; the preferences URL is the unsubscribe URL reversed
    (another value of the same alphabet and length)."""
    return {NAME_SLOT: name, URL_SLOT: url, PREFERENCES_SLOT: url[::-1]}


# -- properties: cached == from scratch, for every encoding ---------------------------------

TEXT = st.text(
    st.sampled_from([*"ab .=\n\r\t-", "я", "Ж", "é", "😀", "\u00a0", "<", "&"]), max_size=300
)
VALUE = st.text(st.sampled_from([*"ab .&<>\"'=", "я", "😀", "\u00a0"]), max_size=120)


@st.composite
def sources(draw: st.DrawFn) -> str:
    """Text with name and URL slots anywhere, also at the start, the end, side by side."""
    slot = st.sampled_from([NAME_SLOT, URL_SLOT, PREFERENCES_SLOT])
    pieces = draw(st.lists(st.one_of(TEXT, slot), max_size=8))
    return "".join(pieces)


def filled(source: str, name: str, url: str) -> str:
    for slot, value in slots(name, url).items():
        source = source.replace(slot, value)
    return source


@settings(max_examples=400, deadline=None)
@given(sources(), st.lists(st.tuples(VALUE, VALUE), min_size=1, max_size=6))
def test_base64_with_cached_stretches_is_base64_of_the_whole_part(
    source: str, values: list[tuple[str, str]]
) -> None:
    encoder = _Base64(source)  # one per variant: the cache is shared by its recipients
    for name, url in values:
        whole = _canonical(filled(source, name, url))
        cached = encoder.fill(slots(name, url))
        assert cached == base64.encodebytes(whole).replace(b"\n", b"\r\n") == _b64(whole)
        assert base64.b64decode(cached) == whole


@settings(max_examples=300, deadline=None)
@given(sources(), VALUE, VALUE)
@example(source=f"\r{NAME_SLOT}\n", name="", url="")  # (Hypothesis found it)
def test_quoted_printable_and_8bit_line_by_line_are_the_whole_part(
    source: str, name: str, url: str
) -> None:
    text = filled(source, name, url)
    assert _fill(_encode_with_slots(source), slots(name, url)) == _qp(text)
    chunks = _eight_bit_chunks(source)
    body = None if chunks is None else _fill_8bit(chunks, slots(name, url))
    lines = _lf(text).split("\n")
    fits = all(
        len(line.encode()) <= MAX_LINE and not line.startswith(".") and "\r" not in line
        for line in lines
    )
    # A CR just before a slot ends a line only if the slots are empty: chunks made once
    # for every recipient send that part in 7 bits (parts never hold a CR: Jinja ends
    # lines with LF, and check refuses control characters in what it renders)
    slot = "|".join(re.escape(s) for s in (NAME_SLOT, URL_SLOT, PREFERENCES_SLOT))
    undecided = re.search(f"\r(?:{slot})+", source) is not None
    assert (body is not None) == fits or (undecided and body is None)
    if body is not None:
        assert body == _canonical(text)


@settings(max_examples=200, deadline=None)
@given(sources(), VALUE, VALUE, st.booleans())
def test_every_encoding_of_a_part_decodes_to_its_text(
    source: str, name: str, url: str, eight_bit: bool
) -> None:
    """Through Python's email parser, whichever encoding the part chose."""
    part = _Part("plain", source)
    encoded, _ = part.encode(slots(name, url), eight_bit)
    data = b"MIME-Version: 1.0\r\n" + encoded
    assert wire_ready(data)
    parsed = message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    # (a CR just before a line end is dropped: see message._lf)
    assert parsed.get_content().replace("\r\n", "\n") == _lf(filled(source, name, url))


# -- DKIM ------------------------------------------------------------------------------


def tampered(data: bytes) -> bytes:
    """One letter or digit of the first part's encoded body changed."""
    start = data.index(b"Content-Transfer-Encoding:")
    at = data.index(b"\r\n\r\n", start) + 40
    while not chr(data[at]).isalnum():
        at += 1
    return data[:at] + (b"B" if data[at : at + 1] == b"A" else b"A") + data[at + 1 :]


def test_dkim_verifies_for_every_encoding(signed_project: tuple[Path, bytes]) -> None:
    config_path, record = signed_project

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"status._domainkey.startmail.example."
        return record

    seen: set[str] = set()
    for entry_id in ENTRIES:
        factory = factory_for(config_path, entry_id)
        for key in factory.renderer.variant_keys(factory.entry):
            for eight_bit in (False, True):
                built = factory.build(probe_recipient(key), eight_bit=eight_bit)
                data = built.envelope.data
                assert data.startswith(b"DKIM-Signature:")
                assertwire_ready(built)
                _, plain, html = parts_of(data)
                seen |= {
                    str(plain["Content-Transfer-Encoding"]),
                    str(html["Content-Transfer-Encoding"]),
                }
                assert dkim.verify(data, dnsfunc=dns), (key, eight_bit)
                assert not dkim.verify(tampered(data), dnsfunc=dns), (key, eight_bit)
    assert {"8bit", "quoted-printable", "base64"} <= seen


# -- relays and the outbox ----------------------------------------------------------------


@pytest.fixture
def no_8bitmime() -> Iterator[RecordingServer]:
    with RecordingServer(eightbitmime=False) as running:
        yield running


def only_russian_subscribers(config: Path, count: int) -> None:
    for path in (config.parent / "subscribers").iterdir():
        path.unlink()
    add_subscribers(config, count, locale="ru", region="RU")


@pytest.mark.timeout(60)
def test_a_relay_without_8bitmime_never_gets_an_8bit_body(
    project: Path, no_8bitmime: RecordingServer
) -> None:
    server = no_8bitmime
    point_at(project, server.port)
    code, payload, stderr = send(project)
    assert code == 0, stderr
    messages = server.messages
    assert len(messages) == payload["counts"]["sent"] > 0
    encodings: set[str] = set()
    for message in messages:
        assert message.data.isascii()
        assert not any("8BITMIME" in option.upper() for option in message.mail_options)
        for part in message.message.walk():
            if not part.is_multipart():
                encodings.add(str(part["Content-Transfer-Encoding"]))
    assert encodings == {"base64", "quoted-printable"}
    russian = [m for m in messages if m.message["Content-Language"] == "ru"]
    plain = russian[0].message.get_body(("plain",))
    assert isinstance(plain, EmailMessage) and "Здравствуйте" in plain.get_content()


@pytest.mark.timeout(60)
def test_a_relay_with_8bitmime_gets_russian_at_its_real_size(project: Path) -> None:
    with RecordingServer() as server:  # aiosmtpd offers 8BITMIME
        point_at(project, server.port)
        code, _, stderr = send(project)
        messages = server.messages
    assert code == 0, stderr
    assert messages
    for message in messages:
        declared = any(option.upper() == "BODY=8BITMIME" for option in message.mail_options)
        assert declared == (not message.data.isascii())
        russian = message.message["Content-Language"] == "ru"
        for part in message.message.iter_parts():
            assert part["Content-Transfer-Encoding"] in (("8bit",) if russian else ("7bit", "8bit"))
    assert any(not m.data.isascii() for m in messages)


@pytest.mark.timeout(60)
def test_a_reconnect_to_a_relay_without_8bitmime_gets_the_7bit_build(project: Path) -> None:
    """The first session offers 8BITMIME, the next ones do not: a message built 8-bit
    for the first is sent in its 7-bit build once the connection has reconnected."""
    only_russian_subscribers(project, 6)

    def first_then_no_8bitmime(n: int, envelope: object) -> None:
        if n == 1:
            server.eightbitmime = False
        return None

    with RecordingServer(
        eightbitmime=True, hangup_after=1, data_reply=first_then_no_8bitmime
    ) as server:
        point_at(project, server.port, concurrency=1)
        code, payload, stderr = send(project)
        messages = server.messages
    assert code == 0, stderr
    assert len(messages) == 6 == payload["counts"]["sent"]
    first, *rest = messages
    assert not first.data.isascii() and "BODY=8BITMIME" in first.mail_options
    for message in rest:
        assert message.data.isascii()
        assert not any("8BITMIME" in option.upper() for option in message.mail_options)
    assert server.connections == 6  # one session per message: each reconnect was real


@pytest.mark.timeout(60)
def test_the_maildir_outbox_gets_8bit_parts(project: Path) -> None:
    result = invoke(
        project,
        "send",
        "update-2020-04-21",
        "--yes",
        "--rate",
        "0",
        "--json",
        env={"STATUSMAIL_UNSUBSCRIBE_SECRET": SECRET},
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["counts"]["sent"] > 0
    russian = [m for m in outbox_messages(project) if m["Content-Language"] == "ru"]
    assert russian
    for message in russian:
        for part in message.iter_parts():
            assert part["Content-Transfer-Encoding"] == "8bit"
            assert isinstance(part, EmailMessage) and "StartMail" in part.get_content()
