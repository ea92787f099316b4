"""Issue 24 for CI and scripts: GitHub's ten annotations of a kind hold the most
important problems, send_at shows wherever an entry is shown, and every --json prints
JSON, a failure included."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import UPDATE, invoke
from editing import replace_in
from statusmail.ci.formats import GITHUB_LIMIT, Item, github

SEND_AT = "2020-04-21T09:30:00+03:00"


def test_github_shows_the_most_important_first_and_counts_what_is_past_ten() -> None:
    rows = [
        Item("subscribers/main.csv", n, "error", "subscriber-row", f"row {n}") for n in range(12)
    ]
    found = [
        *rows[:6],
        Item("updates/x.yaml", 3, "warning", "missing-source", "no source"),
        Item("updates/x.yaml", None, "notice", "changed", "entry x changed"),
        *rows[6:],
        Item("statusmail.yaml", 7, "error", "bad-value", "transport is 'smtpp'"),
    ]
    lines = github(found).splitlines()
    annotations = [line for line in lines if line.startswith("::")]
    assert [line.split(" ", 1)[0] for line in annotations] == [
        *["::error"] * GITHUB_LIMIT,
        "::warning",
        "::notice",
    ]
    assert "line=7" in annotations[0] and "transport is 'smtpp'" in annotations[0]
    assert annotations[GITHUB_LIMIT - 1].endswith(
        "::4 more errors, in this step's log (statusmail check lists them all) [more]"
    )
    assert lines[len(annotations) :] == [
        f"statusmail: error: subscribers/main.csv:{n}: row {n} [subscriber-row]"
        for n in range(8, 12)
    ]
    assert "row 0" in annotations[1] and "row 7" in annotations[8]


def test_send_at_shows_in_list_the_dry_run_and_the_summary(project: Path, tmp_path: Path) -> None:
    entry = project.parent / "updates" / f"{UPDATE}.yaml"
    replace_in(entry, "status: ready\n", f"status: ready\nsend_at: {SEND_AT}\n")
    listed = invoke(project, "list")
    header, *rows = (line.split("\t") for line in listed.stdout.splitlines())
    assert dict(zip(header, next(r for r in rows if r[0] == UPDATE), strict=True))["send_at"] == (
        SEND_AT
    )
    summary = tmp_path / "SUMMARY.md"
    args = ("--dry-run", "--json", "--preview-dir", str(tmp_path / "p"), "--summary", str(summary))
    report = json.loads(invoke(project, "send", UPDATE, *args).stdout)
    assert report["send_at"] == SEND_AT
    assert f"14 recipients · send_at {SEND_AT} · [gallery" in summary.read_text(encoding="utf-8")


def test_every_json_prints_json_when_it_fails(project: Path) -> None:
    for args in (("send", "no-such-entry", "--dry-run"), ("status", "no-such-entry")):
        result = invoke(project, *args, "--json")
        assert result.exit_code == 1
        report = json.loads(result.stdout)
        assert report["ok"] is False and report["exit_code"] == 1
        assert "no entry 'no-such-entry'" in report["errors"][0]
        assert "no entry 'no-such-entry'" in result.stderr  # said to people as before
