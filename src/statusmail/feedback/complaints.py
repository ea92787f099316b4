"""Complaints and opt-outs a feedback loop sends: ARF reports (RFC 5965) and Microsoft
JMRP complaints (the reported message attached to a message from staff@hotmail.com)."""

from __future__ import annotations

import email.utils
from email.message import Message

from statusmail.feedback.reading import embedded, field_address, header, header_blocks, walk


def _is_report(msg: Message, report_type: str) -> bool:
    if msg.get_content_type() != "multipart/report":
        return False
    value = msg.get_param("report-type")
    kind = email.utils.collapse_rfc2231_value(value) if value else ""
    return str(kind).strip().lower() == report_type


def arf_report(msg: Message) -> tuple[str, str | None, list[str]] | None:
    """(feedback type, reporter, the recipients it names) of an ARF report, else None."""
    parts = [p for p in walk(msg) if p.get_content_type() == "message/feedback-report"]
    if not parts and not _is_report(msg, "feedback-report"):
        return None
    fields: dict[str, str] = {}
    recipients: list[str] = []
    for part in parts:
        for block in header_blocks(part):
            for name in ("Feedback-Type", "User-Agent", "Reporting-MTA", "Source-IP"):
                fields.setdefault(name, header(block, name))
            recipients += [
                a for v in block.get_all("Original-Rcpt-To") or [] if (a := field_address(str(v)))
            ]
    kind = (fields.get("Feedback-Type") or "").lower().strip()
    reporter = fields.get("User-Agent") or field_address(fields.get("Reporting-MTA") or "")
    return kind, reporter or None, recipients


# Microsoft's Junk Mail Reporting Program (Outlook.com, Hotmail) sends the reported message
# attached to a message of its own, not as ARF; the recipient is in a header it adds.
_JMRP_SENDERS = frozenset({"staff@hotmail.com", "staff@outlook.com"})
JMRP_REPORTER = "Microsoft JMRP"


def jmrp_recipients(msg: Message) -> list[str] | None:
    """The recipients a Microsoft JMRP complaint names, else None when it is not one."""
    if "staff@" not in str(msg.get("From", "")).lower():  # most messages: cheaply not one
        return None
    if email.utils.parseaddr(header(msg, "From"))[1].lower() not in _JMRP_SENDERS:
        return None
    originals = embedded(msg)
    if not originals:
        return None
    named = [header(o, "X-HmXmrOriginalRecipient") for o in [msg, *originals]]
    return [a for _, a in email.utils.getaddresses([n for n in named if n]) if a]
