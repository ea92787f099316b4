"""What the classifier says of a message: its ``Verdict``, the ``Failure`` of each
recipient a bounce reports on and the ``Clues`` to whom it is about, together a
``Classified``; and ``ReturnPath``, the configured bounce address the clues are read
against."""

from __future__ import annotations

import datetime as dt
import enum
import re
from dataclasses import dataclass, field

from statusmail.domain import Cause


class Verdict(enum.StrEnum):
    BOUNCE = "bounce"
    COMPLAINT = "complaint"
    UNSUBSCRIBE = "unsubscribe"
    AUTO_REPLY = "auto-reply"
    FORWARDED = "forwarded"  # a person forwarded a report, with words of their own: for a person
    OTHER = "other"


@dataclass(frozen=True)
class Failure:
    """One recipient a bounce reports on."""

    address: str | None  # as the report names it (None when only the return path tells)
    hard: bool
    code: str | None  # the status code (5.1.1), else the reply code (550)
    diagnostic: str
    when: dt.datetime | None = None
    cause: Cause = Cause.OTHER  # why, as the code and the text say (``cause_of``)


@dataclass(frozen=True)
class Clues:
    """What may tell whom a report is about, unchecked."""

    return_path_tokens: tuple[str, ...] = ()  # from <local>+<token>@<domain> addresses
    message_ids: tuple[str, ...] = ()  # of the original message the report quotes
    unsubscribe_tokens: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()  # recipients the report names (ARF, the quoted To:)


@dataclass(frozen=True)
class Classified:
    verdict: Verdict
    why: str
    source: str  # the report's Message-ID, else a digest of its bytes
    date: dt.datetime | None = None  # when it happened, as it says
    failures: tuple[Failure, ...] = ()
    clues: Clues = field(default_factory=Clues)
    feedback_type: str | None = None  # ARF
    reporter: str | None = None  # ARF: who reported it


@dataclass(frozen=True)
class ReturnPath:
    """The configured bounce address, to find tokens in ``local+token@domain``."""

    local: str
    domain: str
    delimiter: str = "+"

    @classmethod
    def of(cls, address: str | None, delimiter: str = "+") -> ReturnPath | None:
        if not address or "@" not in address:
            return None
        local, _, domain = address.rpartition("@")
        return cls(local, domain, delimiter)

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(
            rf"(?<![\w.+-]){re.escape(self.local)}{re.escape(self.delimiter)}"
            rf"([A-Za-z0-9_-]{{16,200}})@{re.escape(self.domain)}(?![\w-])",
            re.IGNORECASE,
        )
