"""Issue 24: the footer names the topic the reader gets the entry for. Of an entry for
several topics, a reader who chose some of them is told those (their row in the ledger
keeps them, NULL for everyone else), on SQLite and PostgreSQL, through a resumed send, a
preference changed meanwhile and ``ledger copy``; a one-topic entry and ``topics: all``
cost nothing new."""

from __future__ import annotations

import html
import re
from email.message import EmailMessage
from pathlib import Path

import pytest

from conftest import (
    CSV_HEADER,
    SECRET_ENV,
    UPDATE,
    dry_run,
    invoke,
    outbox_messages,
    part_text,
    recipient,
)
from statusmail.domain import Preference, Recipient
from statusmail.ledger import SCHEMA_VERSION, Ledger, StagedRow, store

ENTRY = "news-2020-05-20"
NEWS, STATUS = "product-news", "service-status"
# What the sample's config calls each topic (topic_names), as a footer spells it.
NAMES = {
    NEWS: {"en": "Product news", "ru": "Новости StartMail"},
    STATUS: {"en": "Service status and access", "ru": "Работа сервиса и доступ к нему"},
}
# address -> (locale, region, topics as the list gives them)
READERS = {
    "nina@example.org": ("en", "NL", NEWS),
    "sam@example.org": ("en", "NL", STATUS),
    "bo@example.org": ("en", "NL", f"{STATUS};{NEWS}"),
    "nadya@example.org": ("ru", "NL", NEWS),
    "semyon@example.org": ("ru", "NL", STATUS),
    "olya@example.org": ("ru", "NL", f"{NEWS};{STATUS}"),
    "masha@example.org": ("ru", "RU", NEWS),  # a reader in Russia: the access variant
}
CHOSE = {address: frozenset(topics.split(";")) for address, (_, _, topics) in READERS.items()}


def with_readers(config: Path, audience: str = f"[{STATUS}, {NEWS}]") -> None:
    """The sample project with only ``READERS`` in its list, and ``ENTRY`` (the April
    update, unthreaded) for ``audience``'s topics."""
    folder = config.parent / "subscribers"
    for old in folder.iterdir():
        old.unlink()
    rows = "".join(
        f"{address},Reader {i},{locale},{region},{topics},active\n"
        for i, (address, (locale, region, topics)) in enumerate(READERS.items())
    )
    (folder / "main.csv").write_text(CSV_HEADER + rows, encoding="utf-8")
    write_entry(config, ENTRY, audience)


def write_entry(config: Path, entry_id: str, topics: str) -> None:
    april = (config.parent / "updates" / f"{UPDATE}.yaml").read_text(encoding="utf-8")
    was = "audience:\n  regions: [RU, BY, KZ]\n  topics: [service-status]"
    assert was in april and "thread: block-2020-01-23\n" in april
    text = april.replace(f"id: {UPDATE}", f"id: {entry_id}").replace(
        was, f"audience:\n  topics: {topics}"
    )
    text = text.replace("thread: block-2020-01-23\n", "")
    (config.parent / "updates" / f"{entry_id}.yaml").write_text(text, encoding="utf-8")


def send(config: Path, entry_id: str = ENTRY, *extra: str, ledger: str | None = None) -> int:
    env = {**SECRET_ENV, **({"STATUSMAIL_LEDGER": ledger} if ledger else {})}
    result = invoke(config, "send", entry_id, "--yes", "--rate", "0", *extra, env=env)
    assert result.exit_code in (0, 4), result.stderr
    return result.exit_code


def by_reader(config: Path) -> dict[str, EmailMessage]:
    """The outbox's messages by recipient: one each."""
    messages = outbox_messages(config)
    found = {recipient(message): message for message in messages}
    assert len(found) == len(messages)
    return found


def footers(message: EmailMessage) -> tuple[str, str]:
    """The footer of the text part and of the HTML part, as one line of words each."""
    text = part_text(message, "plain").split("\n-- \n")[1]
    page = part_text(message, "html").split("<hr", 1)[1]
    page = html.unescape(re.sub(r"<[^>]+>", " ", page.split(">", 1)[1]))
    return words(text), words(page)


def words(text: str) -> str:
    return " ".join(text.replace("\u00a0", " ").split())


def sentence(locale: str, topics: frozenset[str]) -> str:
    """The footer's sentence, as the catalog has it, naming ``topics``."""
    names = [NAMES[topic][locale] for topic in sorted(topics)]
    if locale == "en" and len(names) == 1:
        return f"you subscribed to “{names[0]}” from StartMail."
    if locale == "en":
        return f"subscribed to these topics from StartMail: {', '.join(names)}."
    if len(names) == 1:
        return f"подписались на тему «{names[0]}» в рассылке StartMail."
    return f"подписались в рассылке StartMail на эти темы: {', '.join(names)}."


