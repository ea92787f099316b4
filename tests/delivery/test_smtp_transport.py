"""SmtpTransport against a real aiosmtpd server (tests/smtp_server.py)."""

from __future__ import annotations

import asyncio
import email.policy
import socket
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtplib.email import quote_address
from hypothesis import given
from hypothesis import strategies as st

from conftest import closed_port
from smtp_server import RecordingServer, TestCA, make_test_ca
from statusmail.delivery.smtp import SmtpConnection, SmtpTransport
from statusmail.delivery.smtp_replies import command_address, is_bounce
from statusmail.delivery.transport import Transport
from statusmail.domain import Envelope
from statusmail.errors import ConnectError, DeliveryError
from statusmail.project.sending import SmtpSettings

SENDER = "status@example.org"
MakeServer = Callable[..., RecordingServer]


def make_envelope(
    recipient: str = "ann@example.org",
    recipient_ascii: str | None = "same",  # "same": the recipient is ASCII already
    *,
    subject: str = "Scheduled maintenance",
    body: str = "We will be down for ten minutes.\n",
) -> Envelope:
    msg = EmailMessage()
    msg["From"] = f"Status <{SENDER}>"
    msg["To"] = recipient
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{abs(hash((recipient, subject)))}@example.org>"
    msg.set_content(body)
    return Envelope(
        sender=SENDER,
        recipient=recipient,
        recipient_ascii=recipient if recipient_ascii == "same" else recipient_ascii,
        data=msg.as_bytes(policy=email.policy.SMTP),
        message_id=str(msg["Message-ID"]),
    )


def settings_for(server: RecordingServer, **kw: Any) -> SmtpSettings:
    kw.setdefault("security", "none")
    kw.setdefault("timeout", 0.5)
    return SmtpSettings(host=server.host, port=server.port, **kw)


def transport_for(server: RecordingServer, password: str | None = None, **kw: Any) -> SmtpTransport:
    return SmtpTransport(settings_for(server, **kw), password, hostname="client.test")


@pytest.fixture
def make_server() -> Iterator[MakeServer]:
    servers: list[RecordingServer] = []

    def make(**kw: Any) -> RecordingServer:
        server = RecordingServer(**kw).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return make_test_ca(tmp_path_factory.mktemp("ca"))


async def send_error(conn: SmtpConnection, envelope: Envelope) -> DeliveryError:
    with pytest.raises(DeliveryError) as info:
        await conn.send(envelope)
    return info.value


# -- happy paths ----------------------------------------------------------------------


async def test_plain_send_arrives_byte_identical(make_server: MakeServer) -> None:
    server = make_server()
    transport: Transport = transport_for(server)
    assert transport.name == "smtp"
    envelope = make_envelope()
    conn = await transport.connect()
    await conn.send(envelope)
    await conn.close()
    [got] = server.messages
    assert got.data == envelope.data
    assert got.mail_from == SENDER
    assert got.rcpt_tos == ["ann@example.org"]
    assert got.message["Subject"] == "Scheduled maintenance"


async def test_connection_is_reused(make_server: MakeServer) -> None:
    server = make_server()
    conn = await transport_for(server).connect()
    for i in range(20):
        await conn.send(make_envelope(f"user{i}@example.org"))
    await conn.close()
    assert server.connections == 1
    assert len(server.messages) == 20
    assert server.count_by_recipient()["user7@example.org"] == 1


async def test_close_twice_is_harmless(make_server: MakeServer) -> None:
    conn = await transport_for(make_server()).connect()
    await conn.close()
    await conn.close()


async def test_starttls_with_auth(make_server: MakeServer, test_ca: TestCA) -> None:
    server = make_server(
        tls_context=test_ca.server_context, require_tls=True, auth=("relay", "s3cret")
    )
    transport = transport_for(
        server, "s3cret", security="starttls", username="relay", ca_file=test_ca.ca_file
    )
    conn = await transport.connect()
    await conn.send(make_envelope())
    await conn.close()
    assert len(server.messages) == 1


async def test_implicit_tls(make_server: MakeServer, test_ca: TestCA) -> None:
    server = make_server(tls_context=test_ca.server_context, implicit_tls=True)
    conn = await transport_for(server, security="tls", ca_file=test_ca.ca_file).connect()
    await conn.send(make_envelope())
    await conn.close()
    assert len(server.messages) == 1


# -- connect failures -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "said"),
    [
        ("wrong", "535"),
        # bytes from the environment that are not UTF-8 come as surrogates, which AUTH
        # cannot encode: a UnicodeEncodeError's traceback, not an error naming the relay
        ("caf\udce9", "not valid text"),
    ],
    ids=["wrong", "not text"],
)
async def test_a_password_refused_or_unsendable_is_a_permanent_connect_error(
    make_server: MakeServer, test_ca: TestCA, password: str, said: str
) -> None:
    server = make_server(tls_context=test_ca.server_context, auth=("relay", "s3cret"))
    transport = transport_for(
        server, password, security="starttls", username="relay", ca_file=test_ca.ca_file
    )
    with pytest.raises(ConnectError) as info:
        await transport.connect()
    assert info.value.transient is False
    assert f"127.0.0.1:{server.port}" in str(info.value)
    assert said in str(info.value)


