"""Bounces coming back the way they do in production, end to end.

statusmail sends through a real SMTP relay (aiosmtpd). The relay then reports, as a
relay does, to each message's envelope sender: a 5.1.1 for one recipient, a 4.2.2 for
another, and a mailbox provider's complaint about a third; a vacation reply and an
unrelated message arrive too. All of it is delivered over SMTP to the mail host of the
return path, which writes it into the bounce Maildir. Then ``statusmail feedback``.
"""

from __future__ import annotations

import email.utils
import json
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import clean_environ, command, invoke, wait_for
from delivery_helpers import point_at, send
from editing import replace_in
from feedback_helpers import (
    SECRET,
    UPDATE,
    MaildirMX,
    ledger_dump,
    new_files,
    processed_files,
    query,
    summary,
)
from smtp_server import ReceivedMessage, RecordingServer
from statusmail.project.tokens import Keyring, return_path_token

ENV = {"STATUSMAIL_UNSUBSCRIBE_SECRET": SECRET}
HARD = "ivan.smirnov@example.com"
SOFT = "olga.kuznetsova@example.net"
COMPLAINED = "alexander.kozlov@example.com"
VACATION = "hanna.sidarenka@example.net"
NEXT = "update-2020-05-12"


def _headers(original: ReceivedMessage) -> str:
    return original.data.split(b"\r\n\r\n", 1)[0].decode("ascii")


def dsn(original: ReceivedMessage, *, status: str, reply: str, action: str = "failed") -> bytes:
    """A delivery status notification as a Postfix relay writes it."""
    return report(
        original.mail_from, original.rcpt_tos[0], _headers(original), status, reply, action
    )


def report(mail_from: str, rcpt: str, headers: str, status: str, reply: str, action: str) -> bytes:
    now, boundary = email.utils.formatdate(), uuid.uuid4().hex
    subject = (
        "Undelivered Mail Returned to Sender"
        if action == "failed"
        else "Delayed Mail (still being retried)"
    )
    return f"""Date: {now}
From: MAILER-DAEMON@relay.test (Mail Delivery System)
Subject: {subject}
To: {mail_from}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"
Message-Id: <{uuid.uuid4().hex}@relay.test>

--{boundary}
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host relay.test.

<{rcpt}>: host mx.example[192.0.2.1] said: {reply} (in reply to RCPT TO
    command)

--{boundary}
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.test
Arrival-Date: {now}

Final-Recipient: rfc822; {rcpt}
Original-Recipient: rfc822;{rcpt}
Action: {action}
Status: {status}
Remote-MTA: dns; mx.example
Diagnostic-Code: smtp; {reply}

--{boundary}
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

{headers}

--{boundary}--
""".encode()


def complaint(original: ReceivedMessage) -> bytes:
    """An ARF abuse report as a mailbox provider's feedback loop sends it."""
    boundary = uuid.uuid4().hex
    head = f"""From: Feedback Loop <fbl@provider.test>
To: fbl@startmail.example
Subject: Abuse report
Date: {email.utils.formatdate()}
Message-ID: <{uuid.uuid4().hex}@provider.test>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="{boundary}"

--{boundary}
Content-Type: text/plain; charset=us-ascii

This is an email abuse report for a message received from 127.0.0.1.

--{boundary}
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: ProviderFBL/1.0
Version: 1
Original-Mail-From: <{original.mail_from}>
Arrival-Date: {email.utils.formatdate()}

--{boundary}
Content-Type: message/rfc822

Return-Path: <{original.mail_from}>
"""
    return head.encode() + original.data + f"\r\n--{boundary}--\r\n".encode()


def vacation(original: ReceivedMessage) -> bytes:
    return f"""From: Hanna Sidarenka <{VACATION}>
To: {original.mail_from}
Subject: Automatic reply: {original.message["Subject"]}
Auto-Submitted: auto-replied
Date: {email.utils.formatdate()}
Message-ID: <{uuid.uuid4().hex}@example.net>
In-Reply-To: {original.message["Message-ID"]}
Content-Type: text/plain; charset=utf-8

I am out of the office until May 4.
""".encode()


UNRELATED = b"""From: Someone <someone@example.net>
To: bounces@startmail.example
Subject: Question
Message-ID: <question-1@example.net>
Content-Type: text/plain; charset=us-ascii

How do I export my mailbox?
"""


def write_next_entry(config: Path) -> None:
    april = (config.parent / "updates" / f"{UPDATE}.yaml").read_text(encoding="utf-8")
    text = april.replace(f"id: {UPDATE}", f"id: {NEXT}").replace(
        "date: 2020-04-21", "date: 2020-05-12"
    )
    (config.parent / "updates" / f"{NEXT}.yaml").write_text(text, encoding="utf-8")


