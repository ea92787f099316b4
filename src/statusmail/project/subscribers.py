"""Subscriber lists (CSV or YAML), streamed row by row, validated, de-duplicated.

A file is read whole or refused. A *structural* error -- an unbalanced quote, a row with
the wrong number of fields, bytes that are not UTF-8, a bad header, a line over 64 KiB,
no subscribers at all, a YAML syntax error, a duplicate key in a YAML subscriber, a second
YAML document -- is one fatal ``RowProblem`` at its ``file:line``, and nothing after it in
that file is read. A *row* problem (a bad address, status or region, a display name that
holds an address) skips that row only.

CSV is read as spreadsheets save it: UTF-8 with or without a BOM; LF, CRLF or CR line
ends; ``,`` or ``;`` between fields, told by the header line (Excel writes ``;`` where the
decimal separator is a comma, as in Russia). One physical line is one row: a quoted field
may hold the delimiter and ``""`` but never a line break, so a ``"`` that does not close
on its own line (which would make a CSV reader swallow the rows after it) and a ``"``
inside an unquoted field are structural errors at that line.

Topics are separated by ``;`` in both kinds of file. In a ``;`` file that cell must be
quoted (``"service-status;product-news"``), which is what Excel and LibreOffice write for
any cell holding the delimiter; unquoted, its ``;`` makes too many fields and the file is
refused, rather than taking a second separator that would change a ``,`` file's topics.
Excel's plain "CSV" is the legacy code page (Windows-1251 for Cyrillic): such a file is
refused with the hint to save it as "CSV UTF-8".
"""

from __future__ import annotations

import csv
import re
import sqlite3
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

from statusmail.project.yamlfile import _BaseLoader

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

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


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
    if folder.is_file():
        return [folder]
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (".csv", ".yaml", ".yml")
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


def make_subscriber(row: dict[str, Any], path: Path, line: int) -> Subscriber | RowProblem:
    raw_email = str(row.get("email") or "").strip()
    if not raw_email:
        return RowProblem(path, line, "missing email address", raw_email)
    try:
        normalized, ascii_email = check_address(raw_email)
    except EmailNotValidError as exc:
        return RowProblem(path, line, f"invalid address {raw_email!r}: {exc}", raw_email)
    status = str(row.get("status") or "active").strip().lower()
    if status not in STATUSES:
        return RowProblem(
            path, line, f"status {status!r} is not one of {', '.join(STATUSES)}", raw_email
        )
    region = str(row.get("region") or "").strip().upper() or None
    if region is not None and not _REGION.match(region):
        return RowProblem(path, line, f"region {region!r} is not an ISO 3166-1 code", raw_email)
    topics_raw = row.get("topics") or ""
    if isinstance(topics_raw, list):
        topics = frozenset(str(t).strip() for t in topics_raw if str(t).strip())
    else:
        topics = frozenset(t.strip() for t in str(topics_raw).split(";") if t.strip())
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
        locale=str(row.get("locale") or "").strip(),
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


# -- CSV -----------------------------------------------------------------------------

LOOKAHEAD_LINES = 1000  # how far to look for the quote that would close a runaway field


def _line_shape(delimiter: str) -> re.Pattern[str]:
    """One line of well-formed fields: each either holds no quote at all, or is quoted
    (inner quotes doubled) and closed on this line."""
    d = re.escape(delimiter)
    field = rf'(?:"[^"\r\n]*(?:""[^"\r\n]*)*"|[^"{d}\r\n]*)'
    return re.compile(rf"{field}(?:{d}{field})*(?:\r\n?|\n)?")


_SHAPES = {delimiter: _line_shape(delimiter) for delimiter in ",;"}


Build = Callable[[dict[str, Any], Path, int], "Subscriber | RowProblem | None"]


def _read_csv(path: Path, build: Build = make_subscriber) -> Iterator[Subscriber | RowProblem]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        number, first = _header_line(handle)
        delimiter, columns = _header(first, number)
        reader = csv.reader(
            _csv_lines(handle, number, delimiter, columns), delimiter=delimiter, strict=True
        )
        width, rows = len(columns), 0
        for values in reader:
            line = number + reader.line_num
            if not "".join(values).strip():  # a blank line, or only empty cells
                continue
            if len(values) != width:
                raise FileBroken(line, _width_problem(columns, len(values), delimiter))
            rows += 1
            if max(map(len, values)) > MAX_LINE_CHARS:
                yield RowProblem(path, line, f"a cell is over {MAX_LINE_CHARS} characters", "")
                continue
            item = build(dict(zip(columns, values, strict=True)), path, line)
            if item is not None:
                yield item
        if not rows:
            raise FileBroken(number, f"{NO_SUBSCRIBERS}: it has only the header row")


