"""A subscriber list's rows: what a row is, what makes a row a subscriber or a
problem (the address, the status, the region, the name), and the limits a file's
lines keep (``project/subscribers.py`` reads the files)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

from statusmail.errors import InputError, Problem
from statusmail.project.fields import NOT_TEXT

STATUSES = ("active", "unsubscribed", "bounced")
COLUMNS = ("email", "name", "locale", "region", "topics", "status")
MAX_LINE_CHARS = 4096  # one cell
MAX_RAW_LINE_CHARS = 65536  # one physical line of a file
MAX_NAME_CHARS = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_REGION = re.compile(r"^[A-Z]{2}$")
NO_SUBSCRIBERS = "no subscribers in this file"
# Something shaped like an address inside a display name: a sign of rows run together.
_WORD = r'[^\s@<>()\[\],;:"]+'
_ADDRESS_IN_TEXT = re.compile(rf"{_WORD}@{_WORD}\.{_WORD}")


@dataclass(frozen=True, slots=True)
class Subscriber:
    email: str  # as normalized by email-validator (IDN domains in Unicode)
    ascii_email: str | None  # domain in punycode; None if the local part is not ASCII
    name: str
    locale: str  # as written; resolved by locales.resolve_locale
    region: str | None
    topics: frozenset[str]
    status: str
    path: Path
    line: int

    @property
    def key(self) -> str:
        return address_key(self.email)


@dataclass(frozen=True, slots=True)
class RowProblem:
    path: Path
    line: int
    message: str
    email: str
    fatal: bool = False  # the file itself is broken: the rows after this one are unknown

    def __post_init__(self) -> None:
        # The address as written is stored (the row's key in the ledger): a NUL, which
        # PostgreSQL's text refuses, stopped every import of the list
        object.__setattr__(self, "email", NOT_TEXT.sub("\ufffd", self.email))

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"

    def refusal(self) -> InputError:
        """A fatal one's refusal of the run, at its file and line: a broken list could
        hide anyone after the break (send, import and the dry run alike)."""
        return InputError([Problem(self.path, self.line or None, self.message)])

    def masked(self) -> str:
        """As ``str``, every value taken from the row masked: for logs and summaries."""
        return f"{self.path}:{self.line}: {mask_row(self.message)}"


_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_DOMAIN_LIKE = re.compile(r"[\w.+-]+@[\w.-]*|\w[\w-]*(?:\.[\w-]+)+")


def mask_row(message: str) -> str:
    """A subscriber row's problem with every value taken from the row masked (a broken
    address too: ``invalid address '***'``); a column's name stays (``'email' field``)."""

    def quoted(match: re.Match[str]) -> str:
        return match[0] if match[0][1:-1] in COLUMNS else f"{match[0][0]}***{match[0][0]}"

    return _DOMAIN_LIKE.sub("***", _QUOTED.sub(quoted, message))


@dataclass
class ReadStats:
    rows: int = 0
    duplicates: int = 0
    invalid: int = 0
    files: list[Path] = field(default_factory=list)


def address_key(address: str) -> str:
    """Addresses are compared case-insensitively, the whole address."""
    return address.strip().lower()


def subscriber_files(folder: Path) -> list[Path]:
    """The list files in ``folder``, not what tools leave beside them: hidden files
    (macOS's ``._main.csv``, which is not CSV and refused the whole import) and office
    suites' lock files (``~$main.csv``), as a shell's ``*.csv`` leaves them out."""
    if folder.is_file():
        return [folder]
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and p.suffix.lower() in (".csv", ".yaml", ".yml")
        and not p.name.startswith((".", "~$"))
    )


def clean_name(raw: str) -> str:
    """A display name can never break a header: no control characters or line breaks."""
    return " ".join(_CONTROL.sub(" ", raw).split())[:MAX_NAME_CHARS]


# One word of a name: letters, with inner hyphens or apostrophes (Mary-Jane, O'Brien), or
# an initial (J.).
_NAME_WORD = re.compile(r"[^\W\d_]+(?:[-'’][^\W\d_]+)*\.?")
# What follows a comma but is no given name: "Grace O'Connor, PhD", "Acme, Inc.".
_NOT_GIVEN_NAMES = frozenset(
    {"jr", "sr", "ii", "iii", "iv", "phd", "md", "dds", "esq", "mba"}
    | {"inc", "ltd", "llc", "plc", "gmbh", "ag", "bv", "nv", "sa", "co", "corp"}
)


