"""``statusmail import`` and ``check`` over the imported lists (issue 21): once the lists
are in the ledger, ``check`` of unchanged files reads none of their rows; a changed file
is imported again first, and a broken one is reported with its line while the last good
import stays."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import CSV_HEADER, invoke
from statusmail.project import subscriber_rows


def test_check_of_unchanged_lists_reads_no_row(project: Path) -> None:
    folder = project.parent / "subscribers"
    imported = invoke(project, "import", "--json")
    assert imported.exit_code == 0, imported.stderr
    counts = json.loads(imported.stdout)
    assert counts["changed"] is True and counts["subscribers"] > 0
    before = invoke(project, "check")
    assert before.exit_code == 0, before.stderr

    # Every file made unreadable as a list, with its size and mtime kept: were check to
    # read a row, it would report a broken file.
    for path in subscriber_rows.subscriber_files(folder):
        st = path.stat()
        path.write_bytes(b"\xff" * st.st_size)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = invoke(project, "check")
    assert after.exit_code == 0, after.stderr
    assert after.stdout == before.stdout  # the same counts, notes and verdict
    again = json.loads(invoke(project, "import", "--json").stdout)
    assert again["changed"] is False and again["subscribers"] == counts["subscribers"]

    # A real change is imported first; a broken file is named with its line.
    main_csv = folder / "main.csv"
    main_csv.write_text(CSV_HEADER + '"x@example.org","X"\n', encoding="utf-8")
    broken = invoke(project, "check")
    assert broken.exit_code == 1
    assert f"{main_csv}:2: expected 6 fields" in broken.stdout + broken.stderr
    refused = invoke(project, "import")
    assert refused.exit_code == 1
    assert "the last good import" in refused.stderr and "stays" in refused.stderr


def test_import_has_help() -> None:
    result = invoke(None, "import", "--help")
    assert result.exit_code == 0
    assert "--force" in result.stdout and "file:line" in result.stdout
