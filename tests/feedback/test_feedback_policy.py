"""The parts under statusmail feedback and the preferences: return-path tokens and their
lengths, the ledger's migration 3, the soft-bounce score and its decay, the bounce
settings, and preferences looked up in memory or row by row."""

from __future__ import annotations

import csv
import datetime as dt
import json
import sqlite3
from pathlib import Path

import pytest

from conftest import REPO, invoke
from editing import replace_in
from feedback_helpers import CORPUS, deliver, dsn
from statusmail.domain import DeliveryStatus, Outcome, Preference, Recipient
from statusmail.errors import ConfigError
from statusmail.feedback.loop import Feedback
from statusmail.ledger import Ledger, StagedRow
from statusmail.ledger import preferences as ledger_module
from statusmail.ledger.base import now_iso
from statusmail.ledger.events import FeedbackEvent
from statusmail.ledger.schema import FEEDBACK_READS, MIGRATIONS, statements
from statusmail.project.config import load_config
from statusmail.project.selection import select
from statusmail.project.tokens import (
    MAX_LOCAL_PART,
    Keyring,
    Purpose,
    open_row_token,
    return_path_token,
    row_token,
    row_token_names,
    unsubscribe_token,
    verify_entry_token,
)

KEYS = Keyring(b"test-unsubscribe-secret-at-least-32-bytes")
SAMPLE_ADDRESSES = [
    row["email"].lower()
    for row in csv.DictReader(
        (REPO / "subscribers" / "main.csv").read_text(encoding="utf-8").splitlines()
    )
] + ["maria@пример.испытание", "alexei.popov@пример.испытание", "viktor.egorov@example.com"]
LONGEST = "l" * 64 + "@" + "d" * 60 + ".example"  # a 64-octet local part, a long domain


# -- the return path -------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["update-2020-04-21", "block-2020-01-23"])
def test_every_return_path_fits_64_octets(entry: str) -> None:
    """The sealed token (entry and address inside) is used only where it fits; measured
    over the sample subscribers and a 64-octet local part it never does, and the sealed
    row number (48 characters, whatever the address) always does."""
    addresses = [*SAMPLE_ADDRESSES, LONGEST]
    sealed = [
        len("bounces+" + return_path_token(KEYS, entry, a, "bounces", row=None)) for a in addresses
    ]
    assert min(sealed) > MAX_LOCAL_PART  # 83 to 115 octets here, 234 for LONGEST
    for address in addresses:
        token = return_path_token(KEYS, entry, address, "bounces", row=123_456)
        assert len("bounces+" + token) == 8 + 48 <= MAX_LOCAL_PART
        assert open_row_token(KEYS, token) is not None


def test_a_short_enough_return_path_carries_entry_and_address() -> None:
    token = return_path_token(KEYS, "e1", "a@b.co", "b", row=7)
    assert verify_entry_token(KEYS, Purpose.VERP, token) == ("e1", "a@b.co")


def test_the_row_token_opens_only_for_its_keys_and_its_row() -> None:
    token = row_token(KEYS, 4_242, "update-2020-04-21", "anna@example.org")
    assert len(token) == 48 and token == token.lower()
    for seen in (token, token.upper()):  # a mail system that folds case breaks nothing
        opened = open_row_token(KEYS, seen)
        assert opened is not None and opened[0] == 4_242
        assert row_token_names(opened[1], "update-2020-04-21", "anna@example.org")
        # a ledger whose rowids moved (VACUUM, a copy) never pins it on someone else
        assert not row_token_names(opened[1], "update-2020-04-21", "ivan@example.org")
    assert open_row_token(Keyring(b"another-secret-of-at-least-32-bytes!!"), token) is None
    rotated = Keyring(b"a-new-secret-of-at-least-32-bytes-long", (KEYS.secret,))
    assert open_row_token(rotated, token) is not None  # retired secrets still verify
    assert open_row_token(KEYS, token[:-1] + ("a" if token[-1] != "a" else "b")) is None


# -- migration 3 -------------------------------------------------------------------------


