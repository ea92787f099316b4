"""Helpers for the feedback tests: the corpus, a bounce Maildir, the ledger's rows."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from statusmail.feedback.classified import ReturnPath
from statusmail.project.config import load_config
from statusmail.project.tokens import (
    Keyring,
    message_id,
    return_path_token,
    unsubscribe_token,
)

CORPUS = Path(__file__).resolve().parent / "feedback_corpus"
UPDATE = "update-2020-04-21"
SECRET = "test-unsubscribe-secret-at-least-32-bytes"
OTHER_SECRET = "a-secret-statusmail-never-had-at-least-32-bytes"
_PLACEHOLDER = re.compile(rb"\{\{(VERP|MSGID|UNSUB|FORGED)(?::([^:}]+))?(?::([^}]+))?\}\}")


def corpus_index() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load((CORPUS / "index.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def ledger_path(config: Path) -> Path:
    return config.parent / "statusmail.db"


def query(config: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{ledger_path(config)}?mode=ro", uri=True)
    try:
        return list(db.execute(sql, args))
    finally:
        db.close()


def ledger_dump(config: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables feedback may change, to compare before and after."""
    return {
        table: query(config, f"SELECT * FROM {table} ORDER BY 1, 2, 3")
        for table in ("deliveries", "suppressions", "feedback_events", "bounce_scores")
    }


def fill(template: bytes, config: Path, secret: str = SECRET) -> bytes:
    """The corpus placeholders filled in as the messages statusmail sent carried them."""
    loaded = load_config(config)
    keys = Keyring(secret.encode())
    domain = loaded.sender.address.rpartition("@")[2]
    local = (loaded.bounces.address or "bounces@").rpartition("@")[0]

    def value(match: re.Match[bytes]) -> bytes:
        kind = match.group(1).decode()
        first = (match.group(2) or b"").decode()
        second = (match.group(3) or b"").decode()
        if kind == "VERP":
            rows = query(
                config,
                "SELECT rowid FROM deliveries WHERE entry_id = ? AND address = ?",
                first,
                second,
            )
            assert rows, f"{second} was never sent {first}"
            return return_path_token(keys, first, second, local, rows[0][0]).encode()
        if kind == "MSGID":
            sent = query(
                config,
                "SELECT message_id FROM deliveries WHERE entry_id = ? AND address = ?",
                first,
                second,
            )
            if sent and sent[0][0]:
                return str(sent[0][0]).encode()
            return message_id(keys, first, second, domain).encode()
        if kind == "UNSUB":
            return unsubscribe_token(keys, first).encode()
        return unsubscribe_token(Keyring(OTHER_SECRET.encode()), "someone@example.org").encode()

    return _PLACEHOLDER.sub(value, template)


def deliver(maildir: Path, data: bytes, name: str | None = None) -> Path:
    """Deliver ``data`` the way an MTA does: into tmp/, then renamed into new/."""
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    unique = name or f"{time.time_ns()}.P{os.getpid()}.{socket.gethostname()}"
    tmp = maildir / "tmp" / unique
    tmp.write_bytes(data)
    final = maildir / "new" / unique
    os.rename(tmp, final)
    return final


def new_files(maildir: Path) -> dict[str, bytes]:
    folder = maildir / "new"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.is_dir() else {}


def processed_files(maildir: Path) -> dict[str, bytes]:
    folder = maildir / ".processed" / "cur"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.is_dir() else {}


def set_bounces(config: Path, **settings: Any) -> None:
    """Replace the config's ``bounces`` section (keeps the sample's address)."""
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["bounces"] = {"address": "bounces@startmail.example", **settings}
    config.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


def summary(stdout: str) -> Mapping[str, Any]:
    payload = json.loads(stdout)
    assert isinstance(payload, dict)
    return payload


class _LocalDelivery:
    """As Postfix's local(8) delivers: Return-Path and Delivered-To on top, then the
    message as received, into tmp/ and renamed into new/ of the recipient's Maildir."""

    def __init__(self, maildir: Path) -> None:
        self.maildir = maildir

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        content = envelope.original_content or envelope.content
        assert isinstance(content, bytes)
        for rcpt in envelope.rcpt_tos:
            head = f"Return-Path: <{envelope.mail_from}>\r\nDelivered-To: {rcpt}\r\n"
            deliver(self.maildir, head.encode() + content)
        return "250 2.0.0 Ok: delivered to the Maildir"


