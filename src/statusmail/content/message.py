"""Building the bytes of one recipient's message, cheaply and at its real size.

Headers that are the same for a whole variant are folded once; per recipient only
``To``, ``Date``, ``Message-ID``, threading and ``List-Unsubscribe`` are added.

Each part (text, HTML) is encoded as its content and the connection allow:

- ``8bit`` (``7bit`` when ASCII) on a connection that takes 8-bit bodies (a relay that
  offers 8BITMIME, the Maildir outbox), when no line is longer than 998 octets or
  starts with a dot (which SMTP would have to stuff);
- otherwise the smaller of quoted-printable (mostly ASCII text: English, HTML markup)
  and base64 (mostly not: Russian, ~1.37x instead of QP's ~2.5x).

A message is built for one connection and signed as it is sent. Whatever the
encoding, it is wire-ready by construction (CRLF only, no line starting with a dot,
none over 998 octets) and says so in its envelope's ``Shape``, so no transport scans it.

Every encoding of a variant is prepared once; per recipient only what holds the name
or the unsubscribe URL (the slots) is encoded. 8bit and quoted-printable go line by
line, so the lines without a slot are cached; base64 is cached per stretch between
slots and per offset, see ``_Base64``. The slots are the name, the plain-text
greeting's line (wrapped per recipient), the unsubscribe URL and the preferences URL.

The envelope sender is the VERP return path when ``bounces.address`` is set.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.header import Header
from urllib.parse import quote

from statusmail.content.dkim_signing import DkimSigner
from statusmail.content.render import (
    GREETING_SLOT,
    NAME_SLOT,
    PREFERENCES_SLOT,
    URL_SLOT,
    Rendered,
    Renderer,
    VariantKey,
    escape_html,
)
from statusmail.domain import Entry, Envelope, Recipient, Shape
from statusmail.project.config import Config
from statusmail.project.regions import Region
from statusmail.project.subscribers import given_name_first
from statusmail.project.tokens import (
    Keyring,
    message_id,
    preferences_token,
    return_path_token,
    unsubscribe_token,
)


def _header(name: str, value: str) -> bytes:
    """One unstructured header, folded, RFC 2047-encoded when not ASCII, CRLF-terminated.

    ``email.header.Header`` is used rather than the policy folder, which drops the space
    between adjacent encoded words in some Python versions.
    """
    charset = "us-ascii" if value.isascii() else "utf-8"
    encoded = Header(value, charset, header_name=name).encode(linesep="\r\n")
    return f"{name}: {encoded}\r\n".encode("ascii")


_SPECIALS = re.compile(r'[][\\()<>@,:;".]')


def _display_name(name: str) -> str:
    """As ``email.utils.formataddr`` writes a display name: quoted when it holds specials,
    one RFC 2047 base64 word when it is not ASCII. Names are at most 200 characters: one
    word fits a line unless they are mostly 4-octet characters (emoji); then the name is
    cut into words of 100 characters on lines of their own (adjacent encoded words
    join up without the space between them)."""
    if name.isascii():
        if _SPECIALS.search(name):
            return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return name
    words = [name[i : i + 100] for i in range(0, len(name), 100)]
    if len(name.encode("utf-8")) <= 600:
        words = [name]
    return "\r\n ".join(
        "=?utf-8?b?" + base64.b64encode(word.encode("utf-8")).decode("ascii") + "?="
        for word in words
    )


def _address_header(name: str, display: str, address: str) -> bytes:
    """``To``/``From``: the display name quoted or encoded; the address as given (an
    address with a non-ASCII local part goes out raw, which only SMTPUTF8 allows)."""
    if not display:
        return f"{name}: {address}\r\n".encode()
    return f"{name}: {_display_name(display)} <{address}>\r\n".encode()


MAX_LINE = 998  # octets, without the CRLF (RFC 5322 2.1.1)
_SLOT = re.compile(
    "(" + "|".join(map(re.escape, (NAME_SLOT, GREETING_SLOT, URL_SLOT, PREFERENCES_SLOT))) + ")"
)
Values = Mapping[str, str]  # slot -> what it holds for one recipient


def _filled(text: str, values: Values) -> str:
    """``text`` with its slots replaced, in one pass (a value is never read for slots)."""
    return _SLOT.sub(lambda match: values[match.group()], text)


_B64_GROUP = 57  # input octets per 76-character base64 line


_LINE_END = re.compile("\r*\n")


def _lf(text: str) -> str:
    """``text`` with LF line endings: CR LF, and any CR just before a line end (nothing a
    reader could see), become LF. Applying it twice changes nothing."""
    return _LINE_END.sub("\n", text) if "\r" in text else text


def _qp(text: str) -> bytes:
    """Quoted-printable with CRLF line endings, and a dot that starts a line written as
    ``=2E`` (the same text once decoded), so SMTP never has to dot-stuff the message. A
    bare CR (never a line break in a message) is written ``=0D``.

    Lines are encoded each on its own, so the encoding of a text is that of its lines
    put together (what the per-variant cache relies on)."""
    text = _lf(text)
    if "\r" in text:
        # binascii keeps a bare CR as it is: lines that hold one go alone, without their
        # LF, and their CRs are escaped.
        data = b"".join(
            binascii.b2a_qp(line.removesuffix("\n").encode("utf-8"), istext=True).replace(
                b"\r", b"=0D"
            )
            + (b"\n" if line.endswith("\n") else b"")
            for line in _lines(text)
        )
    else:
        data = binascii.b2a_qp(text.encode("utf-8"), istext=True)
    if data.startswith(b"."):
        data = b"=2E" + data[1:]
    return data.replace(b"\n.", b"\n=2E").replace(b"\n", b"\r\n")


def _canonical(text: str) -> bytes:
    """``text`` as MIME's canonical form of text: UTF-8 with CRLF line endings."""
    return _lf(text).replace("\n", "\r\n").encode("utf-8")


