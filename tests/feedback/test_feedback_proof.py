"""Feedback nobody can forge (issue 19): a report changes a subscriber only with proof,
the policy acts by cause, a storm from one domain is held, and suppressions come off in
bulk with each address's history kept.

The reports are real-shaped DSNs and ARF reports (``feedback_helpers.dsn`` and ``arf``)
read by the real classifier against a real SQLite ledger of sent deliveries; the
commands run through the CLI."""

from __future__ import annotations

import datetime as dt
import json
import logging
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings

from conftest import invoke, outbox_messages, recipient
from feedback_helpers import (
    DOMAIN,
    SECRET,
    arf,
    deliver,
    dsn,
    new_files,
    processed_files,
    query,
    sent_to,
    set_bounces,
)
from masking_helpers import FIRST, HIDDEN, STARRED, TEXTS, hidden_before, marking, positions
from statusmail.domain import FeedbackKind, mask_address
from statusmail.feedback.loop import Feedback, apply_reports
from statusmail.feedback.proof import addresses_masked
from statusmail.feedback.reports import ProviderReport
from statusmail.ledger import Ledger, StagedRow
from statusmail.project.config import Config, load_config
from statusmail.project.tokens import Keyring, message_id

KEYS = Keyring(SECRET.encode())
ENV = {"STATUSMAIL_UNSUBSCRIBE_SECRET": SECRET}
ENTRY = "update-2020-04-21"
NOW = dt.datetime(2020, 4, 22, 12, tzinfo=dt.UTC)
ANNA, IVAN = "anna@example.org", "ivan@example.com"


@pytest.fixture
def config(project: Path) -> Config:
    return load_config(project)


@pytest.fixture
def ledger(project: Path) -> Iterator[Ledger]:
    with Ledger(project.parent / "statusmail.db") as opened:
        yield opened


def suppressed(ledger: Ledger) -> dict[str, str]:
    return {a: r for a, r, _detail, _at in ledger.suppressions()}


def states(ledger: Ledger) -> list[tuple[str, str, str]]:
    rows = ledger.database.execute(
        "SELECT address, state, kind FROM feedback_events ORDER BY address, kind"
    )
    return [(r[0], r[1], r[2]) for r in rows]


def tampered(token: str) -> str:
    """The token with one character changed: still well-formed, no longer made by us."""
    middle = len(token) // 2
    return token[:middle] + ("a" if token[middle] != "a" else "b") + token[middle + 1 :]


# -- proof ------------------------------------------------------------------------------------


def test_a_dsn_without_a_token_is_unverified_and_changes_nobody(
    config: Config, ledger: Ledger
) -> None:
    sent_to(ledger, KEYS, ENTRY, [ANNA])
    work = Feedback(config, KEYS, ledger, now=NOW)
    assert work.handle(dsn(ANNA))  # recorded for the operator, moved out of the inbox
    assert suppressed(ledger) == {}
    assert states(ledger) == [(ANNA, "unverified", "hard")]
    assert work.report.unverified == 1 and work.report.kinds.total() == 0
    assert query_status(ledger, ANNA) == "sent"


