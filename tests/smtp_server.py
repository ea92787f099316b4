"""A real SMTP server for tests: aiosmtpd in a thread, recording what it accepts.

Usage::

    from smtp_server import RecordingServer, make_test_ca

    with RecordingServer() as server:          # 127.0.0.1, a free port
        ...  # send to server.host, server.port
        assert server.count_by_recipient()["ann@example.org"] == 1
        msg = server.messages[0]               # ReceivedMessage
        msg.data, msg.message["Subject"], msg.mail_from, msg.rcpt_tos

Fault injection (all real server behaviour, no mocks), as keyword arguments:

- ``fail_data_every=N``: every Nth DATA (counted over the whole server) is answered
  ``451 4.3.0 Try again later`` and the message is not recorded.
- ``data_reply=f``: ``f(n, envelope) -> str | None`` is called for the nth DATA
  (1-based) and returns a reply to refuse with (e.g. ``"554 5.7.1 Rejected"``) or None
  to accept. Checked after ``fail_data_every``.
- ``reject_rcpt={"bob@example.org": "550 5.1.1 User unknown"}``: the reply to RCPT TO for
  that address (exact, case-insensitive).
- ``hangup_after=N``: each connection accepts N messages; at the next DATA the server
  answers ``hangup_reply`` (default ``"421 4.3.2 Closing"``) and closes the connection,
  or, with ``hangup_reply=None``, closes it without a word.
- ``session_limit=N``: a session that has accepted N messages answers every further
  RCPT TO with ``session_limit_reply`` (default ``"452 4.5.3 Too many recipients"``) and
  stays open, as a relay's per-session limit does.
- ``data_delay=seconds``: wait (asynchronously) before answering the end of DATA; or a
  callable ``f(n) -> seconds`` for the nth DATA (1-based).
- ``auth=("user", "secret")``: require AUTH (PLAIN/LOGIN) with these credentials; AUTH is
  offered only after TLS when ``tls_context`` is given, else on the plain connection.
- ``tls_context``: a server ``ssl.SSLContext`` (see ``make_test_ca``); STARTTLS is offered,
  or with ``implicit_tls=True`` the whole connection is TLS (port 465 style).
- ``require_tls=True``: refuse commands other than EHLO/STARTTLS/QUIT before STARTTLS.
- ``smtputf8=False``: do not offer SMTPUTF8 (it is offered by default).
- ``eightbitmime=False``: do not offer 8BITMIME (aiosmtpd offers it by default). With
  ``eightbitmime`` set (True or False), each EHLO offers it as the knob says at that
  moment, so flipping it while the server runs changes what the next session sees.
- ``pipelining=False``: do not offer PIPELINING (offered by default, as real relays do;
  aiosmtpd itself does not offer it, but reads pipelined commands in order).
- ``port=P``: listen on this port instead of a free one (to bring a "relay" back up).

Observation: ``host``, ``port``, ``messages`` (a copy of the list of ``ReceivedMessage``),
``count_by_recipient()`` (``Counter``), ``connections`` (TCP connections accepted since
start), ``data_commands`` (DATA commands seen), ``session_sizes()`` (the messages each
session that accepted any carried, in the order they began), ``session_limit_replies``
(RCPTs refused by ``session_limit``), ``accepted_rcpts`` (every RCPT TO accepted, lowered,
whether its message came or not), ``clear()``.

All counters are updated from the server thread under a lock; reading them from the test
is safe. Knobs are plain attributes and may be changed while the server runs.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import functools
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

DataReply = Callable[[int, Envelope], "str | None"]


@dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes  # exactly the bytes received (after dot-unstuffing), CRLF line endings
    mail_options: list[str] = field(default_factory=list)
    smtp_utf8: bool = False
    at: float = 0.0  # time.monotonic() when the server accepted it

    @functools.cached_property
    def message(self) -> EmailMessage:
        """``data`` parsed with email.policy.default, when first asked (parsing every
        message as it arrives would make the server the slowest part of a big run)."""
        message = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        return message

    @property
    def message_id(self) -> str:
        """The Message-ID header, read without parsing the body."""
        # compat32: no header objects to build, a few times faster over 10,000 messages
        headers = BytesHeaderParser(policy=email.policy.compat32).parsebytes(self.data)
        return str(headers["Message-ID"]).strip()


@dataclass(frozen=True)
class TestCA:
    """A trustme CA and a server certificate for 127.0.0.1/localhost."""

    __test__ = False  # not a pytest test class

    ca_file: Path  # PEM to pass as SmtpSettings.ca_file
    server_context: ssl.SSLContext  # pass as RecordingServer(tls_context=...)


def make_test_ca(directory: Path) -> TestCA:
    """Create a CA with trustme, write its PEM into ``directory``, issue a server cert."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca_file = Path(directory) / "test-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return TestCA(ca_file=ca_file, server_context=context)


