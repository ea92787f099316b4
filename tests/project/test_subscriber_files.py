"""Structural errors in subscriber files: a file that is almost right is never half-read.

A structural error (unbalanced quote, wrong number of fields, bytes that are not UTF-8,
no subscribers, a duplicate YAML key, a second YAML document, ...) is one fatal
RowProblem naming ``file:line``, and nothing after it in that file is trusted. Files as
spreadsheets save them (BOM, CRLF, ``;``) are read; row problems stay row problems.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import CSV_HEADER, UPDATE, invoke
from statusmail.project.subscriber_rows import RowProblem, Subscriber
from statusmail.project.subscribers import iter_subscribers


def rows(first: int, end: int) -> str:
    return "".join(f"u{i:04d}@example.org,User {i},en,NL,t,active\n" for i in range(first, end))


def read(path: Path) -> list[Subscriber | RowProblem]:
    return list(iter_subscribers(path))


def only_fatal(items: list[Subscriber | RowProblem]) -> RowProblem:
    """The one fatal problem, which must be the last item: nothing after it is trusted."""
    fatal = [i for i in items if isinstance(i, RowProblem) and i.fatal]
    assert len(fatal) == 1, items
    assert items[-1] is fatal[0], items
    return fatal[0]


def fatal_of(path: Path, text: str) -> RowProblem:
    path.write_text(text, encoding="utf-8", newline="")
    return only_fatal(read(path))


def emails(items: list[Subscriber | RowProblem]) -> list[str]:
    return [i.email for i in items if isinstance(i, Subscriber)]


# -- the three reported bugs ---------------------------------------------------------


def test_unbalanced_quote_mid_file_is_fatal_at_its_line_and_no_later_row_is_read(
    tmp_path: Path,
) -> None:
    path = tmp_path / "list.csv"
    path.write_text(
        CSV_HEADER + rows(0, 1) + 'u0099@example.org,"Carol,en,NL,,active\n' + rows(1, 6),
        encoding="utf-8",
    )
    items = read(path)
    problem = only_fatal(items)
    assert (problem.path, problem.line) == (path, 3)
    assert problem.message == (
        "unbalanced quote: the quoted 'name' field starts on this line but does not end on "
        "it (a cell cannot hold a line break); no later quote closes it, so read as CSV it "
        "takes the rest of the file"
    )
    assert emails(items) == ["u0000@example.org"]


def test_unbalanced_quote_closed_by_a_later_quoted_name_is_still_fatal(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text(
        CSV_HEADER
        + rows(0, 1)
        + 'u0099@example.org,"Carol,en,NL,,active\n'  # line 3
        + rows(1, 3)
        + 'u0098@example.org,Bob "Bobby" Jones,en,NL,t,active\n'  # line 6
        + rows(3, 6),
        encoding="utf-8",
    )
    items = read(path)
    problem = only_fatal(items)
    assert problem.line == 3
    assert problem.message.endswith("; read as CSV it runs on to line 6, swallowing lines 4-5")
    assert emails(items) == ["u0000@example.org"]


def test_invalid_utf8_names_its_line_and_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    good = (CSV_HEADER + rows(0, 2)).encode()
    path.write_bytes(good + b"bad@example.org,Ren\xe9,en,FR,t,active\n" + rows(2, 4).encode())
    problem = only_fatal(read(path))
    assert problem.line == 4
    offset = len(good) + len(b"bad@example.org,Ren")
    assert problem.message == (
        f"not valid UTF-8 at byte offset {offset} (0xe9, byte 20 of this line); "
        'if a spreadsheet saved it, save it as "CSV UTF-8 (Comma delimited)"'
    )


def test_yaml_email_key_twice_is_fatal_at_the_second_key(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text(
        "- email: a@example.org\n"  # 1
        "  name: A\n"  # 2
        "  email: b@example.org\n"  # 3
        "- email: c@example.org\n",  # 4
        encoding="utf-8",
    )
    problem = only_fatal(read(path))
    assert problem.line == 3
    assert problem.message == "duplicate key 'email' in this subscriber (first on line 1)"


@pytest.mark.parametrize(
    "key",
    ["? [region]\n  : RU\n", "? {region: x}\n  : RU\n", "*region : RU\n"],
    ids=["a list", "a mapping", "an alias"],
)
def test_a_key_that_is_not_a_name_skips_its_row_and_reads_on(tmp_path: Path, key: str) -> None:
    """Its value was left for the next key: every later event was read one off, until a
    RuntimeError's traceback (check, import, send, and watch ended by it)."""
    path = tmp_path / "list.yaml"
    path.write_text(
        "- email: a@example.org\n"  # 1
        "  region: &region RU\n"  # 2
        "- email: b@example.org\n"  # 3
        f"  {key}"  # 4
        "- email: c@example.org\n"
        "  name: C\n",
        encoding="utf-8",
    )
    found = read(path)
    problems = [item for item in found if isinstance(item, RowProblem)]
    assert [(p.line, p.message, p.fatal) for p in problems] == [
        (3, "keys must be plain names", False)
    ]
    people = [item for item in found if isinstance(item, Subscriber)]
    assert [(s.email, s.name) for s in people] == [("a@example.org", ""), ("c@example.org", "C")]