def test_a_version_2_ledger_migrates_keeping_rows_rowids_and_order(tmp_path: Path) -> None:
    path = tmp_path / "statusmail.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT)")
    for number, migration in enumerate(MIGRATIONS[:2], 1):
        for statement in statements(migration, "sqlite"):
            db.execute(statement)
        db.execute("INSERT INTO schema_version VALUES (?, 'then')", (number,))
    for rowid, address, status in [(3, "c@x.org", "sent"), (10, "a@x.org", "failed"),
                                   (11, "b@x.org", "pending")]:  # fmt: skip
        db.execute(
            "INSERT INTO deliveries (rowid, entry_id, address, email, locale, status,"
            " message_id, created_at, updated_at) VALUES (?, 'e', ?, ?, 'en', ?, ?, 't', 't')",
            (rowid, address, address, status, f"<{address}>"),
        )
    db.commit()
    before = db.execute("SELECT rowid, * FROM deliveries ORDER BY rowid").fetchall()
    db.close()

    with Ledger(path) as ledger:
        assert ledger.schema_version() == len(MIGRATIONS)
        conn = ledger.database.db
        assert isinstance(conn, sqlite3.Connection)
        after = conn.execute(
            "SELECT rowid, entry_id, address, email, ascii_email, name, locale, region, status,"
            " attempts, code, detail, message_id, selection, created_at, updated_at"
            " FROM deliveries ORDER BY rowid"
        ).fetchall()
        assert after == before
        assert ledger.delivery_by_row(10) == ("e", "a@x.org")
        assert ledger.delivery_by_message_id("<c@x.org>") == ("e", "c@x.org")
        conn.execute("UPDATE deliveries SET status = 'bounced' WHERE rowid = 3")
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("UPDATE deliveries SET status = 'lost' WHERE rowid = 3")
        assert ledger.counts("e") == {"pending": 1, "sent": 0, "failed": 1, "skipped": 0,
                                      "bounced": 1}  # fmt: skip


# -- the soft-bounce score -----------------------------------------------------------------

ENTRY, ADDRESS = "update-2020-04-21", "olga@example.net"


def sent_ledger(path: str | Path) -> Ledger:
    ledger = Ledger(path)
    generation = ledger.begin_selection(ENTRY, "digest")
    ledger.stage([StagedRow("selected", ADDRESS, ADDRESS, ADDRESS, "", "ru", "RU")])
    ledger.enqueue(ENTRY, generation)
    ledger.record(ENTRY, [Outcome(ADDRESS, DeliveryStatus.SENT, 1, 250, None, "<m@x>")])
    return ledger


def test_a_pass_that_decided_before_a_lift_does_not_undo_it(ledger_target: str | Path) -> None:
    """A feedback pass decided a second report of a hard bounce while the address was
    still suppressed; the operator's `suppress remove` came before the pass recorded it,
    and the address was suppressed again at once ("recorded (already suppressed)"), the
    operator told "removed" (review). The lift answered the report: it changes nothing."""
    with sent_ledger(ledger_target) as ledger:
        ledger.suppress(ADDRESS, "bounced")
        decided = FeedbackEvent(
            "hard",
            ADDRESS,
            ENTRY,
            "5.1.1",
            "550 5.1.1 no such user",
            "<second-report@relay.test>",
            now_iso(),
            suppress="bounced",
            evidence="hard bounce: 5.1.1",
            mark="bounced",
            score_day=dt.date.today().isoformat(),
        )
        assert ledger.lift([ADDRESS], "suppress remove") == 1
        assert ledger.record_feedback([decided]) == [True]
        assert ADDRESS not in suppressed(ledger)
        assert ledger.has_feedback("<second-report@relay.test>", ADDRESS, "hard")
        rows = ledger.database.execute(
            "SELECT status FROM deliveries WHERE entry_id = :e", {"e": ENTRY}
        )
        assert rows == [("sent",)]
        assert not ledger.database.execute("SELECT 1 FROM bounce_scores", {})


def soft_dsn(day: dt.date, *, status: str = "4.2.2") -> bytes:
    """A bounce of ADDRESS from that day ("mailbox full"), to its VERP return path."""
    return dsn(
        ADDRESS,
        token=return_path_token(KEYS, ENTRY, ADDRESS, "bounces", None),
        status=status,
        diagnostic=f"452 {status} Mailbox full",
        when=f"{day:%a, %d %b %Y} 10:00:00 +0000",
    )


def suppressed(ledger: Ledger) -> dict[str, str]:
    return {a: r for a, r, _detail, _at in ledger.suppressions()}


