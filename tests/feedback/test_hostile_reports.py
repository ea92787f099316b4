"""What anyone can send to the bounce address: a message no parser copes with, a header
built to make a regular expression crawl, a date at the end of time. Each is left where
it is (or read as far as it can be), and the proven report beside it still counts.
Also the RFC 6533 form of a DSN, which Postfix sends for SMTPUTF8 mail."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import re
import secrets
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import invoke
from feedback_helpers import SECRET, deliver, dsn, new_files, sent_to, set_bounces
from statusmail.domain import printable
from statusmail.feedback.loop import Feedback
from statusmail.ledger import Ledger
from statusmail.project.config import load_config
from statusmail.project.tokens import Keyring

KEYS = Keyring(SECRET.encode())
ENV = {"STATUSMAIL_UNSUBSCRIBE_SECRET": SECRET}
ENTRY = "update-2020-04-21"
NOW = dt.datetime(2020, 4, 22, 12, tzinfo=dt.UTC)
ANNA, IVAN = "anna@example.org", "ivan@example.com"

NESTED = (
    b"From: someone@example.net\nSubject: hi\nMIME-Version: 1.0\n"
    + b"Content-Type: message/rfc822\n\n" * 1000
    + b"Subject: x\n\nhi\n"
)
END_OF_TIME = (
    b"From: someone@example.net\nTo: bounces@startmail.example\nSubject: hi\n"
    b"Date: Fri, 31 Dec 9999 23:59:59 -1000\n\nhello\n"
)


def suppressed(ledger: Ledger) -> dict[str, str]:
    return {address: reason for address, reason, _detail, _at in ledger.suppressions()}


def beside_a_proven_bounce(project: Path, data: bytes, name: str) -> Path:
    """The bounce Maildir holding ``data`` (as ``name``) and, after it, a proven hard
    bounce for anna, whom the entry was sent to."""
    maildir = project.parent / "bounces"
    set_bounces(project, maildir=str(maildir))
    with Ledger(project.parent / "statusmail.db") as ledger:
        tokens = sent_to(ledger, KEYS, ENTRY, [ANNA])
    deliver(maildir, data, name)
    deliver(maildir, dsn(ANNA, token=tokens[ANNA]), "1.good")
    return maildir


@pytest.mark.parametrize("bad", [NESTED, END_OF_TIME], ids=["nested-1000-deep", "year-9999"])
def test_a_message_no_parser_copes_with_is_left_and_the_pass_goes_on(
    project: Path, bad: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    maildir = beside_a_proven_bounce(project, bad, "0.bad")
    with caplog.at_level(logging.WARNING, logger="statusmail"):
        result = invoke(project, "feedback", "--json", env=ENV)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    with Ledger(project.parent / "statusmail.db") as ledger:
        assert suppressed(ledger) == {ANNA: "bounced"}
    assert list(new_files(maildir)) == ["0.bad"]  # left where it is
    if bad is NESTED:
        report = json.loads(result.stdout)
        assert report["left"]["unreadable"] == 1
        said = result.stderr + caplog.text
        assert "new/0.bad: cannot read this message (RecursionError" in said


def test_a_bounce_dated_at_the_end_of_time_still_counts_undated(project: Path) -> None:
    config = load_config(project)
    with Ledger(project.parent / "statusmail.db") as ledger:
        tokens = sent_to(ledger, KEYS, ENTRY, [IVAN])
        work = Feedback(config, KEYS, ledger, now=NOW)
        report = dsn(IVAN, token=tokens[IVAN], when="Fri, 31 Dec 9999 23:59:59 -1000")
        assert work.handle(report)
        assert suppressed(ledger) == {IVAN: "bounced"}


@pytest.mark.timeout(20)
def test_a_megabyte_of_subject_is_read_in_linear_time(project: Path) -> None:
    """A person's message is listed with its subject, any address in it masked: the
    mask's pattern crawled (quadratic) over a long run without an @, about 45 minutes
    for a megabyte, on every pass (the message stays)."""
    config = load_config(project)
    with Ledger(project.parent / "statusmail.db") as ledger:
        work = Feedback(config, KEYS, ledger, now=NOW)
        message = (
            b"From: Jane <jane@example.net>\nTo: bounces@startmail.example\nSubject: "
            + b"x" * 1_000_000
            + b" anna@example.org\n\nA question about my account.\n"
        )
        started = time.monotonic()
        assert not work.handle(message)
        assert time.monotonic() - started < 5
        (listed,) = work.report.unrecognized
        assert listed["subject"] == "x" * 200
        # a long List-Unsubscribe in a quoted original: the same crawl, cut short too
        listed_twice = b"List-Unsubscribe: " + b"<https://" * 20_000 + b"\n"
        quoted = b"Message-ID: <original@startmail.example>"
        bounce = dsn(ANNA, original_id="<original@startmail.example>")
        assert bounce.count(quoted) == 1
        started = time.monotonic()
        work.handle(bounce.replace(quoted, listed_twice + quoted))
        assert time.monotonic() - started < 5


def global_dsn(address: str, token: str) -> bytes:
    return dsn(address, token=token).replace(
        b"message/delivery-status", b"message/global-delivery-status"
    )


@pytest.mark.parametrize("address", [ANNA, "анна@пример.рф"])
def test_a_global_dsn_is_read_like_any_dsn(project: Path, address: str) -> None:
    """RFC 6533's message/global-delivery-status: the email package parses it as an
    embedded message, the recipient's block in that message's body (it was lost: the
    bounce counted without its code, or not at all)."""
    config = load_config(project)
    with Ledger(project.parent / "statusmail.db") as ledger:
        tokens = sent_to(ledger, KEYS, ENTRY, [address])
        work = Feedback(config, KEYS, ledger, now=NOW)
        assert work.handle(global_dsn(address, tokens[address]))
        (event,) = work.report.events
        assert event["code"] == "5.1.1"
        assert suppressed(ledger) == {address: "bounced"}


def forged_with_message_id(message_id: str) -> bytes:
    """A DSN nobody can tie to a delivery (no token, no quoted original)."""
    report = dsn("someone@elsewhere.example")
    return re.sub(rb"Message-ID: <[^>\n]*>", message_id.encode(), report, count=1)


@pytest.mark.parametrize(
    "forged",
    [
        dsn("x@evil\\1.example"),  # a backslash: once read as a group reference
        forged_with_message_id("Message-ID: =?utf-7?q?+2AA-?="),  # a lone surrogate
        dsn("z@elsewhere.example", diagnostic="550 =?utf-7?q?+2AA-?= no such user"),
    ],
    ids=["backslash-in-address", "utf7-message-id", "utf7-diagnostic"],
)
@pytest.mark.parametrize("dry_run", [False, True], ids=["real", "dry-run"])
def test_a_forged_report_built_to_break_the_pass_is_recorded_and_the_pass_goes_on(
    project: Path, forged: bytes, dry_run: bool
) -> None:
    """Anyone can send these. Each ended the pass (dry run included) in a traceback
    after or before its chunk was committed, every pass again: the proven bounce beside
    it was never applied, or applied and never moved."""
    maildir = beside_a_proven_bounce(project, forged, "0.forged")
    result = invoke(project, "feedback", "--json", *(["--dry-run"] if dry_run else []), env=ENV)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    report = json.loads(result.stdout)
    states = sorted(event["state"] for event in report["events"])
    assert states == ["applied", "unverified"], report["events"]
    with Ledger(project.parent / "statusmail.db") as ledger:
        assert suppressed(ledger) == ({} if dry_run else {ANNA: "bounced"})
    assert len(new_files(maildir)) == (2 if dry_run else 0)


def test_each_address_of_an_unproven_report_keeps_its_own_failure_and_nobody_elses(
    project: Path,
) -> None:
    """A bounce to the plain address naming two recipients (as a relay's report of a
    message before VERP is): each is recorded, applied to nobody, with its own
    diagnostic. The first one's was given to both, printing its address unmasked under
    the other's event and keeping it as the other's evidence."""
    maildir = project.parent / "bounces"
    set_bounces(project, maildir=str(maildir))
    ivan_block = (
        b"Final-Recipient: rfc822; " + IVAN.encode() + b"\nAction: failed\nStatus: 5.2.2\n"
        b"Diagnostic-Code: smtp; 552 5.2.2 <" + IVAN.encode() + b">: mailbox full\n\n"
    )
    anna_ends = b"Last-Attempt-Date: Tue, 21 Apr 2020 10:00:00 +0000\n"
    report = dsn(ANNA).replace(anna_ends, anna_ends + b"\n" + ivan_block, 1)
    deliver(maildir, report, "0.two")
    result = invoke(project, "feedback", "--json", env=ENV)
    assert result.exit_code == 0, result.output
    events = {e["address"]: e for e in json.loads(result.stdout)["events"]}
    assert set(events) == {"a***@example.org", "i***@example.com"}, events
    assert all(e["state"] == "unverified" for e in events.values())
    assert events["i***@example.com"]["code"] == "5.2.2"
    assert "mailbox full" in events["i***@example.com"]["diagnostic"]
    assert events["a***@example.org"]["code"] == "5.1.1"
    assert ANNA not in result.stdout + result.stderr and IVAN not in result.stdout + result.stderr


def test_a_late_report_about_a_message_sent_before_a_lift_does_not_suppress_again(
    project: Path,
) -> None:
    """The operator lifted a bounce suppression; a second report about the same message
    (a relay's late copy, or the same DSN under another Message-ID) suppressed the
    address again. A bounce of a message sent after the lift still does."""
    maildir = project.parent / "bounces"
    set_bounces(project, maildir=str(maildir))
    with Ledger(project.parent / "statusmail.db") as ledger:
        tokens = sent_to(ledger, KEYS, ENTRY, [ANNA])
    deliver(maildir, dsn(ANNA, token=tokens[ANNA]), "0.first")
    assert invoke(project, "feedback", env=ENV).exit_code == 0
    lifted = invoke(project, "suppress", "remove", ANNA, env=ENV)
    assert lifted.exit_code == 0, lifted.output
    deliver(maildir, dsn(ANNA, token=tokens[ANNA]), "1.again")  # a new Message-ID
    late = invoke(project, "feedback", "--json", env=ENV)
    assert late.exit_code == 0, late.output
    (event,) = json.loads(late.stdout)["events"]
    assert event["effect"].startswith("recorded: about a message sent before"), event
    with Ledger(project.parent / "statusmail.db") as ledger:
        assert suppressed(ledger) == {}
        later = sent_to(ledger, KEYS, "block-2020-01-23", [ANNA])
        ledger.database.execute(  # (it went out a second after the lift, at the least)
            "UPDATE deliveries SET updated_at = '2999-01-01T00:00:00+00:00'"
            " WHERE entry_id = 'block-2020-01-23'"
        )
    deliver(maildir, dsn(ANNA, token=later[ANNA]), "2.new")
    assert invoke(project, "feedback", env=ENV).exit_code == 0
    with Ledger(project.parent / "statusmail.db") as ledger:
        assert suppressed(ledger) == {ANNA: "bounced"}


ESCAPES = "\x1b[2J\x1b[32mOK: all sent\x1b[0m \x1b]8;;https://evil.example/\x1b\\docs\x1b]8;;\x1b\\"


def encoded_word(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode()).decode("ascii") + "?="


def test_terminal_escapes_in_a_report_reach_no_terminal_and_no_log(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone can mail the bounce address: a Final-Recipient whose encoded word decodes
    to ESC sequences was printed and logged as it was, so the operator's terminal
    cleared, showed "OK" and a link to another site under a harmless label."""
    word = encoded_word("x@evil.example" + ESCAPES)
    forged = dsn("x@evil.example", diagnostic=f"550 5.1.1 {word}").replace(
        b"rfc822; x@evil.example", f"rfc822; {word}".encode()
    )
    maildir = beside_a_proven_bounce(project, forged, "0.evil")
    with caplog.at_level(logging.INFO, logger="statusmail"):
        result = invoke(project, "feedback", env=ENV)
    assert result.exit_code == 0, result.output
    said = result.stdout + result.stderr + caplog.text
    assert "\x1b" not in said, said
    assert "\\x1b" in said  # shown, as an escape
    with Ledger(project.parent / "statusmail.db") as ledger:
        assert suppressed(ledger) == {ANNA: "bounced"}  # the proven one beside it counts
        stored = [str(value) for row in ledger.history(ANNA)["events"] for value in row.values()]
    assert not any("\x1b" in value for value in stored)
    assert list(new_files(maildir)) == []


def test_a_proven_bounce_s_diagnostic_is_one_printable_line_in_suppress_show(
    project: Path,
) -> None:
    """A subscriber holds proof for their own address: their server's multi-line reply,
    quoted in a DSN, printed a line shaped like another subscriber's suppression and a
    disguised link in ``suppress show``."""
    maildir = project.parent / "bounces"
    set_bounces(project, maildir=str(maildir))
    with Ledger(project.parent / "statusmail.db") as ledger:
        tokens = sent_to(ledger, KEYS, ENTRY, [ANNA])
    forged_line = "ivan@example.com\tunsubscribed\t2026-12-07T00:00:00+00:00\tby hand"
    report = dsn(
        ANNA, token=tokens[ANNA], diagnostic=encoded_word(f"550 5.1.1 no\n{forged_line}{ESCAPES}")
    )
    deliver(maildir, report.replace(b"Diagnostic-Code: smtp; ", b"Diagnostic-Code: smtp; "), "1")
    assert invoke(project, "feedback", env=ENV).exit_code == 0
    shown = invoke(project, "suppress", "show", ANNA, env=ENV)
    assert shown.exit_code == 0, shown.output
    assert "\x1b" not in shown.stdout, shown.stdout
    assert not any(line.startswith("ivan@") for line in shown.stdout.splitlines()), shown.stdout


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_printable_text_acts_on_no_terminal_and_printable_text_stays(text: str) -> None:
    shown = printable(text)
    assert shown.isprintable()  # no ESC, no line break, no bidi override is left
    assert (shown == text) == text.isprintable()


def test_a_message_id_of_3000_characters_is_kept_short_and_the_pass_goes_on(
    project: Path, postgres: str
) -> None:
    """Anyone can send a DSN with a Message-ID of 3,000 characters: it was the report's
    key, which PostgreSQL's index refused, so every feedback pass ended there and the
    proven bounce beside it was never applied (and a SQLite ledger holding one could
    not be copied)."""
    maildir = project.parent / "bounces"
    set_bounces(project, maildir=str(maildir))
    with Ledger(postgres) as ledger:
        tokens = sent_to(ledger, KEYS, ENTRY, [ANNA])
    long_id = "<" + secrets.token_hex(1500) + "@relay.test>"  # (random: none compresses)
    unproven = re.sub(
        rb"Message-ID: <[^>]+>", f"Message-ID: {long_id}".encode(), dsn(IVAN), count=1
    )
    assert long_id.encode() in unproven
    deliver(maildir, unproven, "0.long")
    deliver(maildir, dsn(ANNA, token=tokens[ANNA]), "1.good")
    result = invoke(project, "feedback", env={**ENV, "STATUSMAIL_LEDGER": postgres})
    assert result.exit_code == 0, result.output
    with Ledger(postgres) as ledger:
        assert suppressed(ledger) == {ANNA: "bounced"}
        sources = [row[0] for row in ledger.database.execute("SELECT source FROM feedback_events")]
    assert len(sources) == 2 and all(len(source) <= 200 for source in sources), sources
    assert list(new_files(maildir)) == []
