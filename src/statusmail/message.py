"""Building the bytes of one recipient's message, cheaply.

Headers that are the same for a whole variant are folded once; per recipient only
``To``, ``Date``, ``Message-ID``, threading and ``List-Unsubscribe`` are added. The two
parts are quoted-printable, which encodes every line on its own: the lines of a variant
that hold no per-recipient slot are encoded once, and per recipient only the few lines
with the name, the unsubscribe URL or the preferences URL are encoded (with
``binascii``, in C). The envelope sender is the VERP return path when
``bounces.address`` is set.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.header import Header
from urllib.parse import quote

from statusmail.config import Config, DkimSettings
from statusmail.domain import Entry, Recipient
from statusmail.errors import ConfigError, Problem, RenderError
from statusmail.render import (
    NAME_SLOT,
    PREFERENCES_SLOT,
    URL_SLOT,
    Rendered,
    Renderer,
    VariantKey,
    escape_html,
)
from statusmail.tokens import (
    Keyring,
    message_id,
    preferences_token,
    return_path_token,
    unsubscribe_token,
)
from statusmail.transport import Envelope


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
    one RFC 2047 base64 word when it is not ASCII (names are at most 200 characters, so
    the line stays far below 998; splitting it would not survive every parser)."""
    if name.isascii():
        if _SPECIALS.search(name):
            return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return name
    return "=?utf-8?b?" + base64.b64encode(name.encode("utf-8")).decode("ascii") + "?="


def _address_header(name: str, display: str, address: str) -> bytes:
    """``To``/``From``: the display name quoted or encoded; the address as given (an
    address with a non-ASCII local part goes out raw, which only SMTPUTF8 allows)."""
    if not display:
        return f"{name}: {address}\r\n".encode()
    return f"{name}: {_display_name(display)} <{address}>\r\n".encode()


def _qp(text: str) -> bytes:
    """Quoted-printable with CRLF line endings, and a dot that starts a line written as
    ``=2E`` (the same text once decoded), so SMTP never has to dot-stuff the message."""
    data = binascii.b2a_qp(text.replace("\r\n", "\n").encode("utf-8"), istext=True)
    if data.startswith(b"."):
        data = b"=2E" + data[1:]
    return data.replace(b"\n.", b"\n=2E").replace(b"\n", b"\r\n")


Chunks = tuple[bytes | str, ...]


def _encode_with_slots(text: str) -> Chunks:
    """The quoted-printable encoding of ``text``, except that lines holding a slot stay
    text, to be filled and encoded per recipient (QP encodes each line on its own)."""
    chunks: list[bytes | str] = []
    static: list[str] = []
    lines = text.replace("\r\n", "\n").split("\n")
    for index, line in enumerate(lines):
        if index < len(lines) - 1:
            line += "\n"
        if NAME_SLOT in line or URL_SLOT in line or PREFERENCES_SLOT in line:
            if static:
                chunks.append(_qp("".join(static)))
                static = []
            chunks.append(line)
        else:
            static.append(line)
    if static:
        chunks.append(_qp("".join(static)))
    return tuple(chunks)


def _fill(chunks: Chunks, name: str, url: str, preferences_url: str) -> bytes:
    return b"".join(
        chunk
        if isinstance(chunk, bytes)
        else _qp(
            chunk.replace(NAME_SLOT, name)
            .replace(URL_SLOT, url)
            .replace(PREFERENCES_SLOT, preferences_url)
        )
        for chunk in chunks
    )


@dataclass(frozen=True, slots=True)
class _Variant:
    head: bytes  # headers common to the variant
    boundary: bytes
    text: Chunks
    html: Chunks


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


DKIM_HEADERS = [
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"in-reply-to",
    b"references",
    b"reply-to",
    b"list-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"content-type",
    b"mime-version",
    b"content-language",
]


