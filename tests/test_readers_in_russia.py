"""Readers in Russia: links that open behind the block, copy set as Russian is set, the
language a subscriber chose, and a `check` that catches every gap in a translation."""

from __future__ import annotations

import json
import re
from email.message import EmailMessage
from pathlib import Path

import pytest
import yaml

from conftest import (
    BLOCK,
    SECRET,
    UPDATE,
    copy_sample,
    http_request,
    invoke,
    outbox_messages,
    part_text,
    problem_lines,
    recipient,
    serving,
)
from editing import line_of, refresh_sources, replace_in
from statusmail.project.config import load_config
from statusmail.validation import check_project
from statusmail.web.urls import route_paths

BLOCKED = "https://www.startmail.example/"
MIRROR = "https://startmail-ru.test/"
NBSP = "\u00a0"


def sent_messages(project: Path, entry: str = UPDATE) -> dict[str, EmailMessage]:
    result = invoke(project, "send", entry, "--yes", "--rate", "0")
    assert result.exit_code == 0, result.stderr
    return {recipient(m): m for m in outbox_messages(project)}


@pytest.fixture(scope="module")
def sent(tmp_path_factory: pytest.TempPathFactory) -> dict[str, EmailMessage]:
    """One send of the update to the sample, for the tests that only read what it wrote."""
    return sent_messages(copy_sample(tmp_path_factory.mktemp("sent") / "project"))


def parts(message: EmailMessage) -> tuple[str, str]:
    return part_text(message, "plain"), part_text(message, "html")


# -- links that open behind the block -----------------------------------------------


def test_readers_in_russia_get_no_link_to_the_blocked_domain(
    sent: dict[str, EmailMessage],
) -> None:
    messages = sent
    regions = {"RU": 0, "BY": 0, "KZ": 0}
    for address, message in messages.items():
        region = {
            "alexander.kozlov@example.com": "BY",
            "hanna.sidarenka@example.net": "BY",
            "aigerim.nurlanova@example.org": "KZ",
            "daniyar.abenov@example.com": "KZ",
            "alexei.popov@xn--e1afmkfd.xn--80akhbyknj4f": "KZ",
        }.get(address, "RU")
        regions[region] += 1
        text, html = parts(message)
        unsubscribe = message["List-Unsubscribe"]
        https_target = re.search(r"<(https://[^>]+)>", unsubscribe)
        assert https_target, unsubscribe
        if region == "RU":
            # body links, the access block, the visible unsubscribe link and the
            # https List-Unsubscribe target: all on the mirror
            for where in (text, html, unsubscribe):
                assert BLOCKED not in where and "www.startmail.example" not in where.lower()
            assert https_target[1].startswith(f"{MIRROR}status/unsubscribe/")
            assert f"{MIRROR}blog/startmail-blocked-in-russia" in html
            assert f'href="{https_target[1]}"' in html and https_target[1] in text
        else:  # the rewrite is RU's alone
            assert https_target[1].startswith(f"{BLOCKED}status/unsubscribe/")
            assert f"{BLOCKED}blog/startmail-blocked-in-russia" in html
            assert MIRROR not in text and MIRROR not in html
    assert regions == {"RU": 9, "BY": 2, "KZ": 3}


def test_a_longer_mirror_keeps_the_plain_text_within_78_columns(project: Path) -> None:
    """The text is wrapped after the region's links are rewritten: a mirror longer than
    the blocked host made wrapped lines longer than 78 (a phone's reader wraps them
    again, raggedly). A line over 78 is one link that cannot be broken (after its list
    marker or indentation), nothing beside it."""
    longer = "https://status-mirror.startmail-russia.test/"
    replace_in(
        project.parent / "regions.yaml", f'"{BLOCKED}": "{MIRROR}"', f'"{BLOCKED}": "{longer}"'
    )
    texts = [part_text(m, "plain") for m in sent_messages(project).values()]
    assert any(longer in text for text in texts)
    for text in texts:
        lines = text.split("\n-- \n", 1)[0].splitlines()  # (the footer keeps links whole)
        for line in lines:
            if len(line) > 78:
                assert " " not in re.sub(r"^\s*(?:[-*>]|\d+\.)?\s*", "", line), line


