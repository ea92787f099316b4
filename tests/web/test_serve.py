"""The one-click unsubscribe endpoint (RFC 8058): ``statusmail serve`` in a subprocess,
spoken to over real HTTP on loopback, fed by messages a real SMTP server received."""

from __future__ import annotations

import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from click.testing import Result

from conftest import (
    CHROMIUM_FLAGS,
    REPO,
    SECRET,
    SECRET_ENV,
    Reply,
    chromium,
    closed_port,
    copy_sample,
    free_port,
    http_request,
    invoke,
    port_open,
    serving,
    spawn,
    wait_for,
)
from delivery_helpers import point_at, send, suppressed
from editing import line_of, replace_in
from postgres_helpers import query
from smtp_server import RecordingServer
from statusmail.content.typography import typeset
from statusmail.domain import SuppressionReason
from statusmail.errors import LedgerError
from statusmail.ledger import Ledger, describe
from statusmail.ledger.pool import POOL_SIZE, WAIT, WAIT_WHILE_DOWN
from statusmail.project.config import load_config
from statusmail.project.secrets import DEV_UNSUBSCRIBE_SECRET
from statusmail.project.tokens import Keyring, unsubscribe_token
from statusmail.web.endpoints import is_one_click
from statusmail.web.pages import Choice, PreferencesPage, render_pages
from statusmail.web.serve import LedgerAccess
from statusmail.web.served_keys import ServedKeys

ONE_CLICK = b"List-Unsubscribe=One-Click"
FORM = "application/x-www-form-urlencoded"
# As a Russian page sets them: no-break spaces after short words
RU_CONFIRM = typeset("Отписаться от уведомлений о работе сервиса?", "ru")
RU_DONE = typeset("Вы отписались. Уведомления о работе сервиса больше не придут.", "ru")
EN_CONFIRM = "Unsubscribe from status updates?"
EN_DONE = "You are unsubscribed. You will get no more status updates."
CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"


# -- helpers ---------------------------------------------------------------------------


