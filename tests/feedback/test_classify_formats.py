"""The classifier on the formats issue 19 found missed, and on the shapes around them that
must not be mistaken for them: the corpus messages (their placeholders stood in for, as
the property tests do) and variants of them as other senders and versions write them."""

from __future__ import annotations

import re

import pytest

from feedback_helpers import INDEX, RETURN_PATH, SAMPLES
from statusmail.domain import Cause
from statusmail.feedback.bounces import other_failures
from statusmail.feedback.classified import Classified, Verdict
from statusmail.feedback.classify import classify
from statusmail.feedback.complaints import JMRP_REPORTER
from statusmail.feedback.reading import parse
from statusmail.feedback.replies import auto_reply_reason


def read(data: bytes) -> Classified:
    return classify(data, RETURN_PATH)


def variant(name: str, *changes: tuple[bytes, bytes]) -> bytes:
    """A corpus message with each (old, new) replaced: the old must be there, once."""
    data = SAMPLES[name]
    for old, new in changes:
        assert data.count(old) == 1, old
        data = data.replace(old, new)
    return data


def only_failure(found: Classified, name: str) -> None:
    """``found`` is a bounce whose one failure is the corpus index's for ``name``."""
    expected = INDEX[name]
    assert found.verdict is Verdict.BOUNCE, found.why
    (failure,) = found.failures
    assert (failure.address, failure.code) == (expected["address"], str(expected["code"]))
    assert failure.hard is (expected["outcome"] == "hard")
    assert failure.cause.value == expected["cause"]
    assert failure.code is not None
    assert failure.code in failure.diagnostic  # the line that says it, not the subject


# -- non-delivery reports without a delivery-status part -------------------------------------

NDRS = [
    "office365-ndr-auto-replied.eml",
    "office365-ndr-diagnostic-information.eml",
    "exchange-ndr-russian.eml",
]


@pytest.mark.parametrize("name", NDRS)
def test_an_ndr_wins_over_its_auto_reply_headers(name: str) -> None:
    data = SAMPLES[name]
    assert auto_reply_reason(parse(data)) is not None  # it does carry them
    assert b"message/delivery-status" not in data
    only_failure(read(data), name)


def test_a_yahoo_failure_notice_from_any_yahoo_host_is_read() -> None:
    """Yahoo's hosts sign as MAILER-DAEMON@<host>.yahoo.com too, which GNU Mailman's
    Yahoo detector does not know."""
    name = "yahoo-failure-notice.eml"
    host = b"MAILER-DAEMON@sonic310-13.consmr.mail.gq1.yahoo.com"
    data = variant(name, (b"From: MAILER-DAEMON@yahoo.com", b"From: " + host))
    assert not other_failures(parse(data))
    only_failure(read(data), name)


def test_an_exchange_imc_ndr_in_its_other_wording_is_read() -> None:
    """The Internet Mail Connector also opens its list with "The following recipients did
    not receive this message"."""
    name = "exchange-imc-ndr.eml"
    data = variant(
        name,
        (b"Your message did not reach some or all of the intended recipients.\n", b""),
        (
            b"The following recipient(s) could not be reached:",
            b"The following recipients did not receive this message:",
        ),
    )
    only_failure(read(data), name)


def test_a_temporary_ndr_is_soft_and_says_why() -> None:
    name = "office365-ndr-diagnostic-information.eml"
    data = variant(
        name,
        (
            b"'550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address"
            b" lookup'",
            b"'452 4.2.2 The recipient's mailbox is full and can't accept messages now.'",
        ),
    )
    found = read(data)
    assert found.verdict is Verdict.BOUNCE, found.why
    (failure,) = found.failures
    assert (failure.hard, failure.code, failure.cause) == (False, "4.2.2", Cause.MAILBOX_FULL)


# -- feedback reports ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["opt-out", "opt-out-list"])
def test_an_arf_opt_out_is_an_unsubscribe_with_the_original_s_token(kind: str) -> None:
    data = variant(
        "arf-opt-out.eml", (b"Feedback-Type: opt-out", f"Feedback-Type: {kind}".encode())
    )
    found = read(data)
    assert found.verdict is Verdict.UNSUBSCRIBE, found.why
    assert found.feedback_type == kind
    listed = re.search(rb"List-Unsubscribe: <https://[^>]*/([\w-]+)>", data)
    assert listed is not None
    assert found.clues.unsubscribe_tokens == (listed.group(1).decode(),)
    assert not found.failures


