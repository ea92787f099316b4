"""Mail addresses that work behind the block (issue 25, item 6): a region names its own
List-Unsubscribe mailto and Reply-To, its readers get them, a mailto unsubscribe sent
there is read back by ``feedback``, and ``check`` warns about a region behind a block
whose readers still get addresses on the blocked domain.

The sample project is sent once into its Maildir outbox; the unsubscribe goes through a
real SMTP server that delivers into the real bounce Maildir, as the MTA does."""

from __future__ import annotations

import json
import re
import sqlite3
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from conftest import (
    SECRET_ENV,
    UPDATE,
    copy_sample,
    invoke,
    outbox_files,
    outbox_messages,
    parse_message,
    part_text,
    problem_lines,
    recipient,
)
from delivery_helpers import point_at
from feedback_helpers import MaildirMX, summary
from smtp_server import RecordingServer
from statusmail.project.config import load_config
from statusmail.project.regions import Region, load_regions, registrable_domain
from statusmail.project.subscriber_rows import Subscriber
from statusmail.project.subscribers import iter_subscribers

_ANGLE = re.compile(r"<([^>]+)>")


@pytest.fixture(scope="module")
def sent(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[EmailMessage]]:
    config = copy_sample(tmp_path_factory.mktemp("region-mail") / "project")
    result = invoke(config, "send", UPDATE, "--yes", "--rate", "0", env=SECRET_ENV)
    assert result.exit_code == 0, result.output
    return config, outbox_messages(config)


def russia(config: Path) -> Region:
    return load_regions(load_config(config).paths.regions)["RU"]


def regions_of(config: Path) -> dict[str, str]:
    """address -> region, from the sample's subscriber files as statusmail reads them."""
    found: dict[str, str] = {}
    for item in iter_subscribers(load_config(config).paths.subscribers):
        if isinstance(item, Subscriber):  # as the To: of a message spells it, too
            found[item.key] = found[(item.ascii_email or item.key).lower()] = item.region or ""
    return found


def unsubscribe_targets(message: EmailMessage) -> list[str]:
    return _ANGLE.findall(str(message["List-Unsubscribe"]))


def target_domain(target: str) -> str:
    if target.startswith("mailto:"):
        return registrable_domain(target.removeprefix("mailto:").split("?")[0].rpartition("@")[2])
    return registrable_domain(urlsplit(target).hostname or "")


def test_readers_in_russia_get_only_unblocked_unsubscribe_hosts_and_reply_to(
    sent: tuple[Path, list[EmailMessage]],
) -> None:
    config, messages = sent
    ru, where = russia(config), regions_of(config)
    blocked = ru.blocked_domains()
    assert blocked and ru.mailto and ru.reply_to
    in_russia = [m for m in messages if where[recipient(m)] == "RU"]
    elsewhere = [m for m in messages if where[recipient(m)] != "RU"]
    assert in_russia and elsewhere
    for message in in_russia:
        targets = unsubscribe_targets(message)
        assert [t.split(":")[0] for t in targets] == ["https", "mailto"], targets
        assert not {target_domain(t) for t in targets} & blocked, targets
        assert targets[1].startswith(f"mailto:{ru.mailto}?subject=unsubscribe%20")
        assert message["Reply-To"] == ru.reply_to
    sample = load_config(config)
    for message in elsewhere:  # everyone else keeps the config's addresses
        assert unsubscribe_targets(message)[1].startswith(f"mailto:{sample.unsubscribe.mailto}?")
        assert message["Reply-To"] == sample.reply_to