@pytest.mark.parametrize(
    ("days", "suppressed_after"),
    [
        ([1, 1, 1, 1], None),  # one day, however many reports: counts once
        ([1, 5, 9], 3),  # three days within 14: suppressed at the third
        ([1, 5, 16], None),  # day 1 fell out of the window by day 16
        ([1, 20, 40, 60], None),  # the score decays: never three within 14 days
        ([30, 35, 36, 37], 3),
    ],
)
def test_soft_bounces_count_once_a_day_and_decay(
    project: Path, days: list[int], suppressed_after: int | None
) -> None:
    config = load_config(project)  # soft_limit 3 within soft_window_days 14
    start = dt.date(2020, 5, 1)
    with sent_ledger(project.parent / "statusmail.db") as ledger:
        for index, offset in enumerate(days, 1):
            day = start + dt.timedelta(days=offset)
            now = dt.datetime.combine(day, dt.time(12), dt.UTC)
            Feedback(config, KEYS, ledger, now=now).handle(soft_dsn(day))
            expected = suppressed_after is not None and index >= suppressed_after
            assert (ADDRESS in suppressed(ledger)) is expected, (offset, suppressed(ledger))
        events = ledger.database.execute("SELECT COUNT(*) FROM feedback_events")[0][0]
        assert events == len(days)  # every report is recorded, scored or not
        counted = {d for (d,) in ledger.database.execute("SELECT day FROM bounce_scores")}
        assert len(counted) == len(set(days))
        [(status,)] = ledger.database.execute("SELECT status FROM deliveries")
        assert status == "sent"  # a soft bounce never marks the row


def test_a_dry_run_scores_in_memory_and_writes_nothing(project: Path) -> None:
    config = load_config(project)
    day = dt.date(2020, 5, 1)
    with sent_ledger(project.parent / "statusmail.db") as ledger:
        work = Feedback(
            config, KEYS, ledger, dry_run=True, now=dt.datetime(2020, 5, 6, tzinfo=dt.UTC)
        )
        for offset in (0, 2, 4):
            work.handle(soft_dsn(day + dt.timedelta(days=offset)))
        assert work.report.suppressed == 1  # the third day would suppress...
        assert [e["effect"] for e in work.report.events][-1] == "would be suppressed as bounced"
        assert suppressed(ledger) == {}  # ...and nothing was written
        assert ledger.database.execute("SELECT COUNT(*) FROM feedback_events")[0][0] == 0


def test_a_hard_bounce_after_soft_ones_suppresses_with_its_evidence(project: Path) -> None:
    config = load_config(project)
    with sent_ledger(project.parent / "statusmail.db") as ledger:
        work = Feedback(config, KEYS, ledger, now=dt.datetime(2020, 5, 3, tzinfo=dt.UTC))
        work.handle(soft_dsn(dt.date(2020, 5, 1)))
        work.handle(soft_dsn(dt.date(2020, 5, 2), status="5.1.1"))
        [(address, reason, detail, _at, code, reported)] = ledger.suppression_evidence()
        assert (address, reason, code) == (ADDRESS, "bounced", "5.1.1")
        assert reported is not None and reported.startswith("2020-05-02")
        assert "5.1.1" in (detail or "")


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "  address: bounces@startmail.example",
            "  address: bounces+x@startmail.example",
            "'bounces.address' must not hold the delimiter '+' in its local part",
        ),
        (
            "  address: bounces@startmail.example",
            "  address: bounces",
            "'bounces.address' is not an ASCII email address",
        ),
        ("  soft_limit: 3 ", "  soft_limit: 0 ", "'bounces.soft_limit' must be a whole number ≥ 1"),
        ("  processed: processed", "  processed: ../elsewhere", "must be a plain folder name"),
        (
            "  maildir: bounces ",
            "  imap: {host: imap.example}\n  maildir: bounces ",
            "missing 'bounces.imap.username'",
        ),
        (
            "  url: https://www.startmail.example/status/preferences/{token}",
            "  url: http://www.startmail.example/status/preferences/{token}",
            "'preferences.url' must be an https URL containing {token}",
        ),
        (
            "  product-news: {en: Product news",
            "  product_news: {en: Product news",
            "'topic_names': 'product_news' is not one of 'topics'",
        ),
    ],
)
def test_bad_settings_name_the_line(project: Path, old: str, new: str, message: str) -> None:
    line = replace_in(project, old, new)
    with pytest.raises(ConfigError) as caught:
        load_config(project)
    assert any(
        str(p).startswith(f"{project}:{line}:") and message in str(p) for p in caught.value.problems
    ), caught.value.problems


def test_without_bounces_the_envelope_sender_is_the_sender(project: Path) -> None:
    text = project.read_text(encoding="utf-8")
    project.write_text(text[: text.index("# Reading bounces")], encoding="utf-8")
    config = load_config(project)
    assert config.bounces.address is None and config.bounces.maildir is None
    assert config.preferences_url == "https://www.startmail.example/status/preferences/{token}"


# -- preferences in a selection ----------------------------------------------------------------


