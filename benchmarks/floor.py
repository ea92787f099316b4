#!/usr/bin/env python3
"""The floor: pre-built statusmail messages sent over C reused aiosmtplib sessions, and
nothing else (no selection, no rendering, no ledger). Run as a child by loopback.py.

  --mode raw        MAIL (with BODY=8BITMIME when the message is 8-bit), RCPT, DATA, and
                    the bytes written as they are: what statusmail's
                    SmtpConnection._transaction/_mail/_rcpt/_data do for a plain address
                    (the commands through SMTP.execute_command, no address parse). The
                    path statusmail uses.
  --mode pipelined  the same transaction pipelined (RFC 2920): MAIL, RCPT and DATA in one
                    write, then the bytes, through statusmail's own
                    delivery.pipelining.pipelined: what statusmail does when the relay
                    offers PIPELINING (smtp-sink does). aiosmtplib cannot pipeline.
  --mode sendmail   aiosmtplib's SMTP.sendmail(), which also normalizes every message's
                    line endings and dot-stuffs it: a pass statusmail skips.

The messages (a pickle of [(envelope sender, bytes, eight_bit)], in the list's mix of
variants, each with the VERP return path statusmail gave it) are sent in turn, message
i to user<i>@example.net. Prints one JSON line: messages sent, and the
wall and CPU (user + system, getrusage of this process) of the send loop alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pickle
import resource
import time
from pathlib import Path

import aiosmtplib


async def raw(smtp: aiosmtplib.SMTP, sender: str, rcpt: str, data: bytes, eight_bit: bool) -> None:
    """As SmtpConnection._transaction, _mail, _rcpt and _data send a message statusmail
    built to a plain address."""
    options = [b"BODY=8BITMIME"] if eight_bit else []
    response = await smtp.execute_command(b"MAIL", b"FROM:<" + sender.encode() + b">", *options)
    if response.code != 250:
        raise aiosmtplib.SMTPSenderRefused(response.code, response.message, sender)
    response = await smtp.execute_command(b"RCPT", b"TO:<" + rcpt.encode() + b">")
    if response.code not in (250, 251):
        raise aiosmtplib.SMTPRecipientRefused(response.code, response.message, rcpt)
    protocol = smtp.protocol
    assert protocol is not None
    start = await protocol.execute_command(b"DATA", timeout=30)
    if start.code != 354:
        raise aiosmtplib.SMTPDataError(start.code, start.message)
    protocol.write(data + (b".\r\n" if data.endswith(b"\r\n") else b"\r\n.\r\n"))
    response = await protocol.read_response(timeout=30)
    if response.code != 250:
        raise aiosmtplib.SMTPDataError(response.code, response.message)


async def pipelined(
    smtp: aiosmtplib.SMTP, sender: str, rcpt: str, data: bytes, eight_bit: bool
) -> None:
    """As SmtpConnection._transaction sends a message statusmail built to a plain address
    over a session that offers PIPELINING (imported here: older trees lack it)."""
    from statusmail.delivery.pipelining import pipelined as exchange

    option = b" BODY=8BITMIME" if eight_bit else b""
    mail = b"MAIL FROM:<" + sender.encode() + b">" + option + b"\r\n"
    await exchange(smtp, mail, b"RCPT TO:<" + rcpt.encode() + b">\r\n", data, None, 30)


async def sendmail(
    smtp: aiosmtplib.SMTP, sender: str, rcpt: str, data: bytes, eight_bit: bool
) -> None:
    options = ["BODY=8BITMIME"] if eight_bit else []
    await smtp.sendmail(sender, [rcpt], data, mail_options=options)


async def send_all(
    port: int, messages: list[tuple[str, bytes, bool]], n: int, connections: int, mode: str
) -> int:
    send = {"raw": raw, "pipelined": pipelined, "sendmail": sendmail}[mode]
    sent = 0
    counter = iter(range(n))

    async def worker() -> None:
        nonlocal sent
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30)
        await smtp.connect()
        try:
            for i in counter:  # shared: each index is taken once
                sender, data, eight_bit = messages[i % len(messages)]
                await send(smtp, sender, f"user{i:07d}@example.net", data, eight_bit)
                sent += 1
        finally:
            await smtp.quit()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--messages", type=Path, required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--mode", choices=("raw", "pipelined", "sendmail"), required=True)
    args = parser.parse_args()
    messages = pickle.loads(args.messages.read_bytes())
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    sent = asyncio.run(send_all(args.port, messages, args.n, args.concurrency, args.mode))
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(json.dumps({"sent": sent, "loop_wall": wall, "loop_cpu": cpu}))


if __name__ == "__main__":
    main()
