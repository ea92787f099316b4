"""What a message in the bounce mailbox is, from its bytes alone.

- a **bounce**: an RFC 3464 delivery status notification (``multipart/report;
  report-type=delivery-status``), read per recipient (``Action: failed`` with a 5.x.x
  status is hard; 4.x.x or ``delayed`` is soft); else, for a message from a mail system,
  whatever GNU Mailman's detectors (``flufl.bounce``) find in the older formats (Exim,
  Exchange, qmail, Yahoo, Mail.ru, texts in Russian…), then the non-delivery reports of
  Exchange, Office 365 (also localized in Russian) and Yahoo that carry no
  delivery-status part. A report wins over the auto-reply headers it carries;
- a **complaint**: an ARF report (RFC 5965) with ``Feedback-Type: abuse``, or a Microsoft
  JMRP complaint (the reported message attached to a message from staff@hotmail.com);
- an **unsubscribe**: ``unsubscribe <token>`` as the subject (as ``List-Unsubscribe``'s
  mailto advertises it) or as a line of the body, or an ARF ``opt-out`` report;
- an **auto-reply** (``Auto-Submitted`` other than ``no``, ``X-Autoreply``,
  ``Precedence: auto_reply``, vacation and out-of-office texts in English and Russian):
  never a bounce;
- **forwarded**: a report a person forwarded (or quoted in a reply) with words of their
  own above it: for a person to read, never acted on;
- anything else, with one failure of nobody in particular: what its text says, hard only
  when it reads as a permanent failure of a bad or disabled mailbox (``unread_failure``).

Each failure carries its *cause* (``cause_of``: a bad or disabled mailbox, a full one, a
message too large, a policy or authentication rejection, the network, an expiry), read
from the status code and the diagnostic text. The classifier only reads. It also gathers
the *clues* that say whom a report is about (the return-path token, the original
Message-ID, the unsubscribe token, the addresses it names); ``feedback`` checks them
against the keys and the ledger.
"""

from __future__ import annotations

from dataclasses import replace

from statusmail.feedback.bounces import (
    dsn_failures,
    from_a_mail_system,
    ndr_failures,
    other_failures,
    unread_failure,
)
from statusmail.feedback.classified import Classified, Failure, ReturnPath, Verdict
from statusmail.feedback.clues import clues, unsubscribe_tokens
from statusmail.feedback.complaints import JMRP_REPORTER, arf_report, jmrp_recipients
from statusmail.feedback.reading import header, parse, parse_date, source_id
from statusmail.feedback.replies import auto_reply_reason, forwarded, looks_like_a_report, written


def classify(data: bytes, return_path: ReturnPath | None = None) -> Classified:
    """What the message ``data`` is, and the clues to whom it is about."""
    msg = parse(data)
    source = source_id(msg, data)
    date = parse_date(header(msg, "Date"))
    person = forwarded(msg)

    def done(verdict: Verdict, why: str) -> Classified:
        return Classified(verdict, why, source, date, clues=clues(msg, return_path, verdict))

    def report(verdict: Verdict, why: str) -> Classified:
        """A report, unless a person forwarded it to ask about it: then it is theirs."""
        if person is not None:
            return done(Verdict.FORWARDED, f"a person forwarded {why}, with words of their own")
        return done(verdict, why)

    arf = arf_report(msg)
    if arf is not None:
        kind, reporter, named = arf
        if kind == "abuse":
            verdict, why = Verdict.COMPLAINT, "an ARF abuse report"
        elif kind in ("opt-out", "opt-out-list"):
            verdict, why = Verdict.UNSUBSCRIBE, f"an ARF {kind} report"
        else:  # not-spam, auth-failure, …: for a person to read
            return done(Verdict.OTHER, f"an ARF report of type {kind or 'unknown'!r}")
        return _naming(report(verdict, why), named, kind, reporter)
    jmrp = jmrp_recipients(msg)
    if jmrp is not None:
        found = done(Verdict.COMPLAINT, "a Microsoft JMRP complaint")
        return _naming(found, jmrp, "abuse", JMRP_REPORTER)

    def bounce(failures: tuple[Failure, ...], why: str) -> Classified:
        found = report(Verdict.BOUNCE, why)
        return replace(found, failures=failures) if found.verdict is Verdict.BOUNCE else found

    failures = dsn_failures(msg)
    if failures:
        return bounce(failures, "an RFC 3464 delivery status notification")
    is_dsn = failures is not None
    if is_dsn or from_a_mail_system(msg):  # a report too broken to read, or an older format
        for read, why in (
            (other_failures, "a bounce flufl.bounce read"),
            (ndr_failures, "a non-delivery report"),
        ):
            failures = read(msg)
            if failures:
                return bounce(failures, why)
    tokens = unsubscribe_tokens(msg)
    if tokens:
        result = done(Verdict.UNSUBSCRIBE, "a mailto unsubscribe")
        return replace(result, clues=replace(result.clues, unsubscribe_tokens=tokens))
    reason = auto_reply_reason(msg)
    if reason:
        return done(Verdict.AUTO_REPLY, f"an auto-reply ({reason})")
    if is_dsn:
        return done(Verdict.OTHER, "a delivery status notification without a failure")
    if person is not None and looks_like_a_report(person[1]):
        return done(Verdict.FORWARDED, "a person forwarded a report, with words of their own")
    if written(msg) is not None:  # a person's own message, a reply or a question: theirs
        return done(Verdict.OTHER, "a message a person wrote, with words of their own")
    result = done(Verdict.OTHER, "not a report statusmail reads")
    return replace(result, failures=(unread_failure(msg),))


def _naming(found: Classified, named: list[str], kind: str, reporter: str | None) -> Classified:
    """A feedback report with every recipient it names among its clues."""
    if found.verdict is Verdict.FORWARDED:
        return found
    addresses = tuple(dict.fromkeys(named + list(found.clues.addresses)))
    return replace(
        found,
        feedback_type=kind,
        reporter=reporter,
        clues=replace(found.clues, addresses=addresses),
    )
