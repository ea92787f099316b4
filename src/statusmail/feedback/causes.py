"""Why a message bounced (``domain.Cause``), from its status code and the words of its
diagnostic text, as real mail systems word it in English and in Russian."""

from __future__ import annotations

import re

from statusmail.domain import Cause
from statusmail.feedback.reading import MAX_TEXT, STATUS

# What the diagnostic text says, as real MTAs word it (Postfix, Exim, Exchange and Office
# 365, Gmail, Yahoo, Mail.Ru, Yandex, in English and in Russian). The first that matches
# wins, so each comes before the looser ones it would otherwise lose to: an expiry names
# the connection error it gave up on, "reverse DNS" is not a DNS failure, an account
# "blocked" is disabled rather than a spam block, "mailbox size limit" is a full mailbox.
_CAUSE_TEXTS: tuple[tuple[Cause, re.Pattern[str]], ...] = tuple(
    (cause, re.compile(pattern, re.IGNORECASE))
    for cause, pattern in (
        (
            Cause.AUTHENTICATION,
            r"\b(?:spf|dkim|dmarc|ptr|rdns)\b|reverse (?:dns|lookup)|"
            r"(?:not|un)authenticated|authentication (?:required|failed|failure)|"
            r"sender (?:address|domain) (?:rejected|does not resolve|not verified)|"
            r"requires all senders to authenticate|authrequired|"
            r"не прош\w+ (?:проверку )?(?:spf|dkim|dmarc)|обратн\w+ (?:dns|зон)",
        ),
        (
            Cause.EXPIRED,
            r"expired|retry timeout exceeded|delivery time expired|"
            r"could not be delivered within|too long in (?:the )?queue|in (?:the )?queue too long|"
            r"(?:message|mail) (?:has been )?delayed (?:for )?too long|"
            r"maximum time in queue|"
            r"срок (?:доставки |хранения )?(?:\w+ )?ист[её]к|ист[её]к\w* срок|истекло время",
        ),
        (
            Cause.DISABLED,
            r"\b(?:account|mailbox|user|recipient)\b[^.;\n]{0,30}?\b(?:is|has been|was)\s+"
            r"(?:disabled|deactivated|suspended|blocked|locked|closed|inactive)|"
            r"\bdisabled\b|\binactive\b|deactivated|"
            r"(?:ящик|аккаунт|учетн\w+ запис\w+|пользовател\w+)[^.;\n]{0,30}?"
            r"(?:заблокирован|отключ[её]н|неактивен|удал[её]н)",
        ),
        (
            Cause.BAD_MAILBOX,
            r"user unknown|unknown (?:user|recipient|address|mailbox)|"
            r"no such (?:user|mailbox|recipient|address|account|person)|"
            r"(?:user|recipient|address|mailbox|account) (?:was )?not found|"
            r"(?:does not|doesn't|did not|does no longer) exist|not exist|"
            r"(?:doesn't|does not) have an? \S+ account|recipientnotfound|"
            r"wasn't found at|couldn't be found|could not be found|"
            r"invalid (?:recipient|mailbox|address|user)|no mailbox here|"
            r"unrouteable address|not (?:a )?valid (?:recipient|mailbox|user)|"
            r"recipient name is not recognized|not listed in (?:the )?(?:domino )?directory|"
            r"нет такого пользователя|пользовател\w* не (?:найден|существует)|"
            r"(?:адрес\w*|ящик\w*|получател\w*) не (?:найден|существует)|не удается найти|"
            r"несуществующ|неизвестн\w+ (?:пользовател|адрес|получател)",
        ),
        (
            Cause.MAILBOX_FULL,
            r"over ?quota|quota (?:exceeded|exceed)|exceeded (?:the |their |his |her )?"
            r"(?:storage|quota)|mailbox (?:is )?full|mail ?box size limit|"
            r"insufficient (?:storage|disk space)|out of storage|full mailbox|"
            r"переполнен|превыш\w+ (?:квот|лимит|объ[её]м)|недостаточно места",
        ),
        (
            Cause.TOO_LARGE,
            r"message (?:is )?too (?:large|big)|(?:message )?size (?:limit|exceeds)|"
            r"exceeds? (?:the )?(?:maximum |max )?(?:message |allowed )?size|"
            r"message size exceeds|слишком (?:большой|велик)|превышает (?:\w+ )?размер",
        ),
        (
            Cause.POLICY,
            r"spam|block ?list|black ?list|blocked|banned|listed (?:at|in|on|by)|"
            r"polic(?:y|ies)|spamhaus|spamcop|barracuda|\b(?:rbl|dnsbl)\b|reputation|unsolicited|"
            r"content rejected|not accepted for policy|спам|заблокирован|"
            r"черн\w+ спис|политик",
        ),
        (
            Cause.NETWORK,
            r"host (?:or domain name )?not found|host unknown|\bdns\b|"
            r"connection (?:refused|timed out|reset|lost|closed)|timed out|"
            r"\bno mx\b|mx (?:record|lookup)|name server|name service|"
            r"network is unreachable|no route to host|"
            r"(?:could not|couldn't|can't|cannot|unable to) connect|"
            r"хост не найден|не удалось (?:подключиться|соединиться)|"
            r"соединени\w+ (?:разорван|отклонен|прервано)",
        ),
        (
            Cause.BAD_MAILBOX,  # looser words, after the policy ones that may come with them
            r"mailbox (?:is )?(?:unavailable|not available)|"
            r"requested action not taken: mailbox|"
            r"ящик недоступен",
        ),
    )
)
_SENDER_SIDE_CAUSES = (Cause.AUTHENTICATION, Cause.POLICY)


