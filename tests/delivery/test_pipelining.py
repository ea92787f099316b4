"""PIPELINING (RFC 2920): MAIL, RCPT and DATA go in one write to a relay that offers it,
and every reply still meets its command, whatever the relay says and however its
replies arrive.

The relays here are scripted asyncio servers on 127.0.0.1 (a real TCP session, each
written to say exactly what the test needs, which aiosmtpd cannot: aiosmtpd answers
each command as it reads it); ``RecordingServer`` offers PIPELINING too, so every
engine test elsewhere sends this way.
"""

from __future__ import annotations

import asyncio
import email.policy
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from email.message import EmailMessage
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_server import RecordingServer, TestCA, make_test_ca
from statusmail.delivery.pipelining import MalformedReply, Replies
from statusmail.delivery.smtp import SmtpTransport
from statusmail.delivery.transport import SessionEnded
from statusmail.domain import Envelope, Shape
from statusmail.errors import ConfigError, DeliveryError
from statusmail.project.config import load_config
from statusmail.project.sending import SmtpSettings

SENDER = "status@example.org"
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, list[bytes]], Awaitable[None]]


def envelope(recipient: str = "ann@example.org") -> Envelope:
    """A message as statusmail's builder hands it over: wire-ready, with its Shape."""
    msg = EmailMessage()
    msg["From"] = f"Status <{SENDER}>"
    msg["To"] = recipient
    msg["Subject"] = "Scheduled maintenance"
    msg["Message-ID"] = f"<{recipient}.1@example.org>"
    msg.set_content("We will be down for ten minutes.\n")
    return Envelope(
        sender=SENDER,
        recipient=recipient,
        recipient_ascii=recipient,
        data=msg.as_bytes(policy=email.policy.SMTP),
        message_id=str(msg["Message-ID"]),
        shape=Shape(eight_bit=False, ascii_headers=True),
    )