async def test_untrusted_certificate_is_permanent(make_server: MakeServer, test_ca: TestCA) -> None:
    server = make_server(tls_context=test_ca.server_context)
    # No ca_file: the system store does not know the trustme CA.
    with pytest.raises(ConnectError) as info:
        await transport_for(server, security="starttls").connect()
    assert info.value.transient is False
    assert "TLS" in str(info.value)


async def test_untrusted_certificate_implicit_tls_is_permanent(
    make_server: MakeServer, test_ca: TestCA
) -> None:
    server = make_server(tls_context=test_ca.server_context, implicit_tls=True)
    with pytest.raises(ConnectError) as info:
        await transport_for(server, security="tls").connect()
    assert info.value.transient is False
    assert f"127.0.0.1:{server.port}" in str(info.value)


async def test_missing_ca_file_is_permanent_connect_error(
    make_server: MakeServer, tmp_path: Path
) -> None:
    server = make_server()
    transport = transport_for(server, security="starttls", ca_file=tmp_path / "nope.pem")
    with pytest.raises(ConnectError, match="CA file") as info:
        await transport.connect()
    assert info.value.transient is False
    assert f"127.0.0.1:{server.port}" in str(info.value)


async def test_starttls_not_offered_is_permanent(make_server: MakeServer) -> None:
    server = make_server()
    with pytest.raises(ConnectError, match="STARTTLS") as info:
        await transport_for(server, security="starttls").connect()
    assert info.value.transient is False


async def test_nothing_listening_is_transient_connect_error() -> None:
    with closed_port() as port, pytest.raises(ConnectError) as info:
        settings = SmtpSettings(host="127.0.0.1", port=port, security="none", timeout=0.5)
        await SmtpTransport(settings, None, hostname="client.test").connect()
    assert info.value.transient is True
    assert f"127.0.0.1:{port}" in str(info.value)


async def test_silent_server_times_out_on_connect() -> None:
    # Listening but never greeting: connect must give up after the timeout.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        settings = SmtpSettings(host="127.0.0.1", port=port, security="none", timeout=0.3)
        with pytest.raises(ConnectError, match="timed out") as info:
            await SmtpTransport(settings, None, hostname="client.test").connect()
    assert info.value.transient is True


# -- delivery errors ------------------------------------------------------------------


async def test_451_at_data_is_transient_and_connection_stays_usable(
    make_server: MakeServer,
) -> None:
    server = make_server(fail_data_every=2)
    conn = await transport_for(server).connect()
    await conn.send(make_envelope("a@example.org"))
    err = await send_error(conn, make_envelope("b@example.org"))
    assert (err.code, err.transient, err.bounce) == (451, True, False)
    assert err.recipient == "b@example.org"
    await conn.send(make_envelope("c@example.org"))  # RSET made the session reusable
    await conn.close()
    assert server.connections == 1
    assert set(server.count_by_recipient()) == {"a@example.org", "c@example.org"}


async def test_unknown_user_at_rcpt_is_a_bounce(make_server: MakeServer) -> None:
    server = make_server(reject_rcpt={"gone@example.org": "550 5.1.1 User unknown"})
    conn = await transport_for(server).connect()
    err = await send_error(conn, make_envelope("gone@example.org"))
    assert (err.code, err.transient, err.bounce) == (550, False, True)
    assert err.recipient == "gone@example.org"
    assert "5.1.1 User unknown" in str(err)
    await conn.send(make_envelope("ann@example.org"))
    await conn.close()
    assert server.connections == 1
    assert server.count_by_recipient() == {"ann@example.org": 1}


@pytest.mark.parametrize(
    "reply",
    ["552 5.2.2 Mailbox full", "554 5.7.1 Message rejected as spam", "550 5.7.1 Policy"],
)
async def test_other_5xx_at_rcpt_is_permanent_not_bounce(
    make_server: MakeServer, reply: str
) -> None:
    server = make_server(reject_rcpt={"x@example.org": reply})
    conn = await transport_for(server).connect()
    err = await send_error(conn, make_envelope("x@example.org"))
    assert (err.code, err.transient, err.bounce) == (int(reply[:3]), False, False)
    await conn.close()


async def test_5xx_at_data_is_permanent(make_server: MakeServer) -> None:
    server = make_server(data_reply=lambda n, env: "554 5.6.0 Message content rejected")
    conn = await transport_for(server).connect()
    err = await send_error(conn, make_envelope())
    assert (err.code, err.transient, err.bounce) == (554, False, False)
    server.data_reply = None
    await conn.send(make_envelope())
    await conn.close()
    assert len(server.messages) == 1


