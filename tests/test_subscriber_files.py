"""Structural errors in subscriber files: a file that is almost right is never half-read.

A structural error (unbalanced quote, wrong number of fields, bytes that are not UTF-8,
an empty list, a duplicate YAML key, a second YAML document, ...) is one fatal
RowProblem naming ``file:line``, and nothing after it in that file is trusted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from statusmail.subscribers import RowProblem, Subscriber, iter_subscribers

# Reproductions of the reported bugs; the next commit fixes them and removes this mark.
pytestmark = pytest.mark.xfail(strict=True, reason="bug reproduced, not fixed yet")

HEADER = "email,name,locale,region,topics,status\n"


def rows(first: int, count: int) -> str:
    return "".join(f"u{i:04d}@example.org,User {i},en,NL,t,active\n" for i in range(first, count))


def read(path: Path) -> list[Subscriber | RowProblem]:
    return list(iter_subscribers(path))


def only_fatal(items: list[Subscriber | RowProblem]) -> RowProblem:
    """The one fatal problem, which must be the last item: nothing after it is trusted."""
    fatal = [i for i in items if isinstance(i, RowProblem) and i.fatal]
    assert len(fatal) == 1, items
    assert items[-1] is fatal[0], items
    return fatal[0]


# -- the three reported bugs ---------------------------------------------------------


def test_unbalanced_quote_mid_file_is_fatal_at_its_line_and_no_later_row_is_read(
    tmp_path: Path,
) -> None:
    path = tmp_path / "list.csv"
    path.write_text(
        HEADER + rows(0, 1) + 'u0099@example.org,"Carol,en,NL,,active\n' + rows(1, 6),
        encoding="utf-8",
    )
    items = read(path)
    problem = only_fatal(items)
    assert (problem.path, problem.line) == (path, 3)
    assert "quote" in problem.message
    assert [s.email for s in items if isinstance(s, Subscriber)] == ["u0000@example.org"]


def test_unbalanced_quote_closed_by_a_later_quoted_name_is_still_fatal(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text(
        HEADER
        + rows(0, 1)
        + 'u0099@example.org,"Carol,en,NL,,active\n'  # line 3
        + rows(1, 2)
        + 'u0098@example.org,Bob "Bobby" Jones,en,NL,t,active\n'  # line 5
        + rows(2, 6),
        encoding="utf-8",
    )
    items = read(path)
    problem = only_fatal(items)
    assert problem.line == 3
    for item in items:
        if isinstance(item, Subscriber):
            assert "@" not in item.name


def test_invalid_utf8_names_its_line_and_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    good = (HEADER + rows(0, 2)).encode()
    path.write_bytes(good + b"bad@example.org,Ren\xe9,en,FR,t,active\n" + rows(2, 4).encode())
    problem = only_fatal(read(path))
    assert problem.line == 4
    offset = len(good) + len(b"bad@example.org,Ren")
    assert f"byte {offset}" in problem.message
    assert "0xe9" in problem.message.lower()


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
    assert "duplicate key 'email'" in problem.message
    assert "line 1" in problem.message


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
    assert "second YAML document" in problem.message
