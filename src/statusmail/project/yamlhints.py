"""What to do about a YAML mistake, said in the words of the person who made it.

The parser's own text (``mapping values are not allowed in this context``) names the
grammar, not the fix, and for some mistakes its line is where it gave up, not where the
mistake is. ``explain`` gives the line to show and a sentence that says what to change:
quote a value holding ``: ``, indent with spaces, line a key up with its neighbours,
close a quote or a bracket. ``undecodable`` does the same for a file that is not UTF-8.
"""

from __future__ import annotations

import re

import yaml

_KEY = re.compile(r"[\w.-]+")
_CYRILLIC_WORD = re.compile(r"[\u0400-\u04ff]{2,}")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _spaces(n: int) -> str:
    return f"{n} space" if n == 1 else f"{n} spaces"


def _above(lines: list[str], index: int) -> int | None:
    """The nearest line above ``index`` that holds something (not blank, not a comment)."""
    for number in range(index - 1, -1, -1):
        if lines[number].strip() and not lines[number].lstrip().startswith("#"):
            return number
    return None


def _previous(lines: list[str], index: int) -> str | None:
    number = _above(lines, index)
    return None if number is None else lines[number]


def _colon(lines: list[str], index: int, column: int) -> str:
    """``mapping values are not allowed``: a value with ``: `` in it, or a key indented
    under a line that already has its value."""
    line = lines[index] if index < len(lines) else ""
    head, _, _ = line.partition(":")
    key = head.strip().lstrip("- ")
    first_colon = len(head)
    before = _previous(lines, index)
    if column <= first_colon and _KEY.fullmatch(key) and before is not None:
        return (
            f"{key!r} is indented {_spaces(_indent(line))}, deeper than the line above "
            f"({_indent(before)}), which already has its value: indent {key!r} like the "
            "key it stands beside"
        )
    if column > first_colon and key:
        value = line[first_colon + 1 :].strip()
        return (
            'a value holding ": " must be in quotes, or YAML reads it as another key: '
            f'write {key}: "{value}"'
        )
    return 'a value holding ": " must be in quotes, or YAML reads it as another key'


_UNCLOSED = (
    "invalid YAML: the quote opened on this line is never closed: end the value with the "
    "same quote (a \" inside it as \\\", a ' as '')"
)


def _open_quote(line: str) -> bool:
    """Whether ``line``'s value opens a quote it does not close."""
    value = line.partition(": ")[2].strip()
    if value.startswith('"'):
        return (value.count('"') - value.count('\\"')) % 2 == 1
    return value.startswith("'") and value.count("'") % 2 == 1


def explain(exc: yaml.MarkedYAMLError, text: str) -> tuple[int | None, str]:
    """The 1-based line to show for ``exc`` in ``text``, and the message."""
    problem = str(exc.problem or "")
    context = str(exc.context or "")
    mark, opened = exc.problem_mark, exc.context_mark
    line = mark.line + 1 if mark else (opened.line + 1 if opened else None)
    raw = " ".join(part for part in (context, problem) if part)
    if mark is None:
        return line, f"invalid YAML: {raw}"
    lines = text.split("\n")
    here = lines[mark.line] if mark.line < len(lines) else ""
    at = here[mark.column : mark.column + 1]
    tab = at == "\t" or "\t" in here[: mark.column + 1]
    if "tab character" in problem or ("cannot start any token" in problem and tab):
        return line, "invalid YAML: a tab; YAML allows no tabs in indentation: indent with spaces"
    if problem.startswith("mapping values are not allowed"):
        return line, f"invalid YAML: {_colon(lines, mark.line, mark.column)}"
    if opened is not None and "simple key" in context:
        said = lines[opened.line].strip() if opened.line < len(lines) else ""
        return opened.line + 1, (
            f"invalid YAML: {said!r} has no colon: write it as key: value "
            "(or, inside a text, indent it like the text)"
        )
    if opened is not None and "quoted scalar" in context:
        return opened.line + 1, _UNCLOSED
    if opened is not None and context.startswith("while parsing a flow"):
        brackets = "[ … ]" if "sequence" in context else "{ … }"
        return opened.line + 1, (
            f"invalid YAML: the {brackets} opened on this line is not closed where it "
            "should be: close it, and quote any value in it that holds a comma or colon"
        )
    if "did not find expected key" in problem or "expected <block end>" in problem:
        number = _above(lines, mark.line)
        if number is not None and _open_quote(lines[number]):  # closed by a quote here
            return number + 1, _UNCLOSED
        before = _previous(lines, mark.line)
        found = {_indent(here)}
        told = [f"this line is indented {_spaces(_indent(here))}"]
        if opened is not None and opened.column not in found:
            told.append(f"the keys from line {opened.line + 1} are indented {opened.column}")
            found.add(opened.column)
        if before is not None and _indent(before) not in found:
            told.append(f"the line above {_indent(before)}")
        return line, (
            f"invalid YAML: the indentation goes wrong here ({', '.join(told)}): "
            "indent a key exactly like the keys it stands beside"
        )
    return line, f"invalid YAML: {raw}"


def undecodable(data: bytes, exc: UnicodeDecodeError) -> tuple[int, str]:
    """The line of the first byte that is not UTF-8, and what the file may be instead."""
    line = data[: exc.start].count(b"\n") + 1
    said = f"not valid UTF-8 (byte 0x{data[exc.start]:02x})"
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return 1, f"{said}: the file is UTF-16; save it as UTF-8"
    start = data.rfind(b"\n", 0, exc.start) + 1
    end = data.find(b"\n", exc.start)
    if _CYRILLIC_WORD.search(data[start : end if end >= 0 else None].decode("cp1251", "replace")):
        return line, (
            f"{said}: it reads as Windows-1251 (Cyrillic); save it as UTF-8 "
            "(in Notepad: Save As, Encoding: UTF-8)"
        )
    return line, f"{said}: save it as UTF-8"