def assert_footers_name(
    messages: dict[str, EmailMessage], chose: dict[str, frozenset[str]]
) -> None:
    assert sorted(messages) == sorted(chose)
    for address, message in messages.items():
        locale = READERS[address][0]
        for footer in footers(message):
            assert sentence(locale, chose[address]) in footer, (address, footer)
            for topic in {NEWS, STATUS} - chose[address]:
                assert NAMES[topic][locale] not in footer, (address, footer)


def topics_column(target: str | Path, entry_id: str = ENTRY) -> dict[str, str | None]:
    with Ledger(target) as ledger:
        rows = ledger.database.execute(
            "SELECT address, topics FROM deliveries WHERE entry_id = :e", {"e": entry_id}
        )
    return {str(row[0]): row[1] for row in rows}


# The rows' topics of ENTRY: those of a reader who chose some of its topics, not all.
STORED = {a: None if len(t) > 1 else ";".join(sorted(t)) for a, t in CHOSE.items()}


def test_each_reader_is_told_the_topics_they_chose(project: Path) -> None:
    with_readers(project)
    assert send(project) == 0
    messages = by_reader(project)
    assert_footers_name(messages, CHOSE)
    # the whole sentence, as the catalog words it
    assert (
        "You are receiving this because you subscribed to “Product news” from StartMail."
        in footers(messages["nina@example.org"])[0]
    )
    assert (
        "Вы получили это письмо, потому что подписались в рассылке StartMail на эти "
        "темы: Новости StartMail, Работа сервиса и доступ к нему."
        in footers(messages["olya@example.org"])[1]
    )
    assert topics_column(project.parent / "statusmail.db") == STORED


def test_a_one_topic_entry_and_topics_all_add_nothing(project: Path) -> None:
    with_readers(project)
    write_entry(project, "news-only", f"[{NEWS}]")
    write_entry(project, "everyone", "all")
    ledger = project.parent / "statusmail.db"
    general = {
        "en": "you subscribed to service status updates from StartMail.",
        "ru": "подписались на уведомления о работе сервиса StartMail.",
    }
    seen: set[str] = set()
    for entry_id, readers in (
        ("news-only", {a for a, topics in CHOSE.items() if NEWS in topics}),
        ("everyone", set(READERS)),
    ):
        assert send(project, entry_id) == 0
        assert topics_column(ledger, entry_id) == dict.fromkeys(readers)
        messages = [m for m in outbox_messages(project) if m["Message-ID"] not in seen]
        assert sorted(map(recipient, messages)) == sorted(readers)
        for message in messages:
            seen.add(message["Message-ID"])
            locale = READERS[recipient(message)][0]
            said = sentence(locale, frozenset({NEWS})) if entry_id == "news-only" else None
            for footer in footers(message):
                assert (said or general[locale]) in footer, footer


def test_a_topic_changed_on_the_preferences_page_before_the_rest_is_sent(project: Path) -> None:
    with_readers(project)
    # one message now (the first in the list), the rest on a resume
    assert send(project, ENTRY, "--limit", "1") == 4
    ledger = project.parent / "statusmail.db"
    assert topics_column(ledger) == STORED
    with Ledger(ledger) as writable:
        # Bo keeps product news only, Olya service status only; Nadya's page left service
        # status ticked, which adds nothing the list does not give her
        writable.set_preference("bo@example.org", Preference(topics=frozenset({NEWS})))
        writable.set_preference("olya@example.org", Preference(topics=frozenset({STATUS})))
        writable.set_preference("nadya@example.org", Preference(topics=frozenset({NEWS, STATUS})))
    assert send(project) == 0
    chose = {
        **CHOSE,
        "bo@example.org": frozenset({NEWS}),
        "olya@example.org": frozenset({STATUS}),
    }
    assert_footers_name(by_reader(project), chose)
    changed = {"bo@example.org": NEWS, "olya@example.org": STATUS}
    assert topics_column(ledger) == {**STORED, **changed}


def test_on_postgresql_the_claim_carries_the_topics(project: Path, postgres: str) -> None:
    with_readers(project)
    assert send(project, ledger=postgres) == 0
    assert_footers_name(by_reader(project), CHOSE)
    assert topics_column(postgres) == STORED


def test_ledger_copy_keeps_the_topics(project: Path, postgres: str) -> None:
    with_readers(project)
    assert send(project) == 0
    copied = invoke(project, "ledger", "copy", "--to", postgres, env=SECRET_ENV)
    assert copied.exit_code == 0, copied.stderr
    assert topics_column(postgres) == STORED