async def test_4xx_at_rcpt_is_transient(make_server: MakeServer) -> None:
    server = make_server(reject_rcpt={"busy@example.org": "450 4.2.1 Mailbox busy"})
    conn = await transport_for(server).connect()
    err = await send_error(conn, make_envelope("busy@example.org"))
    assert (err.code, err.transient, err.bounce) == (450, True, False)
    await conn.close()


@pytest.mark.parametrize("reply", ["421 4.3.2 Closing", None])
async def test_hangup_is_transient_and_next_send_reconnects(
    make_server: MakeServer, reply: str | None
) -> None:
    server = make_server(hangup_after=2, hangup_reply=reply)
    conn = await transport_for(server).connect()
    await conn.send(make_envelope("a@example.org"))
    await conn.send(make_envelope("b@example.org"))
    err = await send_error(conn, make_envelope("c@example.org"))
    assert err.transient is True
    assert err.bounce is False
    assert err.recipient == "c@example.org"
    if reply:
        assert err.code == 421
    else:
        assert f"127.0.0.1:{server.port}" in str(err)
    await conn.send(make_envelope("c@example.org"))  # same object, new session
    await conn.close()
    assert server.connections == 2
    assert server.count_by_recipient() == {
        "a@example.org": 1,
        "b@example.org": 1,
        "c@example.org": 1,
    }


async def test_reconnect_failure_is_transient_delivery_error(make_server: MakeServer) -> None:
    server = make_server(hangup_after=0, hangup_reply=None)
    conn = await transport_for(server).connect()
    await send_error(conn, make_envelope())
    server.stop()
    err = await send_error(conn, make_envelope())
    assert err.transient is True
    assert f"127.0.0.1:{server.port}" in str(err)
    await conn.close()


async def test_slow_data_times_out_then_recovers(make_server: MakeServer) -> None:
    server = make_server(data_delay=1.0)
    conn = await transport_for(server, timeout=0.2).connect()
    loop = asyncio.get_running_loop()
    started = loop.time()
    err = await send_error(conn, make_envelope())
    assert loop.time() - started < 0.9
    assert err.transient is True
    assert err.code is None
    assert "did not answer" in str(err)
    server.data_delay = 0.0
    await conn.send(make_envelope())
    await conn.close()
    assert server.connections == 2
    assert len(server.messages) == 1


# -- international addresses ----------------------------------------------------------


async def test_non_ascii_local_part_without_smtputf8_is_permanent(
    make_server: MakeServer,
) -> None:
    server = make_server(smtputf8=False)
    conn = await transport_for(server).connect()
    err = await send_error(conn, make_envelope("jürgen@example.org", None))
    assert err.transient is False
    assert err.bounce is False
    assert err.unfit is False  # this recipient's own: the others go
    assert "SMTPUTF8" in str(err)
    assert err.recipient == "jürgen@example.org"
    await conn.send(make_envelope())  # connection still fine
    await conn.close()
    assert server.data_commands == 1


async def test_a_non_ascii_sender_without_smtputf8_is_the_relay_unfit_for_the_run(
    make_server: MakeServer,
) -> None:
    """Every message of the run has that sender: the error blames no recipient."""
    server = make_server(smtputf8=False)
    envelope = make_envelope()
    cyrillic = Envelope("статус@example.org", envelope.recipient, "same", envelope.data, "<x@y>")
    conn = await transport_for(server).connect()
    err = await send_error(conn, cyrillic)
    assert err.unfit and not err.transient and not err.bounce
    assert "sender's address статус@example.org" in str(err)
    assert f"127.0.0.1:{server.port}" in str(err)
    await conn.close()
    assert server.data_commands == 0


async def test_the_size_is_declared_and_a_message_over_the_relay_s_size_is_not_sent(
    make_server: MakeServer,
) -> None:
    """RFC 1870: the client says SIZE= and sends nothing larger than the relay takes.
    The whole message went to a relay offering SIZE 1000, which refused it (review)."""
    server = make_server(size_limit=1000)
    conn = await transport_for(server).connect()
    small = make_envelope()
    await conn.send(small)
    big = make_envelope("bob@example.org", body="x" * 2000 + "\n")
    err = await send_error(conn, big)
    await conn.close()
    assert not err.unfit and not err.transient  # this message's: another may fit
    assert f"127.0.0.1:{server.port} takes messages of at most 1,000 octets" in str(err)
    [got] = server.messages
    assert f"SIZE={len(small.data)}" in got.mail_options
    assert server.data_commands == 1


