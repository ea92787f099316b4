"""The README's first command, end to end: the April 21 update into the maildir outbox."""

from __future__ import annotations

import json
import re
from email.message import EmailMessage
from pathlib import Path

import pytest

from conftest import (
    UPDATE,
    copy_sample,
    invoke,
    outbox_files,
    outbox_messages,
    parse_message,
    part_text,
    recipient,
)

# Who the sample data says gets update-2020-04-21: active, topic service-status,
# region RU, BY or KZ (see subscribers/), with the language each resolves to.
EXPECTED_UPDATE = {
    "anna.petrova@example.org": ("ru", "RU"),
    "ivan.smirnov@example.com": ("ru", "RU"),
    "olga.kuznetsova@example.net": ("ru", "RU"),
    "dmitry.volkov@example.org": ("en", "RU"),
    "kate.morozova@example.com": ("en", "RU"),
    "sergey.orlov@example.net": ("ru", "RU"),
    "elena.sokolova@example.org": ("ru", "RU"),
    "maria@xn--e1afmkfd.xn--80akhbyknj4f": ("ru", "RU"),
    "viktor.egorov@example.com": ("ru", "RU"),
    "alexander.kozlov@example.com": ("ru", "BY"),
    "hanna.sidarenka@example.net": ("ru", "BY"),
    "aigerim.nurlanova@example.org": ("ru", "KZ"),
    "daniyar.abenov@example.com": ("en", "KZ"),  # chose de: English, not the region's guess
    "alexei.popov@xn--e1afmkfd.xn--80akhbyknj4f": ("ru", "KZ"),
}
NEVER = {
    "pavel.lebedev@example.com",
    "tatiana.belova@example.org",
    "mia.weber@example.net",
    "natalia.fedorova@example.net",
    "nikolai.zaitsev@example.net",
    "john.miller@example.net",
}
WWW = "https://www.startmail.example/"
SUFFIXES = (".eml", ".html", ".txt")
RU_DATE = "21\u00a0апреля 2020\u00a0г."  # no line breaks inside
EN_DATE = "April\u00a021,\u00a02020"
ACCESS_MARKERS = ("startmail-ru.test", ".onion")


def send_update(config: Path) -> tuple[Path, list[EmailMessage]]:
    result = invoke(config, "send", UPDATE, "--yes", "--rate", "0")
    assert result.exit_code == 0, result.stderr
    return config, outbox_messages(config)


@pytest.fixture(scope="module")
def sent(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[EmailMessage]]:
    """One send for the tests that only read what it wrote."""
    return send_update(copy_sample(tmp_path_factory.mktemp("sent") / "project"))


def test_delivers_to_exactly_the_affected_subscribers_once(
    sent: tuple[Path, list[EmailMessage]],
) -> None:
    _, messages = sent
    addresses = [recipient(m) for m in messages]
    assert sorted(addresses) == sorted(EXPECTED_UPDATE)
    assert not NEVER & set(addresses)


def test_rerun_adds_nothing_and_status_agrees(project: Path) -> None:
    config, messages = send_update(project)
    again = invoke(config, "send", UPDATE, "--yes")
    assert again.exit_code == 0, again.stderr
    assert len(outbox_messages(config)) == len(messages)
    status = invoke(config, "status", UPDATE, "--json")
    assert status.exit_code == 0, status.stderr
    counts = json.loads(status.stdout)
    assert counts["sent"] == len(EXPECTED_UPDATE)
    assert (counts["failed"], counts["pending"], counts["skipped"]) == (0, 0, 0)
    listing = json.loads(invoke(config, "list", "--json").stdout)
    row = next(r for r in listing if r["id"] == UPDATE)
    assert row["sent"] == len(EXPECTED_UPDATE) and row["progress"] == "14/14"


