#!/usr/bin/env python3
"""A plain Python sender, as one would write it without statusmail: the standard
library's ``email`` builds each message and ``smtplib`` sends it (a child of honest.py).

Reads the first N rows of the subscriber CSV (email, name, locale), takes the English or
the Russian template by locale (the subject, text and HTML statusmail renders for that
language, with %NAME% and %URL% where the name and the unsubscribe URL go), fills them
per recipient (an HMAC of the address as the unsubscribe token), builds an
``EmailMessage`` (From, To, Subject, Date, Message-ID, List-Unsubscribe and its
one-click POST header; text with an HTML alternative) and sends it with
``SMTP.send_message`` over C reused connections, one thread per connection (smtplib
blocks). Prints one JSON line: messages sent, wall and CPU (getrusage) of the loop.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import hmac
import json
import resource
import smtplib
import sys
import threading
import time
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid
from pathlib import Path

SENDER = "Status <status@startmail.example>"


def cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--csv", type=Path, required=True)
    parser.add_argument("--templates", type=Path, required=True, help="JSON: en and ru")
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    args = parser.parse_args()
    templates = json.loads(args.templates.read_text(encoding="utf-8"))
    with args.csv.open(encoding="utf-8", newline="") as handle:
        rows = [row for _, row in zip(range(args.n), csv.DictReader(handle), strict=False)]
    key = b"plain-sender-secret"
    turn = iter(rows)
    lock = threading.Lock()
    sent = [0]
    errors: list[str] = []

    def worker() -> None:
        with smtplib.SMTP("127.0.0.1", args.port, timeout=30) as smtp:
            while True:
                with lock:
                    row = next(turn, None)
                if row is None:
                    return
                t = templates["ru" if row["locale"].startswith("ru") else "en"]
                email, name = row["email"], row["name"]
                token = hmac.new(key, email.encode(), hashlib.sha256).hexdigest()
                url = f"https://status.startmail.example/unsubscribe/{token}"
                msg = EmailMessage()
                msg["From"] = SENDER
                msg["To"] = formataddr((name, email)) if name else email
                msg["Subject"] = t["subject"]
                msg["Date"] = formatdate(localtime=True)
                msg["Message-ID"] = make_msgid(domain="startmail.example")
                msg["List-Unsubscribe"] = f"<{url}>"
                msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
                msg.set_content(t["text"].replace("%NAME%", name).replace("%URL%", url))
                msg.add_alternative(
                    t["html"].replace("%NAME%", name).replace("%URL%", url), subtype="html"
                )
                try:
                    smtp.send_message(msg)
                except smtplib.SMTPException as error:
                    errors.append(f"{email}: {error}")
                    return
                with lock:
                    sent[0] += 1

    cpu, start = cpu_now(), time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall, cpu = time.perf_counter() - start, cpu_now() - cpu
    print(json.dumps({"sent": sent[0], "wall": wall, "cpu": cpu, "errors": errors[:3]}))
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
