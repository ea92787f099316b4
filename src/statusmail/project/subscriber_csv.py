"""Reading a CSV subscriber list: one physical line is one row; the header tells the
delimiter; a quote that does not close on its line, a field count that is not the
header's and a line too long are structural (see ``project/subscribers.py``)."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

from statusmail.project.subscriber_rows import (
    COLUMNS,
    MAX_LINE_CHARS,
    MAX_RAW_LINE_CHARS,
    NO_SUBSCRIBERS,
    Build,
    FileBroken,
    RowProblem,
    Subscriber,
    _too_long,
    make_subscriber,
)

# -- CSV -----------------------------------------------------------------------------

LOOKAHEAD_LINES = 1000  # how far to look for the quote that would close a runaway field


def _line_shape(delimiter: str) -> re.Pattern[str]:
    """One line of well-formed fields: each either holds no quote at all, or is quoted
    (inner quotes doubled) and closed on this line."""
    d = re.escape(delimiter)
    field = rf'(?:"[^"\r\n]*(?:""[^"\r\n]*)*"|[^"{d}\r\n]*)'
    return re.compile(rf"{field}(?:{d}{field})*(?:\r\n?|\n)?")


_SHAPES = {delimiter: _line_shape(delimiter) for delimiter in ",;"}


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