def test_every_message_is_well_formed(sent: tuple[Path, list[EmailMessage]]) -> None:
    config, messages = sent
    for raw in outbox_files(config):
        # RFC 5322 3.3: a numeric zone ("GMT" is obsolete syntax), +0000 for UTC
        date = re.search(rb"^Date: (.*?)\r?$", raw, re.MULTILINE)
        assert date is not None and re.fullmatch(
            rb"\w{3}, \d\d \w{3} \d{4} [\d:]{8} \+0000", date[1]
        )
    message_ids = set()
    for message in messages:
        assert message.get_content_type() == "multipart/alternative"
        parts = list(message.iter_parts())
        assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
        for part in parts:
            assert part.get_content_charset() == "utf-8"
            assert part["Content-Transfer-Encoding"] != "base64"
        for header in (
            "From",
            "To",
            "Subject",
            "Date",
            "Message-ID",
            "List-Id",
            "List-Unsubscribe",
            "List-Unsubscribe-Post",
            "Auto-Submitted",
            "Content-Language",
        ):
            assert message[header], header
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert message["Auto-Submitted"] == "auto-generated"
        assert "status.startmail.example" in message["List-Id"]
        unsubscribe = message["List-Unsubscribe"]
        # Readers in Russia get every link on the mirror: the service's domain is blocked.
        _, region = EXPECTED_UPDATE[recipient(message)]
        site = "https://startmail-ru.test/" if region == "RU" else WWW
        assert f"<{site}status/unsubscribe/" in unsubscribe
        mail_domain = "startmail-mirror.example" if region == "RU" else "startmail.example"
        assert f"<mailto:unsubscribe@{mail_domain}?" in unsubscribe
        assert message["Cc"] is None and message["Bcc"] is None
        html = parts[1].get_content()
        text = parts[0].get_content()
        assert "<img" not in html and "<script" not in html and "src=" not in html
        assert f"{site}status/unsubscribe/" in html
        if region == "RU":
            assert WWW not in html and WWW not in text and WWW not in unsubscribe
        message_ids.add(message["Message-ID"])
        # threading: the update follows up the January notice
        assert message["In-Reply-To"].startswith("<block-2020-01-23.")
        assert message["References"] == message["In-Reply-To"]
    assert len(message_ids) == len(messages)


def test_language_dates_and_access_block(sent: tuple[Path, list[EmailMessage]]) -> None:
    _, messages = sent
    for message in messages:
        address = recipient(message)
        locale, region = EXPECTED_UPDATE[address]
        text = part_text(message, "plain")
        html = part_text(message, "html")
        subject = message["Subject"]
        assert message["Content-Language"] == locale
        has_cyrillic = any("а" <= ch.lower() <= "я" for ch in subject)
        assert has_cyrillic == (locale == "ru"), (address, subject)
        if locale == "ru":
            assert RU_DATE in text and RU_DATE in html
            assert "Здравствуйте" in text
        else:
            assert EN_DATE in text and EN_DATE in html
        for marker in ACCESS_MARKERS:
            assert (marker in text) == (region == "RU"), (address, marker)
            assert (marker in html) == (region == "RU"), (address, marker)
            assert marker not in subject


def test_names_are_greeted_and_cyrillic_names_survive(
    sent: tuple[Path, list[EmailMessage]],
) -> None:
    _, messages = sent
    by_address = {recipient(m): m for m in messages}
    anna = by_address["anna.petrova@example.org"]
    assert anna["To"].addresses[0].display_name == "Анна Петрова"
    assert "Здравствуйте, Анна Петрова!" in part_text(anna, "plain")
    nameless = by_address["elena.sokolova@example.org"]
    assert "Здравствуйте!" in part_text(nameless, "plain")
    # the IDN address goes out with its domain in ASCII, the name encoded
    maria = by_address["maria@xn--e1afmkfd.xn--80akhbyknj4f"]
    assert maria["To"].addresses[0].display_name == "Мария Иванова"


