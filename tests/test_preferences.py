"""The preferences page: the link in every message, serve's form over real HTTP, and the
choice overriding the subscriber file in the next selections."""

from __future__ import annotations

import http.client
import json
import re
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest

from conftest import SECRET, invoke, serving
from delivery_helpers import point_at, send
from editing import replace_in
from feedback_helpers import query
from smtp_server import RecordingServer
from statusmail.tokens import Keyring, preferences_token, unsubscribe_token

UPDATE = "update-2020-04-21"
ANNA = "anna.petrova@example.org"  # ru, RU, service-status and product-news
ENV = {"STATUSMAIL_UNSUBSCRIBE_SECRET": SECRET}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body, headers or {})
        response = conn.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, response.read().decode("utf-8")
    finally:
        conn.close()


def text_part(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def html_part(message: EmailMessage) -> str:
    part = message.get_body(("html",))
    assert part is not None
    return str(part.get_content())


def write_entry(config: Path, entry_id: str, audience: str) -> None:
    april = (config.parent / "updates" / f"{UPDATE}.yaml").read_text(encoding="utf-8")
    was = "audience:\n  regions: [RU, BY, KZ]\n  topics: [service-status]"
    assert was in april
    text = april.replace(f"id: {UPDATE}", f"id: {entry_id}").replace(was, audience)
    (config.parent / "updates" / f"{entry_id}.yaml").write_text(text, encoding="utf-8")


def sent_to(config: Path, entry_id: str) -> dict[str, EmailMessage]:
    with RecordingServer() as relay:
        point_at(config, relay.port)
        code, _report, stderr = send(config, entry_id)
        assert code == 0, stderr
        return {m.rcpt_tos[0].lower(): m.message for m in relay.messages}


def shown(page: str) -> str:
    found = re.search(r"name='shown' value='([^']*)'", page)
    assert found, page
    return found.group(1)


@pytest.mark.timeout(180)
def test_a_choice_made_on_the_page_changes_the_next_entries(project: Path) -> None:
    messages = sent_to(project, UPDATE)
    anna = messages[ANNA]
    text = text_part(anna)
    link = re.search(r"^Сменить язык или темы: (\S+)\r?$", text, re.M)
    assert link, text
    url = link.group(1)
    # the same token kind and per-region rewriting as the unsubscribe link: a reader in RU
    # gets the mirror
    assert url.startswith("https://startmail-mirror.example/status/preferences/")
    assert f'href="{url}"' in html_part(anna) and "Сменить язык или темы</a>" in html_part(anna)
    assert "Отписаться</a> &middot; <a" in html_part(anna)
    path = urlsplit(url).path

    with serving(project, SECRET) as port:
        status, headers, page = request(
            port, "GET", path, headers={"Host": "startmail-mirror.example"}
        )
        assert status == 200 and headers["content-language"] == "ru"
        assert "<h1" in page and "Сменить язык или темы" in page
        assert "value='ru' lang='ru' checked" in page
        assert "Работа сервиса и доступ к нему" in page and "Новости StartMail" in page
        assert page.count(" checked>") == 3  # ru, and every topic: nothing is stored yet
        assert headers["cache-control"] == "no-store" and "script" not in page

        form = urlencode({"locale": "en", "topic": "service-status", "shown": shown(page)})
        status, headers, saved = request(port, "POST", path, form.encode(), FORM)
        assert status == 200 and headers["content-language"] == "en"
        assert "Your choice is saved" in saved
        assert "value='en' lang='en' checked" in saved
        assert "value='service-status' checked" in saved
        assert "value='product-news'>" in saved

        # seen again, the page shows what is stored, in the language chosen
        status, headers, again = request(port, "GET", path)
        assert status == 200 and headers["content-language"] == "en"
        assert "value='en' lang='en' checked" in again and "Your choice is saved" not in again

    listed = json.loads(invoke(project, "prefs", "list", "--json", env=ENV).stdout)
    assert [(r["email"], r["locale"], r["topics"]) for r in listed] == [
        (ANNA, "en", ["service-status"])
    ]

    # the next entry on service status reaches Anna in English...
    write_entry(
        project,
        "update-2020-05-12",
        "audience:\n  regions: [RU, BY, KZ]\n  topics: [service-status]",
    )
    follow_up = sent_to(project, "update-2020-05-12")
    assert follow_up[ANNA]["Content-Language"] == "en"
    assert follow_up[ANNA]["Subject"].startswith("Update on the block in Russia")
    assert follow_up["ivan.smirnov@example.com"]["Content-Language"] == "ru"  # the others as before
    # ...and product news, a topic she left, does not reach her any more
    write_entry(project, "news-2020-05-20", "audience:\n  regions: [RU]\n  topics: [product-news]")
    news = sent_to(project, "news-2020-05-20")
    assert ANNA not in news
    assert "kate.morozova@example.com" in news  # who still has the topic gets it
    # the file stays the source of who is subscribed and is never rewritten
    assert "Anna.Petrova@example.org,Анна Петрова,ru,RU,service-status;product-news,active" in (
        (project.parent / "subscribers" / "main.csv").read_text(encoding="utf-8")
    )


def test_the_page_never_tells_whether_an_address_is_subscribed(project: Path) -> None:
    assert invoke(project, "send", UPDATE, "--yes", "--rate", "0", env=ENV).exit_code == 0
    keys = Keyring(SECRET.encode())
    subscribed = "/status/preferences/" + preferences_token(keys, "ivan.smirnov@example.com")
    stranger = "/status/preferences/" + preferences_token(keys, "nobody@example.org")
    with serving(project, SECRET) as port:
        ivan = request(port, "GET", subscribed, headers={"Accept-Language": "ru"})
        nobody = request(port, "GET", stranger, headers={"Accept-Language": "ru"})
        assert ivan[0] == nobody[0] == 200
        assert ivan[2] == nobody[2]  # the very same bytes
        every_topic = [("topic", "product-news"), ("topic", "service-status")]
        form = urlencode([("locale", "en"), *every_topic, ("shown", shown(nobody[2]))]).encode()
        saved = request(port, "POST", stranger, form, FORM)
        assert saved[0] == 200 and "Your choice is saved" in saved[2]
        # a bad or tampered token, or a token made for another purpose, changes nothing
        unsubscribe = unsubscribe_token(keys, "ivan.smirnov@example.com")
        tampered = subscribed.rsplit("/", 1)[1][:-3] + "AAA"
        for bad in ("x" * 40, tampered, unsubscribe):
            status, _headers, page = request(port, "POST", f"/status/preferences/{bad}", form, FORM)
            assert status == 400 and "This link is not valid" in page
        # a body that is not the form is refused, and the page shown again
        status, _headers, page = request(port, "POST", subscribed, b"locale=de", FORM)
        assert status == 400 and "name='shown'" in page
    stored = query(project, "SELECT address, locale, topics FROM preferences")
    assert stored == [("nobody@example.org", "en", None)]  # only the language was changed


def test_check_covers_the_preferences_page(project: Path) -> None:
    page = project.parent / "templates" / "pages" / "preferences.html.j2"
    line = replace_in(page, "<button type='submit'", "<p>Choose wisely</p><button type='submit'")
    result = invoke(project, "check")
    assert result.exit_code == 1
    assert f"{page}:{line}: fixed text 'Choose wisely' is not translatable" in result.stderr
    replace_in(page, "<p>Choose wisely</p>", "{{ _('Missing %(what)s') }}")
    result = invoke(project, "check")
    assert result.exit_code == 1
    assert "'Missing %(what)s'" in result.stderr  # not in the catalog, and cannot render


def test_topics_without_names_are_a_warning(project: Path) -> None:
    replace_in(project, "  product-news: {en: Product news, ru: Новости StartMail}\n", "")
    result = invoke(project, "check")
    assert result.exit_code == 0, result.stderr
    assert "topic 'product-news' has no name in en, ru under 'topic_names'" in result.stderr


def test_prefs_export_is_safe_for_spreadsheets(project: Path) -> None:
    assert invoke(project, "send", UPDATE, "--yes", "--rate", "0", env=ENV).exit_code == 0
    keys = Keyring(SECRET.encode())
    with serving(project, SECRET) as port:
        for address in ("=cmd@example.org", ANNA):
            path = "/status/preferences/" + preferences_token(keys, address)
            page = request(port, "GET", path)[2]
            form = urlencode({"locale": "ru", "topic": "product-news", "shown": "en|x"})
            assert request(port, "POST", path, form.encode(), FORM)[0] == 200, page
    out = project.parent / "prefs.csv"
    result = invoke(project, "prefs", "export", "-o", str(out))
    assert result.exit_code == 0, result.stderr
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "email,locale,topics,updated_at"
    assert lines[1].startswith("'=cmd@example.org,ru,product-news,")
    assert lines[2].startswith(f"{ANNA},ru,product-news,")