def test_a_tampered_return_path_token_is_forged(
    config: Config, ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = sent_to(ledger, KEYS, ENTRY, [ANNA])
    work = Feedback(config, KEYS, ledger, now=NOW)
    with caplog.at_level(logging.WARNING, logger="statusmail.feedback"):
        work.handle(dsn(ANNA, token=tampered(tokens[ANNA])))
    assert suppressed(ledger) == {}
    assert states(ledger) == [(ANNA, "forged", "hard")]
    assert work.report.forged == 1
    assert any("forged" in r.getMessage() for r in caplog.records)
    assert ANNA not in caplog.text  # the log masks the address


def test_a_forged_arf_changes_nobody(config: Config, ledger: Ledger) -> None:
    sent_to(ledger, KEYS, ENTRY, [ANNA, IVAN])
    work = Feedback(config, KEYS, ledger, now=NOW)
    work.handle(arf(ANNA))  # no proof at all
    forged_id = f"<{ENTRY}.{'0' * 32}@{DOMAIN}>"  # statusmail's shape, not its HMAC
    work.handle(arf(IVAN, original_id=forged_id))
    assert suppressed(ledger) == {}
    assert states(ledger) == [(ANNA, "unverified", "complaint"), (IVAN, "forged", "complaint")]
    assert (work.report.unverified, work.report.forged) == (1, 1)


def test_a_message_id_proves_only_with_its_hmac(config: Config, ledger: Ledger) -> None:
    sent_to(ledger, KEYS, ENTRY, [ANNA])
    genuine = message_id(KEYS, ENTRY, ANNA, DOMAIN)
    Feedback(config, KEYS, ledger, now=NOW).handle(arf(ANNA, original_id=genuine))
    assert suppressed(ledger) == {ANNA: "complained"}
    # the same Message-ID under another key is no proof
    other = Keyring(b"another-secret-of-at-least-32-bytes-long")
    with Ledger(ledger.target) as again:
        work = Feedback(config, other, again, now=NOW)
        work.handle(dsn(ANNA, original_id=genuine))
    assert work.report.forged == 1


@pytest.mark.parametrize("how", ["mailbox", "webhook"])
def test_a_report_about_a_message_not_recorded_yet_is_proven_by_its_message_id(
    config: Config, ledger: Ledger, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report that arrives before the message's outcome is recorded (the group
    commit's moment; a sender killed just after the relay's 250): its Message-ID was
    looked up in the ledger only, so an ARF complaint was called forged and a signed
    provider bounce was tied to the entry sent before (review)."""
    later = "update-2020-05-01"
    sent_to(ledger, KEYS, ENTRY, [ANNA])
    generation = ledger.begin_selection(later, "digest")
    ledger.stage([StagedRow("selected", ANNA, ANNA, ANNA, "", "ru", "RU")])
    ledger.enqueue(later, generation)  # pending: no Message-ID recorded yet
    genuine = message_id(KEYS, later, ANNA, DOMAIN)
    if how == "mailbox":
        work = Feedback(config, KEYS, ledger, now=NOW)
        work.handle(arf(ANNA, original_id=genuine))
        assert work.report.forged == 0
        assert suppressed(ledger) == {ANNA: "complained"}
    else:
        monkeypatch.setenv("STATUSMAIL_UNSUBSCRIBE_SECRET", SECRET)  # serve's keys
        report = ProviderReport(
            "ses",
            FeedbackKind.HARD,
            ANNA,
            "r-1",
            "5.1.1",
            "550 5.1.1 unknown",
            NOW,
            message_id=genuine,
        )
        apply_reports(config, [report], None, ledger=ledger)
        assert suppressed(ledger) == {ANNA: "bounced"}
    rows = ledger.database.execute(
        "SELECT entry_id FROM feedback_events WHERE address = :a", {"a": ANNA}
    )
    assert rows == [(later,)]


def test_trust_unsigned_acts_by_address_and_check_warns(project: Path) -> None:
    set_bounces(project, maildir="bounces", trust_unsigned=True)
    config = load_config(project)
    with Ledger(project.parent / "statusmail.db") as ledger:
        sent_to(ledger, KEYS, ENTRY, [ANNA])
        Feedback(config, KEYS, ledger, now=NOW).handle(dsn(ANNA))
        assert suppressed(ledger) == {ANNA: "bounced"}
    checked = invoke(project, "check", env=ENV)
    assert "trust_unsigned" in checked.stdout + checked.stderr


def test_a_proven_message_of_no_known_shape_is_a_soft_bounce(
    config: Config, ledger: Ledger
) -> None:
    tokens = sent_to(ledger, KEYS, ENTRY, [ANNA])
    odd = (
        f"From: postmaster@odd.example\nTo: bounces+{tokens[ANNA]}@{DOMAIN}\n"
        "Subject: your mail\nMessage-ID: <odd-1@odd.example>\n\n"
        "We could not hand your message over. Sorry.\n"
    ).encode()
    work = Feedback(config, KEYS, ledger, now=NOW)
    assert work.handle(odd)
    assert [(e["kind"], e["effect"]) for e in work.report.events] == [("soft", "scored")]
    assert suppressed(ledger) == {}


# -- causes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "diagnostic", "cause", "suppresses"),
    [
        ("5.1.1", "550 5.1.1 <{address}>: User unknown", "bad-mailbox", True),
        ("5.7.1", "554 5.7.1 Message rejected as spam by policy", "policy", False),
        ("5.2.2", "552 5.2.2 Mailbox full: quota exceeded", "mailbox-full", False),
        ("5.7.23", "550 5.7.23 SPF validation failed", "authentication", False),
    ],
)
def test_each_cause_has_its_action(
    config: Config,
    ledger: Ledger,
    status: str,
    diagnostic: str,
    cause: str,
    suppresses: bool,
) -> None:
    tokens = sent_to(ledger, KEYS, ENTRY, [ANNA])
    Feedback(config, KEYS, ledger, now=NOW).handle(
        dsn(ANNA, token=tokens[ANNA], status=status, diagnostic=diagnostic)
    )
    [(recorded, state)] = ledger.database.execute("SELECT cause, state FROM feedback_events")
    assert (recorded, state) == (cause, "applied")
    assert (ANNA in suppressed(ledger)) is suppresses
    assert query_status(ledger, ANNA) == ("bounced" if suppresses else "sent")


# -- the storm guard ----------------------------------------------------------------------------


def crowd(domain: str, n: int) -> list[str]:
    return [f"reader{i:03}@{domain}" for i in range(n)]


@pytest.mark.parametrize(
    ("status", "diagnostic"),
    [
        ("5.7.1", "550 5.7.1 Rejected for policy reasons: IP listed at a blocklist"),
        ("5.1.1", "550 5.1.1 <{address}>: User unknown"),
    ],
)
def test_a_storm_is_held_then_released(
    project: Path, config: Config, ledger: Ledger, status: str, diagnostic: str
) -> None:
    storm = crowd("mail.example", 30)
    calm = crowd("calm.example", 3)
    tokens = sent_to(ledger, KEYS, ENTRY, storm + calm + crowd("other.example", 200))
    box = project.parent / "bounces"
    for address in storm + calm:
        deliver(box, dsn(address, token=tokens[address], status=status, diagnostic=diagnostic))

    result = invoke(project, "feedback", "--json", env=ENV)
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    held = payload["held"]
    assert [(h["domain"], h["events"]) for h in held] == [("mail.example", 30)]
    assert "--release-held mail.example" in result.stderr  # said loudly
    rows = query(project, "SELECT domain, state FROM feedback_events")
    assert sorted(set(rows)) == [("calm.example", "applied"), ("mail.example", "held")]
    hard = status.startswith("5.1")
    assert set(suppressed(ledger)) == (set(calm) if hard else set())
    assert len(processed_files(box)) == 33 and new_files(box) == {}

    released = invoke(project, "feedback", "--release-held", "mail.example", "--json", env=ENV)
    assert released.exit_code == 0, released.stderr
    assert json.loads(released.stdout)["released"] == 30
    assert {s for (s,) in query(project, "SELECT DISTINCT state FROM feedback_events")} == {
        "applied"
    }
    assert set(suppressed(ledger)) == (set(storm + calm) if hard else set())


def test_a_storm_goes_on_across_passes_until_released(config: Config, ledger: Ledger) -> None:
    storm = crowd("mail.example", 25)
    tokens = sent_to(ledger, KEYS, ENTRY, storm)
    policy = {"status": "5.7.1", "diagnostic": "554 5.7.1 Service unavailable; blocked"}
    Feedback(config, KEYS, ledger, now=NOW).settle(
        [
            Feedback(config, KEYS, ledger, now=NOW).assess(dsn(a, token=tokens[a], **policy))
            for a in storm[:24]
        ]
    )
    later = Feedback(config, KEYS, ledger, now=NOW)
    later.handle(dsn(storm[24], token=tokens[storm[24]], **policy))  # one more, later
    assert later.report.held == {("mail.example", "policy"): 1}


# -- undo in bulk, history per address ------------------------------------------------------


def test_suppress_remove_lifts_exactly_the_matching_rows_and_the_next_send_reaches_them(
    project: Path,
) -> None:
    sent = invoke(project, "send", "block-2020-01-23", "--yes", "--rate", "0", env=ENV)
    assert sent.exit_code == 0, sent.stderr
    lift = ["ivan.smirnov@example.com", "olga.kuznetsova@example.net"]
    keep_domain = "anna.petrova@example.org"  # bounced, other domain
    keep_old = "sergey.orlov@example.net"  # bounced, before --since
    keep_manual = "kate.morozova@example.com"  # suppressed by hand, same domain
    with Ledger(project.parent / "statusmail.db") as ledger:
        for address in [*lift, keep_domain, keep_old]:
            ledger.suppress(address, "bounced", "hard bounce: 5.7.1 blocked")
        ledger.suppress(keep_manual, "manual", "asked")
        ledger.database.execute(
            "UPDATE suppressions SET created_at = '2019-12-01T00:00:00+00:00' WHERE address = :a",
            {"a": keep_old},
        )
    args = ("suppress", "remove", "--reason", "bounced", "--since", "2020-04-21")
    dry = invoke(project, *args, "--domain", "example.net", "--dry-run", env=ENV)
    assert "would remove 1 address" in dry.stderr, dry.stderr
    assert set(json_list(project)) == {*lift, keep_domain, keep_old, keep_manual}

    done = invoke(project, *args, "--domain", "example.net", env=ENV)
    assert "removed 1 address" in done.stderr, done.stderr
    done = invoke(project, *args, "--domain", "example.com", env=ENV)
    assert "removed 1 address" in done.stderr, done.stderr
    assert set(json_list(project)) == {keep_domain, keep_old, keep_manual}

    shown = invoke(project, "suppress", "show", "olga.kuznetsova@example.net", env=ENV)
    assert "not suppressed" in shown.stdout and "lifted the bounced suppression" in shown.stdout
    history = json.loads(
        invoke(project, "suppress", "show", "olga.kuznetsova@example.net", "--json").stdout
    )
    assert history["suppressed"] is None and len(history["lifted"]) == 1
    assert "--domain example.net" in history["lifted"][0]["why"]

    again = invoke(project, "send", ENTRY, "--yes", "--rate", "0", env=ENV)
    assert again.exit_code == 0, again.stderr
    got = {recipient(m) for m in outbox_messages(project) if ENTRY in str(m["Message-ID"])}
    assert set(lift) <= got
    assert not {keep_domain, keep_old, keep_manual} & got


def test_suppress_show_lists_every_event_of_an_address(project: Path) -> None:
    set_bounces(project, maildir="bounces")
    config = load_config(project)
    with Ledger(project.parent / "statusmail.db") as ledger:
        tokens = sent_to(ledger, KEYS, ENTRY, [ANNA])
        work = Feedback(config, KEYS, ledger, now=NOW)
        work.handle(dsn(ANNA, when="Tue, 21 Apr 2020 10:00:00 +0000"))  # unverified
        work.handle(dsn(ANNA, token=tokens[ANNA], when="Tue, 21 Apr 2020 11:00:00 +0000"))
    history = json.loads(invoke(project, "suppress", "show", ANNA, "--json", env=ENV).stdout)
    assert history["suppressed"]["reason"] == "bounced"
    assert [(e["state"], e["cause"], e["code"], e["suppressed"]) for e in history["events"]] == [
        ("unverified", "bad-mailbox", "5.1.1", False),
        ("applied", "bad-mailbox", "5.1.1", True),
    ]
    text = invoke(project, "suppress", "show", ANNA, env=ENV).stdout
    assert "suppressed as bounced" in text and "unverified" in text


def json_list(project: Path) -> list[str]:
    listed = json.loads(invoke(project, "suppress", "list", "--json", env=ENV).stdout)
    return [row["email"] for row in listed]


def query_status(ledger: Ledger, address: str) -> str:
    [(status,)] = ledger.database.execute(
        "SELECT status FROM deliveries WHERE address = :a", {"a": address}
    )
    return str(status)


# -- what the operator is told ----------------------------------------------------------------


def test_json_is_printed_when_the_pass_fails(project: Path) -> None:
    data = yaml.safe_load(project.read_text(encoding="utf-8"))
    data["bounces"] = {
        "address": "bounces@startmail.example",
        "imap": {"host": "127.0.0.1", "port": 9, "security": "none", "username": "b"},
    }
    project.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = invoke(project, "feedback", "--json", env=ENV)
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert "$STATUSMAIL_IMAP_PASSWORD is not set" in payload["error"]
    assert "STATUSMAIL_IMAP_PASSWORD" in result.stderr
    checked = invoke(project, "check", env=ENV)
    assert "$STATUSMAIL_IMAP_PASSWORD is not set" in checked.stdout + checked.stderr


def test_a_dry_run_says_would(
    project: Path, config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    with Ledger(project.parent / "statusmail.db") as ledger:
        tokens = sent_to(ledger, KEYS, ENTRY, [ANNA])
        with caplog.at_level(logging.INFO, logger="statusmail.feedback"):
            Feedback(config, KEYS, ledger, dry_run=True, now=NOW).handle(
                dsn(ANNA, token=tokens[ANNA])
            )
    assert "would be suppressed as bounced" in caplog.text
    assert ": suppressed as" not in caplog.text
    deliver(project.parent / "bounces", dsn(ANNA, token=tokens[ANNA]))
    result = invoke(project, "feedback", "--dry-run", env=ENV)
    assert result.exit_code == 0, result.stderr
    assert "would be suppressed as bounced" in result.stdout
    assert "1 would be newly suppressed" in result.stdout


# -- masking what reports quote --------------------------------------------------------------
# A diagnostic, a From, a Subject: anyone can write them. Their masking is the rule every
# output shares (``domain.mask_addresses``), tested here where the mask is a parameter.


@settings(max_examples=150, deadline=None)
@given(TEXTS)
def test_masking_hides_whatever_any_rule_before_it_hid(text: str) -> None:
    """Every character that the CI summary's, the log's or the diagnostics' own rule hid
    is still hidden, or is the one letter the mask keeps of an address (``«anna@x»`` was
    ``«***@x»`` here, and is ``«a***@x»`` as the log showed it)."""
    shown = addresses_masked(text, marking)
    assert len(shown) == len(text)
    assert hidden_before(text) <= positions(shown, HIDDEN) | positions(shown, FIRST)


@settings(max_examples=150, deadline=None)
@given(STARRED)
def test_masking_masked_text_changes_nothing_and_show_addresses_shows_all(text: str) -> None:
    once = addresses_masked(text, mask_address)
    assert addresses_masked(once, mask_address) == once
    assert addresses_masked(text, lambda address: address) == text  # --show-addresses


@pytest.mark.parametrize(
    ("diagnostic", "shown"),
    [
        # A quoted local part: every rule stopped at the quote, and the address was whole.
        (
            '550 5.1.1 <"john doe"@example.org>: User unknown',
            '550 5.1.1 <"j***@example.org>: User unknown',
        ),
        # An @ written %40, in a link a relay quotes: whole before.
        (
            "550 5.7.1 see https://mx.example.net/why?rcpt=anna%40example.org",
            "550 5.7.1 see https:/***%40example.org",
        ),
        # An apostrophe ends the local part: the rule stopped at it, and nothing matched.
        ("550 5.1.1 anna'@example.org: no such user", "550 5.1.1 a***@example.org: no such user"),
        # ... or is inside it: "o'b" was shown.
        ("550 5.1.1 o'brien@example.ie unknown", "550 5.1.1 o***@example.ie unknown"),
    ],
)
def test_an_address_the_diagnostics_showed_is_masked(diagnostic: str, shown: str) -> None:
    assert addresses_masked(diagnostic, mask_address) == shown


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("550 5.1.1 User unknown", "550 5.1.1 User unknown"),
        (
            "421 4.7.0 Try again @ 10:00 or ask @postmaster",
            "421 4.7.0 Try again @ 10:00 or ask @postmaster",
        ),
        ("Нет такого пользователя: адрес@ пустой", "Нет такого пользователя: адрес@ пустой"),
        # One opening mark stays outside the address, so the mask keeps its first letter.
        ("«anna@пример.рф»", "«a***@пример.рф»"),
        ("'anna@example.org'", "'a***@example.org'"),
        ("[anna@example.org]", "[a***@example.org]"),
        ("mailto:anna+news@example.org.", "mailto:a***@example.org."),
        # A Message-ID holds no person's address, but some are made from one (VERP,
        # mailing lists): masked, it still says which domain made it.
        ("In-Reply-To: <20240101.x9@mx.example.net>", "In-Reply-To: <2***@mx.example.net>"),
        # Masked already, here or by the rules before (which masked these again).
        ("'***@example.org' and a***@example.org", "'***@example.org' and a***@example.org"),
    ],
)
def test_masking_leaves_what_people_read(text: str, shown: str) -> None:
    assert addresses_masked(text, mask_address) == shown


IDN, IDN_AS_SENT = "maria@пример.испытание", "maria@xn--e1afmkfd.xn--80akhbyknj4f"
OTHER, OTHER_AS_SENT = "olga@пример.испытание", "OLGA@XN--E1AFMKFD.XN--80AKHBYKNJ4F"


def test_a_report_naming_an_idn_recipient_as_the_message_went_is_hers(project: Path) -> None:
    """Providers and relays name the recipient as the message went, the domain in
    punycode; the ledger keys her as the list is read. A complaint through Postmark (which
    quotes no Message-ID) or a trusted unsigned bounce was applied to nobody, and she
    was mailed again."""
    set_bounces(project, maildir="bounces", trust_unsigned=True)
    config = load_config(project)
    with Ledger(project.parent / "statusmail.db") as ledger:
        sent_to(ledger, KEYS, ENTRY, [IDN, OTHER, ANNA])
        Feedback(config, KEYS, ledger, now=NOW).handle(dsn(IDN_AS_SENT))
        assert suppressed(ledger) == {IDN: "bounced"}
    complaint = ProviderReport("postmark", FeedbackKind.COMPLAINT, OTHER_AS_SENT, "pm-1")
    report = apply_reports(config, [complaint])
    assert report.read == 1 and not report.left, report
    with Ledger(project.parent / "statusmail.db") as ledger:
        assert suppressed(ledger) == {IDN: "bounced", OTHER: "complained"}


def test_suppress_remove_lifts_an_address_however_it_is_spelled(project: Path) -> None:
    """``suppress add`` keyed an address as the lists do, ``remove`` only lower-cased it:
    the punycode, NFD or upper-case spelling printed "removed" and lifted nothing, and
    ``--domain`` in punycode found nobody."""
    spellings = {
        IDN: "Maria@XN--E1AFMKFD.xn--80akhbyknj4f",
        "сергей@example.org": unicodedata.normalize("NFD", "Сергей@example.org"),
        ANNA: "Anna@EXAMPLE.ORG",
    }
    for address in spellings:
        assert invoke(project, "suppress", "add", address, env=ENV).exit_code == 0
    for address, spelled in spellings.items():
        removed = invoke(project, "suppress", "remove", spelled, env=ENV)
        assert removed.exit_code == 0, removed.output
        assert address not in suppressed_addresses(project), (address, removed.output)
    assert invoke(project, "suppress", "add", OTHER, env=ENV).exit_code == 0
    bulk = ("suppress", "remove", "--reason", "manual", "--domain", "XN--E1AFMKFD.xn--80akhbyknj4f")
    assert invoke(project, *bulk, env=ENV).exit_code == 0
    assert suppressed_addresses(project) == set()


def suppressed_addresses(project: Path) -> set[str]:
    with Ledger(project.parent / "statusmail.db") as ledger:
        return set(suppressed(ledger))


def test_a_storm_at_an_idn_domain_is_released_by_its_punycode(
    project: Path, ledger: Ledger
) -> None:
    """The ledger keeps an IDN domain in Unicode; an operator may well type what the
    relay's logs show, its punycode: that released nothing."""
    storm = crowd("пример.испытание", 30)
    tokens = sent_to(ledger, KEYS, ENTRY, storm + crowd("other.example", 200))
    box = project.parent / "bounces"
    for address in storm:
        deliver(
            box, dsn(address, token=tokens[address], status="5.7.1", diagnostic="554 5.7.1 blocked")
        )
    assert invoke(project, "feedback", "--json", env=ENV).exit_code == 0
    punycode = "XN--E1AFMKFD.xn--80akhbyknj4f"
    released = invoke(project, "feedback", "--release-held", punycode, "--json", env=ENV)
    assert released.exit_code == 0, released.stderr
    assert json.loads(released.stdout)["released"] == 30