def test_dry_run_touches_no_ledger_and_writes_previews(project: Path, tmp_path: Path) -> None:
    previews = tmp_path / "previews" / UPDATE  # always PREVIEW_DIR/ID/
    args = ("--dry-run", "--preview-dir", str(previews.parent), "--json")
    result = invoke(project, "send", UPDATE, *args)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["selected"] == report["rendered"] == len(EXPECTED_UPDATE)
    assert report["by_locale"] == {"ru": 11, "en": 3}
    assert report["by_region"] == {"RU": 9, "BY": 2, "KZ": 3}
    assert not (project.parent / "statusmail.db").exists()
    assert not (project.parent / "outbox").exists()
    names = sorted(p.name for p in previews.iterdir())
    assert names == sorted(
        ["index.html"]
        + [f"{label}{suffix}" for label in ("en", "en-RU", "ru", "ru-RU") for suffix in SUFFIXES]
    )
    index = (previews / "index.html").read_text(encoding="utf-8")
    for label in ("en", "en-RU", "ru", "ru-RU"):
        assert f'href="{label}.html"' in index
    ru_ru = parse_message((previews / "ru-RU.eml").read_bytes())
    assert "startmail-ru.test" in part_text(ru_ru, "plain")
    ru = (previews / "ru.html").read_text(encoding="utf-8")
    assert "startmail-ru.test" not in ru and RU_DATE in ru
    # previews never carry a real subscriber's address
    assert "example.org" not in index


def test_dry_run_fails_when_a_recipient_cannot_render(project: Path, tmp_path: Path) -> None:
    template = project.parent / "templates" / "message.txt.j2"
    template.write_text(
        template.read_text(encoding="utf-8") + "{{ no_such_variable }}\n", encoding="utf-8"
    )
    result = invoke(project, "send", UPDATE, "--dry-run", "--preview-dir", str(tmp_path / "p"))
    assert result.exit_code == 1
    assert "no_such_variable" in result.stderr


def test_draft_is_never_sent(project: Path) -> None:
    entry = project.parent / "updates" / "update-2020-04-21.yaml"
    entry.write_text(
        entry.read_text(encoding="utf-8").replace("status: ready", "status: draft"),
        encoding="utf-8",
    )
    result = invoke(project, "send", UPDATE, "--yes")
    assert result.exit_code == 1
    assert "draft" in result.stderr and "update-2020-04-21.yaml:" in result.stderr
    assert not (project.parent / "outbox").exists()


def test_invalid_row_is_skipped_reported_and_recorded(project: Path) -> None:
    csv_path = project.parent / "subscribers" / "main.csv"
    lines = csv_path.read_text(encoding="utf-8").splitlines()
    lines.append("broken@@example.org,Broken,ru,RU,service-status,active")
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = invoke(project, "send", UPDATE, "--yes", "--rate", "0", "--json")
    assert result.exit_code == 0, result.stderr
    assert f"main.csv:{len(lines)}:" in result.stderr
    counts = json.loads(result.stdout)["counts"]
    assert counts["sent"] == len(EXPECTED_UPDATE) and counts["skipped"] == 1


@pytest.mark.parametrize("order", ["valid first", "invalid first"])
def test_a_second_row_with_a_typo_never_costs_the_subscriber_the_entry(
    project: Path, order: str
) -> None:
    """The list's row problems are staged before its subscribers, under the address as
    written: an invalid row for an address took its place, and its valid row was
    dropped as a duplicate, recorded skipped and never sent to (the dry run counted it)."""
    rows = [
        "bob@example.com,Bob,ru,RU,service-status,active",
        "bob@example.com,Bob again,ru,RU,service-status,actve",  # the typo
    ]
    rows = rows if order == "valid first" else rows[::-1]
    (project.parent / "subscribers" / "extra.csv").write_text(
        "email,name,locale,region,topics,status\n" + "\n".join(rows) + "\n", encoding="utf-8"
    )
    result = invoke(project, "send", UPDATE, "--yes", "--rate", "0", "--json")
    assert result.exit_code == 0, result.stderr
    assert "bob@example.com" in {recipient(m) for m in outbox_messages(project)}
    assert json.loads(result.stdout)["counts"]["sent"] == len(EXPECTED_UPDATE) + 1


def test_unknown_entry_is_a_clear_error(project: Path) -> None:
    result = invoke(project, "send", "update-2099-01-01", "--yes")
    assert result.exit_code == 1
    assert "update-2099-01-01" in result.stderr and UPDATE in result.stderr
