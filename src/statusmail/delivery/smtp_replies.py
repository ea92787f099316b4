"""What the words of an SMTP conversation mean to statusmail: the address a command
carries (``command_address``), and a relay's reply read as a bounce (``is_bounce``), as
the end of a session (``ends_session``) or as naming a per-session limit
(``names_session_limit``); a session that could not be opened, as the
``ConnectError`` naming the relay that says why (``connect_error``)."""

from __future__ import annotations

import re
import ssl

import aiosmtplib

from statusmail.domain import printable
from statusmail.errors import ConnectError

_BOUNCE_STATUS = re.compile(r"(?<![\d.])5\.1\.(?:1|10)(?![\d.])")
_BOUNCE_TEXT = re.compile(
    r"user unknown|no such user|unknown user|mailbox unavailable|does not exist", re.I
)
# An address that aiosmtplib's quote_address() would return unchanged inside <>: its
# parse (email.utils.parseaddr) costs more than the rest of the command, so such
# addresses, nearly all of them, skip it. Anything else goes through aiosmtplib.
_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
)
# A 4xx reply that says the session has carried all the relay takes in one: the
# enhanced code for "too many recipients", or the words (Exim's "421 ... too many
# messages in this connection", Exchange's "452 4.5.3 Too many recipients").
_SESSION_LIMIT = re.compile(
    r"(?<![\d.])4\.5\.3(?![\d.])|too many "
    r"(?:messages|mails?|recipients|rcpts?|connections|transactions|deliveries)",
    re.I,
)


def command_address(address: str) -> bytes | None:
    """``<address>`` for MAIL or RCPT when it is a plain ASCII address, else None."""
    if _PLAIN_ADDRESS.fullmatch(address) is None:
        return None
    return b"<" + address.encode("ascii") + b">"


def one_line(text: str) -> str:
    """A reply as one line of text that can be stored and printed: a relay's bytes that
    are not UTF-8 (a Latin-1 refusal), carried as surrogates, become U+FFFD (SQLite and
    PostgreSQL refuse surrogates: the outcome could not be recorded, and a run that
    cannot record sends again what the relay accepted); escapes visible (``printable``)."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return printable(" / ".join(part.strip() for part in text.splitlines() if part.strip()))


# An enhanced status code (RFC 3463) where a reply's text starts: it decides alone.
_ENHANCED = re.compile(r"\s*([245]\.\d{1,3}\.\d{1,3})(?![\d.])")


def enhanced_code(text: str) -> str | None:
    found = _ENHANCED.match(text)
    return found.group(1) if found else None


def is_bounce(code: int, text: str) -> bool:
    """A permanent "no such user" answer: 5.1.1/5.1.10, or, from a relay that gives no
    enhanced code, a 550 saying so in words (a 5.7.1 policy refusal in the stock words
    "mailbox unavailable" is not one: the address is good)."""
    if code < 500:
        return False
    enhanced = enhanced_code(text)
    if enhanced is not None:
        return enhanced in ("5.1.1", "5.1.10")
    return bool(_BOUNCE_STATUS.search(text)) or (code == 550 and bool(_BOUNCE_TEXT.search(text)))


def names_session_limit(code: int, text: str) -> bool:
    """A 4xx reply saying that a session carries no more messages than it has: 4.5.3,
    or the words, unless its enhanced code is about the recipient's address or mailbox
    (4.1.x, 4.2.x: a full mailbox's "452 4.2.2 ... too many messages" is theirs, not the
    session's)."""
    if not 400 <= code < 500:
        return False
    enhanced = enhanced_code(text)
    if enhanced is not None and enhanced.startswith(("4.1.", "4.2.")):
        return False
    return _SESSION_LIMIT.search(text) is not None


def ends_session(code: int, text: str) -> bool:
    """A reply after which a new session may take the message: the relay closes this one
    (421), a 452, or a 4xx naming a per-session limit."""
    return code in (421, 452) or names_session_limit(code, text)


def connect_error(server: str, timeout: float, exc: BaseException) -> ConnectError:
    """Why a session to ``server`` could not be opened: final (TLS, authentication, a
    5xx, a missing extension) or transient (a 4xx, a timeout, a refused connection)."""

    def error(reason: str, *, transient: bool) -> ConnectError:
        return ConnectError(server, reason, transient=transient)

    if isinstance(exc, ssl.SSLError) or isinstance(exc.__cause__, ssl.SSLError):
        cause = exc if isinstance(exc, ssl.SSLError) else exc.__cause__
        return error(f"TLS failed: {cause}", transient=False)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        reply = f"{exc.code} {one_line(exc.message)}"
        return error(f"authentication refused: {reply}", transient=False)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        reply = f"{exc.code} {one_line(exc.message)}"
        return error(f"the server refused us: {reply}", transient=exc.code < 500)
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return error(f"timed out after {timeout:g}s", transient=True)
    if isinstance(exc, aiosmtplib.SMTPConnectError | ConnectionError | OSError):
        reason = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        return error(f"cannot connect: {reason}", transient=True)
    # Other SMTPException: the server lacks something we need (e.g. an AUTH method).
    return error(str(exc), transient=False)
