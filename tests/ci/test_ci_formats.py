"""check --format text|json|github|junit: problems where CI shows them (issue 15).

The project sits in a folder of a real git repository, so every path must come out
relative to the repository's root, not to the config or the working directory.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import junitparser
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import copy_sample, invoke
from editing import line_of, replace_in
from git_helpers import init_repo
from statusmail.ci.formats import GITHUB_LIMIT, Item, escape_data, escape_property, github, junit

UPDATE = "updates/update-2020-04-21.yaml"
CATALOG = "templates/locale/ru/LC_MESSAGES/messages.po"
WORKFLOW_COMMAND = re.compile(r"^::(?P<kind>error|warning|notice) (?P<props>[^:]*)::(?P<msg>.*)$")


@dataclass(frozen=True)
class Broken:
    config: Path
    # (path relative to the repository root, line) of each problem made on purpose
    expected: dict[str, tuple[str, int]]


@pytest.fixture
def broken(tmp_path: Path) -> Broken:
    """A repository holding the sample in ``project/``, then a catalog with an
    untranslated string and an entry without its ru block."""
    repo = tmp_path / "repo"
    config = copy_sample(repo / "project")
    init_repo(repo)
    project = config.parent
    catalog = project / CATALOG
    untranslated = line_of(catalog, 'msgid "Status updates"')
    replace_in(catalog, 'msgstr "Уведомления о работе сервиса"', 'msgstr ""')
    entry = project / UPDATE
    text = entry.read_text(encoding="utf-8")
    entry.write_text(text[: text.index("\n  ru:\n") + 1], encoding="utf-8")
    return Broken(
        config,
        {
            "untranslated": (f"project/{CATALOG}", untranslated),
            "missing-translation": (f"project/{UPDATE}", line_of(entry, "content:")),
        },
    )


def unescape(text: str) -> str:
    for escaped, plain in (("%0D", "\r"), ("%0A", "\n"), ("%3A", ":"), ("%2C", ","), ("%25", "%")):
        text = text.replace(escaped, plain)
    return text


def workflow_commands(stdout: str) -> list[tuple[str, dict[str, str], str]]:
    """(kind, properties, message) of every line; each line must be a workflow command."""
    found = []
    # The runner splits lines at CR and LF only (not at form feeds or U+2028).
    for line in stdout.removesuffix("\n").split("\n") if stdout else []:
        match = WORKFLOW_COMMAND.match(line)
        assert match, f"not a workflow command: {line!r}"
        props = dict(part.split("=", 1) for part in match["props"].split(","))
        found.append(
            (match["kind"], {k: unescape(v) for k, v in props.items()}, unescape(match["msg"]))
        )
    return found


def test_github_annotates_each_problem_on_its_line(broken: Broken) -> None:
    result = invoke(broken.config, "check", "--format", "github")
    assert result.exit_code == 1, result.output
    commands = workflow_commands(result.stdout)
    errors = [(props, message) for kind, props, message in commands if kind == "error"]
    assert len(errors) == 2, result.stdout
    located = {(props["file"], int(props["line"])) for props, _ in errors}
    assert located == set(broken.expected.values())
    assert all(props["title"] == "statusmail" for props, _ in errors)
    by_file = {props["file"]: message for props, message in errors}
    assert "'Status updates' is untranslated" in by_file[f"project/{CATALOG}"]
    assert "[missing-translation]" in by_file[f"project/{UPDATE}"]
    # The dev-secret warning is a warning, on the config's line.
    warnings = [props for kind, props, _ in commands if kind == "warning"]
    assert [p["file"] for p in warnings] == ["project/statusmail.yaml"]
    assert "2 problem(s)" in result.output


def test_json_lists_both_problems_with_their_codes(broken: Broken) -> None:
    result = invoke(broken.config, "check", "--format", "json")
    assert result.exit_code == 1, result.output
    listed = json.loads(result.stdout)
    assert all(set(one) == {"file", "line", "severity", "code", "message"} for one in listed)
    errors = {
        one["code"]: (one["file"], one["line"]) for one in listed if one["severity"] == "error"
    }
    assert errors == broken.expected
    assert [one["code"] for one in listed if one["severity"] == "warning"] == ["secret-missing"]


def test_junit_is_valid_with_a_failure_per_problem(broken: Broken, tmp_path: Path) -> None:
    result = invoke(broken.config, "check", "--format", "junit")
    assert result.exit_code == 1, result.output
    root = ET.fromstring(result.stdout.encode("utf-8"))
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    # What Jenkins' JUnit schema requires, and nothing it refuses on a test case.
    assert {"name", "tests", "failures", "errors"} <= set(suite.attrib)
    cases = suite.findall("testcase")
    assert int(suite.get("tests", "")) == len(cases)
    for case in cases:
        assert set(case.attrib) <= {"name", "classname", "time", "group"}
        assert {child.tag for child in case} <= {"failure", "system-out", "system-err"}
    names = [case.get("name") for case in cases]
    project = broken.config.parent
    for path in [project / UPDATE, project / CATALOG, project / "regions.yaml", broken.config]:
        assert path.relative_to(project.parent).as_posix() in names  # a case per checked file
    failed = {
        case.get("name"): [(f.get("type"), f.text or "") for f in case.findall("failure")]
        for case in cases
        if case.findall("failure")
    }
    assert suite.get("failures") == "2"
    expected = {f: [code] for code, (f, _) in broken.expected.items()}
    assert {name: [code for code, _ in found] for name, found in failed.items()} == expected
    for file, line in broken.expected.values():
        assert failed[file][0][1].startswith(f"{file}:{line}: ")

    # A CI system's own reader sees the same: two failed cases, everything else passed.
    report = tmp_path / "check.xml"
    report.write_text(result.stdout, encoding="utf-8")
    suites = junitparser.JUnitXml.fromfile(str(report))
    read = [case for one in suites for case in one]
    assert len(read) == len(cases)
    assert sorted(case.name for case in read if not case.is_passed) == sorted(expected)


def test_text_stays_as_it_was(broken: Broken) -> None:
    result = invoke(broken.config, "check")
    assert result.exit_code == 1
    assert result.stderr == ""  # the report is the output: stdout
    lines = result.output.splitlines()
    project = broken.config.parent
    for _, (file, line) in broken.expected.items():
        assert any(row.startswith(f"{project.parent / file}:{line}: ") for row in lines), lines
    assert lines[-1] == "checked 2 entries, 28 subscribers: 2 problem(s)"
    assert invoke(broken.config, "check", "--format", "text").stdout == result.output


def test_the_json_report_is_kept_and_is_not_a_format(project: Path) -> None:
    result = invoke(project, "check", "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["entries"] == 2 and report["subscribers"] == 28
    assert report["problems"] == [] and len(report["warnings"]) == 1
    both = invoke(project, "check", "--json", "--format", "json")
    assert both.exit_code == 2
    assert "does not go with --format" in both.output


@pytest.mark.parametrize("output", ["json", "github", "junit"])
def test_a_clean_project_exits_0_in_every_format(project: Path, output: str) -> None:
    result = invoke(project, "check", "--format", output)
    assert result.exit_code == 0, result.stdout + result.output
    assert "checked 2 entries, 28 subscribers: ok" in result.output


def test_outside_a_repository_paths_are_relative_to_the_config(project: Path) -> None:
    bad = line_of(project.parent / UPDATE, "status: ready")
    replace_in(project.parent / UPDATE, "status: ready", "status: readyy")
    result = invoke(project, "check", "--format", "json")
    listed = json.loads(result.stdout)
    assert {
        (one["file"], one["line"], one["code"]) for one in listed if one["severity"] == "error"
    } == {(UPDATE, bad, "bad-value")}


def test_a_broken_config_is_reported_in_the_format(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    config = copy_sample(repo / "project")
    init_repo(repo)
    line = replace_in(config, "transport: maildir", "transport: [maildir")
    github_run = invoke(config, "check", "--format", "github")
    assert github_run.exit_code == 1
    ((kind, props, message),) = workflow_commands(github_run.stdout)
    assert (kind, props["file"]) == ("error", "project/statusmail.yaml")
    assert "[yaml-syntax]" in message and int(props["line"]) >= line
    text_run = invoke(config, "check")
    assert text_run.exit_code == 1
    assert text_run.output.startswith(f"{config}:{props['line']}: invalid YAML")
    report = json.loads(invoke(config, "check", "--json").stdout)
    assert report["ok"] is False and report["problems"][0].startswith(f"{config}:")


# -- the formats on any text --------------------------------------------------------------


@given(st.text())
def test_github_escaping_round_trips(text: str) -> None:
    data, prop = escape_data(text), escape_property(text)
    assert "\n" not in data and "\r" not in data
    assert not set(prop) & {"\n", "\r", ":", ","}
    assert unescape(data) == text and unescape(prop) == text


@given(
    file=st.text(min_size=1).filter(lambda t: not t.startswith(("$", "<"))),
    line=st.none() | st.integers(min_value=1, max_value=10**6),
    message=st.text(),
)
def test_one_github_line_per_problem_whatever_it_says(
    file: str, line: int | None, message: str
) -> None:
    out = github([Item(file, line, "error", "bad-value", message)])
    assert out.count("\n") == 1
    ((kind, props, said),) = workflow_commands(out)
    assert kind == "error" and props["file"] == file and said == f"{message} [bad-value]"
    assert props.get("line") == (str(line) if line else None)


@given(file=st.text(min_size=1), message=st.text())
def test_past_ten_the_plain_lines_start_no_workflow_command(file: str, message: str) -> None:
    """The problems past GitHub's ten go as plain lines of the log: a line break in a
    file name or message (a pull request's to choose) must not start a line of its own,
    which GitHub would run as a workflow command."""
    out = github([Item(file, n + 1, "error", "bad-value", message) for n in range(12)])
    lines = out.replace("\r", "\n").split("\n")  # as a log reader may break them
    assert lines.pop() == ""
    # ten annotations (the tenth counts the rest), then the three past them, one line each
    assert len(lines) == GITHUB_LIMIT + 3
    assert sum(line.startswith("::") for line in lines) == GITHUB_LIMIT


def legal(text: str) -> str:
    """``text`` as XML 1.0 can hold it: characters it cannot hold become U+FFFD."""
    return re.sub("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]", "\ufffd", text)


@given(name=st.text(min_size=1), message=st.text())
def test_junit_parses_whatever_the_messages_hold(name: str, message: str) -> None:
    out = junit([("entries", name)], [Item(name, 3, "error", "bad-value", message)])
    root = ET.fromstring(out.encode("utf-8"))
    (case,) = root.iter("testcase")
    assert case.get("name") == legal(name)
    (failure,) = case.iter("failure")
    assert failure.get("message") == legal(message)  # attributes keep even line breaks