def test_second_yaml_document_is_fatal_at_its_start(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text(
        "- email: a@example.org\n"  # 1
        "---\n"  # 2
        "- email: b@example.org\n",  # 3
        encoding="utf-8",
    )
    items = read(path)
    problem = only_fatal(items)
    assert problem.line == 2
    assert problem.message == (
        "a second YAML document starts here; a subscriber file holds one list "
        '(remove the "---" or move these subscribers into the first list)'
    )
    assert emails(items) == ["a@example.org"]


# -- CSV quotes ----------------------------------------------------------------------


def test_quoted_cell_holding_a_line_break_is_fatal_where_it_starts(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write(CSV_HEADER)
        csv.writer(handle, lineterminator="\n").writerow(
            ["a@example.org", "Two\nLines", "en", "US", "t", "active"]
        )
        handle.write(rows(0, 2))
    problem = only_fatal(read(path))
    assert problem.line == 2
    assert problem.message.startswith("unbalanced quote: the quoted 'name' field starts")
    assert problem.message.endswith("; read as CSV it runs on to line 3")


def test_unbalanced_quote_on_the_last_line_without_a_newline_is_fatal(tmp_path: Path) -> None:
    problem = fatal_of(
        tmp_path / "list.csv", CSV_HEADER + rows(0, 2) + 'u0099@example.org,"Carol,en,NL,,active'
    )
    assert problem.line == 4
    assert problem.message.endswith(
        "no later quote closes it, so read as CSV it takes the rest of the file"
    )


def test_quote_inside_an_unquoted_cell_is_fatal(tmp_path: Path) -> None:
    problem = fatal_of(
        tmp_path / "list.csv",
        CSV_HEADER
        + rows(0, 1)
        + 'u0098@example.org,Bob "Bobby" Jones,en,NL,t,active\n'
        + rows(1, 3),
    )
    assert problem.line == 3
    assert problem.message == (
        "a quote inside the unquoted 'name' field; put the cell in quotes and write each "
        'quote in it twice: "Bob ""Bobby"" Jones"'
    )


def test_text_after_a_closing_quote_is_fatal(tmp_path: Path) -> None:
    problem = fatal_of(
        tmp_path / "list.csv",
        CSV_HEADER + rows(0, 1) + 'u0098@example.org,en,"Bob" Jones,NL,t,active\n' + rows(1, 3),
    )
    assert problem.line == 3
    assert problem.message == (
        "the quoted 'locale' field has text after its closing quote; inside a quoted field "
        'a quote is written twice: "Bob ""Bobby"" Jones"'
    )


def test_unbalanced_quote_in_the_header_is_fatal(tmp_path: Path) -> None:
    problem = fatal_of(tmp_path / "list.csv", 'email,"name\n' + "a@example.org,A\n")
    assert problem.line == 1
    assert problem.message.startswith("unbalanced quote: the quoted field 2 starts on this line")


# -- CSV shape -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            "a@example.org,x,en",
            "expected 6 fields (email,name,locale,region,topics,status), found 3; "
            "a row needs a cell for each column, even an empty one",
        ),
        (
            "a@example.org,Jones, Bob,en,US,t,active",
            "expected 6 fields (email,name,locale,region,topics,status), found 7; "
            'a cell holding "," must be in quotes',
        ),
    ],
)
def test_row_with_the_wrong_number_of_fields_is_fatal(
    tmp_path: Path, row: str, message: str
) -> None:
    path = tmp_path / "list.csv"
    path.write_text(CSV_HEADER + rows(0, 1) + row + "\n" + rows(1, 3), encoding="utf-8")
    items = read(path)
    problem = only_fatal(items)
    assert (problem.line, problem.message) == (3, message)
    assert emails(items) == ["u0000@example.org"]