class DkimSigner:
    """DKIM signatures (RFC 6376) with dkimpy; List-Unsubscribe(-Post) are signed too."""

    def __init__(self, settings: DkimSettings) -> None:
        try:
            self.key = settings.key_file.read_bytes()
        except OSError as exc:
            raise ConfigError(
                [Problem(settings.key_file, None, f"cannot read the DKIM key: {exc.strerror}")]
            ) from exc
        self.selector = settings.selector.encode()
        self.domain = settings.domain.encode()

    def sign(self, data: bytes) -> bytes:
        import dkim

        try:
            signature: bytes = dkim.sign(
                data,
                self.selector,
                self.domain,
                self.key,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=DKIM_HEADERS,
            )
        except dkim.DKIMException as exc:
            raise RenderError(f"DKIM signing failed: {exc}") from exc
        return signature + data


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
        self._date_cache: tuple[int, bytes] = (0, b"")

    def unsubscribe_url(self, address_key: str) -> str:
        token = unsubscribe_token(self.keys, address_key)
        return self.config.unsubscribe.url.replace("{token}", token)

    def preferences_url(self, address_key: str) -> str:
        token = preferences_token(self.keys, address_key)
        return self.config.preferences_url.replace("{token}", token)

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

    def _variant(self, key: VariantKey) -> _Variant:
        """What every recipient of the variant shares, encoded once."""
        if key not in self._variants:
            rendered = self.renderer.variant(self.entry, key)
            sender = self.config.sender
            boundary = "=_sm_" + hashlib.sha256(f"{self.entry.id}/{key}".encode()).hexdigest()[:24]
            head = [
                _address_header("From", sender.name, sender.address),
                _header("Subject", rendered.subject),
            ]
            if self.config.reply_to:
                head.append(_header("Reply-To", self.config.reply_to))
            head += [
                _header("List-Id", f"{sender.name} status <{self.config.list_id}>"),
                b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
                b"Auto-Submitted: auto-generated\r\n",
                b"X-Auto-Response-Suppress: All\r\n",
                _header("Content-Language", rendered.locale),
                b"MIME-Version: 1.0\r\n",
                f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n'.encode(),
            ]
            self._variants[key] = _Variant(
                b"".join(head),
                boundary.encode(),
                _encode_with_slots(rendered.text),
                _encode_with_slots(rendered.html),
            )
        return self._variants[key]

    def build(self, recipient: Recipient) -> Built:
        entry = self.entry
        name = recipient.name
        key = self.renderer.variant_key(entry, recipient.locale, recipient.region, name)
        url = self.unsubscribe_url(recipient.address)
        preferences = self.preferences_url(recipient.address)
        region = self.renderer.region(key)
        if region is not None:
            url = region.rewrite(url)  # the List-Unsubscribe target must open there too
            preferences = region.rewrite(preferences)
        variant = self._variant(key)
        boundary = variant.boundary
        mid = message_id(self.keys, entry.id, recipient.address, self.domain)
        mailto = f"mailto:{self.config.unsubscribe.mailto}?subject=unsubscribe%20" + quote(
            url.rsplit("/", 1)[-1]
        )
        parts = [
            _address_header("To", name, recipient.ascii_email or recipient.email),
            self._date(),
            f"Message-ID: {mid}\r\n".encode(),
        ]
        if entry.thread:
            # The Message-ID the thread's message really went out with, when the ledger
            # knows it (it may predate a change of secret); else the one it would have.
            parent = recipient.parent_message_id or message_id(
                self.keys, entry.thread, recipient.address, self.domain
            )
            parts.append(f"In-Reply-To: {parent}\r\nReferences: {parent}\r\n".encode())
        parts += [
            # Never encoded: receivers parse these URIs; folded after the comma.
            f"List-Unsubscribe: <{url}>,\r\n <{mailto}>\r\n".encode(),
            variant.head,
            b"\r\n--",
            boundary,
            b"\r\n",
            b'Content-Type: text/plain; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
            _fill(variant.text, name, url, preferences),
            b"\r\n--",
            boundary,
            b"\r\n",
            b'Content-Type: text/html; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
            _fill(variant.html, escape_html(name), escape_html(url), escape_html(preferences)),
            b"\r\n--",
            boundary,
            b"--\r\n",
        ]
        data = b"".join(parts)
        if self.signer is not None:
            data = self.signer.sign(data)
        envelope = Envelope(
            sender=self.envelope_sender(recipient),
            recipient=recipient.email,
            recipient_ascii=recipient.ascii_email,
            data=data,
            message_id=mid,
        )
        return Built(
            envelope, key, lambda: self.renderer.render(entry, key, name, url, preferences)
        )