def _header_line(handle: TextIO) -> tuple[int, str]:
    """The first line that is not blank, and its number."""
    number = 0
    while line := handle.readline(MAX_RAW_LINE_CHARS + 1):
        number += 1
        if len(line) > MAX_RAW_LINE_CHARS:
            raise _too_long(number)
        if line.strip():
            return number, line
    raise FileBroken(1, f"{NO_SUBSCRIBERS}: it is empty")


def _header(line: str, number: int) -> tuple[str, list[str]]:
    """The delimiter (``,`` or else ``;``, whichever names known columns) and the columns."""
    for delimiter in ",;":
        if '"' in line and _SHAPES[delimiter].fullmatch(line) is None:
            continue
        columns = [h.strip().lower() for h in next(csv.reader([line], delimiter=delimiter))]
        if "email" in columns and all(c in COLUMNS for c in columns):
            break
    else:
        if '"' in line and _SHAPES[","].fullmatch(line) is None:
            raise FileBroken(number, _quote_problem(line, number, ",", (), None))
        got = ",".join(h.strip().lower() for h in next(csv.reader([line])))
        raise FileBroken(number, f"header must name the columns {','.join(COLUMNS)}; got {got}")
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise FileBroken(number, f"the header names the column {twice[0]!r} twice")
    return delimiter, columns


def _csv_lines(
    handle: TextIO, number: int, delimiter: str, columns: Sequence[str]
) -> Iterator[str]:
    """The lines after the header line; a line too long or with misplaced quotes ends
    the file there, so a CSV reader never runs a field on into the next line."""
    shape = _SHAPES[delimiter]
    while line := handle.readline(MAX_RAW_LINE_CHARS + 1):
        number += 1
        if len(line) > MAX_RAW_LINE_CHARS:
            raise _too_long(number)
        if '"' in line and shape.fullmatch(line) is None:
            raise FileBroken(number, _quote_problem(line, number, delimiter, columns, handle))
        yield line


def _field_name(columns: Sequence[str], index: int) -> str:
    return f"{columns[index]!r} field" if index < len(columns) else f"field {index + 1}"


def _quote_problem(
    line: str, number: int, delimiter: str, columns: Sequence[str], rest: TextIO | None
) -> str:
    """What is wrong with the quotes on ``line``, in words (only for a line that is wrong)."""
    text = line.rstrip("\r\n")
    start, index = 0, 0
    while start <= len(text):
        name = _field_name(columns, index)
        if text.startswith('"', start):
            close = start + 1
            while (close := text.find('"', close)) >= 0 and text.startswith('"', close + 1):
                close += 2
            if close < 0:
                return (
                    f"unbalanced quote: the quoted {name} starts on this line but does not "
                    "end on it (a cell cannot hold a line break)" + _runs_on(number, rest)
                )
            start = close + 1
            if start < len(text) and text[start] != delimiter:
                return (
                    f"the quoted {name} has text after its closing quote; inside a quoted "
                    'field a quote is written twice: "Bob ""Bobby"" Jones"'
                )
        else:
            end = text.find(delimiter, start)
            end = len(text) if end < 0 else end
            if '"' in text[start:end]:
                return (
                    f"a quote inside the unquoted {name}; put the cell in quotes and write "
                    'each quote in it twice: "Bob ""Bobby"" Jones"'
                )
            start = end
        start += 1
        index += 1
    return "misplaced quote"


def _runs_on(number: int, rest: TextIO | None) -> str:
    """Where a CSV reader would close the field left open on line ``number``: the first
    later quote that is not doubled. Reading ahead only serves this message."""
    if rest is None:
        return ""
    try:
        for later in range(number + 1, number + 1 + LOOKAHEAD_LINES):
            text = rest.readline(MAX_RAW_LINE_CHARS + 1)
            if not text:
                return "; no later quote closes it, so read as CSV it takes the rest of the file"
            at = 0
            while (at := text.find('"', at)) >= 0 and text.startswith('"', at + 1):
                at += 2
            if at >= 0:
                between = {0: "", 1: f", swallowing line {number + 1}"}.get(
                    later - number - 1, f", swallowing lines {number + 1}-{later - 1}"
                )
                return f"; read as CSV it runs on to line {later}{between}"
    except (OSError, UnicodeDecodeError):
        return ""
    return f"; it is still open {LOOKAHEAD_LINES} lines later"


def _width_problem(columns: Sequence[str], found: int, delimiter: str) -> str:
    message = f"expected {len(columns)} fields ({delimiter.join(columns)}), found {found}"
    if found < len(columns):
        return message + "; a row needs a cell for each column, even an empty one"
    several = ' (several topics too: "a;b")' if delimiter == ";" else ""
    return message + f'; a cell holding "{delimiter}" must be in quotes{several}'


