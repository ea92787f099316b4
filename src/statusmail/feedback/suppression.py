"""``statusmail suppress``: the suppression list, kept in sync with the source of truth."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable
from dataclasses import dataclass

from email_validator import EmailNotValidError, validate_email

from statusmail.domain import Preference
from statusmail.errors import InputError, Problem
from statusmail.ledger import Ledger
from statusmail.project.subscriber_rows import address_key

# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: str | None) -> str:
    """A cell no spreadsheet will evaluate: risky ones get a leading apostrophe (OWASP)."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def normalized(address: str) -> str:
    try:
        valid = validate_email(address.strip(), check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        raise InputError([Problem("<command line>", None, f"{address!r}: {exc}")]) from exc
    return address_key(valid.normalized)


def add(ledger: Ledger, addresses: Iterable[str], reason: str, detail: str | None) -> int:
    keys = [normalized(a) for a in addresses]  # all valid, or nothing is changed
    return sum(ledger.suppress(key, reason, detail) for key in keys)


def remove(ledger: Ledger, addresses: Iterable[str]) -> int:
    """Lift each address, however it is spelled (as ``add`` keys it: an IDN domain in
    punycode, a name in NFD); one that no longer validates, as it is stored."""
    return ledger.lift([_key(a) for a in addresses], "removed by hand")


def _key(address: str) -> str:
    try:
        return normalized(address)
    except InputError:
        return address_key(address)


def domain_key(domain: str) -> str:
    """A domain an operator names, as the ledger keeps it (``suppress remove --domain``,
    ``feedback --release-held``): lower-case, in Unicode (``xn--…`` decoded)."""
    plain = domain.strip().lower()
    try:
        return plain.encode("ascii").decode("idna") if plain.isascii() else plain
    except UnicodeError:
        return plain


@dataclass(frozen=True)
class Selector:
    """Which suppressions a bulk ``suppress remove`` lifts."""

    reason: str
    since: dt.date | None = None  # suppressed on or after this day (UTC)
    domain: str | None = None  # the recipient's domain, exactly
    cause: str | None = None  # the Cause of the report that suppressed it

    def describe(self) -> str:
        parts = [f"--reason {self.reason}"]
        parts += [f"--since {self.since}"] if self.since else []
        parts += [f"--domain {self.domain}"] if self.domain else []
        parts += [f"--cause {self.cause}"] if self.cause else []
        return "suppress remove " + " ".join(parts)


def matching(ledger: Ledger, selector: Selector) -> list[str]:
    """The suppressed addresses ``selector`` names. A report recorded before causes were
    kept has its cause read again from its code and text."""
    from statusmail.feedback.causes import cause_of  # the mail parsers only when asked

    domain = domain_key(selector.domain) if selector.domain else None
    since = selector.since.isoformat() if selector.since else None
    return [
        address
        for address, _at, cause, code, text in ledger.suppressions_by(
            selector.reason, since, domain
        )
        if selector.cause is None
        or (cause or (cause_of(code, text or "") if code or text else None)) == selector.cause
    ]


def lift(ledger: Ledger, selector: Selector) -> int:
    return ledger.lift(matching(ledger, selector), selector.describe())


def export_csv(ledger: Ledger) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["email", "reason", "detail", "suppressed_at"])
    for row in ledger.suppressions():
        writer.writerow([safe_cell(cell) for cell in row])
    return buffer.getvalue()


# The topics cell of a reader who unticked every topic: not the empty cell ("the
# list's"), which would put them back on every topic they left.
NO_TOPICS = "(none)"


def preferences_csv(rows: Iterable[tuple[str, Preference, str]]) -> str:
    """The stored preferences as CSV: ``email,locale,topics,updated_at`` (topics split by
    ``;`` as in a subscriber file; an empty cell keeps the list's value, ``NO_TOPICS``
    says none)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["email", "locale", "topics", "updated_at"])
    for address, preference, updated in rows:
        if preference.topics is None:
            topics = ""
        else:
            topics = ";".join(sorted(preference.topics)) or NO_TOPICS
        writer.writerow(
            [safe_cell(cell) for cell in (address, preference.locale or "", topics, updated)]
        )
    return buffer.getvalue()
