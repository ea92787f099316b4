"""``check``'s problems in the formats CI systems read: JSON, GitHub workflow commands
and JUnit XML. Every format names files relative to the repository root, so a problem
shows on the changed line of a pull request."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from statusmail.errors import Problem

FORMATS = ("text", "json", "github", "junit")
CHANGED_CODE = "changed"
# What XML 1.0 cannot hold at all, even escaped; such characters become U+FFFD.
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True, slots=True)
class Item:
    """One problem (or notice) as CI tools take it; ``in_repo`` says whether ``file`` is a
    path in the repository (not ``$STATUSMAIL_SMTP_PORT`` or a file elsewhere)."""

    file: str
    line: int | None
    severity: str  # error | warning | notice
    code: str
    message: str
    in_repo: bool = True

    def as_json(self) -> dict[str, object]:
        shown = asdict(self)
        del shown["in_repo"]
        return shown


def shown_path(path: Path | str, root: Path) -> tuple[str, bool]:
    """``path`` relative to ``root`` as POSIX text, and whether it lies under ``root``."""
    text = str(path)
    if text.startswith(("$", "<")):  # an environment variable or the command line
        return text, False
    absolute = Path(path).absolute().resolve()
    if absolute.is_relative_to(root):
        return absolute.relative_to(root).as_posix() or ".", True
    return text, False


def item(problem: Problem, root: Path) -> Item:
    file, in_repo = shown_path(problem.path, root)
    severity = "warning" if problem.warning else "error"
    return Item(file, problem.line or None, severity, problem.code, problem.message, in_repo)


def items(problems: Iterable[Problem], root: Path) -> list[Item]:
    return [item(problem, root) for problem in problems]


# -- GitHub workflow commands -------------------------------------------------------------


def escape_data(text: str) -> str:
    """A workflow command's message, escaped as the Actions toolkit does."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value (``file=``, ``title=``)."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


# GitHub shows at most ten annotations of each kind per step; the rest of a step's
# workflow commands show nowhere, not even in its log.
GITHUB_LIMIT = 10
_SEVERITIES = ("error", "warning", "notice")
# Within a kind: what stops every message first; one subscriber's row, and the files a
# change touched, last.
_LATER = {"subscriber-file": 1, "subscriber-row": 2, CHANGED_CODE: 3}


def github_order(found: Iterable[Item]) -> list[Item]:
    """Errors, then warnings, then notices, the most important of each first."""
    return sorted(found, key=lambda one: (_SEVERITIES.index(one.severity), _LATER.get(one.code, 0)))


def github(found: Iterable[Item]) -> str:
    """One ``::error``/``::warning``/``::notice`` line per item, the most important first.
    Past GitHub's ten of a kind, the tenth says how many more there are, and they follow
    as plain lines of the step's log."""
    lines, rest = [], []
    ordered = github_order(found)
    for severity in _SEVERITIES:
        of_kind = [one for one in ordered if one.severity == severity]
        if len(of_kind) > GITHUB_LIMIT:
            more = len(of_kind) - GITHUB_LIMIT + 1
            said = f"{more} more {severity}s, in this step's log (statusmail check lists them all)"
            rest += of_kind[GITHUB_LIMIT - 1 :]
            of_kind[GITHUB_LIMIT - 1 :] = [Item("", None, severity, "more", said, in_repo=False)]
        lines += _annotations(of_kind)
    for one in rest:
        # Plain lines of the log, but a line break in a file name or a message would
        # start a line of its own, which GitHub runs as a workflow command if it starts
        # with "::" (an entry's text is a pull request's to choose)
        where = f"{one.file}:{one.line}" if one.line else one.file
        said = f"statusmail: {one.severity}: {where}: {one.message} [{one.code}]"
        lines.append(escape_data(said) + "\n")
    return "".join(lines)


def _annotations(found: Iterable[Item]) -> list[str]:
    lines = []
    for one in found:
        properties = []
        message = f"{one.message} [{one.code}]"
        if one.in_repo:
            properties.append(f"file={escape_property(one.file)}")
            if one.line:
                properties.append(f"line={one.line}")
        elif one.file:
            where = f"{one.file}:{one.line}" if one.line else one.file
            message = f"{where}: {message}"
        properties.append("title=statusmail")
        lines.append(f"::{one.severity} {','.join(properties)}::{escape_data(message)}\n")
    return lines


# -- JUnit XML ----------------------------------------------------------------------------


def _xml_text(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


def junit(
    checked: Sequence[tuple[str, str]],
    found: Sequence[Item],
    properties: Sequence[tuple[str, str]] = (),
) -> str:
    """JUnit XML: a test case per checked file (``checked`` is (kind, shown path)), a
    ``failure`` per error in it; warnings and notices go to the case's ``system-out``.
    Only attributes the strictest readers (Jenkins' xUnit schema) accept are written."""
    cases: dict[str, tuple[str, list[Item]]] = {path: (kind, []) for kind, path in checked}
    for one in found:
        cases.setdefault(one.file, ("other", []))[1].append(one)
    failures = sum(1 for one in found if one.severity == "error")
    counts = {"tests": str(len(cases)), "failures": str(failures), "errors": "0"}
    suites = ET.Element("testsuites", {"name": "statusmail check", **counts, "time": "0"})
    suite = ET.SubElement(
        suites, "testsuite", {"name": "statusmail check", **counts, "skipped": "0", "time": "0"}
    )
    if properties:
        listed = ET.SubElement(suite, "properties")
        for name, value in properties:
            ET.SubElement(listed, "property", {"name": name, "value": _xml_text(value)})
    for path, (kind, listed_items) in cases.items():
        case = ET.SubElement(
            suite, "testcase", {"name": _xml_text(path), "classname": f"statusmail.{kind}"}
        )
        case.set("time", "0")
        notes = []
        for one in listed_items:
            where = f"{one.file}:{one.line}" if one.line else one.file
            if one.severity == "error":
                failure = ET.SubElement(
                    case, "failure", {"message": _xml_text(one.message), "type": one.code}
                )
                failure.text = _xml_text(f"{where}: {one.message} [{one.code}]")
            else:
                notes.append(_xml_text(f"{where}: {one.severity}: {one.message} [{one.code}]"))
        if notes:
            ET.SubElement(case, "system-out").text = "\n".join(notes) + "\n"
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, "unicode") + "\n"
