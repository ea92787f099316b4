"""`statusmail check`: passes on the sample, fails with `file:line: message` on each problem.

The tests run the CLI and read its stderr and exit code, as CI would: the first in a real
process (`python -m statusmail check`, conftest's ``statusmail``), the others in this one
through click's runner (conftest's ``invoke``), which is the same command without the
start-up.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import invoke, problem_lines, statusmail
from editing import line_of, replace_in
from statusmail.project.config import load_config
from statusmail.validation import check_project

UPDATE = "updates/update-2020-04-21.yaml"
BLOCK = "updates/block-2020-01-23.yaml"
PO = "templates/locale/ru/LC_MESSAGES/messages.po"
SECRET_WARNING = "$STATUSMAIL_UNSUBSCRIBE_SECRET is not set"


# -- the sample passes ---------------------------------------------------------------


def test_sample_passes_with_dev_secret_warning(project: Path) -> None:
    run = statusmail(project, "check")
    assert run.returncode == 0, run.stdout
    assert problem_lines(run.stdout) == []
    warnings = [line for line in run.stdout.splitlines() if ": warning: " in line]
    assert len(warnings) == 1
    at = line_of(project, "unsubscribe:")
    assert warnings[0].startswith(f"{project}:{at}: warning: {SECRET_WARNING}")
    # 2 entries; 29 rows, one a duplicate spelling of Anna Petrova's address: 28.
    assert "checked 2 entries, 28 subscribers: ok" in run.stdout


def test_sample_passes_without_warning_when_secret_is_set(project: Path) -> None:
    secret = "a-real-secret-of-at-least-32-bytes"
    run = invoke(project, "check", env={"STATUSMAIL_UNSUBSCRIBE_SECRET": secret})
    assert run.exit_code == 0, run.output
    assert "warning" not in run.output
    assert "checked 2 entries, 28 subscribers: ok" in run.output


def test_sample_passes_in_process(project: Path) -> None:
    report = check_project(load_config(project))
    assert report.ok
    assert report.problems == []
    assert report.subscribers == 28
    assert [str(w) for w in report.warnings] == [
        f"{project}:{line_of(project, 'unsubscribe:')}: warning: {SECRET_WARNING}; the "
        "development unsubscribe secret is used (fine for the maildir outbox only)"
    ]


def test_a_subscriber_topic_the_config_lacks_is_a_warning_naming_the_one_meant(
    project: Path,
) -> None:
    """Ivan's topic written Service-Status, Jan's service_status: check said nothing,
    and neither got an entry for service-status (review). A warning, as an audience
    that no subscriber matches is: the rest of the list still gets the news."""
    lists = project.parent / "subscribers"
    main = lists / "main.csv"
    replace_in(
        main,
        "ivan.smirnov@example.com,Иван Смирнов,ru-RU,RU,service-status,",
        ("ivan.smirnov@example.com,Иван Смирнов,ru-RU,RU,Service-Status,"),
    )
    with main.open("a", encoding="utf-8") as handle:
        handle.write("jan@example.org,Jan,en,RU,service_status;elsewhere,active\n")
    report = check_project(load_config(project))
    assert report.ok
    found = [str(w) for w in report.warnings if w.code == "subscriber-topic"]
    topics = "(product-news, service-status)"
    assert found == [
        f"{lists}: warning: 1 active subscriber with the topic 'Service-Status', which is "
        f"not one of the config's topics {topics}: no entry reaches them by it (did you "
        "mean 'service-status'?)",
        f"{lists}: warning: 1 active subscriber with the topic 'elsewhere', which is not "
        f"one of the config's topics {topics}: no entry reaches them by it",
        f"{lists}: warning: 1 active subscriber with the topic 'service_status', which is "
        f"not one of the config's topics {topics}: no entry reaches them by it (did you "
        "mean 'service-status'?)",
    ]


def body_problems(project: Path, inserted: str, code: str) -> list[str]:
    """The messages of check's problems with ``code`` once ``inserted`` is in the English
    body of the April update."""
    replace_in(project.parent / UPDATE, "Thank you for", f"{inserted} Thank you for")
    return [p.message for p in check_project(load_config(project)).problems if p.code == code]


@pytest.mark.parametrize(
    "target", ["www.startmail.example/blog", "/status/faq", "notice.html", "//status.example/x"]
)
def test_a_link_without_a_scheme_is_refused(project: Path, target: str) -> None:
    """It passed check and went out as it was: an href no message can resolve."""
    assert body_problems(project, f"See [the notes]({target}).", "relative-link") == [
        f"link {target!r} in the en body has no scheme, so it does not open from a message: "
        "write it whole, as https://…"
    ]


def test_an_escaped_exclamation_mark_before_a_link_is_not_an_image(project: Path) -> None:
    assert body_problems(project, "Good news\\![Read it](https://status.example/n).", "image") == []


def test_an_image_in_a_body_is_refused(project: Path) -> None:
    """It passed check and went out as '!' and a link to the image (review)."""
    image = "https://www.startmail.example/map.png"
    [found] = body_problems(project, f"![the map]({image})", "image")
    assert f"an image ({image!r}) in the en body" in found


def test_the_report_is_on_stdout_and_nothing_else_on_stderr(project: Path) -> None:
    (project.parent / UPDATE).write_text(
        (project.parent / UPDATE)
        .read_text(encoding="utf-8")
        .replace("status: ready", "status: redy"),
        encoding="utf-8",
    )
    result = invoke(project, "check")
    assert result.exit_code == 1
    assert f"{project.parent / UPDATE}:5: status is 'redy'" in result.stdout
    assert result.stdout.endswith("checked 2 entries, 28 subscribers: 1 problem(s)\n")
    assert result.stderr == ""


def test_smtp_transport_without_secret_is_a_problem(project: Path) -> None:
    run = invoke(project, "check", env={"STATUSMAIL_TRANSPORT": "smtp"})
    assert run.exit_code == 1
    assert any(
        line.startswith(f"{project}:{line_of(project, 'unsubscribe:')}: $STATUSMAIL_UNSUBSCRIBE")
        for line in problem_lines(run.output)
    ), run.output


@pytest.mark.parametrize("content", [None, b"not a certificate\n"], ids=["missing", "broken"])
def test_a_relay_ca_file_that_cannot_be_loaded_fails_check_and_send_alike(
    project: Path, content: bytes | None
) -> None:
    """check passed it; send failed at its first connection, naming no config line."""
    replace_in(project, "  # ca_file: relay-ca.pem ", "  ca_file: relay-ca.pem   ")
    if content is not None:
        (project.parent / "relay-ca.pem").write_bytes(content)
    env = {
        "STATUSMAIL_TRANSPORT": "smtp",
        "STATUSMAIL_UNSUBSCRIBE_SECRET": "s" * 40,
        "STATUSMAIL_SMTP_PASSWORD": "relay",
    }
    said = f"{project}:{line_of(project, 'smtp:')}: smtp ca_file: cannot load the CA file "
    said += str(project.parent / "relay-ca.pem")
    check = invoke(project, "check", env=env)
    assert check.exit_code == 1, check.output
    assert said in check.stdout, check.stdout
    send = invoke(project, "send", "update-2020-04-21", "--yes", env=env)
    assert send.exit_code == 1, send.output
    assert said in send.stderr, send.stderr
    assert "Traceback" not in send.output


# -- each problem fails with its file:line -----------------------------------------


def test_broken_yaml_in_entry_bad_indentation(project: Path) -> None:
    entry = project.parent / UPDATE
    # `thread:` indented under the scalar `status: ready` is not valid YAML.
    line = replace_in(entry, "thread: block-2020-01-23", "  thread: block-2020-01-23")
    assert line == 6
    run = invoke(project, "check")
    assert run.exit_code == 1
    assert len(problem_lines(run.output)) == 1, run.output
    assert problem_lines(run.output)[0].startswith(f"{entry}:{line}: invalid YAML")


def test_broken_yaml_in_entry_duplicate_key(project: Path) -> None:
    entry = project.parent / UPDATE
    line = replace_in(entry, "thread: block-2020-01-23", "status: draft")
    run = invoke(project, "check")
    assert run.exit_code == 1
    assert problem_lines(run.output) == [f"{entry}:{line}: invalid YAML: duplicate key 'status'"]


def test_broken_yaml_in_entry_tab_indentation(project: Path) -> None:
    entry = project.parent / UPDATE
    line = replace_in(entry, "access_instructions: true\n", "access_instructions: true\n\tx: 1\n")
    run = invoke(project, "check")
    assert run.exit_code == 1
    assert len(problem_lines(run.output)) == 1, run.output
    # the tab is on the line after access_instructions
    assert problem_lines(run.output)[0].startswith(f"{entry}:{line + 1}: invalid YAML")


def test_missing_ru_block_for_russian_audience(project: Path) -> None:
    entry = project.parent / UPDATE
    text = entry.read_text(encoding="utf-8")
    entry.write_text(text[: text.index("\n  ru:\n") + 1], encoding="utf-8")
    content_line = line_of(entry, "content:\n")
    run = invoke(project, "check")
    assert run.exit_code == 1
    # RU, BY and KZ readers resolve to ru: the entry needs Russian content.
    assert problem_lines(run.output) == [
        f"{entry}:{content_line}: subscribers in the audience read ru but the entry has no "
        "content in it"
    ]


def test_untranslated_catalog_string(project: Path) -> None:
    po = project.parent / PO
    msgid_line = line_of(po, 'msgid "Unsubscribe"')
    replace_in(po, 'msgstr "Отписаться"', 'msgstr ""')
    run = invoke(project, "check")
    assert run.exit_code == 1
    assert problem_lines(run.output) == [f"{po}:{msgid_line}: 'Unsubscribe' is untranslated"]


def test_fuzzy_catalog_string(project: Path) -> None:
    po = project.parent / PO
    msgid_line = line_of(po, 'msgid "Hello,"')
    replace_in(po, 'msgid "Hello,"\n', '#, fuzzy\nmsgid "Hello,"\n')
    run = invoke(project, "check")
    assert run.exit_code == 1
    assert problem_lines(run.output) == [f"{po}:{msgid_line + 1}: 'Hello,' is fuzzy"]


def test_msgid_missing_from_catalog(project: Path) -> None:
    template = project.parent / "templates/message.txt.j2"
    line = replace_in(template, '{{ _("Hello,") }}', '{{ _("Hello there,") }}')
    po = project.parent / PO
    run = invoke(project, "check")
    assert run.exit_code == 1
    assert len(problem_lines(run.output)) == 1, run.output
    problem = problem_lines(run.output)[0]
    assert problem.startswith(f"{po}: 'Hello there,'")
    assert f"(used at {template}:{line})" in problem
    assert "is not in the catalog" in problem


def test_invalid_address_in_csv(project: Path) -> None:
    csv_path = project.parent / "subscribers/main.csv"
    text = csv_path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    bad_line = len(text.splitlines()) + 1  # header + 21 rows, so line 23
    assert bad_line == 23
    csv_path.write_text(
        text + "not-an-address,Nobody,en,US,service-status,active\n", encoding="utf-8"
    )
    run = invoke(project, "check")
    assert run.exit_code == 1
    assert len(problem_lines(run.output)) == 1, run.output
    assert problem_lines(run.output)[0].startswith(
        f"{csv_path}:{bad_line}: invalid address 'not-an-address'"
    )


def test_unknown_region_in_audience(project: Path) -> None:
    entry = project.parent / UPDATE
    replace_in(entry, "regions: [RU, BY, KZ]", "regions: [RU, XX]")
    audience_line = line_of(entry, "audience:")
    run = invoke(project, "check")
    assert run.exit_code == 1
    assert problem_lines(run.output) == [
        f"{entry}:{audience_line}: unknown region 'XX' (not in regions)"
    ]


def test_thread_naming_no_entry(project: Path) -> None:
    entry = project.parent / UPDATE
    line = replace_in(entry, "thread: block-2020-01-23", "thread: block-2020-01-32")
    run = invoke(project, "check")
    assert run.exit_code == 1
    assert problem_lines(run.output) == [
        f"{entry}:{line}: thread 'block-2020-01-32' names no entry"
    ]


def test_a_thread_naming_its_own_entry_fails_check_and_send(project: Path) -> None:
    """Each message would carry its own Message-ID as In-Reply-To and References."""
    entry = project.parent / UPDATE
    replace_in(entry, "thread: block-2020-01-23", "thread: update-2020-04-21")
    said = f"{entry}:{line_of(entry, 'thread:')}: thread 'update-2020-04-21' is this entry"
    check = invoke(project, "check")
    assert check.exit_code == 1 and said in check.stdout, check.output
    send = invoke(project, "send", "update-2020-04-21", "--yes")
    assert send.exit_code == 1 and said in send.stderr, send.output


def test_status_typo(project: Path) -> None:
    entry = project.parent / UPDATE
    line = replace_in(entry, "status: ready", "status: redy")
    run = invoke(project, "check")
    assert run.exit_code == 1
    assert problem_lines(run.output) == [
        f"{entry}:{line}: status is 'redy'; expected draft or ready"
    ]


def test_id_does_not_match_file_stem(project: Path) -> None:
    entry = project.parent / UPDATE
    line = replace_in(entry, "id: update-2020-04-21", "id: update-2020-04-22")
    run = invoke(project, "check")
    assert run.exit_code == 1
    assert problem_lines(run.output) == [
        f"{entry}:{line}: id 'update-2020-04-22' does not match the file name 'update-2020-04-21'"
    ]


def test_broken_regions_yaml(project: Path) -> None:
    regions = project.parent / "regions.yaml"
    line = replace_in(regions, "name: {en: Russia, ru: Россия}", "name: {en: Russia, ru: Россия}}")
    run = invoke(project, "check")
    assert run.exit_code == 1
    assert problem_lines(run.output)[0].startswith(f"{regions}:{line}: invalid YAML"), run.output


def test_region_access_without_ru_text(project: Path) -> None:
    regions = project.parent / "regions.yaml"
    text = regions.read_text(encoding="utf-8")
    start, end = text.index("    ru: |\n"), text.index("BY:\n")
    regions.write_text(text[:start] + text[end:], encoding="utf-8")
    access_line = line_of(regions, "  access:\n")
    run = invoke(project, "check")
    assert run.exit_code == 1
    assert problem_lines(run.output) == [
        f"{regions}:{access_line}: region RU has no 'ru' access instructions"
    ]


def test_region_access_with_empty_ru_text(project: Path) -> None:
    regions = project.parent / "regions.yaml"
    text = regions.read_text(encoding="utf-8")
    start, end = text.index("    ru: |\n"), text.index("BY:\n")
    regions.write_text(text[:start] + '    ru: ""\n' + text[end:], encoding="utf-8")
    run = invoke(project, "check")
    assert run.exit_code == 1
    access_line = line_of(regions, "  access:\n")
    assert problem_lines(run.output) == [
        f"{regions}:{access_line}: region RU has no 'ru' access instructions"
    ]


def test_javascript_link_in_body(project: Path) -> None:
    entry = project.parent / UPDATE
    replace_in(
        entry,
        "      The preliminary hearing has been scheduled for June 3, 2020.\n",
        "      The preliminary hearing is [scheduled](javascript:alert(document.cookie)).\n",
    )
    body_line = line_of(entry, "  en:\n") + 4  # subject, a summary on two lines, body
    run = invoke(project, "check")
    assert run.exit_code == 1
    # The English changed, so the ru translation is stale too; one problem is the link.
    links = [p for p in problem_lines(run.output) if " link " in p]
    assert len(links) == 1, run.output
    assert links[0].startswith(f"{entry}:{body_line}: link 'javascript:alert")
    assert "in the en body is not allowed" in links[0]


def test_javascript_link_in_ru_body_names_ru_block(project: Path) -> None:
    entry = project.parent / BLOCK
    text = entry.read_text(encoding="utf-8")
    body = text.index("    body: |\n", text.index("  ru:\n")) + len("    body: |\n")
    ru_line = text[:body].count("\n")  # the ru block's body: key
    entry.write_text(
        text[:body] + "      [Жмите](JavaScript:void(0))\n\n" + text[body:], encoding="utf-8"
    )
    run = invoke(project, "check")
    assert run.exit_code == 1
    assert len(problem_lines(run.output)) == 1, run.output
    assert problem_lines(run.output)[0].startswith(f"{entry}:{ru_line}: link 'JavaScript:void")
    assert "in the ru body" in problem_lines(run.output)[0]


def test_every_javascript_link_is_reported(project: Path) -> None:
    entry = project.parent / UPDATE
    replace_in(
        entry,
        "      The preliminary hearing has been scheduled for June 3, 2020.\n",
        "      See [one](javascript:one) and [two](javascript:two).\n",
    )
    run = invoke(project, "check")
    assert run.exit_code == 1
    assert any("'javascript:one'" in p for p in problem_lines(run.output)), run.output
    assert any("'javascript:two'" in p for p in problem_lines(run.output)), run.output


def test_impossible_date_is_a_located_problem(project: Path) -> None:
    entry = project.parent / UPDATE
    line = replace_in(entry, "date: 2020-04-21", "date: 2020-04-31")
    run = invoke(project, "check")
    assert run.exit_code == 1
    assert len(problem_lines(run.output)) == 1
    assert problem_lines(run.output)[0].startswith(f"{entry}:{line}: ")


def test_several_problems_all_reported(project: Path) -> None:
    root = project.parent
    status_line = replace_in(root / UPDATE, "status: ready", "status: redy")
    csv_path = root / "subscribers/main.csv"
    bad_region_line = replace_in(
        csv_path,
        "jan.devries@example.net,Jan de Vries,en,NL,",
        "jan.devries@example.net,Jan de Vries,en,NLD,",
    )
    run = invoke(project, "check")
    assert run.exit_code == 1
    assert (
        f"{root / UPDATE}:{status_line}: status is 'redy'; expected draft or ready"
        in problem_lines(run.output)
    )
    assert f"{csv_path}:{bad_region_line}: region 'NLD' is not an ISO 3166-1 code" in problem_lines(
        run.output
    )
    assert "2 problem(s)" in run.output


def test_empty_entry_file_is_a_problem(project: Path) -> None:
    new = project.parent / "updates/update-2020-05-01.yaml"
    new.write_text("")
    run = invoke(project, "check")
    assert run.exit_code == 1
    assert problem_lines(run.output)
    assert all(p.startswith(str(new)) for p in problem_lines(run.output))


def test_one_entry_and_one_recipient_are_said_in_the_singular(project: Path) -> None:
    """What comms read: "checked 1 entry", "1 recipient", "1 duplicate row"."""
    updates = project.parent / "updates"
    for extra in updates.glob("*.yaml"):
        if extra.stem != "update-2020-04-21":
            extra.unlink()
    replace_in(updates / "update-2020-04-21.yaml", "thread: block-2020-01-23\n", "")
    replace_in(
        updates / "update-2020-04-21.yaml",
        "regions: [RU, BY, KZ]",
        "regions: [KZ]\n  locales: [en]",
    )
    checked = invoke(project, "check")
    assert checked.exit_code == 0, checked.output
    assert "checked 1 entry, " in checked.stdout, checked.stdout
    previews = str(project.parent / "previews")
    dry = invoke(project, "send", "update-2020-04-21", "--dry-run", "--preview-dir", previews)
    assert dry.exit_code == 0, dry.output
    assert ": 1 recipient, " in dry.stdout and "1 duplicate row in the lists" in dry.stdout
    sent = invoke(project, "send", "update-2020-04-21", "--yes")
    assert sent.exit_code == 0, sent.output
    said = " ".join(sent.output.split())
    assert "1 selected recipient;" in said, sent.output
    assert "1 duplicate row in the lists" in said, sent.output


def test_what_tools_leave_beside_the_entries_is_not_an_entry(project: Path) -> None:
    updates = project.parent / "updates"
    (updates / "._update-2020-04-21.yaml").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac")
    checked = invoke(project, "check")
    assert checked.exit_code == 0, checked.output


def test_an_address_in_the_locale_column_is_masked_in_the_dry_run(project: Path) -> None:
    """A row whose columns ran together (a CRM export) put an address where the locale
    goes: the dry run, its JSON and CI's summary printed it whole as the unsupported
    locale that fell back to English."""
    hidden = "hidden.person@example.com"
    with (project.parent / "subscribers" / "main.csv").open("a", encoding="utf-8") as handle:
        handle.write(f"shifted.one@example.org,Shifted One,{hidden},RU,service-status,active\n")
    previews = str(project.parent / "previews")
    for args in ((), ("--json",)):
        dry = invoke(
            project, "send", "update-2020-04-21", "--dry-run", "--preview-dir", previews, *args
        )
        assert dry.exit_code == 0, dry.output
        assert hidden not in dry.output and "h***@example.com" in dry.output, dry.output
