"""The preferences page: the link in every message, serve's form over real HTTP, the
choice overriding the subscriber file in the next selections, and the form refusing
every post that is not its own (another origin, no valid form token)."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from conftest import SECRET, copy_sample, invoke, serving
from delivery_helpers import point_at, send
from editing import replace_in
from feedback_helpers import query
from smtp_server import RecordingServer
from statusmail.content.typography import typeset
from statusmail.project.regions import load_regions
from statusmail.project.tokens import (
    FORM_TOKEN_LIFETIME,
    FORM_TOKEN_SKEW,
    Keyring,
    form_token,
    preferences_token,
    unsubscribe_token,
    verify_form_token,
)

UPDATE = "update-2020-04-21"
ANNA = "anna.petrova@example.org"  # ru, RU, service-status and product-news
ENV = {"STATUSMAIL_UNSUBSCRIBE_SECRET": SECRET}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
KEYS = Keyring(SECRET.encode())
# The public origins the sample's config gives the pages: the canonical host, and the
# mirror regions.yaml sends readers in Russia to.
CANONICAL = "https://www.startmail.example"
MIRROR = "https://startmail-ru.test"
EN_REFUSED = "Your choice was not saved"
EN_SAVED = "Your choice is saved"
RU_SAVED = typeset("Выбор сохранён", "ru")
TOPICS = ("product-news", "service-status")  # the sample's; the form shows them all ticked
RU_REFUSED = typeset("Выбор не сохранён", "ru")


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


def hidden(page: str, name: str) -> str:
    found = re.search(rf"name='{name}' value='([^']*)'", page)
    assert found, page
    return found.group(1)


def shown(page: str) -> str:
    return hidden(page, "shown")


def form_of(page: str, locale: str, *topics: str) -> list[tuple[str, str]]:
    """The fields a browser posts from ``page`` with ``locale`` and ``topics`` ticked."""
    return [
        ("locale", locale),
        *(("topic", topic) for topic in topics),
        ("shown", shown(page)),
        ("form_token", hidden(page, "form_token")),
    ]


def post_form(
    port: int,
    path: str,
    fields: list[tuple[str, str]],
    origin: str | None = CANONICAL,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, str], str]:
    """The form posted as a browser on ``origin`` posts it (None: with no Origin)."""
    sent = {**FORM, **({"Origin": origin} if origin is not None else {}), **(headers or {})}
    return request(port, "POST", path, urlencode(fields).encode(), sent)


def without_form_token(page: str) -> str:
    """The page without its form token, which is made per page and time."""
    return re.sub(r"name='form_token' value='[^']*'", "name='form_token'", page)


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
    assert url.startswith("https://startmail-ru.test/status/preferences/")
    assert f'href="{url}"' in html_part(anna) and "Сменить язык или темы</a>" in html_part(anna)
    assert "Отписаться</a> &middot; <a" in html_part(anna)
    path = urlsplit(url).path

    with serving(project, SECRET) as port:
        status, headers, page = request(port, "GET", path, headers={"Host": "startmail-ru.test"})
        assert status == 200 and headers["content-language"] == "ru"
        assert "<h1" in page and "Сменить язык или темы" in page
        assert "value='ru' checked" in page
        # the language's name is marked as that language, not the radio button
        assert "<span lang='ru'>Русский</span>" in page
        assert typeset("Работа сервиса и доступ к нему", "ru") in page  # set as Russian is
        assert "Новости StartMail" in page
        assert page.count(" checked>") == 3  # ru, and every topic: nothing is stored yet
        assert headers["cache-control"] == "no-store" and "script" not in page

        form = form_of(page, "en", "service-status")
        status, headers, saved = post_form(port, path, form, origin=MIRROR)
        assert status == 200 and headers["content-language"] == "en"
        assert "Your choice is saved" in saved
        # No more than a send delivers: one already going out keeps what it selected.
        assert "one that is being sent right now may still arrive as before" in saved
        assert "value='en' checked" in saved
        assert "value='service-status' checked" in saved
        assert "value='product-news'>" in saved

        # seen again, the page shows what is stored, in the language chosen
        status, headers, again = request(port, "GET", path)
        assert status == 200 and headers["content-language"] == "en"
        assert "value='en' checked" in again and "Your choice is saved" not in again

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


@pytest.mark.timeout(180)
def test_unticking_a_topic_signs_the_reader_up_for_nothing_else(project: Path) -> None:
    """Ivan's list gives him service status only; his page, like everyone's, shows every
    topic ticked. He unticks service status and saves: product news, left ticked, must
    not start reaching him (it did: the whole ticked set was stored and replaced the
    list's topics), and service status stops."""
    ivan = "ivan.smirnov@example.com"
    text = text_part(sent_to(project, UPDATE)[ivan])
    link = re.search(r"^Сменить язык или темы: (\S+)\r?$", text, re.M)
    assert link, text
    path = urlsplit(link.group(1)).path
    with serving(project, SECRET) as port:
        status, _, page = request(port, "GET", path)
        assert status == 200 and page.count(" checked>") == 3  # ru and both topics
        status, _, saved = post_form(port, path, form_of(page, "ru", "product-news"))
        assert status == 200 and "value='service-status'>" in saved
    write_entry(project, "news-2020-05-20", "audience:\n  regions: [RU]\n  topics: [product-news]")
    news = sent_to(project, "news-2020-05-20")
    assert ivan not in news and "kate.morozova@example.com" in news
    write_entry(
        project, "update-2020-05-12", "audience:\n  regions: [RU]\n  topics: [service-status]"
    )
    status_update = sent_to(project, "update-2020-05-12")
    assert ivan not in status_update and "olga.kuznetsova@example.net" in status_update


def test_the_page_never_tells_whether_an_address_is_subscribed(project: Path) -> None:
    assert invoke(project, "send", UPDATE, "--yes", "--rate", "0", env=ENV).exit_code == 0
    keys = Keyring(SECRET.encode())
    subscribed = "/status/preferences/" + preferences_token(keys, "ivan.smirnov@example.com")
    stranger = "/status/preferences/" + preferences_token(keys, "nobody@example.org")
    with serving(project, SECRET) as port:
        ivan = request(port, "GET", subscribed, headers={"Accept-Language": "ru"})
        nobody = request(port, "GET", stranger, headers={"Accept-Language": "ru"})
        assert ivan[0] == nobody[0] == 200
        # the very same bytes but for the form token, which is made for each page
        assert without_form_token(ivan[2]) == without_form_token(nobody[2])
        assert hidden(ivan[2], "form_token") != hidden(nobody[2], "form_token")
        form = form_of(nobody[2], "en", "product-news", "service-status")
        saved = post_form(port, stranger, form)
        assert saved[0] == 200 and "Your choice is saved" in saved[2]
        # a bad or tampered token, or a token made for another purpose, changes nothing
        unsubscribe = unsubscribe_token(keys, "ivan.smirnov@example.com")
        tampered = subscribed.rsplit("/", 1)[1][:-3] + "AAA"
        for bad in ("x" * 40, tampered, unsubscribe):
            status, _headers, page = post_form(port, f"/status/preferences/{bad}", form)
            assert status == 400 and "This link is not valid" in page
        # a body that is not the form is refused, and the page shown again
        token = [("form_token", hidden(ivan[2], "form_token"))]
        status, _headers, page = post_form(port, subscribed, [("locale", "de"), *token])
        assert status == 400 and "name='shown'" in page
    stored = query(project, "SELECT address, locale, topics FROM preferences")
    assert stored == [("nobody@example.org", "en", None)]  # only the language was changed


def test_check_covers_the_preferences_page(project: Path) -> None:
    page = project.parent / "templates" / "pages" / "preferences.html.j2"
    line = replace_in(page, "<button type='submit'", "<p>Choose wisely</p><button type='submit'")
    result = invoke(project, "check")
    assert result.exit_code == 1
    assert f"{page}:{line}: fixed text 'Choose wisely' is not translatable" in result.output
    replace_in(page, "<p>Choose wisely</p>", "{{ _('Missing %(what)s') }}")
    result = invoke(project, "check")
    assert result.exit_code == 1
    assert "'Missing %(what)s'" in result.output  # not in the catalog, and cannot render


def test_topics_without_names_are_a_warning(project: Path) -> None:
    replace_in(project, "  product-news: {en: Product news, ru: Новости StartMail}\n", "")
    result = invoke(project, "check")
    assert result.exit_code == 0, result.output
    assert "topic 'product-news' has no name in en, ru under 'topic_names'" in result.output


def test_prefs_export_is_safe_for_spreadsheets(project: Path) -> None:
    assert invoke(project, "send", UPDATE, "--yes", "--rate", "0", env=ENV).exit_code == 0
    keys = Keyring(SECRET.encode())
    with serving(project, SECRET) as port:
        for address in ("=cmd@example.org", ANNA, "no.topics@example.org"):
            path = "/status/preferences/" + preferences_token(keys, address)
            page = request(port, "GET", path)[2]
            ticked = [] if address.startswith("no.") else [("topic", "product-news")]
            form = [("locale", "ru"), *ticked, ("shown", "en|x")]
            form.append(("form_token", hidden(page, "form_token")))
            assert post_form(port, path, form)[0] == 200, page
    out = project.parent / "prefs.csv"
    result = invoke(project, "prefs", "export", "-o", str(out))
    assert result.exit_code == 0, result.stderr
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "email,locale,topics,updated_at"
    assert lines[1].startswith("'=cmd@example.org,ru,product-news,")
    assert lines[2].startswith(f"{ANNA},ru,product-news,")
    # every topic unticked is not "the list's" (an empty cell): that would undo it
    assert lines[3].startswith("no.topics@example.org,ru,(none),"), lines


# -- cross-site posts are refused (issue 19) ---------------------------------------------

# A region whose readers reach the page through an onion address, over plain http.
ONION = "http://startmailexampleplaceholderonionaddressnotarealsiteamfqd.onion"


@dataclass(frozen=True)
class Served:
    config: Path
    port: int


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One served sample project for the refusal tests, with an onion rewrite for BY too;
    each test uses addresses of its own, so none sees another's choices."""
    config = copy_sample(tmp_path_factory.mktemp("csrf") / "project")
    replace_in(
        config.parent / "regions.yaml",
        "  name: {en: Belarus, ru: Беларусь}\n",
        "  name: {en: Belarus, ru: Беларусь}\n"
        f'  links: {{"https://www.startmail.example/": "{ONION}/"}}\n',
    )
    assert invoke(config, "ledger", "migrate", env=ENV).exit_code == 0
    with serving(config, SECRET) as port:
        yield Served(config, port)


def page_path(address: str) -> str:
    return "/status/preferences/" + preferences_token(KEYS, address)


def stored(served: Served, address: str) -> list[tuple[Any, ...]]:
    return query(served.config, "SELECT locale, topics FROM preferences WHERE address = ?", address)


def test_a_post_from_another_origin_is_refused_and_changes_nothing(served: Served) -> None:
    address = "cross.origin@example.org"
    path = page_path(address)
    russian = {"Accept-Language": "ru"}
    page = request(served.port, "GET", path, headers=russian)[2]
    form = form_of(page, "en", *TOPICS)
    others = (
        "https://evil.example",
        "null",  # a sandboxed frame, a data: URL
        "http://www.startmail.example",  # the canonical host, but not its scheme
        "https://www.startmail.example:8443",  # nor its port
        "https://www.startmail.example.evil.example",
        "https://www.startmail.example/status/preferences/",  # not an origin at all
        "",
    )
    for origin in others:
        status, headers, answer = post_form(served.port, path, form, origin, russian)
        assert status == 403, origin
        assert headers["content-language"] == "ru" and RU_REFUSED in answer
        assert typeset("по ссылке из недавнего письма", "ru") in answer
        assert "name='locale'" not in answer
        assert headers["cache-control"] == "no-store"
    refused = post_form(served.port, path, form, "https://evil.example")
    assert refused[0] == 403 and EN_REFUSED in refused[2]  # the reader's language
    assert "Please open the page again from the link" in refused[2]
    # a GET never changes anything, whatever its query says
    assert request(served.port, "GET", f"{path}?{urlencode(form)}")[0] == 200
    assert stored(served, address) == []
    # the same form from the page's own origin is saved
    status, _headers, answer = post_form(served.port, path, form)
    assert status == 200 and "Your choice is saved" in answer
    assert stored(served, address) == [("en", None)]


def ticked(page: str) -> tuple[str, list[str]]:
    """The locale and the topics ``page``'s form has ticked."""
    locale = re.findall(r"name='locale' value='([^']*)'[^>]* checked", page)
    topics = re.findall(r"name='topic' value='([^']*)'[^>]* checked", page)
    assert len(locale) == 1, page
    return locale[0], sorted(topics)


def test_the_saved_page_shows_what_is_stored_not_a_stale_tab(served: Served) -> None:
    """Two tabs: A unticks a topic; B, opened before, changes only the language. B's
    topics are those it showed, so they are not saved; its answer must not show them
    ticked under "Your choice is saved" either."""
    address = "two.tabs@example.org"
    path = page_path(address)
    tab_a = request(served.port, "GET", path)[2]
    tab_b = request(served.port, "GET", path)[2]
    kept = sorted(TOPICS)[-1]
    assert post_form(served.port, path, form_of(tab_a, "en", kept))[0] == 200
    status, _headers, answer = post_form(served.port, path, form_of(tab_b, "ru", *TOPICS))
    assert status == 200 and stored(served, address) == [("ru", kept)]
    assert ticked(answer) == ("ru", [kept])
    assert ticked(request(served.port, "GET", path)[2]) == ("ru", [kept])


def test_a_post_without_a_valid_form_token_is_refused(served: Served) -> None:
    address = "form.token@example.org"
    path = page_path(address)
    page = request(served.port, "GET", path)[2]
    fields = [field for field in form_of(page, "ru", *TOPICS) if field[0] != "form_token"]
    token = path.rsplit("/", 1)[1]
    good = hidden(page, "form_token")
    issued, mac = good.split(".")
    now = dt.datetime.now(dt.UTC)
    too_old = now - FORM_TOKEN_LIFETIME - dt.timedelta(minutes=1)
    bad = {
        "forged": f"{issued}.{mac[::-1]}",
        "moved in time": f"{int(issued) + 1}.{mac}",
        "expired": form_token(KEYS, token, now=too_old),
        "another page's": hidden(
            request(served.port, "GET", page_path("x@example.org"))[2], "form_token"
        ),
        "another secret's": form_token(Keyring(b"another secret, long enough for tokens"), token),
        "not a token": "ru",
        "empty": "",
    }
    assert post_form(served.port, path, fields)[0] == 403  # none at all
    for why, value in bad.items():
        status, _headers, answer = post_form(served.port, path, [*fields, ("form_token", value)])
        assert status == 403 and EN_REFUSED in answer, why
    assert stored(served, address) == []
    # one made within the lifetime still counts
    recent = form_token(KEYS, token, now=now - FORM_TOKEN_LIFETIME + dt.timedelta(minutes=5))
    status, _headers, answer = post_form(served.port, path, [*fields, ("form_token", recent)])
    assert status == 200 and RU_SAVED in answer
    assert stored(served, address) == [("ru", None)]


def test_every_mirror_origin_is_accepted(served: Served) -> None:
    """Readers in Russia open the page on the mirror, those in BY (in this project) on the
    onion address: both are public origins, as their regions' link rewrites say."""
    regions = load_regions(served.config.parent / "regions.yaml")
    canonical = "https://www.startmail.example/status/preferences/"
    for region, origin in (("RU", MIRROR), ("BY", ONION)):
        assert regions[region].rewrite(canonical).startswith(f"{origin}/status/preferences/")
        address = f"mirror.{region.lower()}@example.org"
        path = page_path(address)
        host = {"Host": urlsplit(origin).netloc}  # what the mirror's proxy may forward
        page = request(served.port, "GET", path, headers=host)[2]
        status, _headers, answer = post_form(
            served.port, path, form_of(page, "ru", *TOPICS), origin, host
        )
        assert status == 200 and RU_SAVED in answer, origin
        assert stored(served, address) == [("ru", None)]


@pytest.mark.parametrize(
    ("fetch_site", "accepted"),
    [
        ("cross-site", False),
        ("same-site", False),
        (None, False),
        ("same-origin", True),
        ("none", True),
    ],
)
def test_without_origin_sec_fetch_site_decides(
    served: Served, fetch_site: str | None, accepted: bool
) -> None:
    address = f"no.origin.{fetch_site}@example.org"
    path = page_path(address)
    page = request(served.port, "GET", path)[2]
    headers = {"Sec-Fetch-Site": fetch_site} if fetch_site else {}
    status, _headers, answer = post_form(
        served.port, path, form_of(page, "ru", *TOPICS), None, headers
    )
    assert (status, RU_SAVED in answer) == ((200, True) if accepted else (403, False))
    assert stored(served, address) == ([("ru", None)] if accepted else [])


def test_one_click_unsubscribe_needs_no_origin_and_no_form_token(served: Served) -> None:
    """RFC 8058: mail clients post List-Unsubscribe=One-Click with neither; the token in
    the URL is what protects it. The confirmation page's button posts the same, and is
    not checked by origin either (a check a client passes by sending no Origin protects
    nothing)."""
    one_click = b"List-Unsubscribe=One-Click"
    for address, origin in (("mail.client@example.org", None), ("button@example.org", "null")):
        path = "/status/unsubscribe/" + unsubscribe_token(KEYS, address)
        headers = {**FORM, **({"Origin": origin} if origin else {})}
        status, _headers, answer = request(served.port, "POST", path, one_click, headers)
        assert status == 200 and "You are unsubscribed" in answer
        rows = query(served.config, "SELECT reason FROM suppressions WHERE address = ?", address)
        assert rows == [("unsubscribed",)]


def test_a_form_token_outlives_a_secret_rotation_but_not_its_page_or_time() -> None:
    """A page shown just before the secret was rotated can still be saved; a token made
    for a later time than the clock allows, or for another page, cannot."""
    token = preferences_token(KEYS, ANNA)
    old = form_token(KEYS, token)
    rotated = Keyring(b"the next secret, long enough for tokens", previous=(SECRET.encode(),))
    assert verify_form_token(rotated, old, token)
    assert not verify_form_token(Keyring(b"the next secret, long enough for tokens"), old, token)
    assert not verify_form_token(KEYS, old, preferences_token(KEYS, "ivan.smirnov@example.com"))
    later = dt.datetime.now(dt.UTC) + FORM_TOKEN_SKEW + dt.timedelta(minutes=1)
    assert not verify_form_token(KEYS, form_token(KEYS, token, now=later), token)


def test_a_form_shown_by_a_server_ten_minutes_ahead_is_saved_by_the_others() -> None:
    """Two serve hosts behind one proxy, one of them 10 minutes ahead (or a clock
    stepped back between the page and its post): the choice was refused with 403."""
    token = preferences_token(KEYS, ANNA)
    ahead = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)
    assert verify_form_token(KEYS, form_token(KEYS, token, now=ahead), token)