def test_a_ledger_made_before_the_topics_column_is_migrated_and_its_rows_claimed(
    ledger_target: str | Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger at schema 11 with a pending row: opened, it gains the column (NULL on the
    old row: the entry's own), and a claim reads back what a selection stages."""
    if isinstance(ledger_target, Path):
        ledger_target.parent.mkdir(parents=True, exist_ok=True)
    with monkeypatch.context() as before:
        before.setattr(store, "SCHEMA_VERSION", 11)
        with Ledger(ledger_target) as ledger:
            # as statusmail at schema 11 began a selection (today's writes later columns)
            generation = 1
            ledger.database.execute(
                "INSERT INTO entries (entry_id, digest, selected_at, generation)"
                " VALUES (:e, 'digest', 'then', :g)",
                {"e": ENTRY, "g": generation},
            )
            ledger.database.execute(
                "INSERT INTO deliveries (entry_id, address, email, locale, status, selection,"
                " created_at, updated_at) VALUES (:e, 'old@example.org', 'old@example.org',"
                " 'en', 'pending', :g, 'then', 'then')",
                {"e": ENTRY, "g": generation},
            )
            assert "topics" not in ledger.database.columns("deliveries")
    new = Recipient(
        "new@example.org", "new@example.org", None, "New", "en", None, topics=frozenset({NEWS})
    )
    with Ledger(ledger_target) as ledger:
        assert ledger.schema_version() == SCHEMA_VERSION
        assert topics_column(ledger_target) == {"old@example.org": None}
        ledger.reset_staging()
        ledger.stage([StagedRow.selected(new)])
        ledger.enqueue(ENTRY, generation)
        claimed = ledger.claim(ENTRY, generation, "me", 10, lease=60)
    assert {(r.address, r.topics) for r in claimed} == {
        ("old@example.org", None),
        ("new@example.org", frozenset({NEWS})),
    }


def test_previews_and_the_dry_run_name_the_topic_variants(project: Path, tmp_path: Path) -> None:
    with_readers(project)
    report = dry_run(project, ENTRY, tmp_path / "previews")
    assert report["variants"] == {
        "en": 1,
        "en+product-news": 1,
        "en+service-status": 1,
        "ru": 1,
        "ru+product-news": 1,
        "ru+service-status": 1,
        "ru-RU+product-news": 1,
    }
    out = tmp_path / "previews" / ENTRY
    index = (out / "index.html").read_text(encoding="utf-8")
    # the gallery counts each variant as the rehearsal found it, and names it
    listed = re.findall(
        r"<td><a href=\"#([^\"]+)\">[^<]*</a></td><td class='num'>(\d+)</td>", index
    )
    assert {label: int(n) for label, n in listed} == report["variants"]
    assert ">en · no access block · for product-news</a>" in index
    assert ">ru · RU access · for product-news</a>" in index
    for label in report["variants"]:
        assert (out / f"{label}.eml").is_file()
    news = words((out / "ru+product-news.txt").read_text(encoding="utf-8"))
    assert sentence("ru", frozenset({NEWS})) in news


def test_test_to_sends_the_entry_s_own_variants_and_a_topic_s_only_when_named(
    project: Path,
) -> None:
    """``--test-to`` of a two-topic entry: one message per language and treatment with the
    entry's own footer (both topics), not one more per topic; ``--variant en+product-news``
    sends that footer alone."""
    with_readers(project)
    qa = "qa@startmail.example"
    with project.open("a", encoding="utf-8") as handle:
        handle.write(f"\ntest_recipients: [{qa}]\n")
    result = invoke(project, "send", ENTRY, "--test-to", qa, env=SECRET_ENV)
    assert result.exit_code == 0, result.output
    labels = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("sent ")}
    assert labels and not any("+" in label for label in labels), labels
    both = frozenset({NEWS, STATUS})
    for message in outbox_messages(project):
        locale = str(message["Content-Language"])
        assert sentence(locale, both) in footers(message)[0]
    for old in (project.parent / "outbox" / "new").iterdir():
        old.unlink()
    one = invoke(project, "send", ENTRY, "--test-to", qa, "--variant", f"en+{NEWS}", env=SECRET_ENV)
    assert one.exit_code == 0, one.output
    [message] = outbox_messages(project)
    assert sentence("en", frozenset({NEWS})) in footers(message)[0]


def test_a_topic_name_in_quotes_takes_the_inner_quotes_of_the_footer_s_sentence(
    project: Path,
) -> None:
    """The footer quotes the one topic: a name holding the language's own quotes read
    «Доступ к «StartMail»» and “Access to “StartMail””."""
    text = project.read_text(encoding="utf-8")
    for old, new in [
        ("ru: Новости StartMail", "ru: Новости «StartMail»"),
        ("en: Product news", "en: News of “StartMail”"),
    ]:
        assert old in text, old
        text = text.replace(old, new)
    project.write_text(text, encoding="utf-8")
    with_readers(project)
    write_entry(project, "news-only", f"[{NEWS}]")
    assert send(project, "news-only") == 0
    messages = by_reader(project)
    for address, said in [
        ("nina@example.org", "you subscribed to “News of ‘StartMail’” from StartMail."),
        ("nadya@example.org", "подписались на тему «Новости „StartMail“» в рассылке StartMail."),
    ]:
        for footer in footers(messages[address]):
            assert said in footer, footer