class MaildirMX:
    """A real SMTP server (aiosmtpd) that delivers every message into one Maildir: the
    mail host where the return path's address lives."""

    def __init__(self, maildir: Path) -> None:
        from aiosmtpd.controller import Controller

        self.port = free_port()
        self._controller = Controller(_LocalDelivery(maildir), hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> MaildirMX:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()

    def send(self, mail_from: str, rcpt: str, data: bytes) -> None:
        import smtplib

        wire = re.sub(rb"\r?\n", b"\r\n", data)  # SMTP lines end in CRLF
        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as smtp:
            smtp.sendmail(mail_from, [rcpt], wire)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- reports made to order -------------------------------------------------------------------

BOUNCES = "bounces@startmail.example"
DOMAIN = "startmail.example"


def sent_to(ledger: Any, keys: Keyring, entry: str, addresses: list[str]) -> dict[str, str]:
    """``entry`` recorded as sent to ``addresses`` (with the Message-IDs statusmail gives);
    returns each address's return-path token."""
    from statusmail.domain import DeliveryStatus, Outcome
    from statusmail.ledger import StagedRow

    generation = ledger.begin_selection(entry, "digest")
    ledger.stage([StagedRow("selected", a, a, a, "", "ru", "RU") for a in addresses])
    ledger.enqueue(entry, generation)
    ledger.record(
        entry,
        [
            Outcome(a, DeliveryStatus.SENT, 1, 250, None, message_id(keys, entry, a, DOMAIN))
            for a in addresses
        ],
    )
    rows = dict(
        ledger.database.execute(
            "SELECT address, {seq} FROM deliveries WHERE entry_id = :e", {"e": entry}
        )
    )
    return {a: return_path_token(keys, entry, a, "bounces", int(rows[a])) for a in addresses}


def dsn(
    address: str,
    *,
    token: str | None = None,
    status: str = "5.1.1",
    diagnostic: str = "550 5.1.1 <{address}>: Recipient address rejected: User unknown",
    original_id: str | None = None,
    when: str = "Tue, 21 Apr 2020 10:00:00 +0000",
    action: str = "failed",
) -> bytes:
    """A Postfix-shaped DSN about ``address``: to the VERP address of ``token`` when given
    (else to the plain bounce address), quoting the original's Message-ID when given."""
    boundary = uuid.uuid4().hex
    to = f"bounces+{token}@{DOMAIN}" if token else BOUNCES
    quoted = (
        f"--{boundary}\nContent-Type: text/rfc822-headers\n\n"
        f"From: StartMail <status@{DOMAIN}>\nTo: {address}\nMessage-ID: {original_id}\n\n"
        if original_id
        else ""
    )
    return f"""Return-Path: <>
Delivered-To: {to}
From: MAILER-DAEMON@relay.test (Mail Delivery System)
To: {to}
Subject: Undelivered Mail Returned to Sender
Date: {when}
Message-ID: <{uuid.uuid4().hex}@relay.test>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"

--{boundary}
Content-Type: text/plain

I'm sorry to have to inform you that your message could not be delivered.

--{boundary}
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.test

Final-Recipient: rfc822; {address}
Action: {action}
Status: {status}
Diagnostic-Code: smtp; {diagnostic.format(address=address)}
Last-Attempt-Date: {when}

{quoted}--{boundary}--
""".encode()


def arf(address: str, *, original_id: str | None = None, feedback_type: str = "abuse") -> bytes:
    """An ARF report (RFC 5965) about ``address``, quoting the original's headers."""
    boundary = uuid.uuid4().hex
    mid = f"Message-ID: {original_id}\n" if original_id else ""
    return f"""From: feedback@fbl.example.net
To: {BOUNCES}
Subject: Abuse report
Date: Tue, 21 Apr 2020 11:00:00 +0000
Message-ID: <{uuid.uuid4().hex}@fbl.example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="{boundary}"

--{boundary}
Content-Type: text/plain

This is an email abuse report.

--{boundary}
Content-Type: message/feedback-report

Feedback-Type: {feedback_type}
User-Agent: ExampleFBL/1.0
Version: 1
Original-Rcpt-To: {address}

--{boundary}
Content-Type: text/rfc822-headers

From: StartMail <status@{DOMAIN}>
To: {address}
{mid}Subject: StartMail status

--{boundary}--
""".encode()


# The corpus with its placeholders filled, for the classifier's tests.
RETURN_PATH = ReturnPath.of("bounces@startmail.example")
_ANY_PLACEHOLDER = re.compile(rb"\{\{(VERP|MSGID|UNSUB|FORGED)[^}]*\}\}")
_STAND_INS = {b"VERP": b"a" * 48, b"MSGID": b"<u.0123@startmail.example>"}


def _stand_in(match: re.Match[bytes]) -> bytes:
    """Token-shaped stand-ins: the verdict never depends on a token being valid."""
    return _STAND_INS.get(match.group(1), b"A" * 40)


INDEX = corpus_index()
SAMPLES = {
    name: _ANY_PLACEHOLDER.sub(_stand_in, (CORPUS / name).read_bytes()) for name in sorted(INDEX)
}