def test_feedback_handles_a_mailto_unsubscribe_sent_to_the_regions_address(
    sent: tuple[Path, list[EmailMessage]],
) -> None:
    config, messages = sent
    ru, where = russia(config), regions_of(config)
    # A reader whose address is the same on the wire and in the ledger (an IDN domain
    # travels as punycode in To: and is kept in Unicode), whatever order the outbox has.
    message = min(
        (m for m in messages if where[recipient(m)] == "RU" and "xn--" not in recipient(m)),
        key=recipient,
    )
    reader = recipient(message)
    mailto = unsubscribe_targets(message)[1]
    to, _, query = mailto.removeprefix("mailto:").partition("?")
    subject = unquote(query.removeprefix("subject="))
    assert to == ru.mailto
    # What the reader's client sends, delivered by the MTA into the bounce Maildir.
    unsubscribe = (
        f"From: {reader}\nTo: {to}\nSubject: {subject}\n"
        "Date: Wed, 22 Apr 2020 09:00:00 +0000\nMessage-ID: <u1@reader.example>\n\n"
        "Sent from my phone\n"
    ).encode()
    with MaildirMX(load_config(config).bounces.maildir or config.parent / "bounces") as mx:
        mx.send(reader, to, unsubscribe)

    result = invoke(config, "feedback", "--json", env=SECRET_ENV)
    assert result.exit_code == 0, result.output
    report = summary(result.stdout)
    assert (report["read"], report["unsubscribes"], report["newly_suppressed"]) == (1, 1, 1)
    listed = invoke(config, "suppress", "list", "--json", env=SECRET_ENV)
    assert listed.exit_code == 0, listed.output
    suppressions = {row["email"]: row["reason"] for row in json.loads(listed.stdout)}
    assert suppressions == {reader: "unsubscribed"}


def _regions_with(project: Path, lines: str) -> int:
    """RU's links followed by ``lines``; returns the line ``lines`` start at."""
    regions = project.parent / "regions.yaml"
    text = regions.read_text(encoding="utf-8")
    own = re.compile(r"^  (mailto|reply_to):.*\n", re.MULTILINE)
    text = own.sub("", text)
    anchor = '    "https://www.startmail.example/": "https://startmail-ru.test/"\n'
    assert anchor in text
    head = text[: text.index(anchor) + len(anchor)]
    regions.write_text(head + lines + text[len(head) :], encoding="utf-8")
    return head.count("\n") + 1


def test_check_warns_about_blocked_domain_addresses_once_per_address(project: Path) -> None:
    start = _regions_with(project, "  reply_to: help@startmail-mirror.example\n")
    result = invoke(project, "check", env=SECRET_ENV)
    assert result.exit_code == 0, result.output  # a warning, not a problem
    warnings = [line for line in result.output.splitlines() if "a domain RU blocks" in line]
    regions = project.parent / "regions.yaml"
    ru_line = regions.read_text(encoding="utf-8").splitlines().index("RU:") + 1
    assert warnings == [
        f"{regions}:{ru_line}: warning: readers in RU get the config's List-Unsubscribe "
        "mailto unsubscribe@startmail.example, on startmail.example, a domain RU blocks: "
        "give RU a mailto on another domain"
    ]
    assert start > ru_line


def test_check_warns_about_a_regions_own_mailto_on_the_blocked_domain(project: Path) -> None:
    start = _regions_with(
        project,
        "  mailto: unsubscribe@mail.startmail.example\n  reply_to: help@startmail-mirror.example\n",
    )
    result = invoke(project, "check", env=SECRET_ENV)
    assert result.exit_code == 0, result.output
    regions = project.parent / "regions.yaml"
    assert [line for line in result.output.splitlines() if "a domain RU blocks" in line] == [
        f"{regions}:{start}: warning: readers in RU get its List-Unsubscribe mailto "
        "unsubscribe@mail.startmail.example, on startmail.example, a domain RU blocks: "
        "give RU a mailto on another domain"
    ]


def test_a_regions_address_that_is_not_one_fails_check_at_its_line(project: Path) -> None:
    start = _regions_with(project, "  mailto: unsubscribe-at-mirror\n")
    result = invoke(project, "check", env=SECRET_ENV)
    assert result.exit_code == 1
    regions = project.parent / "regions.yaml"
    [problem] = problem_lines(result.output)
    assert problem.startswith(
        f"{regions}:{start}: 'RU.mailto': 'unsubscribe-at-mirror' is not an email address ("
    ), result.output


