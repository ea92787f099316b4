"""SMTP delivery: one long-lived ``aiosmtplib`` session per connection, one message per send.

``SmtpTransport.connect()`` opens a session (TLS, STARTTLS or plain, then AUTH) or raises
``ConnectError`` naming ``host:port``. ``SmtpConnection.send()`` runs one transaction
(MAIL, RCPT, DATA: in one write when the relay offers PIPELINING, ``pipelining.py``) and
maps every failure to ``DeliveryError``: 4xx, disconnects and
timeouts are transient, 5xx are final, and "no such user" replies are bounces. A
connection that lost its session reconnects on its next ``prepare`` (the engine's, before
an attempt's checks) or ``send``.

Relays limit how many messages one session may carry. A session that has carried
messages and is refused with 421, 452 or a 4xx naming too many messages is ended and
the next one opened (``SessionEnded``); a reply that names the limit teaches the
transport its per-session count (``smtp.max_messages_per_connection`` sets it up
front), and every connection then starts a new session once it has carried that many.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import aiosmtplib

from statusmail.delivery.pipelining import pipelined
from statusmail.delivery.smtp_replies import (
    command_address,
    connect_error,
    ends_session,
    is_bounce,
    names_session_limit,
    one_line,
)
from statusmail.delivery.transport import Ready, SessionEnded
from statusmail.domain import Envelope
from statusmail.errors import ConnectError, DeliveryError
from statusmail.project.sending import SmtpSettings

# Errors that mean the session is gone (or out of step) and must be reopened.
_LOST = (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, TimeoutError, OSError)


def _size_limit(smtp: aiosmtplib.SMTP) -> int | None:
    """The largest message the session takes (SIZE's number; 0: no limit), or None when
    the relay does not offer SIZE."""
    if not smtp.supports_extension("size"):
        return None
    number = smtp.esmtp_extensions.get("size", "").strip()
    return int(number) if number.isdigit() else 0


def _abort(smtp: aiosmtplib.SMTP) -> None:
    """Close now: no TLS close_notify dance that could outlive the event loop."""
    transport = smtp.transport
    smtp.close()
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()


def _headers_are_ascii(data: bytes) -> bool:
    end = data.find(b"\r\n\r\n")
    return (data if end < 0 else data[:end]).isascii()


class SmtpTransport:
    """Opens SMTP sessions as ``settings`` say; ``password`` comes from the environment."""

    name = "smtp"

    def __init__(
        self, settings: SmtpSettings, password: str | None, *, hostname: str | None = None
    ) -> None:
        self.settings = settings
        self._password = password
        self._hostname = hostname  # our EHLO name; None = the machine's FQDN
        self._tls_context: ssl.SSLContext | None = None
        # Messages a session carries before its connection starts the next: configured,
        # or learnt from the relay (shared by every connection of this transport).
        self.per_session: int | None = settings.max_messages_per_connection

    def learn(self, carried: int) -> bool:
        """The relay said a session carries no more than ``carried`` messages: True when
        that lowers the count in use (the first such reply, or a stricter one)."""
        if carried < 1 or (self.per_session is not None and carried >= self.per_session):
            return False
        self.per_session = carried
        return True

    @property
    def server(self) -> str:
        return self.settings.server

    async def connect(self) -> SmtpConnection:
        """Open one connection, or raise ``ConnectError`` naming ``host:port``."""
        return SmtpConnection(self, await self.open_session())

    def tls_context(self) -> ssl.SSLContext:
        """Verifying context: the system CA store, or only ``settings.ca_file`` if set."""
        if self._tls_context is None:
            ca = self.settings.ca_file
            try:
                self._tls_context = ssl.create_default_context(cafile=str(ca) if ca else None)
            except OSError as exc:  # ssl.SSLError is an OSError too
                raise self._error(f"cannot load the CA file {ca}: {exc}", transient=False) from exc
        return self._tls_context

    async def open_session(self) -> aiosmtplib.SMTP:
        s = self.settings
        smtp = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            local_hostname=self._hostname,
            timeout=s.timeout,
            use_tls=s.security == "tls",
            start_tls=False,  # done below, so that a missing STARTTLS is an error
            tls_context=self.tls_context() if s.security != "none" else None,
        )
        try:
            await smtp.connect()
            await smtp.ehlo()  # extensions are checked before each transaction
            if s.security == "starttls":
                if not smtp.supports_extension("starttls"):
                    raise self._error("the server does not offer STARTTLS", transient=False)
                await smtp.starttls()
                await smtp.ehlo()
            if s.username is not None:
                if not smtp.supports_extension("auth"):
                    raise self._error(
                        "the server does not offer AUTH, but smtp.username is set "
                        "(some relays offer it only after STARTTLS: check smtp.security)",
                        transient=False,
                    )
                await smtp.login(s.username, self._password or "")
        except BaseException as exc:  # including cancellation: never leak the socket
            _abort(smtp)
            if isinstance(exc, aiosmtplib.SMTPException | OSError):
                raise connect_error(self.server, s.timeout, exc) from exc
            if isinstance(exc, UnicodeError):  # a username or password not in UTF-8
                raise self._error(
                    "cannot send the SMTP username or password: it is not valid text"
                    " (check the encoding of the file or variable it comes from)",
                    transient=False,
                ) from exc
            raise
        return smtp

    def _error(self, reason: str, *, transient: bool) -> ConnectError:
        return ConnectError(self.server, reason, transient=transient)


class SmtpConnection:
    """One session reused for many messages; reopened on the next send after a loss."""

    def __init__(self, transport: SmtpTransport, smtp: aiosmtplib.SMTP) -> None:
        self._transport = transport
        self._smtp: aiosmtplib.SMTP | None = smtp
        self._lock = asyncio.Lock()
        self.sessions = 1  # how many sessions this connection has opened
        self._carried = 0  # messages the current session has carried
        self._opening: asyncio.Task[None] | None = None  # the next session, being opened
        self._eight_bit = smtp.supports_extension("8bitmime")
        self._pipelining = self._offers_pipelining(smtp)
        self._written = False  # this transaction's message, its end too, is on the wire

    def _offers_pipelining(self, smtp: aiosmtplib.SMTP) -> bool:
        return self._transport.settings.pipelining and smtp.supports_extension("pipelining")

    @property
    def eight_bit(self) -> bool:
        """The (last) session offers 8BITMIME: build its messages with 8bit parts."""
        return self._eight_bit

    @property
    def broken(self) -> bool:
        return self._smtp is None or not self._smtp.is_connected

    async def prepare(self, envelope: Envelope) -> None:
        """Have a session open for the next ``send``: the next one, if the last was full,
        or a new one, if it was lost (``DeliveryError`` if the relay cannot be reached)."""
        async with self._lock:
            await self._ready_session(envelope)

    async def send(self, envelope: Envelope, ready: Ready | None = None) -> None:
        """Deliver one message or raise ``DeliveryError``; ``ready`` is awaited before
        the end of DATA."""
        async with self._lock:
            self._written = False
            smtp = await self._ready_session(envelope)
            try:
                await self._transaction(smtp, envelope, ready)
            except (aiosmtplib.SMTPRecipientRefused, aiosmtplib.SMTPRecipientsRefused) as exc:
                one = exc if isinstance(exc, aiosmtplib.SMTPRecipientRefused) else exc.recipients[0]
                raise await self._refused(smtp, envelope, one.code, one.message, "RCPT") from exc
            except aiosmtplib.SMTPResponseException as exc:
                stage = "MAIL" if isinstance(exc, aiosmtplib.SMTPSenderRefused) else "DATA"
                raise await self._refused(smtp, envelope, exc.code, exc.message, stage) from exc
            except (*_LOST, aiosmtplib.SMTPException) as exc:
                self._drop()
                raise self._lost(envelope, exc, unconfirmed=self._written) from exc
            except ValueError as exc:  # an address aiosmtplib cannot put in a command
                await self._reset(smtp)
                raise DeliveryError(
                    f"cannot send to {envelope.recipient}: {exc}", recipient=envelope.recipient
                ) from exc
            except asyncio.CancelledError:  # mid-transaction: the session is out of step
                self._drop()
                raise
            self._carried += 1
            limit = self._transport.per_session
            if limit is not None and self._carried >= limit:
                # Opened while the engine records this message and makes its checks
                # before the next MAIL FROM (not after them); the next send awaits it.
                # In a task: this message's outcome waits for nothing, and a
                # cancellation meanwhile cannot cost it its record.
                self._opening = asyncio.create_task(self._reopen())

    async def close(self) -> None:
        opening, self._opening = self._opening, None
        if opening is not None:
            opening.cancel()
            await asyncio.gather(opening, return_exceptions=True)
        await self._end()

    async def _end(self) -> None:
        """QUIT the session, if there is one, and drop its socket."""
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        transport = smtp.transport
        try:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                if smtp.is_connected:
                    await smtp.quit()
        finally:
            smtp.close()
            # After 221 (or a failed QUIT) nothing is left to say: drop the socket now.
            if isinstance(transport, asyncio.WriteTransport):
                transport.abort()
            await asyncio.sleep(0)  # let the loop run the transport's connection_lost

    async def _ready_session(self, envelope: Envelope) -> aiosmtplib.SMTP:
        if self._opening is not None:
            opening, self._opening = self._opening, None
            await opening
        return await self._session(envelope)

    async def _session(self, envelope: Envelope) -> aiosmtplib.SMTP:
        if self._smtp is not None and self._smtp.is_connected:
            return self._smtp
        self._drop()
        try:
            return await self._open()
        except ConnectError as exc:
            raise self._relay_down(envelope, exc) from exc

    async def _open(self) -> aiosmtplib.SMTP:
        self._smtp = smtp = await self._transport.open_session()
        self.sessions += 1
        self._carried = 0
        self._eight_bit = smtp.supports_extension("8bitmime")
        self._pipelining = self._offers_pipelining(smtp)
        return smtp

    async def _next_session(self) -> None:
        """End this session (QUIT) and open the next; raises ``ConnectError``."""
        await self._end()
        await self._open()

    async def _reopen(self) -> None:
        # A relay that cannot be reached now is found again by the next send, which
        # says so (its recipient is not charged).
        with contextlib.suppress(ConnectError):
            await self._next_session()

    @staticmethod
    def _relay_down(envelope: Envelope, exc: ConnectError) -> DeliveryError:
        return DeliveryError(
            f"reconnecting to {exc}",  # ConnectError's str starts with host:port
            recipient=envelope.recipient,
            transient=True,
            relay_down=True,
        )

    async def _transaction(
        self, smtp: aiosmtplib.SMTP, envelope: Envelope, ready: Ready | None
    ) -> None:
        rcpt = envelope.recipient_ascii
        utf8_addresses = rcpt is None or not envelope.sender.isascii()
        offers_utf8 = smtp.supports_extension("smtputf8")
        if not envelope.sender.isascii() and not offers_utf8:
            raise DeliveryError(
                f"{self._transport.server} does not offer SMTPUTF8, "
                f"needed for the sender's address {envelope.sender}",
                recipient=envelope.recipient,
                unfit=True,
            )
        if rcpt is None and not offers_utf8:
            raise DeliveryError(
                f"{self._transport.server} does not offer SMTPUTF8, "
                f"needed for the address {envelope.recipient}",
                recipient=envelope.recipient,
            )
        shape = envelope.shape
        offers_8bit = smtp.supports_extension("8bitmime")
        if shape is not None and shape.eight_bit and not offers_8bit and envelope.seven_bit:
            envelope = envelope.seven_bit()  # a reconnect found a relay without 8BITMIME
            shape = envelope.shape
        data = envelope.data
        if shape is None:  # not built by statusmail: look at the bytes
            ascii_headers, eight_bit = _headers_are_ascii(data), not data.isascii()
        else:
            ascii_headers, eight_bit = shape.ascii_headers, shape.eight_bit
        if not ascii_headers and not offers_utf8:
            # RFC 6531: headers in UTF-8 travel only with SMTPUTF8 (a Reply-To with a
            # Cyrillic local part went out as 8-bit header bytes to any relay). The
            # recipient's address is ASCII here (else refused above), so what is not
            # is the project's own: no message of the run would go.
            raise DeliveryError(
                f"{self._transport.server} does not offer SMTPUTF8, needed for the "
                "message's headers (an address of the project's, such as reply_to, "
                "is not ASCII)",
                recipient=envelope.recipient,
                unfit=True,
            )
        options: list[str] = []
        if utf8_addresses or (offers_utf8 and not ascii_headers):
            options.append("SMTPUTF8")
        if eight_bit and offers_8bit:
            options.append("BODY=8BITMIME")
        if (limit := _size_limit(smtp)) is not None:  # RFC 1870: said, and kept to
            if len(data) > limit > 0:  # (this message's: another language's may fit)
                raise DeliveryError(  # (coded as a relay's 552 5.3.4 would be: retry --code)
                    f"5.3.4 {self._transport.server} takes messages of at most {limit:,} "
                    f"octets (SIZE); this one is {len(data):,}, so it was not sent",
                    code=552,
                    recipient=envelope.recipient,
                )
            options.append(f"SIZE={len(data)}")
        encoding = "utf-8" if options and options[0] == "SMTPUTF8" else "ascii"
        if shape is not None and self._pipelining:
            mail, to = command_address(envelope.sender), command_address(rcpt or "")
            if mail is not None and to is not None:
                command = b" ".join([b"MAIL FROM:" + mail, *(o.encode("ascii") for o in options)])
                await pipelined(
                    smtp,
                    command + b"\r\n",
                    b"RCPT TO:" + to + b"\r\n",
                    data,
                    None if ready is None else lambda: self._ready(ready),
                    self._transport.settings.timeout,
                    self._wrote,
                )
                return
        await self._mail(smtp, envelope.sender, options, encoding)
        await self._rcpt(smtp, rcpt or envelope.recipient, encoding)
        if shape is not None:
            await self._data(smtp, data, ready)
        else:
            if ready is not None:
                await self._ready(ready)
            await smtp.data(data)

    async def _mail(
        self, smtp: aiosmtplib.SMTP, sender: str, options: list[str], encoding: str
    ) -> None:
        """``SMTP.mail()``, without its address parse when the address is plain."""
        quoted = command_address(sender)
        if quoted is None:
            await smtp.mail(sender, options=options, encoding=encoding)
            return
        extra = [option.encode("ascii") for option in options]
        response = await smtp.execute_command(b"MAIL", b"FROM:" + quoted, *extra)
        if response.code != 250:
            raise aiosmtplib.SMTPSenderRefused(response.code, response.message, sender)

    async def _rcpt(self, smtp: aiosmtplib.SMTP, recipient: str, encoding: str) -> None:
        """``SMTP.rcpt()``, likewise."""
        quoted = command_address(recipient)
        if quoted is None:
            await smtp.rcpt(recipient, encoding=encoding)
            return
        response = await smtp.execute_command(b"RCPT", b"TO:" + quoted)
        if response.code not in (250, 251):
            raise aiosmtplib.SMTPRecipientRefused(response.code, response.message, recipient)

    async def _data(self, smtp: aiosmtplib.SMTP, data: bytes, ready: Ready | None) -> None:
        """DATA for a message that is already CRLF-only with no line starting with a dot
        (``message.py`` makes them so, and says so in the envelope's ``Shape``):
        aiosmtplib's own pass over the bytes, which costs as much as building the
        message, is skipped."""
        protocol = smtp.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        timeout = self._transport.settings.timeout
        start = await protocol.execute_command(b"DATA", timeout=timeout)
        if start.code != 354:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        if ready is not None:
            await self._ready(ready)  # (a session lost meanwhile fails the write)
        # No await between the write and read_response: the reply cannot be missed.
        protocol.write(data + (b".\r\n" if data.endswith(b"\r\n") else b"\r\n.\r\n"))
        self._wrote()
        response = await protocol.read_response(timeout=timeout)
        if response.code != 250:
            raise aiosmtplib.SMTPDataError(response.code, response.message)

    async def _ready(self, ready: Ready) -> None:
        try:
            await ready()
        except BaseException:
            self._drop()  # the message must not go: this session is out of step now
            raise

    async def _refused(
        self, smtp: aiosmtplib.SMTP, envelope: Envelope, code: int, text: str, stage: str
    ) -> DeliveryError:
        """A 4xx/5xx reply: reset the transaction (or drop the session) and map it."""
        text = one_line(text)
        said = f"{text} (reply to {stage} from {self._transport.server})"
        if code < 0:  # no reply aiosmtplib could read ("Response too long"): out of step
            self._drop()
            return DeliveryError(
                f"{said}: the relay's reply could not be read; the message may have been"
                " accepted, so it is not sent again (statusmail retry --failed sends it)",
                recipient=envelope.recipient,
                # before DATA nothing went; after it, the reply may have been the 250
                transient=stage != "DATA",
            )
        carried = self._carried
        if carried and ends_session(code, text):
            learnt = carried if names_session_limit(code, text) else None
            if learnt is not None and not self._transport.learn(learnt):
                learnt = None  # known already
            if code == 421:  # closed by the relay: no QUIT to wait for
                self._drop()
            try:
                await self._next_session()
            except ConnectError as exc:
                return self._relay_down(envelope, exc)
            return SessionEnded(
                said, code=code, recipient=envelope.recipient, carried=carried, learnt=learnt
            )
        if code == 421:  # "closing transmission channel"
            self._drop()
        else:
            await self._reset(smtp)
        # The relay refuses the sender: no recipient's doing, and every message of the
        # run would meet it (all 14 were marked failed).
        unfit = code >= 500 and stage == "MAIL"
        return DeliveryError(
            said,
            code=code,
            recipient=envelope.recipient,
            transient=code < 500,
            unfit=unfit,
            # the recipient's "no such user"; at MAIL FROM the words are about the sender
            # (a relay that does not know the return path's address refused every one)
            bounce=stage != "MAIL" and is_bounce(code, text),
        )

    async def _reset(self, smtp: aiosmtplib.SMTP) -> None:
        """RSET after a failed transaction so that the session can carry the next one."""
        if not smtp.is_connected:
            self._drop()
            return
        try:
            await smtp.rset()
        except (*_LOST, aiosmtplib.SMTPException):
            self._drop()

    def _wrote(self) -> None:
        self._written = True

    def _lost(
        self, envelope: Envelope, exc: BaseException, *, unconfirmed: bool = False
    ) -> DeliveryError:
        server = self._transport.server
        if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
            timeout = self._transport.settings.timeout
            reason = f"{server} did not answer within {timeout:g}s"
        else:
            reason = f"connection to {server} lost: {one_line(str(exc))}"
        if unconfirmed:
            reason += " after the whole message was sent (it may have been accepted)"
        return DeliveryError(
            reason,
            recipient=envelope.recipient,
            transient=True,
            lost=True,
            unconfirmed=unconfirmed,
        )

    def _drop(self) -> None:
        if self._smtp is not None:
            _abort(self._smtp)
        self._smtp = None
