"""Properties of subscriber-file reading, over files written the way tools write them.

- Rows written by Python's ``csv.writer`` (any quoting, ``,`` or ``;``, LF or CRLF, with
  or without a BOM, any column order) read back to the same subscribers.
- A quoted cell holding a line break makes the file fatal at the line where its row
  starts, and only the rows before it are read.
- One ``"`` inserted anywhere into such a file always makes it fatal.
- Arbitrary bytes, as CSV or YAML, only ever give Subscriber or RowProblem items: no
  exception escapes, at most one fatal problem, and nothing after it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from statusmail.project.subscriber_rows import COLUMNS, RowProblem, Subscriber
from statusmail.project.subscribers import iter_subscribers

# Each example rewrites the same file in the test's tmp_path.
FILES = settings(
    deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=150
)


@dataclass(frozen=True)
class Row:
    email: str
    name: str
    locale: str
    region: str
    topics: tuple[str, ...]
    status: str

    def cells(self) -> dict[str, str]:
        return {
            "email": self.email,
            "name": self.name,
            "locale": self.locale,
            "region": self.region,
            "topics": ";".join(self.topics),
            "status": self.status,
        }


@dataclass(frozen=True)
class Dialect:
    delimiter: str
    quoting: Literal[0, 1, 2, 3]
    lineterminator: str
    bom: bool
    columns: tuple[str, ...]


# Letters, digits and the characters that need quoting; no "@" (a name holding an
# address is a row problem) and no whitespace but single spaces between words.
NAME_CHARS = "abcXYZ019АбвЖжЁёйЙ\"',;.-()&!?"
WORD = st.text(alphabet=NAME_CHARS, min_size=1, max_size=12)
NAMES = st.lists(WORD, max_size=6).map(" ".join)
# The regex names every character it may use: drawn from them alone, without the table
# of every character UTF-8 encodes that Hypothesis builds first otherwise (seconds, on a
# fresh checkout).
LOCAL = st.from_regex(
    r"[a-z0-9]{1,10}(\.[a-z0-9_+-]{1,8}){0,2}",
    fullmatch=True,
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789._+-",
)
DOMAINS = st.sampled_from(["example.org", "mail.example.net", "пример.испытание"])
TOPICS = st.sampled_from(["service-status", "product-news", "новости", "a,b", "two words"])
ROW = st.builds(
    Row,
    email=st.builds(lambda local, domain: f"{local}@{domain}", LOCAL, DOMAINS),
    name=NAMES,
    locale=st.sampled_from(["", "en", "ru", "ru-RU", "ru_RU", "de"]),
    region=st.sampled_from(["", "RU", "by", "Kz", "NL"]),
    topics=st.lists(TOPICS, unique=True, max_size=3).map(tuple),
    status=st.sampled_from(["", "active", "unsubscribed", "bounced", "Bounced"]),
)
# Up to six rows: room for rows before a broken one, the broken one and rows after it
# (twelve took twice as long to generate: 2.1 s of CPU for 150 lists against 0.9).
ROWS = st.lists(ROW, min_size=1, max_size=6, unique_by=lambda row: row.email)
DIALECT = st.builds(
    Dialect,
    delimiter=st.sampled_from([",", ";"]),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]),
    lineterminator=st.sampled_from(["\n", "\r\n"]),
    bom=st.booleans(),
    columns=st.permutations(COLUMNS).map(tuple),
)


def csv_text(rows: list[Row], dialect: Dialect) -> str:
    out = io.StringIO()
    writer = csv.writer(
        out,
        delimiter=dialect.delimiter,
        quoting=dialect.quoting,
        lineterminator=dialect.lineterminator,
    )
    writer.writerow(dialect.columns)
    for row in rows:
        cells = row.cells()
        writer.writerow([cells[column] for column in dialect.columns])
    return out.getvalue()


def write(path: Path, text: str, bom: bool) -> None:
    path.write_text(text, encoding="utf-8-sig" if bom else "utf-8", newline="")


def expected(row: Row, line: int) -> tuple[object, ...]:
    return (
        row.email,
        row.name,
        row.locale,
        row.region.upper() or None,
        frozenset(row.topics),
        row.status.lower() or "active",
        line,
    )


def read_back(path: Path) -> list[Subscriber | RowProblem]:
    return list(iter_subscribers(path))


def assert_well_formed(items: list[Subscriber | RowProblem]) -> None:
    assert all(isinstance(item, Subscriber | RowProblem) for item in items)
    fatal = [i for i, item in enumerate(items) if isinstance(item, RowProblem) and item.fatal]
    assert fatal in ([], [len(items) - 1]), items


@FILES
@given(rows=ROWS, dialect=DIALECT)
def test_rows_written_by_csv_writer_read_back_unchanged(
    tmp_path: Path, rows: list[Row], dialect: Dialect
) -> None:
    path = tmp_path / "list.csv"
    write(path, csv_text(rows, dialect), dialect.bom)
    items = read_back(path)
    assert [
        (s.email, s.name, s.locale, s.region, s.topics, s.status, s.line)
        for s in items
        if isinstance(s, Subscriber)
    ] == [expected(row, index + 2) for index, row in enumerate(rows)], items
    assert len(items) == len(rows)


@FILES
@given(
    rows=ROWS,
    dialect=DIALECT,
    at=st.integers(min_value=0),
    split=st.integers(min_value=0),
    line_break=st.sampled_from(["\n", "\r\n", "\r"]),
)
def test_a_cell_holding_a_line_break_is_fatal_where_its_row_starts(
    tmp_path: Path, rows: list[Row], dialect: Dialect, at: int, split: int, line_break: str
) -> None:
    # csv.writer quotes a cell for a bare CR only if it quotes everything or its line
    # terminator holds one; unquoted, a CR right before the "\n" is just a CRLF line end.
    assume(line_break in dialect.lineterminator or dialect.quoting != csv.QUOTE_MINIMAL)
    at %= len(rows)
    name = rows[at].name
    cut = split % (len(name) + 1)
    broken = Row(**{**rows[at].__dict__, "name": name[:cut] + line_break + name[cut:]})
    path = tmp_path / "list.csv"
    write(path, csv_text([*rows[:at], broken, *rows[at + 1 :]], dialect), dialect.bom)
    items = read_back(path)
    assert_well_formed(items)
    problem = items[-1]
    assert isinstance(problem, RowProblem) and problem.fatal, items
    assert problem.line == at + 2
    assert problem.message.startswith("unbalanced quote: the quoted 'name' field starts")
    assert [s.email for s in items if isinstance(s, Subscriber)] == [r.email for r in rows[:at]]


@FILES
@given(rows=ROWS, dialect=DIALECT, position=st.integers(min_value=0))
def test_one_quote_inserted_anywhere_is_always_fatal(
    tmp_path: Path, rows: list[Row], dialect: Dialect, position: int
) -> None:
    text = csv_text(rows, dialect)
    position %= len(text) + 1
    path = tmp_path / "list.csv"
    write(path, text[:position] + '"' + text[position:], dialect.bom)
    items = read_back(path)
    assert_well_formed(items)
    problem = items[-1]
    assert isinstance(problem, RowProblem) and problem.fatal, (position, items)


# Pieces that make the readers' interesting paths likely: delimiters, quotes, line ends,
# a header, addresses, bytes that are not UTF-8, YAML punctuation.
FRAGMENTS = st.sampled_from(
    [
        b",",
        b";",
        b'"',
        b'""',
        b"\n",
        b"\r\n",
        b"\r",
        b" ",
        b"\x00",
        b"\xef\xbb\xbf",
        b"email,name,locale,region,topics,status\n",
        b"email;name\n",
        b"a@example.org",
        b"\xd0\x90\xd0\xbd",
        b"\xc0\xed\xed\xe0",
        b"\xff\xfe",
        b"\xc3",
        b"- ",
        b"email: ",
        b"name: ",
        b": ",
        b"---\n",
        b"...\n",
        b"[",
        b"]",
        b"{",
        b"}",
        b"&a ",
        b"*a",
        b"!!str ",
        b"#",
    ]
)
ANY_BYTES = st.one_of(st.binary(max_size=400), st.lists(FRAGMENTS, max_size=60).map(b"".join))


@FILES
@given(data=ANY_BYTES, suffix=st.sampled_from([".csv", ".yaml"]))
def test_arbitrary_bytes_only_give_subscribers_or_problems(
    tmp_path: Path, data: bytes, suffix: str
) -> None:
    path = tmp_path / f"list{suffix}"
    path.write_bytes(data)
    items = read_back(path)
    assert_well_formed(items)
    for item in items:
        assert item.path == path
        if isinstance(item, RowProblem):
            assert item.message