def test_a_link_to_an_idn_host_is_rewritten_for_the_region_too(tmp_path: Path) -> None:
    """A region's links rewrite matched the prefix as written, https://стартмейл.рф/,
    while the rendered parts spell the link as markdown-it normalizes it
    (https://xn--80akmicxfic.xn--p1ai/%D0%BD…): readers in Russia got the blocked host."""
    config = copy_sample(tmp_path / "project")
    regions = config.parent / "regions.yaml"
    text = regions.read_text(encoding="utf-8")
    blocked = '    "https://www.startmail.example/": "https://startmail-ru.test/"\n'
    assert blocked in text
    idn = '    "https://стартмейл.рф/": "https://startmail-ru.test/rf/"\n'
    regions.write_text(text.replace(blocked, blocked + idn), encoding="utf-8")
    entry = config.parent / "updates" / f"{UPDATE}.yaml"
    text = entry.read_text(encoding="utf-8")
    marker = "\n  ru:\n"
    assert marker in text
    # a link in the Russian body: the first paragraph of ru's body gets one more line
    body = text.index("body: |", text.index(marker)) + len("body: |\n")
    text = text[:body] + "      [Новости](https://стартмейл.рф/новости)\n\n" + text[body:]
    entry.write_text(text, encoding="utf-8")
    result = invoke(config, "send", UPDATE, "--yes", "--rate", "0", env=SECRET_ENV)
    assert result.exit_code == 0, result.output
    where = regions_of(config)
    in_russia = [
        m
        for m in outbox_messages(config)
        if where.get(recipient(m)) == "RU" and m["Content-Language"] == "ru"
    ]
    assert in_russia
    mirrored = "https://startmail-ru.test/rf/%D0%BD%D0%BE%D0%B2%D0%BE%D1%81%D1%82%D0%B8"
    for message in in_russia:
        plain, html = part_text(message, "plain"), part_text(message, "html")
        for part in (plain, html):
            assert "xn--80akmicxfic" not in part and "стартмейл" not in part
        assert mirrored in html
        assert "https://startmail-ru.test/rf/новости" in plain  # as a reader types it


def test_an_edition_s_readers_follow_the_news_there_whatever_else_their_region_does(
    tmp_path: Path,
) -> None:
    """readers: [RU, BY] linked RU's readers to the mirror and BY's to the main site: a
    region with no links, access block or addresses of its own had no variant of its
    own, and so no news link of its own."""
    config = copy_sample(tmp_path / "project")
    regions = config.parent / "regions.yaml"
    text = regions.read_text(encoding="utf-8")
    assert "    readers: [RU]\n" in text
    regions.write_text(
        text.replace("    readers: [RU]\n", "    readers: [RU, BY]\n"), encoding="utf-8"
    )
    result = invoke(config, "send", UPDATE, "--yes", "--rate", "0", env=SECRET_ENV)
    assert result.exit_code == 0, result.output
    where = regions_of(config)
    news: dict[str, set[str]] = {}
    for message in outbox_messages(config):
        found = re.findall(r"https?://[^\s\"<>]+/status/(?:en|ru)/", part_text(message, "plain"))
        news.setdefault(where.get(recipient(message)) or "", set()).update(found)
    assert news["BY"] and all(url.startswith("https://startmail-ru.test/") for url in news["BY"])
    assert news["RU"] and all(url.startswith("https://startmail-ru.test/") for url in news["RU"])
    assert all(url.startswith("https://www.startmail.example/") for url in news["KZ"])


def test_a_mirror_on_an_idn_host_goes_into_list_unsubscribe_as_a_uri(tmp_path: Path) -> None:
    """RFC 2369 and 8058 want URIs in List-Unsubscribe: a region's mirror and mailto on
    стартмейл.рф went there as UTF-8, so every reader in Russia got a header a relay
    without SMTPUTF8 must not carry (now refused), and clients found no link."""
    config = copy_sample(tmp_path / "project")
    regions = config.parent / "regions.yaml"
    text = regions.read_text(encoding="utf-8")
    for old, new in [
        ('"https://startmail-ru.test/"', '"https://стартмейл.рф/"'),
        ("<https://startmail-ru.test/>", "<https://стартмейл.рф/>"),
        ("mailto: unsubscribe@startmail-mirror.example", "mailto: отписка@стартмейл.рф"),
    ]:
        assert old in text, old
        text = text.replace(old, new)
    regions.write_text(text, encoding="utf-8")
    result = invoke(config, "send", UPDATE, "--yes", "--rate", "0", env=SECRET_ENV)
    assert result.exit_code == 0, result.output
    where = regions_of(config)
    in_russia = [
        raw for raw in outbox_files(config) if where.get(recipient(parse_message(raw))) == "RU"
    ]
    assert in_russia
    host = "xn--80akmicxfic.xn--p1ai"
    for raw in in_russia:
        head = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0]
        assert head.isascii(), [line for line in head.splitlines() if not line.isascii()]
        url, mailto = unsubscribe_targets(parse_message(raw))
        assert url.startswith(f"https://{host}/status/unsubscribe/"), url
        local = "%D0%BE%D1%82%D0%BF%D0%B8%D1%81%D0%BA%D0%B0"  # отписка, as RFC 6068 spells it
        assert mailto.startswith(f"mailto:{local}@{host}?subject=unsubscribe%20"), mailto