@pytest.mark.timeout(180)
def test_bounces_and_a_complaint_read_back_from_a_real_relay(project: Path) -> None:
    box = project.parent / "bounces"
    with RecordingServer() as relay, MaildirMX(box) as mx:
        point_at(project, relay.port)
        # sent under the secret feedback verifies with: the return paths are its proof
        sending = invoke(project, "send", UPDATE, "--yes", env=ENV)
        assert sending.exit_code == 0, sending.stderr
        sent = {m.rcpt_tos[0]: m for m in relay.messages}
        assert len(sent) == 14
        for message in sent.values():
            local, _, domain = message.mail_from.rpartition("@")
            assert local.startswith("bounces+") and domain == "startmail.example"
            assert len(local) <= 64  # RFC 5321
            assert message.message["From"] == "StartMail <status@startmail.example>"
        assert len({m.mail_from for m in sent.values()}) == 14  # one return path each

        hard = sent[HARD]
        mx.send("", hard.mail_from, dsn(hard, status="5.1.1", reply="550 5.1.1 User unknown"))
        soft = sent[SOFT]
        over_quota = "452 4.2.2 The email account that you tried to reach is over quota"
        mx.send("", soft.mail_from, dsn(soft, status="4.2.2", reply=over_quota))
        mx.send("fbl@provider.test", "fbl@startmail.example", complaint(sent[COMPLAINED]))
        mx.send(VACATION, sent[VACATION].mail_from, vacation(sent[VACATION]))
        mx.send("someone@example.net", "bounces@startmail.example", UNRELATED)

    before = new_files(box)
    assert len(before) == 5
    result = invoke(project, "feedback", "--json", env=ENV)
    assert result.exit_code == 0, result.stderr
    payload = summary(result.stdout)
    assert (payload["hard"], payload["soft"], payload["complaints"]) == (1, 1, 1)
    assert (payload["auto_replies"], payload["untouched"], payload["newly_suppressed"]) == (1, 2, 2)

    reasons = dict(query(project, "SELECT address, reason FROM suppressions"))
    assert reasons == {HARD: "bounced", COMPLAINED: "complained"}
    rows = dict(query(project, "SELECT address, status FROM deliveries WHERE entry_id = ?", UPDATE))
    assert (rows[HARD], rows[COMPLAINED], rows[SOFT]) == ("bounced", "complained", "sent")
    [(scored, _day, _source)] = query(project, "SELECT * FROM bounce_scores")
    assert scored == SOFT
    events = query(project, "SELECT address, kind, code, entry_id FROM feedback_events")
    assert sorted(events) == sorted(
        [
            (HARD, "hard", "5.1.1", UPDATE),
            (SOFT, "soft", "4.2.2", UPDATE),
            (COMPLAINED, "complaint", None, UPDATE),
        ]
    )
    # the vacation reply and the unrelated message stay exactly where they were
    left = new_files(box)
    assert len(left) == 2 and all(before[name] == data for name, data in left.items())
    assert len(processed_files(box)) == 3

    # a second pass changes nothing
    dump = ledger_dump(project)
    again = invoke(project, "feedback", "--json", env=ENV)
    assert again.exit_code == 0, again.stderr
    assert summary(again.stdout)["events"] == []
    assert ledger_dump(project) == dump and new_files(box) == left

    status = json.loads(invoke(project, "status", UPDATE, "--json", env=ENV).stdout)
    assert (status["sent"], status["bounced"], status["complained"]) == (12, 1, 1)

    # the next entry skips the hard bounce and the complaint; the soft bounce still gets it
    write_next_entry(project)
    with RecordingServer() as relay:
        point_at(project, relay.port)
        code, report, stderr = send(project, NEXT)
        assert code == 0, stderr
        reached = set(relay.count_by_recipient())
    assert HARD not in reached and COMPLAINED not in reached
    assert SOFT in reached and VACATION in reached
    assert report["counts"]["sent"] == 12


@pytest.mark.timeout(120)
def test_watch_reads_the_bounce_mailbox_before_it_sends(project: Path) -> None:
    """A hard bounce that came in while the service was down is read first: the next
    entry does not go to that address."""
    assert invoke(project, "send", UPDATE, "--yes", "--rate", "0", env=ENV).exit_code == 0
    box = project.parent / "bounces"
    [(row,)] = query(
        project, "SELECT rowid FROM deliveries WHERE entry_id = ? AND address = ?", UPDATE, HARD
    )
    token = return_path_token(Keyring(SECRET.encode()), UPDATE, HARD, "bounces", row)
    return_path = f"bounces+{token}@startmail.example"
    bounce = report(return_path, HARD, "Subject: x", "5.1.1", "550 5.1.1 No such user", "failed")
    with MaildirMX(box) as mx:
        mx.send("", return_path, bounce)
    write_next_entry(project)
    replace_in(project, "rate: 20 ", "rate: 0 ")  # the next entry's pace is not the point
    result = invoke(project, "watch", "--once", "--log-format", "json", env=ENV)
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    feedback_line = next(line for line in lines if line.get("event") == "feedback")
    assert feedback_line["handled"] == 1 and feedback_line["suppressed"] == 1
    assert HARD not in result.stderr  # addresses only masked in the log
    reached = {
        a
        for (a,) in query(
            project, "SELECT address FROM deliveries WHERE entry_id = ? AND status = 'sent'", NEXT
        )
    }
    assert reached and HARD not in reached


@pytest.mark.timeout(90)
def test_watch_reads_bounces_that_arrive_while_it_runs(project: Path) -> None:
    assert invoke(project, "send", UPDATE, "--yes", "--rate", "0", env=ENV).exit_code == 0
    replace_in(project, "  interval: 300 ", "  interval: 1 ")
    process = subprocess.Popen(
        command(project, "watch", "--log-format", "json"),
        env=clean_environ(**ENV),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        [(row,)] = query(
            project,
            "SELECT rowid FROM deliveries WHERE entry_id = ? AND address = ?",
            UPDATE,
            SOFT,
        )
        token = return_path_token(Keyring(SECRET.encode()), UPDATE, SOFT, "bounces", row)
        return_path = f"bounces+{token}@startmail.example"
        hard = report(
            return_path, SOFT, "Subject: x", "5.2.1", "550 5.2.1 Mailbox disabled", "failed"
        )
        with MaildirMX(project.parent / "bounces") as mx:
            mx.send("", return_path, hard)
        wait_for(
            lambda: query(project, "SELECT reason FROM suppressions WHERE address = ?", SOFT),
            timeout=30,
            what="watch to read the bounce",
        )
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and SOFT not in stderr
