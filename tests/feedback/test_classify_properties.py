"""Property tests: the classifier reads whatever lands in a mailbox without raising, a
report's verdict does not hang on details a mail system may change on the way, and a
bounce's cause is read from its code where the code is specific and from its words
where it is not, whatever the letter case and whatever else the line says."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedback_helpers import INDEX, RETURN_PATH, SAMPLES
from statusmail.domain import Cause, mask_address, scrub
from statusmail.feedback.causes import cause_of
from statusmail.feedback.classified import Classified, Verdict
from statusmail.feedback.classify import classify


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4000))
def test_any_bytes_classify_without_raising(data: bytes) -> None:
    found = classify(data, RETURN_PATH)
    assert isinstance(found, Classified) and found.source


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(SAMPLES)),
    st.integers(min_value=0, max_value=20_000),
    st.integers(min_value=0, max_value=200),
    st.binary(max_size=40),
)
def test_a_damaged_report_still_classifies(name: str, at: int, cut: int, junk: bytes) -> None:
    """A corpus message with bytes cut out and junk put in (a broken MIME tree, a header
    split, a charset that lies) is still read without raising."""
    data = SAMPLES[name]
    at %= len(data)
    found = classify(data[:at] + junk + data[at + cut :], RETURN_PATH)
    assert found.verdict in set(Verdict)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(sorted(SAMPLES)), st.sampled_from([b"\n", b"\r\n"]))
def test_line_endings_do_not_change_the_verdict(name: str, ending: bytes) -> None:
    """Maildir files end lines in LF, IMAP hands out CRLF: the same verdict either way."""
    data = SAMPLES[name].replace(b"\r\n", b"\n").replace(b"\n", ending)
    expected = INDEX[name]["verdict"]
    assert classify(data, RETURN_PATH).verdict.value == expected


# Diagnostic texts as real mail systems word them (without their codes), by the cause
# they give.
PHRASES: dict[Cause, list[str]] = {
    Cause.BAD_MAILBOX: [
        "Recipient address rejected: User unknown in virtual mailbox table",  # Postfix
        "The email account that you tried to reach does not exist.",  # Gmail
        "delivery error: dd This user doesn't have a yahoo.com account",  # Yahoo
        "Local mailbox anna@mail.ru is unavailable: user not found",  # Mail.Ru
        "No such user!",  # Yandex
        "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",  # O365
        "Unrouteable address",  # Exim
        "Нет такого пользователя",
        "Requested action not taken: mailbox unavailable",
    ],
    Cause.DISABLED: [
        "The email account that you tried to reach is disabled.",  # Gmail
        "This mailbox is disabled (554.30)",  # Yahoo
        "Account has been deactivated by the user",
        "Почтовый ящик заблокирован",
    ],
    Cause.MAILBOX_FULL: [
        "The email account that you tried to reach is over quota.",  # Gmail
        "Quota exceeded (mailbox for user is full)",  # Dovecot
        "Mailbox size limit exceeded",  # Exchange
        "Mailbox is full / Blocks limit exceeded / Inode limit exceeded",  # Yandex
        "Почтовый ящик получателя переполнен",
    ],
    Cause.TOO_LARGE: [
        "Message size exceeds fixed maximum message size",  # Postfix
        "Message too large",
        "Your message is too big for the recipient's server",
        "Размер письма слишком большой",
    ],
    Cause.POLICY: [
        "Service unavailable; Client host [192.0.2.10] blocked using zen.spamhaus.org",
        "Message rejected under suspicion of SPAM",  # Mail.Ru
        "Our system has detected that this message is likely unsolicited mail.",  # Gmail
        "part of their network is on our block list (S3150)",  # Outlook.com
        "Message rejected for policy reasons",
        "Сообщение отклонено как спам",
    ],
    Cause.AUTHENTICATION: [
        "Unauthenticated email from example.com is not accepted due to domain's DMARC policy",
        "SPF check failed for 192.0.2.10",
        "The sender's reverse DNS lookup failed",
        "Yahoo requires all senders to authenticate with either SPF or DKIM.",
        "Письмо не прошло проверку DKIM",
    ],
    Cause.NETWORK: [
        "connect to mx.example.net[192.0.2.33]:25: Connection timed out",
        "Host or domain name not found. Name service error for name=example.invalid",
        "connect to mx.example.net[192.0.2.33]:25: Connection refused",
        "No MX record for the recipient's domain",
    ],
    Cause.EXPIRED: [
        "retry timeout exceeded",  # Exim
        "Message expired after 5 days in the queue",
        "The message could not be delivered within the time allowed",
        "Истек срок доставки письма",
    ],
}
# Words that surround a diagnostic and say nothing of its cause.
NEUTRAL = st.lists(
    st.sampled_from(
        [
            "remote",
            "server",
            "said:",
            "host",
            "mx.example.net[192.0.2.25]",
            "please",
            "(in reply to RCPT TO command)",
            "ref",
            "id=4A1B22C0F3A",
            "сервер",
            "ответил:",
            "получателя",
            "for",
            "<anna@example.org>:",
            "see",
            "https://support.example.com/",
        ]
    ),
    max_size=8,
).map(" ".join)
# Codes that say little: the text decides.
GENERIC = [None, "5.0.0", "4.0.0", "550", "554", "451", "5.5.0"]
# Codes that decide whatever the text says, and what they say (RFC 3463, RFC 7372).
DECISIVE = {
    "5.1.1": Cause.BAD_MAILBOX,
    "5.1.2": Cause.BAD_MAILBOX,
    "5.1.10": Cause.BAD_MAILBOX,
    "5.1.8": Cause.AUTHENTICATION,
    "5.2.1": Cause.DISABLED,
    "5.2.2": Cause.MAILBOX_FULL,
    "4.2.2": Cause.MAILBOX_FULL,
    "5.2.3": Cause.TOO_LARGE,
    "5.3.4": Cause.TOO_LARGE,
    "4.4.7": Cause.EXPIRED,
    "5.4.7": Cause.EXPIRED,
    "5.7.23": Cause.AUTHENTICATION,
    "5.7.25": Cause.AUTHENTICATION,
    "5.7.26": Cause.AUTHENTICATION,
    "5.7.27": Cause.AUTHENTICATION,
}
PHRASE = st.sampled_from([(c, p) for c, phrases in PHRASES.items() for p in phrases])


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(
        st.none(), st.text(max_size=20), st.from_regex(r"[245]\.\d{1,3}\.\d{1,3}", fullmatch=True)
    ),
    st.text(max_size=600),
)
def test_cause_of_reads_any_code_and_text_without_raising(code: str | None, text: str) -> None:
    assert cause_of(code, text) in set(Cause)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(GENERIC), PHRASE, NEUTRAL, NEUTRAL)
def test_the_words_decide_where_the_code_says_little(
    code: str | None, phrase: tuple[Cause, str], before: str, after: str
) -> None:
    cause, words = phrase
    assert cause_of(code, f"{code or ''} {before} {words} {after}") is cause


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(DECISIVE)), st.one_of(PHRASE.map(lambda x: x[1]), NEUTRAL))
def test_a_specific_code_decides_whatever_the_words(code: str, words: str) -> None:
    assert cause_of(code, f"550 {code} {words}") is DECISIVE[code]


@settings(max_examples=30, deadline=None)
@given(NEUTRAL)
def test_a_code_s_class_decides_when_the_words_say_nothing(words: str) -> None:
    assert cause_of("5.7.1", words) is Cause.POLICY
    assert cause_of("5.4.4", words) is Cause.NETWORK
    assert cause_of("4.4.1", words) is Cause.NETWORK
    assert cause_of("5.1.0", words) is Cause.BAD_MAILBOX
    assert cause_of(None, words) is Cause.OTHER


@settings(max_examples=60, deadline=None)
@given(PHRASE, st.lists(st.booleans(), min_size=1))
def test_letter_case_does_not_change_the_cause(
    phrase: tuple[Cause, str], upper: list[bool]
) -> None:
    cause, words = phrase
    flipped = "".join(
        c.upper() if upper[i % len(upper)] else c.lower() for i, c in enumerate(words)
    )
    assert cause_of(None, flipped) is cause
    assert cause_of("550", flipped) is cause


def _phrases(*causes: Cause) -> st.SearchStrategy[tuple[Cause, str]]:
    return st.sampled_from([(c, p) for c in causes for p in PHRASES[c]])


MAILBOX = _phrases(Cause.BAD_MAILBOX, Cause.DISABLED, Cause.MAILBOX_FULL)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["5.7.1", "5.7.0", "5.7.606"]),
    _phrases(Cause.AUTHENTICATION),
    _phrases(Cause.POLICY),
    MAILBOX,
)
def test_under_5_7_the_sender_s_side_wins_over_the_mailbox(
    code: str, auth: tuple[Cause, str], policy: tuple[Cause, str], mailbox: tuple[Cause, str]
) -> None:
    """A policy code's words may say it was the mailbox (Yandex: "5.7.1 No such user!"),
    but only when nothing in them speaks of the sender's side."""
    assert cause_of(code, f"550 {code} {auth[1]}") is Cause.AUTHENTICATION
    assert cause_of(code, f"550 {code} {mailbox[1]}") is mailbox[0]
    assert cause_of(code, f"550 {code} {mailbox[1]}; {policy[1]}") is Cause.POLICY


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4000))
def test_what_any_bytes_classify_into_can_be_stored(data: bytes) -> None:
    """No lone surrogate (a UTF-7 encoded-word or part, which Python decodes into one)
    reaches the ledger, which refuses them: it ended every pass, dry run included."""
    found = classify(data, RETURN_PATH)
    texts = [found.source, *found.clues.addresses]
    texts += [t for f in found.failures for t in (f.address, f.code, f.diagnostic) if t]
    for text in texts:
        text.encode("utf-8")


_LOCAL = st.text(st.characters(codec="ascii", exclude_characters="*@ \n"), min_size=1)


@given(_LOCAL, _LOCAL, st.text(max_size=40))
def test_scrub_masks_any_address_whatever_it_holds(local: str, domain: str, around: str) -> None:
    """A backslash in an address (anyone can name one in a report) was read as a group
    reference of the replacement: a traceback that ended every feedback pass."""
    address = f"{local}@{domain}"
    said = scrub(f"{around}<{address.upper()}>{around}", [address])
    assert address.lower() not in said.lower()
    assert mask_address(address) in said