@pytest.mark.parametrize("in_memory", [True, False])
def test_preferences_override_the_list_in_memory_or_row_by_row(
    project: Path, monkeypatch: pytest.MonkeyPatch, in_memory: bool
) -> None:
    if not in_memory:  # past the limit, each subscriber's is read from the ledger
        monkeypatch.setattr(ledger_module, "PREFERENCES_IN_MEMORY", 0)
    config = load_config(project)
    from statusmail.project.entries import find_entry

    entry = find_entry(config.paths.updates, "update-2020-04-21")  # service-status, RU/BY/KZ
    with Ledger(config.paths.ledger) as ledger:
        ledger.set_preference("Anna.Petrova@example.org", Preference(locale="en"))
        ledger.set_preference("ivan.smirnov@example.com", Preference(topics=frozenset()))
        ledger.set_preference("nobody@example.org", Preference(locale="ru"))
        ledger.set_preference(
            "anna.petrova@example.org", Preference(topics=frozenset({"service-status"}))
        )
        with ledger.preference_lookup() as lookup:
            chosen = {
                r.address: r.locale
                for r in select(
                    entry,
                    config.paths.subscribers,
                    config.default_locale_by_region,
                    preferences=lookup,
                    declared_topics=config.topics,
                )
                if isinstance(r, Recipient)
            }
        assert ledger.preference("ANNA.petrova@example.org") == Preference(
            "en", frozenset({"service-status"})
        )  # a field left out keeps what was stored
    assert chosen["anna.petrova@example.org"] == "en"  # was ru
    assert "ivan.smirnov@example.com" not in chosen  # left every topic
    assert "nobody@example.org" not in chosen  # the list decides who is subscribed
    assert chosen["olga.kuznetsova@example.net"] == "ru"


# -- the command's edges --------------------------------------------------------------------


def test_feedback_without_a_mailbox_says_what_to_set(project: Path) -> None:
    replace_in(project, "  maildir: bounces ", "  # maildir: bounces ")
    result = invoke(project, "feedback")
    assert result.exit_code == 1
    assert "feedback needs a mailbox: set bounces.maildir or bounces.imap" in result.stderr


def test_a_dry_run_with_no_ledger_creates_none(project: Path) -> None:
    box = project.parent / "bounces"
    unsubscribe = (CORPUS / "mailto-unsubscribe-gmail.eml").read_bytes()
    token = unsubscribe_token(KEYS, "hanna.sidarenka@example.net").encode()
    deliver(box, unsubscribe.replace(b"{{UNSUB:hanna.sidarenka@example.net}}", token))
    environ = {"STATUSMAIL_UNSUBSCRIBE_SECRET": KEYS.secret.decode()}
    result = invoke(project, "feedback", "--dry-run", "--json", env=environ)
    assert result.exit_code == 0, result.stderr
    [event] = json.loads(result.stdout)["events"]
    assert (event["kind"], event["effect"]) == (
        "unsubscribe",
        "would be suppressed as unsubscribed",
    )
    assert not (project.parent / "statusmail.db").exists()


def test_a_dry_run_never_migrates_an_old_ledger(project: Path) -> None:
    path = project.parent / "statusmail.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT)")
    for number, migration in enumerate(MIGRATIONS[:2], 1):
        for statement in statements(migration, "sqlite"):
            db.execute(statement)
        db.execute("INSERT INTO schema_version VALUES (?, 'then')", (number,))
    db.commit()
    db.close()
    deliver(project.parent / "bounces", (CORPUS / "unrelated-question.eml").read_bytes())
    result = invoke(project, "feedback", "--dry-run")
    assert result.exit_code == 1
    assert "run it once without --dry-run" in result.stderr
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT MAX(version) FROM schema_version").fetchone() == (2,)


def test_a_dry_run_reads_a_ledger_without_the_migrations_feedback_never_reads(
    project: Path,
) -> None:
    """A ledger of every migration a feedback pass reads (FEEDBACK_READS), and not the
    later ones (webhook tokens, serve's): the dry run reads it as it is, unmigrated;
    requiring the newest schema refused every deployment's ledger after an upgrade."""
    path = project.parent / "statusmail.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT)")
    for number, migration in enumerate(MIGRATIONS[:FEEDBACK_READS], 1):
        for statement in statements(migration, "sqlite"):
            db.execute(statement)
        db.execute("INSERT INTO schema_version VALUES (?, 'then')", (number,))
    db.commit()
    db.close()
    assert len(MIGRATIONS) > FEEDBACK_READS
    deliver(project.parent / "bounces", (CORPUS / "unrelated-question.eml").read_bytes())
    result = invoke(project, "feedback", "--dry-run")
    assert result.exit_code == 0, result.stderr
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT MAX(version) FROM schema_version").fetchone() == (FEEDBACK_READS,)