def test_serve_unsubscribes_through_the_mirror_host(project: Path) -> None:
    env = {"STATUSMAIL_UNSUBSCRIBE_SECRET": SECRET}
    result = invoke(project, "send", UPDATE, "--yes", "--rate", "0", env=env)
    assert result.exit_code == 0, result.stderr
    ivan = next(m for m in outbox_messages(project) if "ivan.smirnov" in recipient(m))
    target = re.search(r"<https://([^/>]+)(/[^>]+)>", ivan["List-Unsubscribe"])
    assert target and target[1] == "startmail-ru.test"
    with serving(project, SECRET) as port:
        reply = http_request(
            port,
            "POST",
            target[2],
            b"List-Unsubscribe=One-Click",
            {
                "Host": target[1],  # as the mirror's reverse proxy forwards it
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        assert reply.status == 200
    listed = invoke(project, "suppress", "list", "--json")
    assert [row["email"] for row in json.loads(listed.stdout)] == ["ivan.smirnov@example.com"]


def test_serve_answers_a_mirror_that_keeps_the_path_under_another_prefix(project: Path) -> None:
    regions = project.parent / "regions.yaml"
    replace_in(
        regions,
        '"https://www.startmail.example/": "https://startmail-ru.test/"',
        '"https://www.startmail.example/": "https://startmail-ru.test/sm/"',
    )
    assert route_paths(load_config(project)) == [
        "/status/unsubscribe/{token}",
        "/sm/status/unsubscribe/{token}",
    ]


@pytest.mark.parametrize(
    "written",
    [
        "http://www.startmail.example/blog/startmail-blocked-in-russia",
        "HTTPS://WWW.STARTMAIL.EXAMPLE/blog/startmail-blocked-in-russia",
        "https://www.StartMail.example/blog/startmail-blocked-in-russia",
        # browsers open both on the blocked host, which check read as "a" and as
        # "www.startmail%2eexample" (review)
        "https://a:b@www.startmail.example/blog/startmail-blocked-in-russia",
        "https://www.startmail%2Eexample/blog/startmail-blocked-in-russia",
    ],
)
def test_check_fails_on_a_blocked_link_the_rewrite_misses(project: Path, written: str) -> None:
    entry = project.parent / "updates" / f"{UPDATE}.yaml"
    text = entry.read_text(encoding="utf-8")
    ru_start = text.index("\n  ru:\n")
    link = "https://www.startmail.example/blog/startmail-blocked-in-russia"
    at = text.index(link, ru_start)
    entry.write_text(text[:at] + written + text[at + len(link) :], encoding="utf-8")
    result = invoke(project, "check")
    assert result.exit_code == 1
    found = problem_lines(result.output)
    ru_line = line_of(entry, "  ru:\n")
    # (the text part spells a percent-encoded host decoded, and so rewrites it)
    parts = ["HTML"] if "%2E" in written else ["text", "HTML"]
    assert found == [
        f"{entry}:{ru_line}: readers in RU still get a link to www.startmail.example in its "
        f"{part} part (ru · RU access): write it as {BLOCKED}… so that regions.yaml's links "
        "rewrite it"
        for part in parts
    ], result.output
    # send refuses for the same reason, before anything is recorded
    refused = invoke(project, "send", UPDATE, "--yes")
    assert refused.exit_code == 1 and "still get a link" in refused.stderr
    assert not (project.parent / "statusmail.db").exists()


@pytest.mark.parametrize(
    ("written", "said"),
    [
        (  # mail clients make a link of it
            "www.startmail.example/blog/startmail-blocked-in-russia",
            "readers in RU still get a link to www.startmail.example in its text part",
        ),
        (
            "[блог](//www.startmail.example/blog/startmail-blocked-in-russia)",
            "link '//www.startmail.example/blog/startmail-blocked-in-russia' in the ru body "
            "has no scheme",
        ),
    ],
)
def test_check_fails_on_a_blocked_host_written_without_a_scheme(
    project: Path, written: str, said: str
) -> None:
    """Neither is rewritten, and check said nothing (review): a bare www. address is a
    link in every mail client, and webmail opens //host on the host."""
    entry = project.parent / "updates" / f"{UPDATE}.yaml"
    text = entry.read_text(encoding="utf-8")
    ru_start = text.index("\n  ru:\n")
    anchor = "Спасибо за терпение и поддержку!"
    at = text.index(anchor, ru_start)
    entry.write_text(text[:at] + f"См. {written}.\n\n      " + text[at:], encoding="utf-8")
    result = invoke(project, "check")
    assert result.exit_code == 1
    assert said in result.output


def test_a_link_whose_query_names_the_blocked_domain_is_no_blocked_link(project: Path) -> None:
    """A registry's lookup of the blocked domain opens in Russia; check refused it, and
    told the author to write the registry's link as the blocked site's (review)."""
    entry = project.parent / "updates" / f"{UPDATE}.yaml"
    text = entry.read_text(encoding="utf-8")
    anchor = "Спасибо за терпение и поддержку!"
    at = text.index(anchor, text.index("\n  ru:\n"))
    lookup = (
        "См. [реестр](https://reestr.rublacklist.example/?q=www.startmail.example) и "
        f"[зеркало]({BLOCKED}help#www.startmail.example).\n\n      "
    )
    entry.write_text(text[:at] + lookup + text[at:], encoding="utf-8")
    result = invoke(project, "check")
    assert "still get a link" not in result.output, result.output


def test_a_blocked_link_in_the_summary_is_told_it_is_never_rewritten(project: Path) -> None:
    """check told to write it as https://www.startmail.example/… "so that regions.yaml's
    links rewrite it", which it already was: a summary is never rewritten (review)."""
    entry = project.parent / "updates" / f"{UPDATE}.yaml"
    text = entry.read_text(encoding="utf-8")
    old = 'summary: "«Роскомсвобода»'
    assert old in text
    entry.write_text(
        text.replace(old, 'summary: "https://www.startmail.example/blog «Роскомсвобода»'),
        encoding="utf-8",
    )
    found = [p for p in check_project(load_config(project)).problems if p.code == "blocked-link"]
    assert found, "no blocked-link problem"
    summary_line = line_of(entry, 'summary: "https://www.startmail.example/blog')
    assert {(p.line, p.message.split(": ", 1)[1]) for p in found} == {
        (
            summary_line,
            "the summary is never rewritten (only bodies are): leave the link out of it, "
            "or give it in the body",
        )
    }


# -- headings and names from regions.yaml --------------------------------------------


def test_access_heading_is_the_regions_own(sent: dict[str, EmailMessage]) -> None:
    messages = sent
    text, html = parts(messages["ivan.smirnov@example.com"])
    heading = f"Как пользоваться StartMail из{NBSP}России"
    assert f">{heading}</h2>" in html
    assert f"{heading}\n{'=' * len(heading)}\n" in text
    assert "региона" not in text
    english, _ = parts(messages["dmitry.volkov@example.org"])
    assert "How to use StartMail from Russia\n" in english


@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        (
            "name: {en: Russia, ru: Россия}",
            "name: {en: Russia}",
            "name: {en: Russia}",
            "region RU has no 'ru' name",
        ),
        (
            "    ru: Как пользоваться StartMail из России\n",
            "",
            "  heading:",
            "region RU has access instructions but no 'ru' heading",
        ),
        (
            "name: {en: Kazakhstan, ru: Казахстан}",
            "name: {ru: Казахстан}",
            "KZ:",
            "region KZ has no 'en' name",
        ),
    ],
)
def test_check_requires_region_names_and_headings(
    project: Path, old: str, new: str, key: str, message: str
) -> None:
    regions = project.parent / "regions.yaml"
    replace_in(regions, old, new)
    line = line_of(regions, key) + (1 if key == "KZ:" else 0)
    result = invoke(project, "check")
    assert result.exit_code == 1
    assert [p for p in problem_lines(result.output) if message in p] == [
        f"{regions}:{line}: {message}"
        + (
            " (heading: {en: ..., ru: ...}, as a person would say it)"
            if "heading" in message
            else ""
        )
    ], result.output