def test_other_arf_types_stay_for_a_person() -> None:
    data = variant("arf-opt-out.eml", (b"Feedback-Type: opt-out", b"Feedback-Type: not-spam"))
    found = read(data)
    assert found.verdict is Verdict.OTHER and "not-spam" in found.why
    assert not found.failures  # a report, if not one statusmail acts on: no failure


def test_a_jmrp_complaint_names_microsoft_and_the_reporting_recipient() -> None:
    found = read(SAMPLES["jmrp-complaint.eml"])
    assert found.verdict is Verdict.COMPLAINT, found.why
    assert (found.feedback_type, found.reporter) == ("abuse", JMRP_REPORTER)
    assert found.clues.return_path_tokens and found.clues.message_ids


def test_a_report_s_own_fields_name_the_return_path() -> None:
    """An ARF report whose attached original lost its Return-Path still says it in
    Original-Mail-From."""
    data = SAMPLES["arf-multi-recipient.eml"]
    original = re.search(rb"\nReturn-Path: <[^>]+>", data)
    assert original is not None
    found = read(data.replace(original.group(0), b"", 1))
    token = re.search(rb"Original-Mail-From: <bounces\+([\w-]+)@", data)
    assert token is not None
    assert found.clues.return_path_tokens == (token.group(1).decode(),)


def test_a_feedback_loop_forwarding_as_mixed_is_still_a_complaint() -> None:
    """Some feedback loops send "FW: <subject>" with words of their own, as
    multipart/mixed: their report part says what they are."""
    data = variant(
        "arf-yahoo-abuse.eml",
        (
            b"Content-Type: multipart/report; report-type=feedback-report;",
            b"Content-Type: multipart/mixed;",
        ),
    )
    assert b"Subject: FW:" in data
    found = read(data)
    assert found.verdict is Verdict.COMPLAINT, found.why


def test_a_message_attached_by_anyone_else_is_no_jmrp_complaint() -> None:
    data = variant("jmrp-complaint.eml", (b"From: staff@hotmail.com", b"From: staff@example.net"))
    assert read(data).verdict is not Verdict.COMPLAINT


# -- forwarded by a person -------------------------------------------------------------------

GMAIL_MARKER = b"---------- Forwarded message ---------"


@pytest.mark.parametrize(
    ("subject", "marker"),
    [
        (b"Fwd: Undelivered Mail Returned to Sender", GMAIL_MARKER),
        (
            "Пересл: Undelivered Mail Returned to Sender".encode(),
            "-------- Пересылаемое сообщение --------".encode(),
        ),
        (b"FW: Undelivered Mail Returned to Sender", b"-----Original Message-----"),
        (b"Question about this", b"Begin forwarded message:"),
    ],
)
def test_a_forwarded_bounce_with_words_above_it_stays_for_a_person(
    subject: bytes, marker: bytes
) -> None:
    data = variant(
        "forwarded-bounce-with-question.eml",
        (b"Subject: Fwd: Undelivered Mail Returned to Sender", b"Subject: " + subject),
        (GMAIL_MARKER + b"\n", marker + b"\n"),
    )
    found = read(data)
    assert found.verdict is Verdict.FORWARDED, found.why
    assert not found.failures


def test_a_reply_quoting_a_bounce_with_a_question_stays_for_a_person() -> None:
    text = SAMPLES["forwarded-bounce-with-question.eml"].split(GMAIL_MARKER + b"\n", 1)[1]
    quoted = b"".join(b"> " + line for line in text.split(b"--0000", 1)[0].splitlines(True))
    data = variant(
        "forwarded-bounce-with-question.eml",
        (b"Subject: Fwd: Undelivered", b"Subject: Re: Undelivered"),
        (GMAIL_MARKER + b"\n", b"On Tue, 21 Apr 2020 at 19:20, Mail Delivery System wrote:\n"),
    )
    data = data.replace(text.split(b"--0000", 1)[0], quoted, 1)
    found = read(data)
    assert found.verdict is Verdict.FORWARDED, found.why


