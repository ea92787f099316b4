"""Hostile input: nothing in a subscriber list or an entry can add a header, inject markup,
smuggle a script link, poison an exported CSV or exhaust memory."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from conftest import REPO, UPDATE, invoke, outbox_files, parse_message, part_text, recipient
from editing import refresh_sources


def add_row(config: Path, row: list[str]) -> None:
    with (config.parent / "subscribers" / "main.csv").open("a", encoding="utf-8", newline="") as f:
        csv.writer(f).writerow(row)


def outbox(config: Path) -> dict[str, bytes]:
    """The raw bytes of each message in the outbox, by recipient."""
    return {recipient(parse_message(raw)): raw for raw in outbox_files(config)}


def test_a_name_cannot_add_or_split_a_header(project: Path) -> None:
    # In a CSV file a cell cannot hold a line break: the whole file is refused.
    add_row(
        project,
        [
            "eve@example.org",
            "Eve\r\nBcc: victim\r\nX-Evil: 1",
            "en",
            "RU",
            "service-status",
            "active",
        ],
    )
    result = invoke(project, "send", UPDATE, "--yes", "--rate", "0")
    assert result.exit_code == 1 and "main.csv:23: unbalanced quote" in result.stderr, result.stderr
    assert not (project.parent / "outbox").exists()
    # In YAML it can: the name loses its line breaks and never reaches a header whole.
    (project.parent / "subscribers" / "main.csv").write_text(
        (REPO / "subscribers" / "main.csv").read_text(encoding="utf-8"), encoding="utf-8"
    )
    (project.parent / "subscribers" / "hostile.yaml").write_text(
        '- {email: eve@example.org, name: "Eve\\r\\nBcc: victim\\r\\nX-Evil: 1", locale: en,'
        " region: RU, topics: [service-status]}\n",
        encoding="utf-8",
    )
    result = invoke(project, "send", UPDATE, "--yes", "--rate", "0")
    assert result.exit_code == 0, result.stderr
    raw = outbox(project)["eve@example.org"]
    head = raw.split(b"\n\n", 1)[0]
    assert b"\nBcc:" not in head and b"\nX-Evil:" not in head
    message = parse_message(raw)
    assert message["Bcc"] is None and message["X-Evil"] is None
    assert len(message["To"].addresses) == 1
    assert message["To"].addresses[0].display_name == "Eve Bcc: victim X-Evil: 1"


def test_a_subject_that_reorders_what_the_reader_sees_is_refused(project: Path) -> None:
    """U+202E in a subject showed "gnp.exe" as "exe.png" (review)."""
    entry = project.parent / "updates" / f"{UPDATE}.yaml"
    text = entry.read_text(encoding="utf-8")
    text = text.replace('subject: "Update on the block', 'subject: "\\u202egnp.exe Update', 1)
    entry.write_text(text, encoding="utf-8")
    result = invoke(project, "check")
    assert result.exit_code == 1
    assert "holds U+202E, which reorders the text a mail client shows" in result.output


def test_a_subject_with_a_line_break_is_refused(project: Path) -> None:
    entry = project.parent / "updates" / f"{UPDATE}.yaml"
    text = entry.read_text(encoding="utf-8")
    text = text.replace(
        'subject: "Update on the block',
        'subject: "Hi\\nBcc: x@example.org\\nUpdate on the block',
        1,
    )
    entry.write_text(text, encoding="utf-8")
    result = invoke(project, "send", UPDATE, "--yes")
    assert result.exit_code == 1
    assert f"{UPDATE}.yaml:" in result.stderr and "must be one line" in result.stderr
    assert not (project.parent / "outbox").exists()


def test_names_and_markdown_html_are_escaped_in_the_html_part(project: Path) -> None:
    add_row(
        project,
        [
            "mallory@example.org",
            '<img src=x onerror="alert(1)">',
            "en",
            "RU",
            "service-status",
            "active",
        ],
    )
    entry = project.parent / "updates" / f"{UPDATE}.yaml"
    text = entry.read_text(encoding="utf-8").replace(
        "      Here is where things stand",
        "      <script>alert(document.domain)</script>\n\n      Here is where things stand",
        1,
    )
    entry.write_text(text, encoding="utf-8")
    refresh_sources(entry)
    result = invoke(project, "send", UPDATE, "--yes", "--rate", "0")
    assert result.exit_code == 0, result.stderr
    message = parse_message(outbox(project)["mallory@example.org"])
    html = part_text(message, "html")
    plain = part_text(message, "plain")
    assert "<img" not in html and "<script" not in html
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in html
    assert "&lt;script&gt;alert(document.domain)&lt;/script&gt;" in html
    assert "<script>alert(document.domain)</script>" in plain  # text is text: shown, never run


def test_a_javascript_link_stops_the_send(project: Path) -> None:
    entry = project.parent / "updates" / f"{UPDATE}.yaml"
    text = entry.read_text(encoding="utf-8").replace(
        "Here is where things stand",
        "[Click](javascript:alert(document.cookie)) Here is where things stand",
        1,
    )
    entry.write_text(text, encoding="utf-8")
    result = invoke(project, "send", UPDATE, "--yes")
    assert result.exit_code == 1
    assert (
        "javascript:alert(document.cookie)" in result.output and f"{UPDATE}.yaml:" in result.output
    )
    result = invoke(project, "check")
    assert result.exit_code == 1 and "javascript:" in result.output


def test_exported_csv_cannot_run_formulas(project: Path) -> None:
    risky = ["=1+2@example.org", "+sum@example.org", "-cmd@example.org"]
    result = invoke(project, "suppress", "add", "--detail", '=HYPERLINK("x")', "--", *risky)
    assert result.exit_code == 0, result.stderr
    result = invoke(project, "suppress", "add", "--detail", "@SUM(A1)", "ok@example.org")
    assert result.exit_code == 0, result.stderr
    result = invoke(project, "suppress", "export")
    assert result.exit_code == 0
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["email", "reason", "detail", "suppressed_at"]
    by_address = {row[0]: row for row in rows[1:]}
    assert set(by_address) == {"'" + address for address in risky} | {"ok@example.org"}
    assert all(by_address["'" + a][2] == '\'=HYPERLINK("x")' for a in risky)
    assert by_address["ok@example.org"][2] == "'@SUM(A1)"
    assert all(not cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row)


def test_suppress_add_list_remove_round_trip(project: Path) -> None:
    result = invoke(
        project, "suppress", "add", "Anna.Petrova@EXAMPLE.org", "--reason", "complained"
    )
    assert result.exit_code == 0, result.stderr
    result = invoke(project, "suppress", "list", "--json")
    assert '"anna.petrova@example.org"' in result.stdout and '"complained"' in result.stdout
    result = invoke(project, "send", UPDATE, "--yes", "--rate", "0")
    assert result.exit_code == 0, result.stderr
    assert "anna.petrova@example.org" not in outbox(project)
    result = invoke(project, "suppress", "remove", "anna.petrova@example.org")
    assert result.exit_code == 0
    result = invoke(project, "suppress", "list")
    assert "anna.petrova" not in result.stdout
    result = invoke(project, "suppress", "add", "not an address")
    assert result.exit_code == 1 and "not an address" in result.stderr


def test_absurdly_long_lines_and_files_give_a_clear_error(project: Path) -> None:
    subscribers = project.parent / "subscribers"
    with (subscribers / "huge.csv").open("w", encoding="utf-8") as handle:
        handle.write("email,name,locale,region,topics,status\n")
        handle.write("ok@example.org,Ok,en,RU,service-status,active\n")
        handle.write("x@example.org," + "A" * 5_000_000 + ",en,RU,service-status,active\n")
    result = invoke(project, "send", UPDATE, "--yes")
    assert result.exit_code == 1
    assert "huge.csv:3: line 3 is over 65536 characters" in result.output
    assert not (project.parent / "outbox").exists()
    (subscribers / "huge.csv").unlink()
    with (subscribers / "huge.yaml").open("w", encoding="utf-8") as handle:
        handle.write("- {email: y@example.org, name: '" + "B" * 5_000_000 + "'}\n")
    result = invoke(project, "send", UPDATE, "--yes")
    assert result.exit_code == 1 and "huge.yaml:1:" in result.output
    (subscribers / "huge.yaml").unlink()
    entry = project.parent / "updates" / "big-2020-05-01.yaml"
    entry.write_text("# " + "x" * (17 * 1024 * 1024) + "\n", encoding="utf-8")
    result = invoke(project, "check")
    assert (
        result.exit_code == 1
        and "big-2020-05-01.yaml: file is" in result.output
        and "the limit is" in result.output
    )


HOSTILE_TEMPLATES = {
    # a template reaching Python's internals ran commands and read the environment
    "code": "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "environment": "{{ lipsum.__globals__['os'].environ }}",
    # endless work held the CI runner for hours
    "range": "{% for i in range(10**10) %}{% endfor %}",
    "repeat": "{{ 'x' * 200000000 }}",
    "power": "{{ 10 ** 100000000 }}",
    # the template's own errors ended in a traceback and an empty test report
    "division": "{{ 1 // 0 }}",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("what", sorted(HOSTILE_TEMPLATES))
def test_a_hostile_template_is_refused_at_its_line(project: Path, what: str) -> None:
    """Templates are the project's files, changed in a pull request and rendered by CI's
    check and dry run (review: one put `id`'s output, /etc/passwd and the secrets in the
    uploaded preview; one never ended). Each is refused at its file and line."""
    template = project.parent / "templates" / "message.txt.j2"
    text = template.read_text(encoding="utf-8")
    template.write_text(text.replace("-- \n", HOSTILE_TEMPLATES[what] + "\n-- \n", 1), "utf-8")
    line = text[: text.index("-- \n")].count("\n") + 1
    preview = project.parent / "previews"
    for args in (("check",), ("send", UPDATE, "--dry-run", "--preview-dir", str(preview))):
        done = invoke(project, *args, env={"STATUSMAIL_UNSUBSCRIBE_SECRET": "s" * 40})
        assert done.exit_code == 1, (args, done.output)
        assert f"{template}:{line}:" in done.output, done.output
        assert "Traceback" not in done.output and "uid=" not in done.output
    written = [p.read_text("utf-8", "replace") for p in preview.rglob("*") if p.is_file()]
    assert not any("uid=" in text or "s" * 40 in text for text in written)


def test_a_template_that_links_out_of_the_templates_folder_is_refused(
    project: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("root:x:0:0:root:/root:/bin/bash\n", encoding="utf-8")
    templates = project.parent / "templates"
    (templates / "extra.txt.j2").symlink_to(outside)
    text = (templates / "message.txt.j2").read_text(encoding="utf-8")
    (templates / "message.txt.j2").write_text(
        text.replace("-- \n", "{% include 'extra.txt.j2' %}\n-- \n", 1), encoding="utf-8"
    )
    done = invoke(project, "check", env={"STATUSMAIL_UNSUBSCRIBE_SECRET": "s" * 40})
    assert done.exit_code == 1 and "leads out of" in done.output, done.output
    assert "root:x:0:0" not in done.output


def test_an_entry_id_no_file_can_have_is_no_entry(project: Path) -> None:
    """An id of 300 characters ended in a traceback ("File name too long")."""
    done = invoke(project, "send", "x" * 300, "--dry-run")
    assert done.exit_code == 1 and "no entry" in done.output, done.output
    assert "Traceback" not in done.output