# -- what a translator can get wrong in an entry -------------------------------------


def test_check_fails_on_a_russian_subject_still_in_english(project: Path) -> None:
    entry = project.parent / "updates" / f"{UPDATE}.yaml"
    line = replace_in(
        entry,
        'subject: "Новости о блокировке в России: поданы две жалобы"',
        'subject: "Update on the block in Russia"',
    )
    result = invoke(project, "check")
    assert result.exit_code == 1
    assert problem_lines(result.output) == [
        f"{entry}:{line}: the ru subject has no Cyrillic letter: is it still in English?"
    ]


def test_stale_translation_fails_and_a_missing_source_warns(project: Path) -> None:
    entry = project.parent / "updates" / f"{UPDATE}.yaml"
    replace_in(entry, "Thank you for your patience and support.", "Thank you for your support.")
    source_line = line_of(entry, "    source: ")
    result = invoke(project, "check")
    assert result.exit_code == 1
    (stale,) = problem_lines(result.output)
    assert stale.startswith(f"{entry}:{source_line}: the English changed since this ru translation")
    current = re.search(r"then set source: (\w+)$", stale)
    assert current
    # the translator re-reads the Russian and records the new hash: check passes
    old_source = entry.read_text(encoding="utf-8").splitlines()[source_line - 1]
    replace_in(entry, old_source, f"    source: {current[1]}")
    assert invoke(project, "check").exit_code == 0
    # no source at all: a warning, not a failure
    replace_in(entry, f"    source: {current[1]}\n", "")
    result = invoke(project, "check")
    assert result.exit_code == 0
    warning = "warning: the ru block has no 'source:'; once it matches the English, add source:"
    assert f"{warning} {current[1]}" in result.output


