"""Building the bytes of one recipient's message, cheaply and at its real size: its
headers, its envelope, and its parts put together.

Headers that are the same for a whole variant are folded once; per recipient only
``To``, ``Date``, ``Message-ID``, threading and ``List-Unsubscribe`` are added. The
parts (text, HTML) are encoded as their content and the connection allow (``parts``):
``8bit`` where the connection takes it and every line allows, else the smaller of
quoted-printable and base64; per recipient only what holds a slot is encoded.

A message is built for one connection and signed as it is sent. Whatever the
encoding, it is wire-ready by construction (CRLF only, no line starting with a dot,
none over 998 octets) and says so in its envelope's ``Shape``, so no transport scans it.

The envelope sender is the VERP return path when ``bounces.address`` is set.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import email.utils
import hashlib
import re
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from email.header import Header
from urllib.parse import quote

from markdown_it.common.normalize_url import normalizeLink

from statusmail.content.dkim_signing import DkimSigner
from statusmail.content.parts import BREAKS, SLOT, Part
from statusmail.content.render import (
    GREETING_SLOT,
    NAME_SLOT,
    PREFERENCES_SLOT,
    URL_SLOT,
    Rendered,
    Renderer,
    escape_html,
)
from statusmail.content.variants import VariantKey
from statusmail.domain import Entry, Envelope, Recipient, Shape
from statusmail.project.config import Config
from statusmail.project.regions import Region
from statusmail.project.subscriber_rows import given_name_first
from statusmail.project.tokens import (
    Keyring,
    message_id,
    preferences_token,
    return_path_token,
    unsubscribe_token,
)

# A dry run builds this many recipients of each variant whole (``rehearse``).
REHEARSED_WHOLE = 20


def _header(name: str, value: str) -> bytes:
    """One unstructured header, folded, RFC 2047-encoded when not ASCII, CRLF-terminated.

    ``email.header.Header`` is used rather than the policy folder, which drops the space
    between adjacent encoded words in some Python versions. Lines of at most 76: a
    continuation line is a space and one encoded word, which RFC 2047 keeps to 75 (the
    default 78 let a Russian subject's second word run to 76).
    """
    # Text that reads like an encoded word is encoded itself, so it is shown as written;
    # so is a word too long for any line (998 octets): only encoded words can be split.
    plain = value.isascii() and "=?" not in value and max(map(len, value.split()), default=0) < 900
    charset = "us-ascii" if plain else "utf-8"
    encoded = Header(value, charset, header_name=name, maxlinelen=76).encode(linesep="\r\n")
    return f"{name}: {encoded}\r\n".encode("ascii")


_SPECIALS = re.compile(r'[][\\()<>@,:;".]')


def _display_name(name: str) -> str:
    """As ``email.utils.formataddr`` writes a display name: quoted when it holds specials,
    one RFC 2047 base64 word when it is not ASCII or could be read as one (``=?``).
    One word, longer than RFC 2047's 75 for a long name: readers take it, where the
    email package reads the folding between two words into the name. Names are at most
    200 characters: one word fits a line unless they are mostly 4-octet characters
    (emoji); then the name is cut into words of 100 characters on lines of their own."""
    if name.isascii() and "=?" not in name:
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


def _uri(url: str) -> str:
    """``url`` as a header must carry it (RFC 2369, 8058: a URI): an IDN host in
    punycode and the rest percent-encoded, as markdown-it spells a link (a region's
    mirror on https://стартмейл.рф/ went into List-Unsubscribe as UTF-8)."""
    return url if url.isascii() else normalizeLink(url)


def _mailto(address: str) -> str:
    """``address`` as a mailto URI holds it (RFC 6068): the domain in punycode, a local
    part that is not ASCII percent-encoded as UTF-8."""
    local, at, domain = ascii_domain(address).rpartition("@")
    if local.isascii():
        return f"{local}{at}{domain}"
    return quote(local, safe="!$'*+-.=^_`{|}~") + at + domain


def ascii_domain(address: str) -> str:
    """``address`` with its domain in ASCII (IDNA), the local part as it is."""
    local, at, domain = address.rpartition("@")
    if not at or domain.isascii():
        return address
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError:  # (the config check accepted it: as written, then)
        return address


def _address_header(name: str, display: str, address: str) -> bytes:
    """``To``/``From``: the display name quoted or encoded; the address as given (an
    address with a non-ASCII local part goes out raw, which only SMTPUTF8 allows)."""
    if not display:
        return f"{name}: {address}\r\n".encode()
    shown = _display_name(display)
    # The address on a line of its own when the last line would pass 78 with it: a
    # long name's word and a long address together could pass 998.
    last = len(name) + 2 + len(shown) if "\n" not in shown else len(shown.rsplit("\n", 1)[1])
    fold = "\r\n " if last + 3 + len(address) > 78 else " "
    return f"{name}: {shown}{fold}<{address}>\r\n".encode()


@dataclass(frozen=True, slots=True)
class _Variant:
    head: bytes  # headers common to the variant
    ascii_head: bool
    boundary: bytes
    region: Region | None  # whose link rewrites the unsubscribe URL gets
    mailto: str  # the List-Unsubscribe mailto address as a URI: the region's, else the config's
    rendered: Rendered  # with its slots
    text: Part
    html: Part
    personal: bool  # a part holds a slot: the body differs per recipient


class Built:
    """One recipient's message; ``rendered`` (the decoded parts) is made only if asked.
    ``unsigned``: built with ``signed=False`` and a DKIM key, its data lacks the
    signatures until ``signed`` puts them in; ``shared_body`` then names its body when
    every recipient of its variant has the same (``DkimSigner.body_hash``)."""

    __slots__ = ("_render", "envelope", "shared_body", "unsigned", "variant")

    def __init__(
        self,
        envelope: Envelope,
        variant: VariantKey,
        render: Callable[[], Rendered],
        *,
        unsigned: bool = False,
        shared_body: Hashable | None = None,
    ) -> None:
        self.envelope = envelope
        self.variant = variant
        self._render = render
        self.unsigned = unsigned
        self.shared_body = shared_body

    @property
    def rendered(self) -> Rendered:
        return self._render()

    def signed(self, signature_headers: bytes) -> Built:
        """This message with its ``DKIM-Signature`` headers in front."""
        data = signature_headers + self.envelope.data
        return Built(dataclasses.replace(self.envelope, data=data), self.variant, self._render)


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
        self._keys: dict[tuple[str, str | None, bool, frozenset[str] | None], VariantKey] = {}
        self._date_cache: tuple[int, bytes] = (0, b"")
        self._rehearsed: dict[VariantKey, int] = {}  # recipients per variant, dry run
        # The headers' parts that are the same in every message: ASCII or not. (The
        # unsubscribe mailto is a URI in the header, ASCII whatever the address: see
        # ``_mailto``; each message looks at its own.)
        self._ascii_fixed = config.sender.address.isascii() and (
            self.signer is None or self.signer.ascii
        )

    def unsubscribe_url(self, address_key: str) -> str:
        return self._unsubscribe_url(unsubscribe_token(self.keys, address_key))

    def _unsubscribe_url(self, token: str) -> str:
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
            # "+0000", not "GMT": RFC 5322 4.3 lists the named zones as obsolete syntax,
            # which a message must not be written in
            value = email.utils.format_datetime(dt.datetime.fromtimestamp(now, dt.UTC))
            self._date_cache = (now, _header("Date", value))
        return self._date_cache[1]

    def _key(self, recipient: Recipient) -> VariantKey:
        topics = recipient.topics
        treatment = (recipient.locale, recipient.region, bool(recipient.name), topics)
        key = self._keys.get(treatment)
        if key is None:
            key = self.renderer.variant_key(
                self.entry, recipient.locale, recipient.region, recipient.name, topics
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
            mailto = _mailto((region and region.mailto) or self.config.unsubscribe.mailto)
            boundary = "=_sm_" + hashlib.sha256(f"{self.entry.id}/{key}".encode()).hexdigest()[:24]
            head = [
                _address_header("From", sender.name, sender.address),
                _header("Subject", rendered.subject),
            ]
            if reply_to:  # an address, not text: its domain in ASCII, never encoded
                head.append(_address_header("Reply-To", "", ascii_domain(reply_to)))
            head += [
                # only the phrase encoded: filters look for the <list-id> itself
                f"List-Id: {_display_name(f'{sender.name} status')}"
                f" <{self.config.list_id}>\r\n".encode(),
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
                Part("plain", rendered.text),
                Part("html", rendered.html),
                bool(SLOT.search(rendered.text) or SLOT.search(rendered.html)),
            )
        return self._variants[key]

    def build(self, recipient: Recipient, *, eight_bit: bool = False, signed: bool = True) -> Built:
        """One recipient's message, signed. ``eight_bit``: the connection it goes out on
        takes 8-bit bodies (a relay offering 8BITMIME, the Maildir outbox). ``signed``
        False: not signed yet (``Built.unsigned``): the signer process signs it while
        the event loop goes on (``delivery.signing``)."""
        entry = self.entry
        name = recipient.name
        key = self._key(recipient)
        variant = self._variant(key)
        token = unsubscribe_token(self.keys, recipient.address)  # the one, for both links
        url = self._unsubscribe_url(token)
        preferences = self.preferences_url(recipient.address)
        if variant.region is not None:
            url = variant.region.rewrite(url)  # the List-Unsubscribe target must open there too
            preferences = variant.region.rewrite(preferences)
        boundary = variant.boundary
        mid = message_id(self.keys, entry.id, recipient.address, self.domain)
        mailto = f"mailto:{variant.mailto}?subject=unsubscribe%20" + quote(token)
        header_url = _uri(url)
        to = recipient.ascii_email or recipient.email
        parts = [_address_header("To", name, to), self._date(), f"Message-ID: {mid}\r\n".encode()]
        ascii_headers = (
            self._ascii_fixed
            and variant.ascii_head
            and mailto.isascii()
            and to.isascii()
            and header_url.isascii()
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
        eight_bit = eight_bit and not any(BREAKS.search(v) for v in values.values())
        # The plain-text greeting wraps at 78 columns like every line: a long name's
        # breaks send that part in a 7-bit encoding.
        greeting = variant.rendered.greeting_line(greeted)
        text_values = {**values, GREETING_SLOT: greeting}
        text, text_8bit = variant.text.encode(text_values, eight_bit and "\n" not in greeting)
        escaped = {slot: escape_html(value) for slot, value in values.items()}
        html, html_8bit = variant.html.encode(escaped, eight_bit)
        parts += [
            # Never encoded: receivers parse these URIs; folded after the comma.
            f"List-Unsubscribe: <{header_url}>,\r\n <{mailto}>\r\n".encode(),
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
        # A body without slots is the same for every recipient of the variant (in each
        # encoding): its hash is computed once.
        shared = None if variant.personal else (key, eight_bit)
        if self.signer is not None and signed:
            data = self.signer.sign(data, shared)
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
            envelope,
            key,
            lambda: self.renderer.render(entry, key, greeted, url, preferences),
            unsigned=self.signer is not None and not signed,
            shared_body=shared,
        )

    def rehearse(self, recipient: Recipient) -> VariantKey:
        """What a dry run does for one recipient: the first ``REHEARSED_WHOLE`` of each
        variant are built whole, as a send builds them; for the rest, only what depends
        on the recipient's own content: the variant (rendered once), ``To:`` with the
        name encoded, the greeting's line wrapped and the name escaped for the HTML.
        Skipped is what costs the same whatever the content and cannot fail on it: the
        tokens (seals and HMACs), the VERP return path, the DKIM signature, and the
        parts' encoding (any line, any length, has one: 8bit, quoted-printable, base64)."""
        key = self._key(recipient)
        seen = self._rehearsed.get(key, 0)
        self._rehearsed[key] = seen + 1
        if seen < REHEARSED_WHOLE:
            return self.build(recipient).variant
        variant = self._variant(key)
        name = recipient.name
        _address_header("To", name, recipient.ascii_email or recipient.email)
        if variant.personal and name:
            greeted = self.greeted(name)
            variant.rendered.greeting_line(greeted).encode("utf-8")
            escape_html(greeted).encode("utf-8")
        return key
