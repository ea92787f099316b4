"""The MIME parts of a message (text, HTML), each encoding prepared once per variant.

A part goes out as ``8bit`` (``7bit`` when ASCII) on a connection that takes 8-bit
bodies, when no line is longer than 998 octets or starts with a dot; otherwise as the
smaller of quoted-printable and base64. Only what holds a slot (the name, the greeting's
line, the unsubscribe and preferences URLs) is encoded per recipient: 8bit and
quoted-printable go line by line, so the lines without a slot are cached; base64 is
cached per stretch between slots and per offset (``_Base64``). Whatever the encoding,
the bytes are CRLF only, with no line starting with a dot and none over 998 octets.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass

from statusmail.content.render import GREETING_SLOT, NAME_SLOT, PREFERENCES_SLOT, URL_SLOT

MAX_LINE = 998  # octets, without the CRLF (RFC 5322 2.1.1)
SLOT = re.compile(
    "(" + "|".join(map(re.escape, (NAME_SLOT, GREETING_SLOT, URL_SLOT, PREFERENCES_SLOT))) + ")"
)
Values = Mapping[str, str]  # slot -> what it holds for one recipient


def _filled(text: str, values: Values) -> str:
    """``text`` with its slots replaced, in one pass (a value is never read for slots)."""
    return SLOT.sub(lambda match: values[match.group()], text)


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
        # LF, and their CRs are escaped; the others as the whole text would have them (a
        # line's soft breaks fall otherwise without its LF: the line-by-line cache relies
        # on each line encoding the same wherever it stands).
        data = b"".join(
            binascii.b2a_qp(line.encode("utf-8"), istext=True)
            if "\r" not in line
            else binascii.b2a_qp(line.removesuffix("\n").encode("utf-8"), istext=True).replace(
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
        if SLOT.search(line):
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


BREAKS = re.compile("[\r\n\0]")


def _fits_8bit(line: str) -> bool:
    """A line (without its line break) that can go out as it is in an 8bit part: at most
    998 octets, no NUL, CR or LF, and no leading dot (SMTP would have to stuff it)."""
    return len(line.encode()) <= MAX_LINE and not line.startswith(".") and not BREAKS.search(line)


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
        if not SLOT.search(body):
            if not _fits_8bit(body):
                return None
            static += (body.encode("utf-8"), end)
            continue
        slot_first = SLOT.match(body) is not None
        if BREAKS.search(SLOT.sub("", body)) or (body.startswith(".") and not slot_first):
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
        pieces = SLOT.split(text)
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


class Part:
    """One part of a variant (text or HTML, with slots), each encoding prepared once.

    On a connection that takes 8-bit bodies the part goes out as ``8bit`` (``7bit`` if
    it is ASCII) when every line allows; otherwise in its 7-bit encoding, the smaller
    of quoted-printable (mostly ASCII) and base64 (mostly not).
    """

    __slots__ = ("_b64", "_eight", "_qp", "_type", "static_ascii")

    def __init__(self, subtype: str, source: str) -> None:
        self._type = f'Content-Type: text/{subtype}; charset="utf-8"\r\n'.encode()
        static = SLOT.sub("", source)
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
