"""Building the bytes of one recipient's message, cheaply.

Headers that are the same for a whole variant are folded once; per recipient only
``To``, ``Date``, ``Message-ID``, threading and ``List-Unsubscribe`` are added, and the
two parts are quoted-printable encoded with ``binascii`` (C speed).
"""

from __future__ import annotations

import binascii
import email.utils
import hashlib
import time
from dataclasses import dataclass
from email.header import Header
from urllib.parse import quote

from statusmail.config import Config, DkimSettings
from statusmail.entries import Entry
from statusmail.errors import ConfigError, Problem, RenderError
from statusmail.ledger import Recipient
from statusmail.render import Rendered, Renderer, VariantKey
from statusmail.tokens import message_id, unsubscribe_token
from statusmail.transport import Envelope


def _header(name: str, value: str) -> bytes:
    """One unstructured header, folded, RFC 2047-encoded when not ASCII, CRLF-terminated.

    ``email.header.Header`` is used rather than the policy folder, which drops the space
    between adjacent encoded words in some Python versions.
    """
    charset = "us-ascii" if value.isascii() else "utf-8"
    encoded = Header(value, charset, header_name=name).encode(linesep="\r\n")
    return f"{name}: {encoded}\r\n".encode("ascii")


def _address_header(name: str, display: str, address: str) -> bytes:
    """``To``/``From``: the display name quoted or encoded; the address as given (an
    address with a non-ASCII local part goes out raw, which only SMTPUTF8 allows)."""
    value = email.utils.formataddr((display, address), charset="utf-8")
    return f"{name}: {value}\r\n".replace("\n ", "\r\n ").replace("\r\r", "\r").encode()


def _qp(text: str) -> bytes:
    data = binascii.b2a_qp(text.replace("\r\n", "\n").encode("utf-8"), istext=True)
    return data.replace(b"\n", b"\r\n")


@dataclass(frozen=True, slots=True)
class Built:
    envelope: Envelope
    rendered: Rendered
    variant: VariantKey


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

    def __init__(self, config: Config, entry: Entry, renderer: Renderer, secret: bytes) -> None:
        self.signer = DkimSigner(config.dkim) if config.dkim else None
        self.config = config
        self.entry = entry
        self.renderer = renderer
        self.secret = secret
        self.domain = config.sender.address.rpartition("@")[2] or "localhost"
        self._heads: dict[VariantKey, tuple[bytes, bytes]] = {}
        self._date_cache: tuple[int, bytes] = (0, b"")

    def unsubscribe_url(self, address_key: str) -> str:
        token = unsubscribe_token(self.secret, address_key)
        return self.config.unsubscribe.url.replace("{token}", token)

    def _date(self) -> bytes:
        now = int(time.time())
        if self._date_cache[0] != now:
            value = email.utils.formatdate(now, localtime=False, usegmt=True)
            self._date_cache = (now, _header("Date", value))
        return self._date_cache[1]

    def _variant_head(self, key: VariantKey, rendered: Rendered) -> tuple[bytes, bytes]:
        """(headers common to the variant, boundary)."""
        if key not in self._heads:
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
            self._heads[key] = (b"".join(head), boundary.encode())
        return self._heads[key]

    def build(self, recipient: Recipient) -> Built:
        entry = self.entry
        key = self.renderer.variant_key(entry, recipient.locale, recipient.region, recipient.name)
        url = self.unsubscribe_url(recipient.address)
        rendered = self.renderer.render(entry, key, recipient.name, url)
        head, boundary = self._variant_head(key, rendered)
        header_address = recipient.ascii_email or recipient.email
        mid = message_id(self.secret, entry.id, recipient.address, self.domain)
        mailto = f"mailto:{self.config.unsubscribe.mailto}?subject=" + quote(
            f"unsubscribe {url.rsplit('/', 1)[-1]}"
        )
        parts = [
            _address_header("To", recipient.name, header_address),
            self._date(),
            f"Message-ID: {mid}\r\n".encode(),
        ]
        if entry.thread:
            parent = message_id(self.secret, entry.thread, recipient.address, self.domain)
            parts.append(f"In-Reply-To: {parent}\r\nReferences: {parent}\r\n".encode())
        parts += [
            # Never encoded: receivers parse these URIs; folded after the comma.
            f"List-Unsubscribe: <{url}>,\r\n <{mailto}>\r\n".encode(),
            head,
            b"\r\n--",
            boundary,
            b"\r\n",
            b'Content-Type: text/plain; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
            _qp(rendered.text),
            b"\r\n--",
            boundary,
            b"\r\n",
            b'Content-Type: text/html; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
            _qp(rendered.html),
            b"\r\n--",
            boundary,
            b"--\r\n",
        ]
        data = b"".join(parts)
        if self.signer is not None:
            data = self.signer.sign(data)
        envelope = Envelope(
            sender=self.config.sender.address,
            recipient=recipient.email,
            recipient_ascii=recipient.ascii_email,
            data=data,
            message_id=mid,
        )
        return Built(envelope, rendered, key)