class _Handler:
    def __init__(self, server: RecordingServer) -> None:
        self.server = server

    async def handle_MAIL(
        self, smtp: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.server.reject_mail:
            return self.server.reject_mail
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, smtp: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.server.reject_rcpt.get(address.lower()) or self.server.reject_every_rcpt
        if reply:
            return reply
        srv = self.server
        limit = srv.session_limit
        if limit is not None and getattr(session, "statusmail_accepted", 0) >= limit:
            with srv._lock:
                srv.session_limit_replies += 1
            return srv.session_limit_reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        with srv._lock:
            srv.accepted_rcpts.append(address.lower())
        return "250 OK"

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        srv = self.server
        with srv._lock:
            srv.data_commands += 1
            n = srv.data_commands
        accepted = getattr(session, "statusmail_accepted", 0)
        if srv.hangup_after is not None and accepted >= srv.hangup_after:
            if srv.hangup_reply:
                await smtp.push(srv.hangup_reply)
            assert smtp.transport is not None
            smtp.transport.close()
            # connection_lost() cancels this task; never answer.
            await asyncio.Event().wait()
        delay = srv.data_delay(n) if callable(srv.data_delay) else srv.data_delay
        if delay:
            await asyncio.sleep(delay)
        if srv.fail_data_every and n % srv.fail_data_every == 0:
            return "451 4.3.0 Try again later"
        if srv.data_reply is not None:
            reply = srv.data_reply(n, envelope)
            if reply:
                return reply
        raw = envelope.original_content or b""
        received = ReceivedMessage(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            data=raw,
            mail_options=list(envelope.mail_options),
            smtp_utf8=envelope.smtp_utf8,
            at=time.monotonic(),
        )
        session.statusmail_accepted = accepted + 1  # type: ignore[attr-defined]
        with srv._lock:
            srv._messages.append(received)
            if not accepted:
                srv._carrying.append(session)
        return "250 2.0.0 OK queued"

    async def handle_EHLO(
        self, smtp: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        """What EHLO offers, as the ``eightbitmime`` and ``pipelining`` knobs say now."""
        session.host_name = hostname  # what aiosmtpd does itself when there is no hook
        offered = list(responses)
        if self.server.eightbitmime is not None:
            offered = [line for line in offered if line[4:].upper() != "8BITMIME"]
            if self.server.eightbitmime:
                offered.insert(1, "250-8BITMIME")
        if self.server.pipelining:
            offered.insert(1, "250-PIPELINING")
        return offered


class _Controller(Controller):
    def __init__(self, server: RecordingServer, **kwargs: Any) -> None:
        self._recording = server
        super().__init__(**kwargs)

    def factory(self) -> SMTP:  # one call per TCP connection
        smtp: SMTP = super().factory()  # type: ignore[no-untyped-call]
        with self._recording._lock:
            self._recording.connections += 1
            self._recording._sessions.append(smtp)
        return smtp

    def _trigger_server(self) -> None:
        # Bound to port 0: learn the real port before the start-up probe connects.
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


class RecordingServer:
    """A threaded aiosmtpd server on 127.0.0.1; see the module docstring."""

    def __init__(
        self,
        *,
        fail_data_every: int | None = None,
        data_reply: DataReply | None = None,
        reject_rcpt: Mapping[str, str] | None = None,
        hangup_after: int | None = None,
        hangup_reply: str | None = "421 4.3.2 Closing",
        data_delay: float | Callable[[int], float] = 0.0,
        session_limit: int | None = None,
        session_limit_reply: str = "452 4.5.3 Too many recipients",
        auth: tuple[str, str] | None = None,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        require_tls: bool = False,
        smtputf8: bool = True,
        eightbitmime: bool | None = None,
        pipelining: bool = True,
        reject_mail: str | None = None,
        reject_every_rcpt: str | None = None,
        size_limit: int | None = None,
        port: int = 0,
    ) -> None:
        self.fail_data_every = fail_data_every
        self.data_reply = data_reply
        self.reject_rcpt = {k.lower(): v for k, v in (reject_rcpt or {}).items()}
        self.hangup_after = hangup_after
        self.hangup_reply = hangup_reply
        self.data_delay = data_delay
        self.session_limit = session_limit
        self.session_limit_reply = session_limit_reply
        self.auth = auth
        self.tls_context = tls_context
        self.implicit_tls = implicit_tls
        self.require_tls = require_tls
        self.smtputf8 = smtputf8
        self.eightbitmime = eightbitmime  # None: aiosmtpd's own EHLO (8BITMIME offered)
        self.pipelining = pipelining
        self.reject_mail = reject_mail  # the reply to every MAIL FROM, if set
        self.reject_every_rcpt = reject_every_rcpt  # the reply to every RCPT TO, if set
        self.size_limit = size_limit  # SIZE offered (aiosmtpd's own 32 MiB if None)
        self.host = "127.0.0.1"
        self.port = port  # 0: a free port, learnt at start
        self.connections = 0
        self.data_commands = 0
        self.session_limit_replies = 0
        self.accepted_rcpts: list[str] = []  # each RCPT TO accepted, message or not
        self._messages: list[ReceivedMessage] = []
        self._carrying: list[Session] = []  # sessions that accepted a message, in order
        self._sessions: list[SMTP] = []  # one per connection, to close them at stop
        self._lock = threading.Lock()
        self._controller: _Controller | None = None

    # -- life cycle ---------------------------------------------------------------

    def start(self) -> RecordingServer:
        kwargs: dict[str, Any] = {
            "handler": _Handler(self),
            "hostname": self.host,
            "port": self.port,
            "server_hostname": "mx.test",
            "enable_SMTPUTF8": self.smtputf8,
        }
        if self.size_limit is not None:
            kwargs["data_size_limit"] = self.size_limit
        if self.implicit_tls:
            assert self.tls_context is not None, "implicit_tls needs tls_context"
            kwargs["ssl_context"] = self.tls_context
        elif self.tls_context is not None:
            kwargs["tls_context"] = self.tls_context
            kwargs["require_starttls"] = self.require_tls
        if self.auth is not None:
            kwargs["authenticator"] = self._authenticate
            kwargs["auth_required"] = True
            kwargs["auth_require_tls"] = self.tls_context is not None
        controller = _Controller(self, **kwargs)
        controller.start()
        self._controller = controller
        self.port = controller.port
        with self._lock:  # forget the controller's own start-up probe
            self.connections = 0
        return self

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is None:
            return
        # aiosmtpd stops its loop with connections still open and leaves their sockets to
        # the garbage collector (a ResourceWarning); a relay going down hangs up first.
        asyncio.run_coroutine_threadsafe(self._hang_up(), controller.loop).result(timeout=10)
        controller.stop()

    def stop_listening(self) -> None:
        """From the server's own thread (a reply hook): accept no new connection from
        this moment, as a relay going down does, before ``stop`` hangs up the rest."""
        assert self._controller is not None and isinstance(self._controller.server, asyncio.Server)
        self._controller.server.close()

    async def _hang_up(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for smtp in sessions:
            if isinstance(smtp.transport, asyncio.WriteTransport):
                smtp.transport.abort()
        for _ in range(3):  # connection_lost runs in a later turn of the loop
            await asyncio.sleep(0)

    def __enter__(self) -> RecordingServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- observation ----------------------------------------------------------------

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self._lock:
            return list(self._messages)

    def count_by_recipient(self) -> Counter[str]:
        with self._lock:
            return Counter(rcpt for m in self._messages for rcpt in m.rcpt_tos)

    def session_sizes(self) -> list[int]:
        """How many messages each session that accepted any carried, in order."""
        with self._lock:
            return [getattr(session, "statusmail_accepted", 0) for session in self._carrying]

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()
            self._carrying.clear()
            self.connections = 0
            self.data_commands = 0
            self.session_limit_replies = 0

    # -- internals --------------------------------------------------------------------

    def _authenticate(
        self, smtp: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            self.auth is not None
            and isinstance(data, LoginPassword)
            and data.login.decode() == self.auth[0]
            and data.password.decode() == self.auth[1]
        )
        return AuthResult(success=ok, handled=False)