def _b64(data: bytes) -> bytes:
    """What ``base64.encodebytes`` gives (76-character lines), with CRLF line endings."""
    encoded = binascii.b2a_base64(data, newline=False)
    if not encoded:
        return b""
    lines = [encoded[i : i + 76] for i in range(0, len(encoded), 76)]
    return b"\r\n".join(lines) + b"\r\n"


Chunks = tuple[bytes | str, ...]


def _encode_with_slots(text: str) -> Chunks:
    """The quoted-printable encoding of ``text``, except that lines holding a slot stay
    text, to be filled and encoded per recipient (QP encodes each line on its own)."""
    chunks: list[bytes | str] = []
    static: list[str] = []
    for line in _lines(text):
        if _SLOT.search(line):
            if static:
                chunks.append(_qp("".join(static)))
                static = []
            chunks.append(line)
        else:
            static.append(line)
    if static:
        chunks.append(_qp("".join(static)))
    return tuple(chunks)


def _fill(chunks: Chunks, values: Values) -> bytes:
    return b"".join(
        chunk if isinstance(chunk, bytes) else _qp(_filled(chunk, values)) for chunk in chunks
    )


def _lines(text: str) -> list[str]:
    """``text``'s lines, each with its LF (the last one may have none). Only LF ends a
    line: ``str.splitlines`` would also cut at characters that are text in a message."""
    lines = _lf(text).split("\n")
    return [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


_BREAKS = re.compile("[\r\n\0]")


def _fits_8bit(line: str) -> bool:
    """A line (without its line break) that can go out as it is in an 8bit part: at most
    998 octets, no NUL, CR or LF, and no leading dot (SMTP would have to stuff it)."""
    return len(line.encode()) <= MAX_LINE and not line.startswith(".") and not _BREAKS.search(line)


@dataclass(frozen=True, slots=True)
class _SlotLine:
    text: str  # with its slots, without its line break
    end: bytes  # CRLF, or nothing for a last line without one
    slot_first: bool  # a value starts the line (and could start it with a dot)


EightBitChunks = tuple[bytes | _SlotLine, ...]


def _eight_bit_chunks(text: str) -> EightBitChunks | None:
    """``text`` as CRLF-terminated UTF-8 lines, the lines holding a slot kept as text;
    None if a line cannot go out as 8bit whatever the slots hold."""
    chunks: list[bytes | _SlotLine] = []
    static: list[bytes] = []
    for line in _lines(text):
        body, end = (line[:-1], b"\r\n") if line.endswith("\n") else (line, b"")
        if not _SLOT.search(body):
            if not _fits_8bit(body):
                return None
            static += (body.encode("utf-8"), end)
            continue
        slot_first = _SLOT.match(body) is not None
        if _BREAKS.search(_SLOT.sub("", body)) or (body.startswith(".") and not slot_first):
            return None
        if static:
            chunks.append(b"".join(static))
            static = []
        chunks.append(_SlotLine(body, end, slot_first))
    if static:
        chunks.append(b"".join(static))
    return tuple(chunks)


def _fill_8bit(chunks: EightBitChunks, values: Values) -> bytes | None:
    """The 8bit part, or None if a filled line cannot go out as it is (a long name or
    URL, or a name that starts a line with a dot). The values hold no NUL, CR or LF."""
    out: list[bytes] = []
    for chunk in chunks:
        if isinstance(chunk, bytes):
            out.append(chunk)
            continue
        line = _filled(chunk.text, values).encode("utf-8")
        if len(line) > MAX_LINE or (chunk.slot_first and line.startswith(b".")):
            return None
        out += (line, chunk.end)
    return b"".join(out)


class _Base64:
    """Base64 of a part with slots, byte for byte ``_b64`` of the filled part.

    Base64 cuts the whole part into 57-octet groups, one 76-character line each, so a
    slot shifts every line after it. A static stretch after a slot is encoded once for
    each offset (modulo 57) it has been seen to start at; per recipient only the lines
    that hold slot octets are encoded. (A part with a bare CR, which could meet an LF
    across an empty value, is encoded whole each time.)
    """

    __slots__ = ("_cache", "_slots", "_static", "_text")

    def __init__(self, text: str) -> None:
        self._text = _lf(text) if "\r" in _lf(text) else None
        pieces = _SLOT.split(text)
        self._static = [_canonical(piece) for piece in pieces[0::2]]
        self._slots = pieces[1::2]
        self._cache: list[dict[int, bytes]] = [{} for _ in self._static]

    def fill(self, values: Values) -> bytes:
        if self._text is not None:
            return _b64(_canonical(_filled(self._text, values)))
        encoded = {slot: _canonical(value) for slot, value in values.items()}
        out: list[bytes] = []
        pending = b""  # octets not yet encoded; they start on a line boundary
        offset = 0
        last = len(self._static) - 1
        for index, static in enumerate(self._static):
            if index:
                value = encoded[self._slots[index - 1]]
                pending += value
                offset += len(value)
            head = -offset % _B64_GROUP  # the octets that complete the current line
            offset += len(static)
            if index < last and head >= len(static):
                pending += static
                continue
            cached = self._cache[index].get(head)
            if cached is None:
                whole_lines = head + (len(static) - head) // _B64_GROUP * _B64_GROUP
                cached = _b64(static[head : len(static) if index == last else whole_lines])
                self._cache[index][head] = cached
            out.append(_b64(pending + static[:head]))
            out.append(cached)
            rest = 0 if index == last else (len(static) - head) % _B64_GROUP
            pending = static[len(static) - rest :] if rest else b""
        out.append(_b64(pending))
        return b"".join(out)


class _Part:
    """One part of a variant (text or HTML, with slots), each encoding prepared once.

    On a connection that takes 8-bit bodies the part goes out as ``8bit`` (``7bit`` if
    it is ASCII) when every line allows; otherwise in its 7-bit encoding, the smaller
    of quoted-printable (mostly ASCII) and base64 (mostly not).
    """

    __slots__ = ("_b64", "_eight", "_qp", "_type", "static_ascii")

    def __init__(self, subtype: str, source: str) -> None:
        self._type = f'Content-Type: text/{subtype}; charset="utf-8"\r\n'.encode()
        static = _SLOT.sub("", source)
        self.static_ascii = static.isascii()
        smaller_in_base64 = len(_b64(_canonical(static))) < len(_qp(static))
        self._eight = _eight_bit_chunks(source)  # None: a line can never go as 8bit
        self._qp = _encode_with_slots(source) if not smaller_in_base64 else ()
        self._b64 = _Base64(source) if smaller_in_base64 else None

    def encode(self, values: Values, eight_bit: bool) -> tuple[bytes, bool]:
        """The part's headers and body for one recipient, and whether they hold 8-bit
        octets (an ``8bit`` part). ``eight_bit``: the connection takes 8-bit bodies and
        the values hold no NUL, CR or LF."""
        if eight_bit and self._eight is not None:
            body = _fill_8bit(self._eight, values)
            if body is not None:
                ascii_only = self.static_ascii and all(v.isascii() for v in values.values())
                cte = b"7bit" if ascii_only else b"8bit"
                return self._header(cte) + body, not ascii_only
        if self._b64 is not None:
            body = self._b64.fill(values)
            return self._header(b"base64") + body, False
        return self._header(b"quoted-printable") + _fill(self._qp, values), False

    def _header(self, cte: bytes) -> bytes:
        return self._type + b"Content-Transfer-Encoding: " + cte + b"\r\n\r\n"


@dataclass(frozen=True, slots=True)
class _Variant:
    head: bytes  # headers common to the variant
    ascii_head: bool
    boundary: bytes
    region: Region | None  # whose link rewrites the unsubscribe URL gets
    mailto: str  # the List-Unsubscribe mailto address: the region's, else the config's
    rendered: Rendered  # with its slots
    text: _Part
    html: _Part
    personal: bool  # a part holds a slot: the body differs per recipient


class Built:
    """One recipient's message; ``rendered`` (the decoded parts) is made only if asked."""

    __slots__ = ("_render", "envelope", "variant")

    def __init__(
        self, envelope: Envelope, variant: VariantKey, render: Callable[[], Rendered]
    ) -> None:
        self.envelope = envelope
        self.variant = variant
        self._render = render

    @property
    def rendered(self) -> Rendered:
        return self._render()


class MessageFactory:
    """Makes every message of one entry; one instance per run."""

    def __init__(self, config: Config, entry: Entry, renderer: Renderer, keys: Keyring) -> None:
        self.signer = DkimSigner(config.dkim) if config.dkim else None
        self.config = config
        self.entry = entry
        self.renderer = renderer
        self.keys = keys
        self.domain = config.sender.address.rpartition("@")[2] or "localhost"
        self._variants: dict[VariantKey, _Variant] = {}
        self._keys: dict[tuple[str, str | None, bool], VariantKey] = {}
        self._date_cache: tuple[int, bytes] = (0, b"")
        # The headers' parts that are the same in every message: ASCII or not.
        self._ascii_fixed = (
            config.sender.address.isascii()
            and config.unsubscribe.mailto.isascii()
            and (self.signer is None or self.signer.ascii)
        )

    def unsubscribe_url(self, address_key: str) -> str:
        token = unsubscribe_token(self.keys, address_key)
        return self.config.unsubscribe.url.replace("{token}", token)

    def preferences_url(self, address_key: str) -> str:
        token = preferences_token(self.keys, address_key)
        return self.config.preferences_url.replace("{token}", token)

    def greeted(self, name: str) -> str:
        """``name`` as the greeting says it: a "Last, First" name turned round under
        ``name_order: given_first``. ``To:`` keeps it as written."""
        if self.config.name_order == "given_first":
            return given_name_first(name) or name
        return name

    def envelope_sender(self, recipient: Recipient) -> str:
        """The VERP return path naming this entry and recipient (``bounces.address``),
        else ``sender.address``. ``From:`` never changes."""
        bounces = self.config.bounces
        if not bounces.address:
            return self.config.sender.address
        local = bounces.address.rpartition("@")[0]
        token = return_path_token(self.keys, self.entry.id, recipient.address, local, recipient.row)
        return bounces.return_path(token) or self.config.sender.address

    def _date(self) -> bytes:
        now = int(time.time())
        if self._date_cache[0] != now:
            value = email.utils.formatdate(now, localtime=False, usegmt=True)
            self._date_cache = (now, _header("Date", value))
        return self._date_cache[1]

    def _key(self, recipient: Recipient) -> VariantKey:
        treatment = (recipient.locale, recipient.region, bool(recipient.name))
        key = self._keys.get(treatment)
        if key is None:
            key = self.renderer.variant_key(
                self.entry, recipient.locale, recipient.region, recipient.name
            )
            self._keys[treatment] = key
        return key

    def _variant(self, key: VariantKey) -> _Variant:
        """What every recipient of the variant shares, encoded once."""
        if key not in self._variants:
            rendered = self.renderer.variant(self.entry, key)
            sender = self.config.sender
            # A region behind a block names addresses on a domain its readers can reach.
            region = self.renderer.region(key)
            reply_to = (region and region.reply_to) or self.config.reply_to
            mailto = (region and region.mailto) or self.config.unsubscribe.mailto
            boundary = "=_sm_" + hashlib.sha256(f"{self.entry.id}/{key}".encode()).hexdigest()[:24]
            head = [
                _address_header("From", sender.name, sender.address),
                _header("Subject", rendered.subject),
            ]
            if reply_to:
                head.append(_header("Reply-To", reply_to))
            head += [
                _header("List-Id", f"{sender.name} status <{self.config.list_id}>"),
                b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
                b"Auto-Submitted: auto-generated\r\n",
                b"X-Auto-Response-Suppress: All\r\n",
                _header("Content-Language", rendered.locale),
                b"MIME-Version: 1.0\r\n",
                f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n'.encode(),
            ]
            joined = b"".join(head)
            self._variants[key] = _Variant(
                joined,
                joined.isascii(),
                boundary.encode(),
                region,
                mailto,
                rendered,
                _Part("plain", rendered.text),
                _Part("html", rendered.html),
                bool(_SLOT.search(rendered.text) or _SLOT.search(rendered.html)),
            )
        return self._variants[key]

    def build(self, recipient: Recipient, *, eight_bit: bool = False) -> Built:
        """One recipient's message, signed. ``eight_bit``: the connection it goes out on
        takes 8-bit bodies (a relay offering 8BITMIME, the Maildir outbox)."""
        entry = self.entry
        name = recipient.name
        key = self._key(recipient)
        variant = self._variant(key)
        url = self.unsubscribe_url(recipient.address)  # the one token, for both links
        preferences = self.preferences_url(recipient.address)
        if variant.region is not None:
            url = variant.region.rewrite(url)  # the List-Unsubscribe target must open there too
            preferences = variant.region.rewrite(preferences)
        boundary = variant.boundary
        mid = message_id(self.keys, entry.id, recipient.address, self.domain)
        mailto = f"mailto:{variant.mailto}?subject=unsubscribe%20" + quote(url.rsplit("/", 1)[-1])
        to = recipient.ascii_email or recipient.email
        parts = [_address_header("To", name, to), self._date(), f"Message-ID: {mid}\r\n".encode()]
        ascii_headers = (
            self._ascii_fixed
            and variant.ascii_head
            and variant.mailto.isascii()
            and to.isascii()
            and url.isascii()
        )
        if entry.thread:
            # The Message-ID the thread's message really went out with, when the ledger
            # knows it (it may predate a change of secret); else the one it would have.
            parent = recipient.parent_message_id or message_id(
                self.keys, entry.thread, recipient.address, self.domain
            )
            parts.append(f"In-Reply-To: {parent}\r\nReferences: {parent}\r\n".encode())
            ascii_headers = ascii_headers and parent.isascii()
        # (Names and URLs never hold line breaks; if one did, it could not go as 8bit.)
        greeted = self.greeted(name)
        values = {NAME_SLOT: greeted, URL_SLOT: url, PREFERENCES_SLOT: preferences}
        eight_bit = eight_bit and not any(_BREAKS.search(v) for v in values.values())
        # The plain-text greeting wraps at 78 columns like every line: a long name's
        # breaks send that part in a 7-bit encoding.
        greeting = variant.rendered.greeting_line(greeted)
        text_values = {**values, GREETING_SLOT: greeting}
        text, text_8bit = variant.text.encode(text_values, eight_bit and "\n" not in greeting)
        escaped = {slot: escape_html(value) for slot, value in values.items()}
        html, html_8bit = variant.html.encode(escaped, eight_bit)
        parts += [
            # Never encoded: receivers parse these URIs; folded after the comma.
            f"List-Unsubscribe: <{url}>,\r\n <{mailto}>\r\n".encode(),
            variant.head,
            b"\r\n--",
            boundary,
            b"\r\n",
            text,
            b"\r\n--",
            boundary,
            b"\r\n",
            html,
            b"\r\n--",
            boundary,
            b"--\r\n",
        ]
        data = b"".join(parts)
        if self.signer is not None:
            # A body without slots is the same for every recipient of the variant (in
            # each encoding): its hash is computed once.
            data = self.signer.sign(data, None if variant.personal else (key, eight_bit))
        has_8bit = text_8bit or html_8bit
        envelope = Envelope(
            sender=self.envelope_sender(recipient),
            recipient=recipient.email,
            recipient_ascii=recipient.ascii_email,
            data=data,
            message_id=mid,
            shape=Shape(eight_bit=has_8bit, ascii_headers=ascii_headers),
            # Should the connection find, on reconnecting, a relay without 8BITMIME.
            seven_bit=(lambda: self.build(recipient).envelope) if has_8bit else None,
        )
        return Built(
            envelope, key, lambda: self.renderer.render(entry, key, greeted, url, preferences)
        )