@pytest.mark.parametrize("pipelining", [True, False])
async def test_a_sender_the_relay_refuses_is_the_relay_unfit_for_the_run(
    make_server: MakeServer, pipelining: bool
) -> None:
    """553 at MAIL FROM: no recipient's doing (all 14 were marked failed, exit 3)."""
    server = make_server(reject_mail="553 5.7.1 Sender address rejected", pipelining=pipelining)
    conn = await transport_for(server).connect()
    err = await send_error(conn, make_envelope())
    await conn.close()
    assert err.unfit and not err.bounce and err.code == 553
    assert server.data_commands == 0


async def test_non_ascii_local_part_with_smtputf8_is_delivered(make_server: MakeServer) -> None:
    server = make_server(smtputf8=True)
    conn = await transport_for(server).connect()
    envelope = make_envelope("jürgen@example.org", None, subject="Wartung")
    await conn.send(envelope)
    await conn.close()
    [got] = server.messages
    assert got.rcpt_tos == ["jürgen@example.org"]
    assert got.smtp_utf8 is True
    assert got.data == envelope.data


async def test_idn_domain_uses_punycode_rcpt(make_server: MakeServer) -> None:
    server = make_server(smtputf8=False)
    conn = await transport_for(server).connect()
    await conn.send(make_envelope("ann@bücher.example", "ann@xn--bcher-kva.example"))
    await conn.close()
    [got] = server.messages
    assert got.rcpt_tos == ["ann@xn--bcher-kva.example"]
    assert got.smtp_utf8 is False


async def test_utf8_headers_use_smtputf8_when_offered(make_server: MakeServer) -> None:
    server = make_server(smtputf8=True)
    envelope = make_envelope()
    data = envelope.data.replace(b"Subject: Scheduled", "Subject: Geplante Wärtung".encode())
    utf8 = Envelope(envelope.sender, envelope.recipient, envelope.recipient, data, "<x@y>")
    conn = await transport_for(server).connect()
    await conn.send(utf8)
    await conn.close()
    [got] = server.messages
    assert got.smtp_utf8 is True
    assert got.data == data


async def test_utf8_headers_without_smtputf8_are_refused_not_sent(
    make_server: MakeServer,
) -> None:
    server = make_server(smtputf8=False)
    envelope = make_envelope()
    data = envelope.data.replace(b"Subject: Scheduled", "Subject: Geplante Wärtung".encode())
    utf8 = Envelope(envelope.sender, envelope.recipient, envelope.recipient, data, "<x@y>")
    conn = await transport_for(server).connect()
    err = await send_error(conn, utf8)
    assert err.transient is False
    assert err.unfit  # the recipient's address is ASCII: the project's headers are not
    assert "SMTPUTF8" in str(err) and "headers" in str(err)
    assert f"127.0.0.1:{server.port}" in str(err)
    await conn.send(make_envelope())  # the session goes on
    await conn.close()
    assert [got.data for got in server.messages] == [envelope.data]


def test_is_bounce_rules() -> None:
    assert is_bounce(550, "5.1.1 <x@y>: Recipient address rejected")
    assert is_bounce(553, "5.1.10 Recipient address rejected: null MX")
    assert is_bounce(550, "Requested action not taken: mailbox unavailable")
    assert is_bounce(550, "No Such User Here")
    assert not is_bounce(551, "User unknown; please try elsewhere")
    assert not is_bounce(550, "5.1.11 something else")
    assert not is_bounce(450, "4.1.1 mailbox unavailable")
    assert not is_bounce(554, "5.7.1 rejected")
    # an enhanced code decides alone: RFC 5321's stock words under a policy refusal
    # are not "no such user", and the address stays good
    assert not is_bounce(550, "5.7.1 Requested action not taken: mailbox unavailable (policy)")
    assert is_bounce(550, "5.1.1 mailbox unavailable")


def test_transport_server_names_host_and_port() -> None:
    settings = SmtpSettings(host="mail.example.org", port=2525)
    assert SmtpTransport(settings, None).server == "mail.example.org:2525"


_ATOM = st.text(alphabet="abcXYZ019!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=8)
_ADDRESSES = st.one_of(
    st.builds(
        "{}@{}".format,
        st.lists(_ATOM, min_size=1, max_size=3).map(".".join),
        st.lists(st.text(alphabet="ab09-", min_size=1, max_size=6), min_size=1, max_size=3).map(
            ".".join
        ),
    ),
    st.text(max_size=30),  # anything at all: quotes, spaces, brackets, non-ASCII, line breaks
)


@given(_ADDRESSES)
def test_the_address_fast_path_says_what_aiosmtplib_would(address: str) -> None:
    """MAIL and RCPT skip aiosmtplib's address parse only for an address that it would
    send unchanged; every other address goes through aiosmtplib."""
    quoted = command_address(address)
    if quoted is not None:
        assert quoted == quote_address(address).encode("ascii")