# -- YAML ----------------------------------------------------------------------------


def _read_yaml(path: Path, build: Build = make_subscriber) -> Iterator[Subscriber | RowProblem]:
    """Stream a YAML list of flat mappings by parse events, never building the whole list."""
    with path.open(encoding="utf-8-sig") as handle:
        events = yaml.parse(_LimitedReader(handle), Loader=_BaseLoader)
        try:
            yield from _yaml_subscribers(path, events, build)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else 0
            raise FileBroken(line, f"invalid YAML: {exc.problem}") from exc
        except yaml.reader.ReaderError as exc:
            raise FileBroken(*_bad_character(path, exc.reason)) from exc
        except yaml.YAMLError as exc:
            raise FileBroken(0, f"invalid YAML: {exc}") from exc


def _yaml_subscribers(
    path: Path, events: Iterator[yaml.Event], build: Build
) -> Iterator[Subscriber | RowProblem]:
    for event in events:
        if isinstance(event, yaml.SequenceStartEvent):
            start = _line(event)
            break
        if isinstance(event, yaml.ScalarEvent) and _is_null(event):
            raise FileBroken(_line(event), f"{NO_SUBSCRIBERS}: the document is empty")
        if isinstance(event, yaml.NodeEvent):
            raise FileBroken(_line(event), "expected a list of subscribers")
    else:
        raise FileBroken(1, f"{NO_SUBSCRIBERS}: it is empty")
    count = 0
    for event in events:
        if isinstance(event, yaml.SequenceEndEvent):
            break
        count += 1
        line = _line(event)
        if not isinstance(event, yaml.MappingStartEvent):
            yield RowProblem(path, line, "each subscriber must be a mapping", "")
            _skip_node(event, events)
            continue
        row, bad = _read_flat_mapping(events)
        if bad:
            yield RowProblem(path, line, bad, str(row.get("email", "")))
        elif (item := build(row, path, line)) is not None:
            yield item
    if not count:
        raise FileBroken(start, f"{NO_SUBSCRIBERS}: the list is empty")
    for event in events:
        if isinstance(event, yaml.DocumentStartEvent):
            raise FileBroken(
                _line(event),
                "a second YAML document starts here; a subscriber file holds one list "
                '(remove the "---" or move these subscribers into the first list)',
            )


def _is_null(event: yaml.ScalarEvent) -> bool:
    plain = event.implicit[0] and event.tag is None
    return bool(plain) and event.value in ("", "~", "null", "Null", "NULL")


def _line(event: yaml.Event) -> int:
    mark = event.start_mark
    return mark.line + 1 if mark is not None else 0


def _skip_node(first: yaml.Event, events: Iterator[yaml.Event]) -> None:
    depth = 1 if isinstance(first, yaml.MappingStartEvent | yaml.SequenceStartEvent) else 0
    while depth:
        event = next(events)
        if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            depth += 1
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            depth -= 1


def _read_flat_mapping(events: Iterator[yaml.Event]) -> tuple[dict[str, Any], str]:
    row: dict[str, Any] = {}
    key_lines: dict[str, int] = {}
    bad = ""
    while True:
        key_event = next(events)
        if isinstance(key_event, yaml.MappingEndEvent):
            return row, bad
        if not isinstance(key_event, yaml.ScalarEvent):
            _skip_node(key_event, events)
            bad = "keys must be plain names"
            continue
        key = key_event.value.strip().lower()
        if key in key_lines:
            raise FileBroken(
                _line(key_event),
                f"duplicate key {key!r} in this subscriber (first on line {key_lines[key]})",
            )
        key_lines[key] = _line(key_event)
        value_event = next(events)
        if isinstance(value_event, yaml.ScalarEvent):
            row[key] = value_event.value
        elif isinstance(value_event, yaml.SequenceStartEvent):
            items: list[str] = []
            for item in events:
                if isinstance(item, yaml.SequenceEndEvent):
                    break
                if isinstance(item, yaml.ScalarEvent):
                    items.append(item.value)
                else:
                    _skip_node(item, events)
                    bad = f"{key!r} must be a list of plain values"
            row[key] = items
        else:
            _skip_node(value_event, events)
            bad = f"{key!r} must be a plain value or a list"
        if key not in COLUMNS:
            bad = f"unknown key {key!r}; expected {', '.join(COLUMNS)}"


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