def test_unquoted_topics_in_a_semicolon_file_are_too_many_fields(tmp_path: Path) -> None:
    problem = fatal_of(
        tmp_path / "list.csv",
        "email;name;locale;region;topics;status\n" + "a@example.org;A;en;US;a;b;active\n",
    )
    assert (problem.line, problem.message) == (
        2,
        "expected 6 fields (email;name;locale;region;topics;status), found 7; "
        'a cell holding ";" must be in quotes (several topics too: "a;b")',
    )


def test_header_naming_a_column_twice_is_fatal(tmp_path: Path) -> None:
    problem = fatal_of(tmp_path / "list.csv", "email,name,email\na@example.org,A,b@example.org\n")
    assert (problem.line, problem.message) == (1, "the header names the column 'email' twice")


def test_line_over_64_kib_is_fatal_at_its_line(tmp_path: Path) -> None:
    long_row = "x@example.org," + "A" * 70_000 + ",en,RU,t,active\n"
    problem = fatal_of(tmp_path / "list.csv", CSV_HEADER + rows(0, 1) + long_row + rows(1, 2))
    assert (problem.line, problem.message) == (3, "line 3 is over 65536 characters")


# -- no subscribers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "line", "why"),
    [
        ("empty.csv", "", 1, "it is empty"),
        ("blank.csv", " \n\n\t\r\n", 1, "it is empty"),
        ("bom-only.csv", "\ufeff", 1, "it is empty"),
        ("header-only.csv", CSV_HEADER, 1, "it has only the header row"),
        ("header-then-blank.csv", "\n" + CSV_HEADER + "\n,,,,,\n", 2, "it has only the header row"),
        ("empty.yaml", "", 1, "it is empty"),
        ("blank.yml", "  \n\n", 1, "it is empty"),
        ("comments.yaml", "# nobody yet\n", 1, "it is empty"),
        ("empty-list.yaml", "# nobody yet\n[]\n", 2, "the list is empty"),
        ("null.yaml", "~\n", 1, "the document is empty"),
    ],
)
def test_a_file_without_subscribers_is_fatal(
    tmp_path: Path, name: str, text: str, line: int, why: str
) -> None:
    problem = fatal_of(tmp_path / name, text)
    assert (problem.line, problem.message) == (line, f"no subscribers in this file: {why}")


# -- encodings -----------------------------------------------------------------------