def test_a_date_changed_in_one_language_only_fails(project: Path) -> None:
    entry = project.parent / "updates" / f"{UPDATE}.yaml"
    replace_in(
        entry,
        "Предварительное судебное заседание назначено на 3 июня 2020 года.",
        "Предварительное судебное заседание назначено на 4 июня 2020 года.",
    )
    ru_line = line_of(entry, "  ru:\n")
    result = invoke(project, "check")
    assert result.exit_code == 1
    assert problem_lines(result.output) == [
        f"{entry}:{ru_line}: the numbers in en and ru differ (only in ru: 4)"
    ]


def test_typo_in_an_audience_topic_is_caught_by_the_declared_topics(project: Path) -> None:
    assert "topics: [service-status, product-news]" in project.read_text(encoding="utf-8")
    entry = project.parent / "updates" / f"{UPDATE}.yaml"
    line = replace_in(entry, "topics: [service-status]", "topics: [service_status]")
    (project.parent / "subscribers" / "main.csv").write_text(
        "email,name,locale,region,topics,status\n"
        "only@example.org,Only,ru,RU,service-status,active\n",
        encoding="utf-8",
    )
    result = invoke(project, "check")
    assert result.exit_code == 1
    audience_line = line - 2
    assert (
        f"{entry}:{audience_line}: topic 'service_status' is not one of the config's topics "
        "(product-news, service-status)"
    ) in problem_lines(result.output)


# -- Russian typography in the message -----------------------------------------------


def test_russian_parts_keep_short_words_numbers_and_dates_together(
    sent: dict[str, EmailMessage],
) -> None:
    message = sent["ivan.smirnov@example.com"]
    text, html = parts(message)
    assert str(message["Subject"]) == f"Новости о{NBSP}блокировке в{NBSP}России: поданы две жалобы"
    for part in (text, html):
        assert f"21{NBSP}апреля 2020{NBSP}г." in part  # the date, before «г.»
        assert f"3{NBSP}июня 2020{NBSP}года" in part  # inside «3 июня»
        assert f"в{NBSP}блоге" in part or f"в{NBSP}блоге" in part.replace("\n", " ")
        assert f"с{NBSP}27{NBSP}апреля" in part
    # no line of the plain part is broken where the rules bind words
    for line in text.splitlines():
        assert not re.search(r"(?:^|\s)[А-Яа-яЁё]{1,2}$", line), line
        assert not re.search(r"\d$", line.rstrip(".,;:")) or line.startswith(("  ", "Чтобы")), line
        assert not line.startswith("—"), line


def test_english_keeps_its_own_rules(sent: dict[str, EmailMessage]) -> None:
    text, _html = parts(sent["dmitry.volkov@example.org"])
    assert f"June{NBSP}3,{NBSP}2020" in text.replace("\n", " ")
    assert f"в{NBSP}" not in text
    assert f"the{NBSP}" not in text and f"of{NBSP}" not in text


# -- the language a subscriber chose ---------------------------------------------------


def test_locale_choice_and_the_reported_fallbacks(project: Path, tmp_path: Path) -> None:
    result = invoke(
        project, "send", UPDATE, "--dry-run", "--json", "--preview-dir", str(tmp_path / "p")
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert sorted(report["fallbacks"]) == [
        "1 with no locale, region BY → ru",
        "1 with no locale, region KZ → ru",
        "1 with no locale, region RU → ru",
        "1 with unsupported locale 'de' → en",
    ]
    text = invoke(project, "send", UPDATE, "--dry-run", "--preview-dir", str(tmp_path / "q"))
    assert "language: 1 with unsupported locale 'de' → en" in text.output
    messages = sent_messages(project)
    languages = {address: str(m["Content-Language"]) for address, m in messages.items()}
    assert languages["daniyar.abenov@example.com"] == "en"  # chose de, lives in KZ
    assert languages["olga.kuznetsova@example.net"] == "ru"  # ru_RU
    assert languages["alexei.popov@xn--e1afmkfd.xn--80akhbyknj4f"] == "ru"  # empty, KZ
    empty_in_ru = [
        row["email"]
        for row in yaml.safe_load((project.parent / "subscribers" / "more.yaml").read_text())
        if not row.get("locale")
        and row.get("region") == "RU"
        and row.get("status", "active") == "active"
    ]
    for address in empty_in_ru:
        if address.lower() in languages:
            assert languages[address.lower()] == "ru"
    check = invoke(project, "check")
    assert "note: 3 subscribers with unsupported locale 'de' get en" in check.output


def test_the_samples_pass_check_and_refresh_sources_is_a_no_op(project: Path) -> None:
    for name in (UPDATE, BLOCK):
        entry = project.parent / "updates" / f"{name}.yaml"
        before = entry.read_text(encoding="utf-8")
        refresh_sources(entry)
        assert entry.read_text(encoding="utf-8") == before  # every translation is current
    result = invoke(project, "check", env={"STATUSMAIL_UNSUBSCRIBE_SECRET": SECRET})
    assert result.exit_code == 0 and "warning" not in result.output, result.output