def _name_like(part: str) -> bool:
    words = part.split()
    return 0 < len(words) <= 4 and all(
        _NAME_WORD.fullmatch(word) and word.rstrip(".").casefold() not in _NOT_GIVEN_NAMES
        for word in words
    )


def given_name_first(name: str) -> str | None:
    """``name`` with the given name first when it is written "Last, First", as CRMs
    export names: one comma between two name-like parts ("Петрова, Анна" → "Анна
    Петрова"); else None ("Grace O'Connor, PhD", "Smith, J., Dr" stay as written)."""
    if name.count(",") != 1:
        return None
    family, given = (part.strip() for part in name.split(","))
    if not (_name_like(family) and _name_like(given)):
        return None
    return f"{given} {family}"


# The everyday address: a dot-atom of ASCII before the @, plain LDH labels after it, a
# letters-only top-level domain. For these, email-validator's verdict and normalization
# (the domain lower-cased) are known, so the fast path gives the same answer ~30x faster;
# anything else (IDN, xn--, quoted, odd) goes to email-validator itself.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_PLAIN_ADDRESS = re.compile(
    rf"(?P<local>{_ATEXT}(?:\.{_ATEXT})*)@(?P<domain>(?:{_LABEL}\.)+(?P<tld>[a-z]{{1,63}}))"
)
_SPECIAL_USE = frozenset(SPECIAL_USE_DOMAIN_NAMES)


def _plain_address(raw: str) -> str | None:
    """The normalized form of an everyday ASCII address, or None to ask email-validator."""
    local, at, domain = raw.rpartition("@")
    if not at or len(raw) > 254 or len(local) > 64:
        return None
    domain = domain.lower()
    match = _PLAIN_ADDRESS.fullmatch(f"{local}@{domain}")
    if match is None or "--" in domain or match["tld"] in _SPECIAL_USE:
        return None
    return f"{local}@{domain}"


def check_address(raw: str) -> tuple[str, str | None]:
    """(normalized, ascii form or None); raises ``EmailNotValidError``."""
    plain = _plain_address(raw)
    if plain is not None:
        return plain, plain
    valid = validate_email(raw, check_deliverability=False, allow_smtputf8=True)
    return valid.normalized, valid.ascii_email


def row_status(row: dict[str, Any]) -> str:
    """A row's status as written, read as every reader of it reads it (``active`` when
    the cell is empty)."""
    return str(row.get("status") or "active").strip().lower()


def make_subscriber(row: dict[str, Any], path: Path, line: int) -> Subscriber | RowProblem:
    raw_email = str(row.get("email") or "").strip()
    if not raw_email:
        return RowProblem(path, line, "missing email address", raw_email)
    try:
        normalized, ascii_email = check_address(raw_email)
    except EmailNotValidError as exc:
        return RowProblem(path, line, f"invalid address {raw_email!r}: {exc}", raw_email)
    status = row_status(row)
    if status not in STATUSES:
        return RowProblem(
            path, line, f"status {status!r} is not one of {', '.join(STATUSES)}", raw_email
        )
    region = str(row.get("region") or "").strip().upper() or None
    if region is not None and not _REGION.match(region):
        return RowProblem(path, line, f"region {region!r} is not an ISO 3166-1 code", raw_email)
    topics_raw = row.get("topics") or ""
    # A list's items split at semicolons too, as the ledger stores and reads them back:
    # else a dry run (from the files) and a send (from the ledger) count apart.
    items = topics_raw if isinstance(topics_raw, list) else [topics_raw]
    topics = frozenset(t.strip() for item in items for t in str(item).split(";") if t.strip())
    locale = str(row.get("locale") or "").strip()
    for what, value in (("locale", locale), ("topics", "".join(topics))):
        if _CONTROL.search(value):  # (PostgreSQL refuses a NUL; none matches anything)
            return RowProblem(path, line, f"the {what} holds a control character", raw_email)
    name = clean_name(str(row.get("name") or ""))
    if "@" in name and (found := _ADDRESS_IN_TEXT.search(name)):
        return RowProblem(
            path,
            line,
            f"the name holds an email address ({found[0]!r}); a display name cannot "
            "(is another row run into this one?)",
            raw_email,
        )
    return Subscriber(
        email=normalized,
        ascii_email=ascii_email,
        name=name,
        locale=locale,
        region=region,
        topics=topics,
        status=status,
        path=path,
        line=line,
    )


