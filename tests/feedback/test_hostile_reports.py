"""What anyone can send to the bounce address: a message no parser copes with, a header
built to make a regular expression crawl, a date at the end of time. Each is left where
it is (or read as far as it can be), and the proven report beside it still counts.
Also the RFC 6533 form of a DSN, which Postfix sends for SMTPUTF8 mail."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from pathlib import Path

import pytest

from conftest import invoke
from feedback_helpers import SECRET, deliver, dsn, new_files, sent_to, set_bounces
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


@pytest.mark.parametrize("bad", [NESTED, END_OF_TIME], ids=["nested-1000-deep", "year-9999"])
def test_a_message_no_parser_copes_with_is_left_and_the_pass_goes_on(
    project: Path, bad: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    maildir = project.parent / "bounces"
    set_bounces(project, maildir=str(maildir))
    with Ledger(project.parent / "statusmail.db") as ledger:
        tokens = sent_to(ledger, KEYS, ENTRY, [ANNA])
    deliver(maildir, bad, "0.bad")
    deliver(maildir, dsn(ANNA, token=tokens[ANNA]), "1.good")
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