def test_a_cyrillic_reply_to_and_a_relay_without_smtputf8_stop_the_run_failing_nobody(
    tmp_path: Path,
) -> None:
    """A Cyrillic reply_to needs SMTPUTF8 in every message that carries it. Each was
    refused and its recipient marked failed for good (exit 3, five of the sample's
    fourteen); it is the project's address, not theirs: the run stops (exit 4), they
    stay pending, and a re-run through a relay that offers SMTPUTF8 mails each once."""
    config = copy_sample(tmp_path / "project")
    text = config.read_text(encoding="utf-8")
    ascii_reply = "reply_to: support@startmail.example"
    assert ascii_reply in text
    config.write_text(
        text.replace(ascii_reply, "reply_to: поддержка@startmail.example"), encoding="utf-8"
    )
    with RecordingServer(smtputf8=False) as plain:
        point_at(config, plain.port)
        first = invoke(config, "send", UPDATE, "--yes", "--rate", "0", env=SECRET_ENV)
    assert first.exit_code == 4, first.output
    assert f"127.0.0.1:{plain.port} does not offer SMTPUTF8" in first.output
    assert "Traceback" not in first.output
    statuses = ledger_statuses(config)
    assert statuses.get("failed", 0) == 0 and statuses.get("pending", 0) > 0, statuses
    with RecordingServer(smtputf8=True) as utf8:
        point_at(config, utf8.port)
        second = invoke(config, "send", UPDATE, "--yes", "--rate", "0", env=SECRET_ENV)
        assert second.exit_code == 0, second.output
        assert any(got.smtp_utf8 for got in utf8.messages)
        mailed = [got.rcpt_tos[0] for got in [*plain.messages, *utf8.messages]]
    assert len(mailed) == len(set(mailed)) == 14
    assert ledger_statuses(config) == {"sent": 14}


def ledger_statuses(config: Path) -> dict[str, int]:
    with sqlite3.connect(config.parent / "statusmail.db") as db:
        return dict(db.execute("SELECT status, COUNT(*) FROM deliveries GROUP BY status"))


def test_a_cyrillic_unsubscribe_mailto_goes_through_a_relay_without_smtputf8(
    tmp_path: Path,
) -> None:
    """The mailto is a URI in List-Unsubscribe, ASCII whatever the address: a Cyrillic
    unsubscribe address must not make every message need SMTPUTF8."""
    config = copy_sample(tmp_path / "project")
    text = config.read_text(encoding="utf-8")
    assert "mailto: unsubscribe@startmail.example" in text
    config.write_text(
        text.replace("mailto: unsubscribe@startmail.example", "mailto: отписка@startmail.example"),
        encoding="utf-8",
    )
    with RecordingServer(smtputf8=False) as server:
        point_at(config, server.port)
        result = invoke(config, "send", UPDATE, "--yes", "--rate", "0", env=SECRET_ENV)
        assert result.exit_code == 0, result.output
        local = "%D0%BE%D1%82%D0%BF%D0%B8%D1%81%D0%BA%D0%B0"
        assert len(server.messages) == 14
        for got in server.messages:
            head = re.split(rb"\r?\n\r?\n", got.data, maxsplit=1)[0]
            assert head.isascii() and got.smtp_utf8 is False
            assert (
                f"mailto:{local}@startmail.example".encode() in head or b"startmail-mirror" in head
            )