def read_file(path: Path, build: Build = make_subscriber) -> Iterator[Subscriber | RowProblem]:
    """One file's subscribers and row problems in order; a structural error ends it."""
    try:
        if path.suffix.lower() == ".csv":
            yield from _read_csv(path, build)
        else:
            yield from _read_yaml(path, build)
    except FileBroken as exc:
        yield RowProblem(path, exc.line, exc.message, "", fatal=True)
    except UnicodeDecodeError:
        line, message = _bad_utf8(path)
        yield RowProblem(path, line, message, "", fatal=True)
    except csv.Error as exc:
        yield RowProblem(path, 0, f"invalid CSV: {exc}", "", fatal=True)
    except OSError as exc:
        yield RowProblem(path, 0, f"cannot read: {exc.strerror or exc}", "", fatal=True)


class SeenAddresses:
    """Which addresses a pass has met, exactly, in memory that stays flat however long
    the list: the first ``spill_at`` are kept in a set, the rest in a temporary SQLite
    file (a primary key and a bounded page cache), so a million rows cost the memory of
    a hundred thousand.
    """

    def __init__(self, spill_at: int = 100_000) -> None:
        self.spill_at = spill_at
        self._memory: set[str] = set()
        self._db: sqlite3.Connection | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def add(self, address_key: str) -> bool:
        """Remember ``address_key``; False if it was already there."""
        if self._db is not None:
            cursor = self._db.execute("INSERT OR IGNORE INTO seen VALUES (?)", (address_key,))
            return cursor.rowcount == 1
        if address_key in self._memory:
            return False
        self._memory.add(address_key)
        if len(self._memory) >= self.spill_at:
            self._spill()
        return True

    def _spill(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="statusmail-seen-")
        self._db = sqlite3.connect(Path(self._tmp.name) / "seen.db", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE seen (address TEXT PRIMARY KEY) WITHOUT ROWID")
        self._db.execute("BEGIN")  # one long transaction: nothing here needs to survive
        self._db.executemany("INSERT INTO seen VALUES (?)", ((a,) for a in self._memory))
        self._memory = set()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def iter_subscribers(
    folder: Path, stats: ReadStats | None = None
) -> Iterator[Subscriber | RowProblem]:
    """Every subscriber once (the first spelling wins), and every bad row, in file order."""
    stats = stats if stats is not None else ReadStats()
    if not folder.exists():
        yield RowProblem(folder, 0, "subscribers folder not found", "", fatal=True)
        return
    seen = SeenAddresses()
    try:
        for path in subscriber_files(folder):
            stats.files.append(path)
            for item in read_file(path):
                stats.rows += 1
                if isinstance(item, RowProblem):
                    stats.invalid += 1
                    yield item
                elif seen.add(item.key):
                    yield item
                else:
                    stats.duplicates += 1
    finally:
        seen.close()


def _structure_only(row: dict[str, Any], path: Path, line: int) -> None:
    return None


def _csv_looks_whole(path: Path) -> bool:
    """A fast pass over a CSV file: valid UTF-8, and every line either without quotes
    and with one cell per column, or quoted as ``_csv_lines`` requires. False means
    "look closer" (the full reader then finds the problem and its words)."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            number, first = _header_line(handle)
            delimiter, columns = _header(first, number)
            shape, cells = _SHAPES[delimiter], len(columns) - 1
            rows = 0
            for line in handle:
                if len(line) > MAX_RAW_LINE_CHARS:
                    return False
                if '"' in line:
                    if shape.fullmatch(line) is None:
                        return False
                elif line.count(delimiter) != cells:
                    if line.strip():
                        return False
                    continue
                rows += 1
            return rows > 0
    except (FileBroken, UnicodeDecodeError, OSError):
        return False


def first_broken(folder: Path) -> RowProblem | None:
    """The first structural problem of the lists (a broken file), found without
    validating rows, several times faster than reading them: a run that streams the
    list refuses a broken file before it sends anyone anything."""
    if not folder.exists():
        return RowProblem(folder, 0, "subscribers folder not found", "", fatal=True)
    for path in subscriber_files(folder):
        if path.suffix.lower() == ".csv" and _csv_looks_whole(path):
            continue
        for item in read_file(path, _structure_only):
            if isinstance(item, RowProblem) and item.fatal:
                return item
    return None


def count_rows(folder: Path) -> int:
    """About how many subscriber rows the lists hold, read fast (no parsing): a CSV's
    non-blank lines after the header, a YAML file's top-level ``- `` items. For telling
    that a list shrank before it is read row by row; unreadable files count 0."""
    total = 0
    try:
        files = subscriber_files(folder)
    except OSError:
        return 0
    for path in files:
        csv_file = path.suffix.lower() == ".csv"
        try:
            with path.open("rb") as handle:
                if csv_file:
                    rows = sum(1 for line in handle if line.strip(b" \t,;\r\n")) - 1
                else:
                    rows = sum(1 for line in handle if line[:2] in (b"- ", b"-\n"))
        except OSError:
            continue
        total += max(0, rows)
    return total
