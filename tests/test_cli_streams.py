"""Reports go to stdout, diagnostics to stderr (issue 24): ``check``'s report and the
dry run's are the output, so ``> file`` or ``| less`` keeps them whole, while log lines,
warnings and errors stay on the terminal. ``--preview-dir`` is per ID for one ID too."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import UPDATE, invoke


def test_check_reports_on_stdout_and_a_machine_format_keeps_it_for_the_machine(
    project: Path,
) -> None:
    entry = project.parent / "updates" / f"{UPDATE}.yaml"
    entry.write_text(
        entry.read_text(encoding="utf-8").replace("status: ready", "status: redy"),
        encoding="utf-8",
    )
    text = invoke(project, "check")
    assert text.exit_code == 1
    assert f"{entry}:5: status is 'redy'" in text.stdout
    assert ": warning: " in text.stdout  # a warning found is part of the report
    assert text.stdout.endswith("checked 2 entries, 28 subscribers: 1 problem(s)\n")
    assert text.stderr == ""

    junit = invoke(project, "check", "--format", "junit")
    assert junit.exit_code == 1
    assert junit.stdout.startswith("<?xml") and junit.stdout.endswith("</testsuites>\n")
    assert junit.stderr == "checked 2 entries, 28 subscribers: 1 problem(s)\n"

    (project.parent / "statusmail.yaml").write_text("smtp: [\n", encoding="utf-8")
    unreadable = invoke(project, "check")  # nothing could start: an error, on stderr
    assert unreadable.exit_code == 1
    assert unreadable.stdout == "" and "statusmail.yaml:" in unreadable.stderr


def test_the_dry_run_reports_on_stdout_and_its_errors_on_stderr(
    project: Path, tmp_path: Path
) -> None:
    previews = tmp_path / "p"
    result = invoke(project, "send", UPDATE, "--dry-run", "--preview-dir", str(previews))
    assert result.exit_code == 0, result.output
    report = result.stdout.splitlines()
    assert report[0].startswith(f"{UPDATE} (dry run, status ready): 14 recipients")
    assert report[-1].startswith(f"  previews: 13 files in {previews / UPDATE}/")
    assert result.stderr == ""

    template = project.parent / "templates" / "message.txt.j2"
    template.write_text(
        template.read_text(encoding="utf-8") + "{{ no_such_variable }}\n", encoding="utf-8"
    )
    broken = invoke(project, "send", UPDATE, "--dry-run", "--preview-dir", str(previews))
    assert broken.exit_code == 1
    assert broken.stdout == "" and "no_such_variable" in broken.stderr


def test_preview_dir_is_per_id_for_one_id(project: Path, tmp_path: Path) -> None:
    previews = tmp_path / "p"
    result = invoke(project, "send", UPDATE, "--dry-run", "--preview-dir", str(previews), "--json")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in previews.iterdir()) == [UPDATE]
    assert (previews / UPDATE / "index.html").exists()
    assert json.loads(result.stdout)["previews"] == str(previews / UPDATE)


def test_send_prints_its_closing_table_on_stdout_and_acts_on_stderr(project: Path) -> None:
    """``send ID --yes > sent.txt`` keeps the table of what was sent; a re-send's line
    saying it was already sent is the report too. The log lines stay on stderr."""
    sent = invoke(project, "send", UPDATE, "--yes")
    assert sent.exit_code == 0, sent.output
    table = sent.stdout.splitlines()
    assert table[0].strip() == UPDATE  # the table's title
    total = next(line for line in table if "total" in line)
    assert total.split("│")[3].strip() == "14"  # locale, region, sent: every recipient
    assert "total" not in sent.stderr and "14 selected" in sent.stderr

    again = invoke(project, "send", UPDATE, "--yes")
    assert again.exit_code == 0, again.output
    assert again.stdout.startswith(f"{UPDATE} was already sent: 14 messages")
    assert "already sent" not in again.stderr