@asynccontextmanager
async def relay(
    script: Script, *, pipelining: bool = True
) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A relay that greets, answers EHLO (offering PIPELINING or not), then runs
    ``script`` for the session; yields its port and every line it read, in order."""
    heard: list[bytes] = []

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 relay.test ESMTP\r\n")
        heard.append(await reader.readline())
        offer = b"250-relay.test\r\n" + (b"250-PIPELINING\r\n" if pipelining else b"")
        writer.write(offer + b"250 8BITMIME\r\n")
        try:
            await script(reader, writer, heard)
        finally:
            writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], heard
    finally:
        server.close()
        await server.wait_closed()


async def lines(reader: asyncio.StreamReader, heard: list[bytes], count: int) -> list[bytes]:
    got = [await reader.readline() for _ in range(count)]
    heard.extend(got)
    return got


async def trickle(writer: asyncio.StreamWriter, replies: bytes) -> None:
    """Each byte in a write of its own: replies split anywhere."""
    for i in range(len(replies)):
        writer.write(replies[i : i + 1])
        await writer.drain()


async def quit_after(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, heard: list[bytes]
) -> None:
    while line := await reader.readline():
        heard.append(line)
        if line.upper().startswith(b"QUIT"):
            writer.write(b"221 bye\r\n")
            return
        writer.write(b"250 ok\r\n")  # RSET


def transport(port: int, timeout: float = 5, *, pipelining: bool = True) -> SmtpTransport:
    settings = SmtpSettings(
        host="127.0.0.1", port=port, security="none", timeout=timeout, pipelining=pipelining
    )
    return SmtpTransport(settings, None, hostname="client.test")


async def refusal_of(script: Script, *, pipelining: bool = True) -> DeliveryError:
    """What one message is refused with by the relay ``script`` plays."""
    async with relay(script, pipelining=pipelining) as (port, _):
        conn = await transport(port, pipelining=pipelining).connect()
        with pytest.raises(DeliveryError) as refused:
            await conn.send(envelope())
        await conn.close()
    return refused.value


async def test_mail_rcpt_and_data_go_before_any_reply_when_the_relay_offers_pipelining() -> None:
    received: list[bytes] = []

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, heard: list[bytes]
    ) -> None:
        # Nothing is answered until all three commands are in: a client that waits for
        # MAIL's reply before RCPT would wait here until its timeout.
        await lines(reader, heard, 3)
        await trickle(writer, b"250 2.1.0 sender ok\r\n250 2.1.5 recipient ok\r\n354 go ahead\r\n")
        received.append((await reader.readuntil(b"\r\n.\r\n"))[:-3])
        writer.write(b"250-2.0.0 queued\r\n250 2.0.0 as 1234\r\n")  # a multi-line reply
        await quit_after(reader, writer, heard)

    message = envelope()
    async with relay(script) as (port, heard):
        conn = await transport(port, timeout=2).connect()
        await conn.send(message)
        await conn.close()
    assert heard[1:4] == [
        b"MAIL FROM:<status@example.org>\r\n",
        b"RCPT TO:<ann@example.org>\r\n",
        b"DATA\r\n",
    ]
    assert received == [message.data]
    assert heard[-1] == b"QUIT\r\n"


@pytest.mark.parametrize(
    ("offered", "configured"), [(False, True), (True, False)], ids=["not offered", "turned off"]
)
async def test_without_pipelining_the_relay_gets_one_command_at_a_time(
    offered: bool, configured: bool
) -> None:
    """A relay that does not offer it, or ``smtp.pipelining: false`` (for a relay, or a
    proxy before it, that offers it and gets it wrong)."""

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, heard: list[bytes]
    ) -> None:
        for reply in (b"250 sender ok\r\n", b"250 recipient ok\r\n", b"354 go ahead\r\n"):
            await lines(reader, heard, 1)
            with pytest.raises(TimeoutError):  # the next command waits for this reply
                await asyncio.wait_for(reader.readline(), 0.1)
            writer.write(reply)
        await reader.readuntil(b"\r\n.\r\n")
        writer.write(b"250 queued\r\n")
        await quit_after(reader, writer, heard)

    async with relay(script, pipelining=offered) as (port, heard):
        conn = await transport(port, pipelining=configured).connect()
        await conn.send(envelope())
        await conn.close()
    assert [line[:4] for line in heard[1:4]] == [b"MAIL", b"RCPT", b"DATA"]


async def test_a_refused_recipient_in_a_pipeline_is_a_bounce_and_the_session_goes_on() -> None:
    with RecordingServer(reject_rcpt={"gone@example.org": "550 5.1.1 User unknown"}) as server:
        conn = await transport(server.port, timeout=2).connect()
        with pytest.raises(DeliveryError) as refused:
            await conn.send(envelope("gone@example.org"))
        await conn.send(envelope("ann@example.org"))
        await conn.close()
    error = refused.value
    assert (error.code, error.bounce, error.transient) == (550, True, False)
    assert "reply to RCPT" in str(error)
    assert [m.rcpt_tos for m in server.messages] == [["ann@example.org"]]
    assert server.connections == 1


async def test_a_relay_that_opens_data_after_refusing_the_recipient_is_dropped_mid_data() -> None:
    """It gets nothing after DATA: a session dropped before the end of DATA delivers
    nothing. (A lone dot ended it, and a relay that kept the refused recipient, or one
    that refused MAIL FROM and took the rest, delivered an empty message: review.)"""

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, heard: list[bytes]
    ) -> None:
        await lines(reader, heard, 3)
        writer.write(b"250 ok\r\n550 5.1.1 no such user\r\n354 go ahead (RFC 2920 says not to)\r\n")
        await lines(reader, heard, 1)  # what came after DATA, if anything: b"" at the end

    message = envelope("gone@example.org")
    async with relay(script) as (port, heard):
        conn = await transport(port).connect()
        with pytest.raises(DeliveryError) as refused:
            await conn.send(message)
        await conn.close()
    assert (refused.value.code, refused.value.bounce) == (550, True)
    assert b"".join(heard[3:]) == b"DATA\r\n"  # then the connection ended: no dot


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one at a time"])
async def test_a_refusal_in_latin_1_is_said_in_text_that_can_be_stored(pipelining: bool) -> None:
    """A relay's reply that is not UTF-8 ("Empfänger" in Latin-1) came through as
    surrogates, which the ledger cannot store: the group commit failed, the run ended
    in a traceback, and what the relay had accepted was sent again by the next run."""

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, heard: list[bytes]
    ) -> None:
        if pipelining:
            await lines(reader, heard, 3)
            writer.write(b"250 ok\r\n550 5.7.1 Empf\xe4nger abgelehnt\r\n554 5.5.1 no rcpt\r\n")
        else:
            await lines(reader, heard, 1)
            writer.write(b"250 ok\r\n")
            await lines(reader, heard, 1)
            writer.write(b"550 5.7.1 Empf\xe4nger abgelehnt\r\n")
        await quit_after(reader, writer, heard)

    refused = await refusal_of(script, pipelining=pipelining)
    said = str(refused)
    said.encode("utf-8")  # storable
    assert "Empf\ufffdnger abgelehnt" in said, said
    assert (refused.code, refused.bounce) == (550, False)  # 5.7.1: policy


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one at a time"])
async def test_a_refused_sender_is_never_the_recipient_s_bounce(pipelining: bool) -> None:
    """A relay refusing the return path: "550 <bounces+…>: Sender address rejected: User
    unknown" (no enhanced code: the words decide). They are about the sender: read as
    the recipient's "no such user", every recipient was suppressed as bounced."""
    refusal = b"550 <bounces+x@example.org>: Sender address rejected: User unknown\r\n"

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, heard: list[bytes]
    ) -> None:
        await lines(reader, heard, 3 if pipelining else 1)
        writer.write(refusal + (b"503 5.5.1 no sender\r\n" * 2 if pipelining else b""))
        await quit_after(reader, writer, heard)

    refused = await refusal_of(script, pipelining=pipelining)
    assert (refused.code, refused.bounce) == (550, False)
    assert "reply to MAIL" in str(refused)


