"""One error root for everything statusmail raises on purpose.

Library code wraps foreign errors (YAML, SQLite, SMTP, OS) into these, naming the file
and line, the recipient, or the server's ``host:port``, so the CLI can print one clear
line and choose the exit code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class StatusmailError(Exception):
    """Root of every error statusmail raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, located as ``file:line``.

    ``code`` names the kind of problem (``untranslated``, ``unknown-key``…): stable, so CI
    output can be grepped and filtered; the README lists every code.
    """

    path: Path | str
    line: int | None
    message: str
    warning: bool = False
    code: str = "other"

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else f"{self.path}"
        kind = "warning: " if self.warning else ""
        return f"{where}: {kind}{self.message}"


class InputError(StatusmailError):
    """The project's files are wrong: config, entries, subscribers, regions or templates."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ConfigError(InputError):
    """The configuration file is missing or invalid."""


class LedgerError(StatusmailError):
    """The ledger cannot be opened or is in use by another run."""


class SchemaTooNew(LedgerError):
    """The ledger's schema is newer than this statusmail knows: another host upgraded it.
    Waiting does not help, so a service stops (and lets an upgraded one lead)."""


class RenderError(StatusmailError):
    """A message could not be rendered (template error, missing translation); when the
    cause is located, ``problem`` says where (a template or catalog line)."""

    def __init__(self, message: str = "", *, problem: Problem | None = None) -> None:
        self.problem = problem
        super().__init__(str(problem) if problem else message)


class BuildError(RenderError):
    """A message could not be built during delivery: the run stops, nobody is blamed."""


class StoppedEarly(StatusmailError):
    """A run failed part way: what it did stays done, and running it again continues
    (exit 4, where an error before anything started is exit 1)."""

    def __init__(self, cause: StatusmailError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived while no event loop was there to stop a run gently."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signum)


class DeliveryError(StatusmailError):
    """A message was not accepted.

    ``transient`` errors (4xx, disconnects, timeouts) may be retried; the others are final.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        recipient: str | None = None,
        transient: bool = False,
        bounce: bool = False,
        relay_down: bool = False,
        lost: bool = False,
        unfit: bool = False,
        unconfirmed: bool = False,
    ) -> None:
        self.code = code
        self.message = message
        self.recipient = recipient
        self.transient = transient
        # A "no such user" answer: the address is suppressed for later entries.
        self.bounce = bounce
        # The relay could not be reached at all: the message never left, and the
        # recipient is not to blame (no attempt is charged, nobody is marked failed).
        self.relay_down = relay_down
        # The connection went away with no answer (lost, or silent past the timeout):
        # the relay's doing, or the recipient's message; a reconnection tells which.
        self.lost = lost
        # The relay cannot take the run's messages as the project sets them up (an
        # address of the project's own that needs SMTPUTF8): no recipient is to blame,
        # the message never left, and the run stops with everyone left pending.
        self.unfit = unfit
        # Lost (or silent past the timeout) after the whole message was written: the
        # relay may have kept it. Tried once more at most, so it arrives twice at most.
        self.unconfirmed = unconfirmed
        super().__init__(f"{code} {message}" if code else message)


class ConnectError(StatusmailError):
    """The server could not be reached or refused us before any message (auth, TLS)."""

    def __init__(self, server: str, reason: str, *, transient: bool = True) -> None:
        self.server = server
        self.reason = reason
        self.transient = transient
        super().__init__(f"{server}: {reason}")