class FileBroken(Exception):
    """A structural error: nothing in the file from ``line`` on can be trusted."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _too_long(number: int) -> FileBroken:
    return FileBroken(number, f"line {number} is over {MAX_RAW_LINE_CHARS} characters")


class _LimitedReader:
    """A ``read(size)`` stream for the YAML parser, refusing a line over the limit."""

    def __init__(self, handle: TextIO) -> None:
        self.handle = handle
        self.run = 0  # characters since the last newline
        self.line = 1

    def read(self, size: int = -1) -> str:
        chunk = self.handle.read(size if size and size > 0 else 65536)
        pieces = chunk.split("\n")
        for index, piece in enumerate(pieces):
            self.run = self.run + len(piece) if index == 0 else len(piece)
            if self.run > MAX_RAW_LINE_CHARS:
                raise _too_long(self.line)
            if index < len(pieces) - 1:
                self.line += 1
        return chunk


# What makes a row of a file a subscriber, a problem, or (the structure-only pass) nothing.
Build = Callable[[dict[str, Any], Path, int], "Subscriber | RowProblem | None"]


# -- what a broken file's bytes are --------------------------------------------------

_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of a bad byte
_NOT_YAML = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_LETTERS = re.compile(r"[^\W\d_]+")


def _pieces(handle: TextIO) -> Iterator[tuple[int, str]]:
    """(line number, text) in bounded pieces; a long line comes in several."""
    number = 1
    while piece := handle.readline(MAX_RAW_LINE_CHARS):
        yield number, piece
        if piece.endswith(("\n", "\r")):
            number += 1


def _bad_utf8(path: Path) -> tuple[int, str]:
    """Where the file stops being UTF-8, and what it may be instead."""
    offset = 0
    try:
        with path.open(encoding="utf-8", errors="surrogateescape", newline="") as handle:
            for number, piece in _pieces(handle):
                raw = piece.encode("utf-8", "surrogateescape")
                found = _ESCAPED_BYTE.search(piece)
                if found is None:
                    offset += len(raw)
                    continue
                column = len(piece[: found.start()].encode("utf-8", "surrogateescape"))
                return number, (
                    f"not valid UTF-8 at byte offset {offset + column} "
                    f"(0x{raw[column]:02x}, byte {column + 1} of this line)"
                    + _encoding_hint(path, offset + column, raw, piece)
                )
    except OSError:
        pass
    return 0, "not valid UTF-8"


def _encoding_hint(path: Path, offset: int, raw: bytes, piece: str) -> str:
    excel = path.suffix.lower() == ".csv"
    save = 'save it as "CSV UTF-8 (Comma delimited)"' if excel else "save it as UTF-8"
    if offset == 0 and raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return f'; the file is UTF-16 (Excel\'s "Unicode Text"): {save}'
    if _reads_as_cyrillic_1251(raw, piece):
        made_by = ', what Excel\'s plain "CSV" writes for Cyrillic' if excel else ""
        return f"; this line reads as Windows-1251 (Cyrillic){made_by}: {save}"
    return f"; if a spreadsheet saved it, {save}" if excel else ""


def _reads_as_cyrillic_1251(raw: bytes, piece: str) -> bool:
    """Mostly bytes that are not UTF-8, making whole Cyrillic words in Windows-1251
    (Latin-1 accents make single Cyrillic letters inside Latin words: ``Renй``)."""
    high = sum(1 for byte in raw if byte >= 0x80)
    if 2 * len(_ESCAPED_BYTE.findall(piece)) < high:
        return False  # mostly valid UTF-8: a stray byte, not a code page
    try:
        text = raw.decode("cp1251")
    except UnicodeDecodeError:
        return False
    words = [w for w in _LETTERS.findall(text) if not w.isascii()]
    cyrillic = [w for w in words if all("\u0400" <= c <= "\u04ff" for c in w)]
    return cyrillic == words and any(len(w) > 1 for w in words)


def _bad_character(path: Path, reason: str) -> tuple[int, str]:
    """The line and code point of the first character YAML does not allow."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            for number, piece in _pieces(handle):
                if found := _NOT_YAML.search(piece):
                    return number, f"invalid YAML: {reason} (U+{ord(found[0]):04X})"
    except (OSError, UnicodeDecodeError):
        pass
    return 0, f"invalid YAML: {reason}"