def test_windows_1251_csv_is_named_with_the_excel_hint(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_bytes(
        (CSV_HEADER + "anna@example.org,Анна Петрова,ru,RU,t,active\n").encode("cp1251")
    )
    problem = only_fatal(read(path))
    assert problem.line == 2
    assert problem.message == (
        f"not valid UTF-8 at byte offset {len(CSV_HEADER) + 17} (0xc0, byte 18 of this line); "
        'this line reads as Windows-1251 (Cyrillic), what Excel\'s plain "CSV" writes for '
        'Cyrillic: save it as "CSV UTF-8 (Comma delimited)"'
    )


def test_windows_1251_yaml_is_named(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_bytes("- email: anna@example.org\n  name: Анна\n".encode("cp1251"))
    problem = only_fatal(read(path))
    assert problem.line == 2
    assert problem.message.endswith(
        "; this line reads as Windows-1251 (Cyrillic): save it as UTF-8"
    )


def test_latin_accents_are_not_taken_for_cyrillic(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_bytes(
        (CSV_HEADER + "rene@example.org,René Müller,fr,FR,t,active\n").encode("cp1252")
    )
    problem = only_fatal(read(path))
    assert problem.line == 2
    assert "Windows-1251" not in problem.message
    assert problem.message.startswith("not valid UTF-8 at byte offset")


def test_a_stray_byte_in_utf8_cyrillic_is_not_taken_for_windows_1251(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_bytes(
        CSV_HEADER.encode() + "anna@example.org,Анна Петрова".encode() + b"\xff,ru,RU,t,active\n"
    )
    problem = only_fatal(read(path))
    assert problem.line == 2
    assert "Windows-1251" not in problem.message


def test_utf16_is_named(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_bytes((CSV_HEADER + rows(0, 2)).encode("utf-16"))
    problem = only_fatal(read(path))
    assert problem.line == 1
    assert problem.message.startswith("not valid UTF-8 at byte offset 0 (0xff, byte 1 of")
    assert "the file is UTF-16" in problem.message


def test_invalid_utf8_far_into_a_file_gets_its_line(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    good = (CSV_HEADER + rows(0, 3000)).encode()
    path.write_bytes(
        good + b"bad@example.org,\xc3\x28,en,FR,t,active\r\n" + rows(3000, 3010).encode()
    )
    items = read(path)
    problem = only_fatal(items)
    assert problem.line == 3002
    assert f"byte offset {len(good) + 16} (0xc3, byte 17 of this line)" in problem.message
    # The rows before the bad bytes may or may not come out; none after them does.
    assert not {f"u{i:04d}@example.org" for i in range(3000, 3010)} & set(emails(items))


def test_yaml_control_character_is_fatal_at_its_line(tmp_path: Path) -> None:
    problem = fatal_of(tmp_path / "list.yaml", "- email: a@example.org\n  name: A\x00\n")
    assert (problem.line, problem.message) == (
        2,
        "invalid YAML: control characters are not allowed (U+0000)",
    )


# -- YAML structure ------------------------------------------------------------------


def test_yaml_duplicate_key_is_found_whatever_its_case(tmp_path: Path) -> None:
    problem = fatal_of(
        tmp_path / "list.yaml", "- email: a@example.org\n- email: b@example.org\n  Email: c@x.org\n"
    )
    assert (problem.line, problem.message) == (
        3,
        "duplicate key 'email' in this subscriber (first on line 2)",
    )


def test_yaml_document_after_an_end_marker_is_fatal(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- email: a@example.org\n...\n---\n- email: b@example.org\n")
    items = read(path)
    problem = only_fatal(items)
    assert problem.line == 3
    assert problem.message.startswith("a second YAML document starts here")
    assert emails(items) == ["a@example.org"]


def test_yaml_that_is_a_mapping_is_not_a_list(tmp_path: Path) -> None:
    problem = fatal_of(tmp_path / "list.yaml", "subscribers:\n  - email: a@example.org\n")
    assert (problem.line, problem.message) == (1, "expected a list of subscribers")


# -- files as spreadsheets save them -------------------------------------------------


def test_excel_semicolon_csv_with_bom_and_crlf_is_read(tmp_path: Path) -> None:
    """What Excel in a Russian locale writes for "CSV UTF-8": BOM, ``;``, CRLF, and
    quotes only around cells holding ``;`` or ``"``."""
    path = tmp_path / "excel.csv"
    with path.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle, delimiter=";", lineterminator="\r\n")
        writer.writerow(["email", "name", "locale", "region", "topics", "status"])
        writer.writerow(
            ["anna@example.org", "Петрова; Анна", "ru", "RU", "service-status;product-news", ""]
        )
        writer.writerow(
            ["bob@example.org", 'Bob "Bobby", Jr.', "en", "us", "service-status", "active"]
        )
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfemail;name;") and b"\r\n" in raw
    assert b'"service-status;product-news"' in raw
    items = read(path)
    assert [
        (s.email, s.name, s.region, s.topics, s.line) for s in items if isinstance(s, Subscriber)
    ] == [
        (
            "anna@example.org",
            "Петрова; Анна",
            "RU",
            frozenset({"service-status", "product-news"}),
            2,
        ),
        ("bob@example.org", 'Bob "Bobby", Jr.', "US", frozenset({"service-status"}), 3),
    ]
    assert len(items) == 2


def test_quoted_header_cells_and_cr_line_ends_are_read(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text(
        '"email";"name";"topics"\r"a@example.org";"A";"x;y"\r"b@example.org";"B";""\r',
        encoding="utf-8",
        newline="",
    )
    items = read(path)
    assert [(s.email, s.name, s.topics, s.line) for s in items if isinstance(s, Subscriber)] == [
        ("a@example.org", "A", frozenset({"x", "y"}), 2),
        ("b@example.org", "B", frozenset(), 3),
    ]


def test_commas_in_a_semicolon_file_are_plain_text(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("email;name\na@example.org;Weber, Mia\n", encoding="utf-8")
    (sub,) = read(path)
    assert isinstance(sub, Subscriber)
    assert sub.name == "Weber, Mia"


# -- row problems stay row problems ---------------------------------------------------


def test_a_name_holding_an_address_is_a_row_problem_naming_the_line(tmp_path: Path) -> None:
    folder = tmp_path / "subs"
    folder.mkdir()
    (folder / "a.csv").write_text(
        CSV_HEADER + rows(0, 1) + "b@example.org,Bob <c@example.net>,en,US,t,active\n" + rows(1, 2),
        encoding="utf-8",
    )
    (folder / "b.yaml").write_text(
        "- email: d@example.org\n- email: e@example.org\n  name: E e@example.org\n",
        encoding="utf-8",
    )
    items = read(folder)
    problems = [i for i in items if isinstance(i, RowProblem)]
    assert [(p.path.name, p.line, p.message, p.fatal) for p in problems] == [
        (
            "a.csv",
            3,
            "the name holds an email address ('c@example.net'); a display name cannot "
            "(is another row run into this one?)",
            False,
        ),
        (
            "b.yaml",
            2,
            "the name holds an email address ('e@example.org'); a display name cannot "
            "(is another row run into this one?)",
            False,
        ),
    ]
    assert emails(items) == ["u0000@example.org", "u0001@example.org", "d@example.org"]


def test_a_yaml_null_is_no_value(tmp_path: Path) -> None:
    """name: null went out as "To: null <…>" and "Здравствуйте, null!"; locale: ~ as
    an unsupported locale '~' (English, not the region's Russian)."""
    path = tmp_path / "list.yaml"
    path.write_text(
        "- {email: a@example.org, name: null, locale: ~, region: RU}\n"
        "- {email: b@example.org, name: , topics: [null, t]}\n"
        "- {email: c@example.org, name: 'null', status: Null}\n",
        encoding="utf-8",
    )
    items = read(path)
    assert all(isinstance(i, Subscriber) for i in items), items
    a, b, c = (i for i in items if isinstance(i, Subscriber))
    assert (a.name, a.locale, a.region) == ("", "", "RU")
    assert (b.name, b.topics) == ("", frozenset({"t"}))
    assert (c.name, c.status) == ("null", "active")  # quoted: the text "null"


def test_topics_split_at_semicolons_in_a_yaml_list_as_in_a_csv_cell(tmp_path: Path) -> None:
    """The ledger stores topics joined by semicolons and reads them back split: a YAML
    item "a;b" was one topic read from the file (a dry run) and two from the ledger (a
    send), so the two counted different audiences."""
    (tmp_path / "list.yaml").write_text(
        "- {email: a@example.org, topics: ['product-news;service-status']}\n", encoding="utf-8"
    )
    (tmp_path / "list.csv").write_text(
        CSV_HEADER + "b@example.org,B,en,NL,product-news;service-status,active\n",
        encoding="utf-8",
    )
    topics = {i.email: i.topics for i in read(tmp_path) if isinstance(i, Subscriber)}
    assert topics["a@example.org"] == topics["b@example.org"] == {"product-news", "service-status"}


@pytest.mark.parametrize("column", ["locale", "topics"])
def test_a_control_character_in_a_locale_or_topics_is_a_row_problem(
    tmp_path: Path, column: str
) -> None:
    """A NUL there passed check, then stopped send on PostgreSQL (which refuses it in
    text) with no file or line; on SQLite that subscriber silently matched nothing."""
    cells = {"locale": "ru\x00,RU,t", "topics": "ru,RU,t\x00x"}[column]
    path = tmp_path / "list.csv"
    path.write_text(CSV_HEADER + f"n@example.org,N,{cells},active\n" + rows(0, 1), encoding="utf-8")
    items = read(path)
    problems = [i for i in items if isinstance(i, RowProblem)]
    assert [(p.line, p.message, p.fatal) for p in problems] == [
        (2, f"the {column} holds a control character", False)
    ]
    assert emails(items) == ["u0000@example.org"]


@pytest.mark.parametrize("name", ["@anna", "Anna @ Home", "anna@home", "Anna (at) example.org"])
def test_names_with_an_at_sign_but_no_address_are_fine(tmp_path: Path, name: str) -> None:
    path = tmp_path / "list.csv"
    path.write_text(CSV_HEADER + f"a@example.org,{name},en,US,t,active\n", encoding="utf-8")
    (sub,) = read(path)
    assert isinstance(sub, Subscriber)
    assert sub.name == name


def test_other_files_are_still_read_after_a_broken_one(tmp_path: Path) -> None:
    folder = tmp_path / "subs"
    folder.mkdir()
    (folder / "a.csv").write_text(
        CSV_HEADER + 'a@example.org,"A,en,US,t,active\n', encoding="utf-8"
    )
    (folder / "b.csv").write_text(CSV_HEADER + rows(0, 2), encoding="utf-8")
    items = read(folder)
    assert [(type(i).__name__, i.path.name, i.line) for i in items] == [
        ("RowProblem", "a.csv", 2),
        ("Subscriber", "b.csv", 2),
        ("Subscriber", "b.csv", 3),
    ]


# -- the command line refuses a broken list -------------------------------------------


def test_send_refuses_a_list_with_an_unbalanced_quote_and_records_nothing(
    project: Path,
) -> None:
    main_csv = project.parent / "subscribers" / "main.csv"
    lines = main_csv.read_text(encoding="utf-8").splitlines(keepends=True)
    lines.insert(5, 'carol@example.org,"Carol,en,RU,service-status,active\n')
    main_csv.write_text("".join(lines), encoding="utf-8")
    result = invoke(project, "send", UPDATE, "--yes", "--rate", "0")
    assert result.exit_code == 1
    assert "main.csv:6: unbalanced quote: the quoted 'name' field starts" in result.stderr
    assert not (project.parent / "outbox").exists()
    status = invoke(project, "status", UPDATE, "--json")
    counts = json.loads(status.stdout)
    assert [counts[k] for k in ("pending", "sent", "failed", "skipped")] == [0, 0, 0, 0], counts
    check = invoke(project, "check")
    assert check.exit_code == 1
    assert "main.csv:6: unbalanced quote" in check.output


def test_a_dry_run_refuses_a_broken_list_as_send_does(project: Path, tmp_path: Path) -> None:
    """The dry run counted the rows before the break, wrote previews, then said "render
    failed" for the list; send refuses it before anything. Now both say the same."""
    main_csv = project.parent / "subscribers" / "main.csv"
    lines = main_csv.read_text(encoding="utf-8").splitlines(keepends=True)
    lines.insert(5, 'carol@example.org,"Carol,en,RU,service-status,active\n')
    main_csv.write_text("".join(lines), encoding="utf-8")
    previews = tmp_path / "previews"
    result = invoke(project, "send", UPDATE, "--dry-run", "--preview-dir", str(previews))
    assert result.exit_code == 1
    assert "main.csv:6: unbalanced quote: the quoted 'name' field starts" in result.stderr
    assert "render failed" not in result.output
    assert "recipients" not in result.stdout
    assert not previews.exists() or not any(previews.rglob("*.eml"))


def test_a_skipped_row_is_logged_with_its_values_masked(project: Path) -> None:
    """'skipped: …: invalid address 'maria sidorova@example.org'' went to the log
    whole: a bad export put a list of addresses there. The CI summary masked them."""
    bad = ["maria sidorova@example.org", "olga@example..net", "ivan.petrov@example.com."]
    (project.parent / "subscribers" / "a0.csv").write_text(
        CSV_HEADER + "".join(f"{a},X,ru,RU,service-status,active\n" for a in bad),
        encoding="utf-8",
    )
    for args in (("send", UPDATE, "--yes", "--rate", "0"), ("import", "--force")):
        result = invoke(project, *args)
        assert result.exit_code == 0, result.output
        assert result.stderr.count("invalid address '***'") == 3, result.stderr
        for address in bad:
            assert address.split("@")[0] not in result.stderr, address