async def test_a_421_that_closes_the_session_mid_pipeline_is_what_the_relay_said() -> None:
    """Exim's "421 ... too many messages in this connection", to the pipelined MAIL of a
    session's second message, then the connection closed, as 421 means: the reads of
    the next replies found it gone, and the 421 was thrown away for "connection lost":
    the attempt charged, nothing learnt (one command at a time learnt it)."""
    sessions: list[int] = []

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, heard: list[bytes]
    ) -> None:
        sessions.append(1)
        if len(sessions) > 1:  # the next session: takes the message
            await lines(reader, heard, 3)
            writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
            while await reader.readline() not in (b".\r\n", b""):
                pass
            writer.write(b"250 queued\r\n")
            await quit_after(reader, writer, heard)
            return
        await lines(reader, heard, 3)
        writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
        while await reader.readline() not in (b".\r\n", b""):
            pass
        writer.write(b"250 queued\r\n")
        await lines(reader, heard, 3)  # the second message's MAIL, RCPT, DATA
        writer.write(b"421 4.7.0 relay.test too many messages in this connection\r\n")
        await writer.drain()

    async with relay(script) as (port, _):
        conn = await transport(port).connect()
        await conn.send(envelope("ann@example.org"))
        with pytest.raises(SessionEnded) as ended:
            await conn.send(envelope("bob@example.org"))
        await conn.send(envelope("bob@example.org"))  # the new session takes it
        await conn.close()
    assert ended.value.code == 421 and ended.value.learnt == 1
    assert len(sessions) == 2


@pytest.mark.parametrize("how", ["silent", "hangs up", "closes"])
async def test_a_relay_that_stops_mid_pipeline_is_a_transient_failure(how: str) -> None:
    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, heard: list[bytes]
    ) -> None:
        await lines(reader, heard, 3)
        writer.write(b"250 ok\r\n")
        if how == "silent":
            await reader.read()  # until the client gives up and closes
        elif how == "hangs up":
            await writer.drain()
            writer.transport.abort()  # a reset
        # "closes": the session's end closes the socket in good order (an EOF)

    async with relay(script) as (port, _):
        conn = await transport(port, timeout=0.3).connect()
        with pytest.raises(DeliveryError) as failed:
            await conn.send(envelope())
        assert conn.broken
        await conn.close()
    assert failed.value.transient and not failed.value.bounce
    said = "did not answer within 0.3s" if how == "silent" else "lost"
    assert said in str(failed.value) and f"127.0.0.1:{port}" in str(failed.value)


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return make_test_ca(tmp_path_factory.mktemp("ca"))


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_a_pipeline_over_tls_delivers_and_the_session_goes_on(
    security: str, test_ca: TestCA
) -> None:
    with RecordingServer(
        tls_context=test_ca.server_context,
        implicit_tls=security == "tls",
        auth=("relay", "s3cret") if security == "starttls" else None,
        reject_rcpt={"gone@example.org": "550 5.1.1 User unknown"},
    ) as server:
        settings = SmtpSettings(
            host="127.0.0.1",
            port=server.port,
            security=security,
            timeout=2,
            username="relay" if security == "starttls" else None,
            ca_file=test_ca.ca_file,
        )
        conn = await SmtpTransport(settings, "s3cret", hostname="client.test").connect()
        sent = [envelope(f"user{i}@example.org") for i in range(3)]
        for message in sent[:2]:
            await conn.send(message)
        with pytest.raises(DeliveryError):
            await conn.send(envelope("gone@example.org"))
        await conn.send(sent[2])
        await conn.close()
    assert [m.data for m in server.messages] == [m.data for m in sent]
    assert server.connections == 1