def fetch(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    # As a reverse proxy forwards the public URL: same path, public Host.
    return http_request(
        port, method, path, body, {"Host": "www.startmail.example", **(headers or {})}
    )


def post_one_click(port: int, path: str, **headers: str) -> Reply:
    return fetch(port, "POST", path, ONE_CLICK, {"Content-Type": FORM, **headers})


def unsubscribe_urls(server: RecordingServer) -> dict[str, tuple[str, str]]:
    """recipient → (host, path) of the https URL in its List-Unsubscribe header."""
    urls = {}
    for message in server.messages:
        header = str(message.message["List-Unsubscribe"])
        match = re.search(r"<(https://[^>]+)>", header)
        assert match, header
        url = urlsplit(match.group(1))
        urls[message.rcpt_tos[0].lower()] = (url.netloc, url.path)
    return urls


def unsubscribe_paths(server: RecordingServer) -> dict[str, str]:
    """recipient → the path of the https URL in its List-Unsubscribe header."""
    return {address: path for address, (_host, path) in unsubscribe_urls(server).items()}


def path_for(address: str, secret: str = SECRET) -> str:
    """The endpoint path for a token made here (e.g. for an address nobody subscribed)."""
    return "/status/unsubscribe/" + unsubscribe_token(Keyring(secret.encode()), address)


def tamper(path: str) -> str:
    """Change the token's first character (the last one may only hold padding bits)."""
    head, token = path.rsplit("/", 1)
    return f"{head}/{'B' if token[0] == 'A' else 'A'}{token[1:]}"


def assert_secure(reply: Reply) -> None:
    h = reply.headers
    assert h["content-type"] == "text/html; charset=utf-8"
    assert h["cache-control"] == "no-store"
    # not no-referrer, under which a browser's form posts say "Origin: null"
    assert h["referrer-policy"] == "same-origin"
    assert h["content-security-policy"].startswith(CSP)
    assert h["x-content-type-options"] == "nosniff"
    assert "server" not in h
    assert "<meta name='robots' content='noindex'>" in reply.body
    # no remote resources, no scripts, no tracking
    assert not re.search(r"src=|href=|<script|<img|<link|url\(|https?://", reply.body)


# -- end to end ------------------------------------------------------------------------


def test_one_click_unsubscribe_end_to_end(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATUSMAIL_UNSUBSCRIBE_SECRET", SECRET)
    address = "ivan.smirnov@example.com"
    with RecordingServer() as server:
        point_at(project, server.port)
        code, _report, stderr = send(project)
        assert code == 0, stderr
        path = unsubscribe_paths(server)[address]
        with serving(project, SECRET) as port:
            # a link scanner's GET shows the form and unsubscribes nobody
            page = fetch(port, "GET", path)
            assert page.status == 200
            assert "<form method='post'>" in page.body
            assert "name='List-Unsubscribe' value='One-Click'" in page.body
            assert suppressed(project) == {}

            # a tampered token changes nothing
            assert post_one_click(port, tamper(path)).status == 400
            assert suppressed(project) == {}

            # the one-click POST suppresses the address at once; a second one is fine
            done = post_one_click(port, path)
            assert done.status == 200 and RU_DONE in done.body
            assert suppressed(project) == {address: "unsubscribed"}
            assert post_one_click(port, path).comparable() == done.comparable()
            assert suppressed(project) == {address: "unsubscribed"}

            # the next entry skips the address; everyone else still gets theirs
            server.clear()
            code, report, stderr = send(project, "block-2020-01-23")
            assert code == 0, stderr
            counts = server.count_by_recipient()
            assert address not in counts
            assert report["counts"]["sent"] == len(counts) > 10
            assert {"dmitry.volkov@example.org", "jan.devries@example.net"} <= set(counts)


# -- one served project for the rest ---------------------------------------------------


@dataclass(frozen=True)
class Site:
    config: Path
    port: int
    paths: dict[str, str]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    config = copy_sample(tmp_path_factory.mktemp("serve") / "project")
    with RecordingServer() as server:
        point_at(config, server.port)
        code, _report, stderr = send(config)
        assert code == 0, stderr
        paths = unsubscribe_paths(server)
    with serving(config, SECRET) as port:
        yield Site(config, port, paths)


def test_page_language_follows_the_ledger_then_accept_language(site: Site) -> None:
    ru = fetch(
        site.port, "GET", site.paths["ivan.smirnov@example.com"], None, {"Accept-Language": "en"}
    )
    assert ru.status == 200 and RU_CONFIRM in ru.body and ">Отписаться</button>" in ru.body
    assert "<html lang='ru'>" in ru.body and ru.headers["content-language"] == "ru"
    en = fetch(
        site.port, "GET", site.paths["dmitry.volkov@example.org"], None, {"Accept-Language": "ru"}
    )
    assert en.status == 200 and EN_CONFIRM in en.body and ">Unsubscribe</button>" in en.body
    assert "<html lang='en'>" in en.body and en.headers["content-language"] == "en"
    # an address the ledger does not know: the browser's preference, else English
    unknown = path_for("nobody@example.org")
    pref = {"Accept-Language": "de-DE, ru-RU;q=0.8, en;q=0.5"}
    assert RU_CONFIRM in fetch(site.port, "GET", unknown, None, pref).body
    assert EN_CONFIRM in fetch(site.port, "GET", unknown).body
    for reply in (ru, en):
        assert_secure(reply)
        assert "ivan" not in reply.body and "dmitry" not in reply.body


def test_a_browser_shows_the_confirmation_in_the_subscribers_language(
    site: Site, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{site.port}{site.paths['ivan.smirnov@example.com']}"
    done = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    dom = done.stdout
    title = typeset("Уведомления о работе сервиса", "ru").replace("\u00a0", "&nbsp;")
    assert f"<title>StartMail: {title}</title>" in dom  # (the DOM writes U+00A0 so)
    heading = re.escape(RU_CONFIRM.replace("\u00a0", "&nbsp;"))
    assert re.search(rf"<h1[^>]*>{heading}</h1>", dom)
    assert re.search(r'<button type="submit"[^>]*>Отписаться</button>', dom)
    assert '<input type="hidden" name="List-Unsubscribe" value="One-Click">' in dom
    assert "ivan.smirnov@example.com" not in suppressed(site.config)


@pytest.mark.parametrize(
    ("header", "lang"),
    [
        ("ru-RU, en;q=0.8", "ru"),
        ("en-GB;q=0.3, ru;q=0.9", "ru"),  # by q, not by position
        ("uk-UA, ru;q=0.9, en-US;q=0.8, en;q=0.7", "ru"),  # the first supported one
        ("ru_RU", "ru"),
        ("RU", "ru"),
        ("ru;q=0, en", "en"),  # q=0: not acceptable
        ("ru;q=abc, en;q=0.1", "en"),  # a broken q counts as 0
        ("fr, de;q=0.9", "en"),  # nothing supported: English
        ("*", "en"),
    ],
)
def test_accept_language_is_negotiated_by_q(site: Site, header: str, lang: str) -> None:
    reply = fetch(
        site.port, "GET", path_for("nobody@example.org"), None, {"Accept-Language": header}
    )
    assert reply.status == 200
    assert reply.headers["content-language"] == lang and f"<html lang='{lang}'>" in reply.body
    assert (RU_CONFIRM if lang == "ru" else EN_CONFIRM) in reply.body


def test_answers_do_not_tell_whether_an_address_is_subscribed(site: Site) -> None:
    def get(path: str, lang: str | None = None) -> Reply:
        headers = {"Accept-Language": lang} if lang else {}
        return fetch(site.port, "GET", path, None, headers)

    subscribed_ru = get(site.paths["ivan.smirnov@example.com"])
    assert subscribed_ru.status == 200
    for other in (
        get(path_for("nobody@example.org"), "ru"),  # never subscribed
        get(path_for("pavel.lebedev@example.com"), "ru"),  # unsubscribed in the list
    ):
        assert other.comparable() == subscribed_ru.comparable()
    subscribed_en = get(site.paths["dmitry.volkov@example.org"])
    assert get(path_for("nobody@example.org")).comparable() == subscribed_en.comparable()
    assert get(path_for("mia.weber@example.net")).comparable() == subscribed_en.comparable()

    # POST: the same answer for a subscriber, a stranger and an already suppressed address
    olga = site.paths["olga.kuznetsova@example.net"]
    done = post_one_click(site.port, olga)
    assert done.status == 200 and RU_DONE in done.body
    assert_secure(done)
    assert (
        post_one_click(
            site.port, path_for("stranger@example.org"), **{"Accept-Language": "ru"}
        ).comparable()
        == done.comparable()
    )
    assert post_one_click(site.port, olga).comparable() == done.comparable()
    # and the page for a no-longer-subscribed address is the subscriber's page
    assert get(olga).comparable() == subscribed_ru.comparable()
    assert suppressed(site.config)["olga.kuznetsova@example.net"] == "unsubscribed"


def test_post_without_the_one_click_body_is_400(site: Site) -> None:
    path = site.paths["sergey.orlov@example.net"]
    for body, content_type in (
        (b"", FORM),
        (b"List-Unsubscribe=Yes", FORM),
        (b"unsubscribe=One-Click", FORM),
        (b'{"List-Unsubscribe": "One-Click"}', "application/json"),
    ):
        reply = fetch(site.port, "POST", path, body, {"Content-Type": content_type})
        assert reply.status == 400, body
        assert_secure(reply)
    big = fetch(site.port, "POST", path, ONE_CLICK + b"&x=" + b"y" * 10_000, {"Content-Type": FORM})
    assert big.status == 413
    # HEAD is a GET without a body: it changes nothing either
    assert fetch(site.port, "HEAD", path).status == 200
    assert "sergey.orlov@example.net" not in suppressed(site.config)


def test_multipart_one_click_body_is_accepted(site: Site) -> None:
    # RFC 8058: the POST content SHOULD be multipart/form-data
    boundary = "----statusmail-test"
    body = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="List-Unsubscribe"\r\n\r\n'
        f"One-Click\r\n--{boundary}--\r\n"
    ).encode()
    content_type = f"multipart/form-data; boundary={boundary}"
    reply = fetch(
        site.port,
        "POST",
        site.paths["alexander.kozlov@example.com"],
        body,
        {"Content-Type": content_type},
    )
    assert reply.status == 200 and RU_DONE in reply.body
    assert suppressed(site.config)["alexander.kozlov@example.com"] == "unsubscribed"


@pytest.mark.parametrize(
    "part",
    [
        pytest.param('Content-Disposition: form-data; name*="\'"\r\n', id="name*-cut-short"),
        pytest.param(
            "Content-Disposition: form-data; name=List-Unsubscribe\r\nContent-Type: [<name ;0*\r\n",
            id="part-type-unparseable",
        ),
    ],
)
def test_a_multipart_body_the_parser_chokes_on_is_400(site: Site, part: str) -> None:
    """Part headers that make the email package's header parser raise (IndexError):
    the one-click check answered 500 without its headers, and serve logged a traceback."""
    body = f"--x\r\n{part}\r\nOne-Click\r\n--x--\r\n".encode()
    path = site.paths["sergey.orlov@example.net"]
    headers = {"Content-Type": "multipart/form-data; boundary=x"}
    reply = fetch(site.port, "POST", path, body, headers)
    assert reply.status == 400, reply
    assert_secure(reply)
    assert "sergey.orlov@example.net" not in suppressed(site.config)


def test_bad_tokens_are_400_and_change_nothing(site: Site) -> None:
    before = suppressed(site.config)
    good = site.paths["elena.sokolova@example.org"]
    prefix = "/status/unsubscribe/"
    bad = [
        tamper(good),
        good[:-2],
        path_for("elena.sokolova@example.org", secret="another-secret"),
        prefix + "abc",
        prefix + "not-base64!.%25%25",
        prefix + "x" * 5000,
    ]
    replies = [post_one_click(site.port, path) for path in bad]
    replies += [fetch(site.port, "GET", path) for path in bad]
    assert {r.status for r in replies} == {400}
    assert len({r.body for r in replies}) == 1  # one generic page
    assert_secure(replies[0])
    assert suppressed(site.config) == before


def test_other_paths_404_other_methods_405(site: Site) -> None:
    path = site.paths["aigerim.nurlanova@example.org"]
    for wrong in ("/", "/status/unsubscribe/", path + "/", "/unsubscribe/" + path.rsplit("/")[-1]):
        reply = fetch(site.port, "POST", wrong, ONE_CLICK, {"Content-Type": FORM})
        assert reply.status == 404, wrong
        assert_secure(reply)
    for method in ("PUT", "DELETE", "PATCH"):
        reply = fetch(site.port, method, path, ONE_CLICK, {"Content-Type": FORM})
        assert reply.status == 405
        assert "POST" in reply.headers["allow"]
        assert_secure(reply)
    assert "aigerim.nurlanova@example.org" not in suppressed(site.config)


# -- pages from templates and the catalog ----------------------------------------------


def test_pages_come_from_the_page_templates_and_the_catalog(project: Path) -> None:
    root = project.parent
    replace_in(
        root / "templates/locale/ru/LC_MESSAGES/messages.po",
        '"Вы отписались. Уведомления о работе сервиса больше не придут."',
        '"Готово: вы отписались."',
    )
    replace_in(
        root / "templates/pages/confirm.html.j2",
        "<form method='post'>",
        "<form method='post' id='x'>",
    )
    replace_in(project, "sender: {name: StartMail,", "sender: {name: 'Start<b>Mail & Co',")
    with serving(project, SECRET) as port:
        stranger = path_for("stranger@example.org")
        done = post_one_click(port, stranger, **{"Accept-Language": "ru"})
        said = typeset("Готово: вы отписались.", "ru")
        assert done.status == 200 and f"<p>{said}</p>" in done.body
        confirm = fetch(port, "GET", stranger)
        assert "<form method='post' id='x'>" in confirm.body
        # autoescape is on: the site name is text, never markup
        assert "<title>Start&lt;b&gt;Mail &amp; Co: Status updates</title>" in confirm.body
        assert_secure(confirm)


def serve_once(project: Path) -> Result:
    """``statusmail serve`` that is expected to refuse to start."""
    return invoke(project, "serve", "--port", str(free_port()), env=SECRET_ENV)


def test_a_page_translation_that_cannot_be_filled_in_stops_serve(project: Path) -> None:
    root = project.parent
    po = root / "templates/locale/ru/LC_MESSAGES/messages.po"
    confirm = root / "templates/pages/confirm.html.j2"
    replace_in(po, '"Отписаться от уведомлений о работе сервиса?"', '"Отписаться на 100%?"')
    done = serve_once(project)
    assert done.exit_code == 1
    line = line_of(confirm, '_("Unsubscribe from status updates?")')
    assert (
        f"{confirm}:{line}: cannot fill in a translation from {po}: unsupported format character"
        in done.stderr
    )


def test_a_missing_page_template_stops_serve(project: Path) -> None:
    notice = project.parent / "templates/pages/notice.html.j2"
    notice.unlink()
    done = serve_once(project)
    assert done.exit_code == 1
    assert f"{notice}: is missing: statusmail serve renders its pages from it" in done.stderr


# -- start-up --------------------------------------------------------------------------


def test_smtp_transport_without_the_secret_exits_1(project: Path) -> None:
    point_at(project, 25)
    result = invoke(project, "serve", "--port", str(free_port()))
    assert result.exit_code == 1
    assert "STATUSMAIL_UNSUBSCRIBE_SECRET is not set" in result.stderr


def test_busy_port_exits_1(project: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        done = invoke(project, "serve", "--port", str(port), env=SECRET_ENV)
    assert done.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr


def test_maildir_project_serves_with_the_dev_secret_only_when_asked(
    project: Path,
) -> None:
    refused = invoke(project, "serve", "--port", str(free_port()))
    assert refused.exit_code == 1
    assert "$STATUSMAIL_UNSUBSCRIBE_SECRET" in refused.stderr
    with serving(project, None, "--insecure-dev-secret", stop_with=signal.SIGINT) as port:
        dev = path_for("ann@example.org", secret=DEV_UNSUBSCRIBE_SECRET)
        assert fetch(port, "GET", dev).status == 200
        assert fetch(port, "GET", path_for("ann@example.org")).status == 400


# -- on PostgreSQL: a few connections kept ---------------------------------------------


def named_backends(postgres: str, name: str) -> set[int]:
    """The server's backends for connections named ``name`` (``application_name``)."""
    rows = query(postgres, "SELECT pid FROM pg_stat_activity WHERE application_name = %s", name)
    return {pid for (pid,) in rows}


def end_backends(postgres: str, name: str) -> set[int]:
    """End them as an administrator would (what a server restart does to them), waiting
    up to 5 s for each to go; the ones ended."""
    # in the select list, so that only the rows of the WHERE are ended
    ended = query(
        postgres,
        "SELECT pid, pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
        " WHERE application_name = %s",
        name,
    )
    return {pid for pid, done in ended if done}


def test_serve_on_postgresql_answers_over_a_few_kept_connections_and_outlives_them(
    project: Path, postgres: str
) -> None:
    """Many requests over at most ``POOL_SIZE`` connections, kept between requests; when
    an administrator ends them all (what a server restart does to them), no request
    fails: the first to find its connection dead runs again on a new one."""
    name = f"statusmail-test-{secrets.token_hex(4)}"
    readers = [f"reader{i}@example.org" for i in range(28)]

    def backends() -> set[int]:
        return named_backends(postgres, name)

    with serving(
        project, SECRET, env={"STATUSMAIL_LEDGER": f"{postgres}&application_name={name}"}
    ) as port:

        def visit(address: str) -> tuple[int, int]:
            """The page a reader opens, then the one-click POST: their statuses."""
            path = path_for(address)
            return fetch(port, "GET", path).status, post_one_click(port, path).status

        with ThreadPoolExecutor(8) as clients:
            assert list(clients.map(visit, readers[:20])) == [(200, 200)] * 20
        kept = backends()
        assert 1 <= len(kept) <= POOL_SIZE  # 40 requests; the connections outlive them
        assert [visit(address) for address in readers[20:24]] == [(200, 200)] * 4
        assert kept <= backends() and len(backends()) <= POOL_SIZE

        assert end_backends(postgres, name) >= kept
        answers = [visit(address) for address in readers[24:]]
        failed = [status for pair in answers for status in pair if status != 200]
        assert len(failed) <= 1, answers
        assert http_request(port, "GET", "/readyz").pair() == (200, "ok\n")
        renewed = backends()
        assert renewed and not renewed & kept and len(renewed) <= POOL_SIZE
    confirmed = readers[:24] + [
        a for a, (_, post) in zip(readers[24:], answers, strict=True) if post == 200
    ]
    rows = query(postgres, "SELECT address, reason FROM suppressions")
    assert dict(rows) == {address: "unsubscribed" for address in confirmed}


def test_a_server_the_pool_cannot_reach_is_named_by_readiness_and_fails_requests_fast() -> None:
    """/readyz says why (its own connection attempt, when the pool has none to lend);
    once a wait for a connection was in vain, requests fail at once, not after 2 s."""
    with closed_port() as port:
        url = f"postgresql://127.0.0.1:{port}/statusmail"
        with LedgerAccess(url) as ledgers:
            problem = ledgers.problem()
            started = time.monotonic()
            with pytest.raises(LedgerError) as refused:
                ledgers.run(lambda ledger: ledger.last_locale("reader@example.org"))
            waited = time.monotonic() - started
    assert problem is not None
    assert problem.startswith(f"postgresql://127.0.0.1:{port}/statusmail: cannot open the ledger")
    assert "refused" in problem and "\n" not in problem
    assert str(refused.value).startswith(
        f"postgresql://127.0.0.1:{port}/statusmail: no connection to the ledger within"
        f" {WAIT_WHILE_DOWN:g}s"
    )
    assert waited < WAIT / 2


def test_a_pooled_write_that_must_not_repeat_fails_once_and_the_next_one_works(
    postgres: str,
) -> None:
    """A write that is not safe to run twice (a webhook's reports) is not retried on a
    broken connection: it fails naming the server, and the pool is mended for the next."""
    name = f"statusmail-test-{secrets.token_hex(4)}"

    def unsubscribe(address: str) -> Callable[[Ledger], bool]:
        return lambda ledger: ledger.suppress(address, SuppressionReason.UNSUBSCRIBED, "test")

    with LedgerAccess(f"{postgres}&application_name={name}") as ledgers:
        assert ledgers.run(unsubscribe("first@example.org")) is True
        assert end_backends(postgres, name)
        with pytest.raises(LedgerError) as lost:
            ledgers.run(unsubscribe("second@example.org"), repeat=False)
        assert str(lost.value).startswith(f"{describe(postgres)}: cannot suppress an address: ")
        assert "\n" not in str(lost.value)
        assert ledgers.run(unsubscribe("second@example.org")) is True
        assert ledgers.problem() is None
    rows = query(postgres, "SELECT address FROM suppressions ORDER BY address")
    assert rows == [("first@example.org",), ("second@example.org",)]


def test_serve_s_russian_pages_are_set_as_russian_is_set() -> None:
    """No-break spaces after short words, as in mail and on the site: the pages serve
    answers installed the bare catalog, and a phone left «в» or «о» at a line's end."""
    pages = render_pages(REPO / "templates", "StartMail")
    assert "Вы\u00a0отписались" in pages["ru", "done"], pages["ru", "done"]
    assert "о\u00a0работе" in pages["ru", "done"]
    config = load_config(REPO / "statusmail.yaml")
    page = PreferencesPage(REPO / "templates", "StartMail", config.topics, config.topic_names)
    html = page.render("ru", Choice("ru", frozenset()))
    assert "и\u00a0доступ к\u00a0нему" in html, html  # a topic's name too


def test_a_one_click_body_of_nested_comments_is_not_a_one_click() -> None:
    """The email package's header parser recurses per comment: a part header of a
    thousand nested "(" was a RecursionError, a 500 with a traceback."""
    deep = "(" * 1200 + ")" * 1200
    body = (
        "--b\r\n"
        f'Content-Disposition: form-data; name="List-Unsubscribe" {deep}\r\n\r\n'
        "One-Click\r\n--b--\r\n"
    ).encode()
    assert is_one_click("multipart/form-data; boundary=b", body) in (True, False)
    assert not is_one_click(f"multipart/form-data; boundary=b; x={deep}", body)


# -- secrets that change while serve runs ---------------------------------------------


def test_serve_reads_a_replaced_secret_file_and_sighup_reads_it_again(
    project: Path, tmp_path: Path
) -> None:
    """A secret file replaced in place (a Kubernetes secret volume): watch read the new
    secret for its next entry while serve kept the old one, so links just mailed got
    400; SIGHUP ended serve with no line at all (systemd took it for a clean exit)."""
    first, second, third = ("1" * 40, "2" * 40, "3" * 40)
    secret_file = tmp_path / "secret"

    def put(secret: str) -> None:  # replaced whole, as a secret volume does
        staged = tmp_path / "staged"
        staged.write_text(secret + "\n", encoding="utf-8")
        staged.replace(secret_file)

    def status(secret: str) -> int:
        return fetch(port, "GET", path_for("alice@example.org", secret)).status

    put(first)
    port = free_port()
    env = {"STATUSMAIL_UNSUBSCRIBE_SECRET_FILE": str(secret_file)}
    with spawn(project, "serve", "--port", str(port), env=env) as server:
        wait_for(lambda: port_open(port), what="serve to listen")
        assert status(first) == 200
        put(second)  # no signal: a link of the new secret has serve read it again
        wait_for(lambda: status(second) == 200, what="serve to take the new secret")
        server.wait_for_line("the unsubscribe secrets changed")
        assert status(first) == 400  # not retired: no longer verified

        put(third)
        server.send_signal(signal.SIGHUP)
        server.wait_for_line("the unsubscribe secrets changed", count=2)
        assert status(third) == 200 and server.process.poll() is None
        (tmp_path / "staged").write_text("tiny-secret-value\n", encoding="utf-8")
        (tmp_path / "staged").replace(secret_file)
        server.send_signal(signal.SIGHUP)
        server.wait_for_line("still using the ones read before")
        assert status(third) == 200  # a weak secret is never taken
        assert server.stop() == 0
    assert "tiny-secret-value" not in server.stderr


def test_a_client_gone_before_its_body_ended_is_no_error(project: Path) -> None:
    """A POST that declares a body and hangs up halfway logged ERROR "Exception in ASGI
    application" and a traceback of some 45 lines, per request (review): anyone could
    fill the log and page whoever watches its errors."""
    port = free_port()
    path = path_for("alice@example.org")
    preferences = path.replace("/unsubscribe/", "/preferences/")
    with spawn(project, "serve", "--port", str(port), env=SECRET_ENV) as server:
        wait_for(lambda: port_open(port), what="serve to listen")
        for target in (path, preferences) * 3:
            with socket.create_connection(("127.0.0.1", port)) as conn:
                conn.sendall(
                    f"POST {target} HTTP/1.1\r\nHost: www.startmail.example\r\n"
                    "Content-Type: application/x-www-form-urlencoded\r\n"
                    "Content-Length: 1000\r\n\r\nList-Unsub".encode()
                )
        assert fetch(port, "GET", path).status == 200  # answered after them all
        assert server.stop() == 0
    assert "ERROR" not in server.stderr and "Exception" not in server.stderr, server.stderr


@pytest.mark.timeout(10)
def test_a_reading_of_the_secrets_begun_inside_another_does_not_wait_for_it() -> None:
    """SIGHUP's handler ran in serve's main thread between two steps of a reading that a
    refused token had begun, and waited for that reading's lock for good: serve froze
    (review). Reading is now the loop's callback, and a reading under way is not waited
    for."""
    inner: list[bool] = []

    def load() -> Keyring:
        inner.append(served.reload())  # a SIGHUP arriving in the middle of this reading
        return Keyring(b"2" * 40)

    served = ServedKeys(Keyring(b"1" * 40), load)
    assert served.reload() and inner == [False]
    assert served.keys.secret == b"2" * 40