def test_a_forwarded_bounce_without_words_of_the_person_s_own_is_read_as_before() -> None:
    """No question to answer: the report inside is read (and what it names decides)."""
    data = SAMPLES["forwarded-bounce-attached-ru.eml"]
    own = re.search(rb"charset=utf-8\n\n(.*?)\n\n", data, re.S)
    assert own is not None
    found = read(data.replace(own.group(1), b"", 1))
    assert found.verdict is Verdict.BOUNCE, found.why


def test_a_real_bounce_never_counts_as_forwarded() -> None:
    """A DSN has a null return path, whatever its From and Subject say."""
    data = variant(
        "postfix-user-unknown.eml",
        (
            b"From: MAILER-DAEMON@mail.startmail.example (Mail Delivery System)",
            b"From: Help <help@example.org>",
        ),
        (b"Subject: Undelivered Mail Returned to Sender", b"Subject: Fwd: your message"),
    )
    assert read(data).verdict is Verdict.BOUNCE


# -- what no report names ------------------------------------------------------------------------


def unknown_system(reason: bytes) -> bytes:
    """A notice from a mail system no detector knows, with ``reason`` as its one line."""
    return (
        b"Return-Path: <>\nFrom: Notifications <notices@mx.example.net>\n"
        b"To: bounces@startmail.example\nSubject: Message status\n"
        b"Date: Tue, 21 Apr 2020 12:06:00 +0000\nMessage-ID: <n1@mx.example.net>\n\n"
        b"We could not hand your message over.\n\nReason: " + reason + b"\n\nRegards\n"
    )


@pytest.mark.parametrize(
    ("reason", "hard", "cause"),
    [
        (b"550 5.1.1 The mailbox does not exist", True, Cause.BAD_MAILBOX),
        (b"550 5.2.1 The mailbox is disabled", True, Cause.DISABLED),
        (b"552 5.2.2 Mailbox full", False, Cause.MAILBOX_FULL),
        (b"554 5.7.1 Rejected as spam", False, Cause.POLICY),
        (b"421 4.4.2 Connection dropped", False, Cause.NETWORK),
    ],
)
def test_a_notice_no_detector_reads_is_one_failure_of_nobody(
    reason: bytes, hard: bool, cause: Cause
) -> None:
    found = read(unknown_system(reason))
    assert found.verdict is Verdict.OTHER, found.why
    (failure,) = found.failures
    code = reason.split()[1].decode()
    assert (failure.address, failure.hard, failure.code, failure.cause) == (None, hard, code, cause)
    assert failure.diagnostic == "Reason: " + reason.decode()


def test_without_a_code_it_is_soft_whatever_the_words_say() -> None:
    data = unknown_system(b"The mailbox does not exist")
    found = read(data)
    (failure,) = found.failures
    assert (failure.hard, failure.code, failure.cause) == (False, None, Cause.BAD_MAILBOX)
    subject = re.search(rb"^Subject: (.*)$", data, re.M)
    assert subject is not None and failure.diagnostic == subject.group(1).decode()


@pytest.mark.parametrize(
    "name",
    [
        "vacation-outlook-en.eml",
        "vacation-ru.eml",
        "forwarded-bounce-with-question.eml",
        "human-reply-quoting-the-footer.eml",
        "unrelated-question.eml",
    ],
)
def test_auto_replies_forwarded_reports_and_a_person_s_words_carry_no_failure(
    name: str,
) -> None:
    """Nothing in them for the caller to take for a bounce of an unknown shape: a person's
    reply or question that reaches the return path is for a person to read."""
    found = read(SAMPLES[name])
    assert found.verdict.value == INDEX[name]["verdict"]
    assert not found.failures


def test_a_dsn_that_failed_on_a_temporary_error_is_an_expiry() -> None:
    """Postfix gives up after maximal_queue_lifetime with "Action: failed" and the 4.x.x
    status of the last attempt: the queue expired, soft."""
    data = variant("postfix-delayed.eml", (b"Action: delayed", b"Action: failed"))
    (failure,) = read(data).failures
    assert (failure.hard, failure.cause) == (False, Cause.EXPIRED)
    assert failure.code is not None and failure.code.startswith("4.")