def test_smtp_pipelining_is_true_or_false_in_the_config(project: Path) -> None:
    data = yaml.safe_load(project.read_text(encoding="utf-8"))
    for value, expected in ((False, False), (None, True)):
        data["smtp"] = {"host": "127.0.0.1"} | ({} if value is None else {"pipelining": value})
        project.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        assert load_config(project).smtp.pipelining is expected
    data["smtp"] = {"host": "127.0.0.1", "pipelining": "sometimes"}
    project.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    line = project.read_text(encoding="utf-8").splitlines().index("  pipelining: sometimes") + 1
    with pytest.raises(ConfigError) as refused:
        load_config(project)
    said = f"{project.name}:{line}: 'smtp.pipelining' must be true or false"
    assert said in str(refused.value)


# -- the reply reader ----------------------------------------------------------------

REPLY = st.builds(
    lambda code, texts: (code, texts),
    st.integers(200, 599),
    st.lists(
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
        min_size=1,
        max_size=3,
    ),
)


def wire(code: int, texts: list[str]) -> bytes:
    last = len(texts) - 1
    return b"".join(
        f"{code}{' ' if i == last else '-'}{t}\r\n".encode() for i, t in enumerate(texts)
    )


@settings(max_examples=100, deadline=None)
@given(st.lists(REPLY, min_size=1, max_size=5), st.data())
def test_replies_come_out_whole_and_in_order_however_they_are_split(
    replies: list[tuple[int, list[str]]], data: st.DataObject
) -> None:
    stream = b"".join(wire(code, texts) for code, texts in replies)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(len(stream) - 1, 1)), max_size=8)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]

    async def read() -> list[tuple[int, str]]:
        reader = Replies(asyncio.Protocol())
        for chunk in chunks:
            reader.data_received(chunk)
        return [tuple(await reader.next(1)) for _ in replies]  # type: ignore[misc]

    got = asyncio.run(read())
    assert got == [(code, "\n".join(t.strip(" \t") for t in texts)) for code, texts in replies]


@pytest.mark.parametrize(
    "junk", [b"hello\r\n", b"25\r\n", b"2500 too long a code\r\n", b"9" * 9000 + b"\r\n"]
)
async def test_what_is_not_a_reply_fails_the_read_instead_of_pairing_with_a_command(
    junk: bytes,
) -> None:
    reader = Replies(asyncio.Protocol())
    reader.data_received(junk)
    with pytest.raises(MalformedReply):
        await reader.next(1)


async def test_an_over_long_reply_keeps_its_code() -> None:
    """A relay's "250 2.0.0 Ok: queued as AAAA…" on one 9,000-octet line (RFC 5321 says
    512): read as "not a reply", the accepted message was sent again five times."""
    reader = Replies(asyncio.Protocol())
    reader.data_received(b"250 2.0.0 Ok: queued as " + b"A" * 9000 + b"\r\n")
    code, text = await reader.next(1)
    assert code == 250 and text.startswith("2.0.0 Ok: queued as AAAA") and len(text) < 8192


async def test_an_unreadable_reply_after_the_message_is_not_sent_again() -> None:
    """One command at a time, aiosmtplib reads the 250 after the end of DATA on one
    9,000-octet line as no reply ("-1 Response too long"): taken for a 4xx, the message
    the relay had accepted was sent again and again."""

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, heard: list[bytes]
    ) -> None:
        for reply in (b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"):
            await lines(reader, heard, 1)
            writer.write(reply)
        while await reader.readline() not in (b".\r\n", b""):
            pass
        writer.write(b"250 2.0.0 Ok: queued as " + b"A" * 9000 + b"\r\n")
        await quit_after(reader, writer, heard)

    unread = await refusal_of(script, pipelining=False)
    assert not unread.transient and "may have been accepted" in str(unread)