def _text_causes(text: str) -> list[Cause]:
    """Every cause the words give, in the order above; words that gave one give no other
    ("mailbox blocked" is a disabled mailbox, not also a spam block)."""
    found: list[Cause] = []
    for cause, pattern in _CAUSE_TEXTS:
        text, matched = pattern.subn(" ", text)
        if matched:
            found.append(cause)
    return found


def _code_cause(code: str) -> Cause | None:
    """What an enhanced status code says (RFC 3463, RFC 7372), None when it says little."""
    _, subject, detail = (int(x) for x in code.split("."))
    if (subject, detail) == (4, 7):
        return Cause.EXPIRED
    if subject == 1:
        return Cause.AUTHENTICATION if detail in (7, 8) else Cause.BAD_MAILBOX
    if subject == 2:
        return {1: Cause.DISABLED, 2: Cause.MAILBOX_FULL, 3: Cause.TOO_LARGE}.get(detail)
    if (subject, detail) == (3, 4):
        return Cause.TOO_LARGE
    if subject == 4:
        return Cause.NETWORK
    if subject == 7:
        return Cause.AUTHENTICATION if 20 <= detail <= 27 else Cause.POLICY
    return None


def cause_of(code: str | None, text: str) -> Cause:
    """Why a message bounced, from its status code (5.1.1, or a bare 550) and the
    diagnostic text around it.

    A specific code decides (5.1.1 is a bad mailbox, 5.2.2 a full one, 4.4.7 an expiry,
    5.7.26 an authentication failure, whatever words come with it). The text decides where
    the code says little: no code, a bare reply code (550, 554), a generic one (5.0.0,
    5.1.0: then the code's class only when the text says nothing), or one with no cause of
    its own (5.5.x, 5.6.x). Under 5.7.x (policy) the text
    may tell more: an SPF or DKIM failure is authentication, and a mailbox cause counts
    (Yandex answers "5.7.1 No such user!") only when nothing in it speaks of policy. Under
    4.4.x/5.4.x the text may tell that the queue gave up (expired).
    """
    found = STATUS.search(code or "")
    by_code = _code_cause(found.group(0)) if found else None
    detail = found.group(3) if found else "0"
    if by_code not in (None, Cause.POLICY, Cause.NETWORK) and detail != "0":
        return by_code  # decisive: no need to read the words
    said = _text_causes(text[:MAX_TEXT])
    if found is None:
        return said[0] if said else Cause.OTHER
    if by_code is Cause.POLICY:
        sender_side = [c for c in said if c in _SENDER_SIDE_CAUSES]
        return (sender_side or said or [Cause.POLICY])[0]
    if by_code is Cause.NETWORK and Cause.EXPIRED in said:
        return Cause.EXPIRED
    if by_code is not None and detail != "0":
        return by_code
    return said[0] if said else by_code or Cause.OTHER
