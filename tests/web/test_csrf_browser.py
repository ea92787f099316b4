"""The preferences form refuses a cross-site post in a real browser, and takes its own.

Debian's Chromium, driven by playwright, opens a page on another origin (a second small
HTTP server on 127.0.0.1, another port) that submits a form to the preferences URL as
soon as it loads: 403, nothing stored. Then it opens the preferences page itself,
changes the language and saves: accepted and stored.

The config wants https page URLs, and serve speaks plain HTTP, so the browser reaches the
page the way readers of an onion mirror do: through a region's link rewrite to a plain
http host (``startmail-mirror.test`` on serve's port, ``.test`` being reserved for tests),
which the worker's browser resolves to this machine (``--host-resolver-rules``, the
tests' DNS, see conftest's ``browser``). Its ``Origin`` is then a public origin the config
names, as behind a real proxy.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from conftest import (
    SECRET,
    copy_sample,
    free_port,
    invoke,
    serving,
)
from editing import replace_in
from feedback_helpers import query
from statusmail.project.tokens import Keyring, form_token, preferences_token

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Response

MIRROR = "startmail-mirror.test"
KEYS = Keyring(SECRET.encode())
TOPICS = ("product-news", "service-status")  # the sample's


@dataclass(frozen=True)
class Site:
    config: Path
    port: int

    @property
    def mirror(self) -> str:
        """The mirror's origin, serve on this machine."""
        return f"http://{MIRROR}:{self.port}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The sample project served, with readers in BY sent to the plain-http mirror."""
    config = copy_sample(tmp_path_factory.mktemp("csrf-browser") / "project")
    site = Site(config, free_port())
    replace_in(
        config.parent / "regions.yaml",
        "  name: {en: Belarus, ru: Беларусь}\n",
        "  name: {en: Belarus, ru: Беларусь}\n"
        f'  links: {{"https://www.startmail.example/": "{site.mirror}/"}}\n',
    )
    env = {"STATUSMAIL_UNSUBSCRIBE_SECRET": SECRET}
    assert invoke(config, "ledger", "migrate", env=env).exit_code == 0
    with serving(config, SECRET, port=site.port):
        yield site


class OtherSite(ThreadingHTTPServer):
    """Another origin: answers every GET with ``page``."""

    page = b""


class OtherSitePage(BaseHTTPRequestHandler):
    server: OtherSite

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.server.page)))
        self.end_headers()
        self.wfile.write(self.server.page)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: its requests are the test's own


@pytest.fixture(scope="module")
def other_site() -> Iterator[OtherSite]:
    with OtherSite(("127.0.0.1", 0), OtherSitePage) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield server
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page in a fresh context whose reader reads Russian."""
    context = browser.new_context(locale="ru-RU")
    yield context.new_page()
    context.close()


def stored(site: Site, address: str) -> list[tuple[Any, ...]]:
    return query(site.config, "SELECT locale, topics FROM preferences WHERE address = ?", address)


def is_post(response: Response) -> bool:
    return response.request.method == "POST"


def test_a_form_on_another_origin_is_refused(site: Site, other_site: OtherSite, page: Page) -> None:
    address = "cross.site@example.org"
    token = preferences_token(KEYS, address)
    target = f"{site.mirror}/status/preferences/{token}"
    # Even with a form token of this page's own (say, copied from a page the reader was
    # shown), the other origin alone gets it refused.
    fields = [
        ("locale", "en"),
        *(("topic", t) for t in TOPICS),
        ("shown", "ru|" + ",".join(TOPICS)),
        ("form_token", form_token(KEYS, token)),
    ]
    inputs = "".join(
        f"<input type='hidden' name='{name}' value='{html.escape(value)}'>"
        for name, value in fields
    )
    other_site.page = (
        f"<!DOCTYPE html><body onload='document.forms[0].submit()'>"
        f"<form method='post' action='{target}'>{inputs}</form></body>"
    ).encode()
    other_origin = f"http://127.0.0.1:{other_site.server_address[1]}"

    with page.expect_response(is_post) as posted:
        page.goto(f"{other_origin}/")
    response = posted.value
    assert response.request.header_value("origin") == other_origin
    assert response.status == 403
    # in the reader's language, once the answer is the page shown (it may still be
    # navigating when the response arrives: wait_for_selector waits that out)
    assert page.wait_for_selector("text=Выбор не сохранён") is not None
    assert stored(site, address) == []


def test_the_form_on_its_own_page_is_accepted(site: Site, page: Page) -> None:
    address = "same.site@example.org"
    url = f"{site.mirror}/status/preferences/{preferences_token(KEYS, address)}"
    shown = page.goto(url)
    assert shown is not None and shown.status == 200
    assert page.is_checked("input[name='locale'][value='ru']")
    page.check("input[name='locale'][value='en']")
    with page.expect_response(is_post) as posted:
        page.click("button[type='submit']")
    response = posted.value
    assert response.request.header_value("origin") == site.mirror
    assert response.status == 200
    assert page.wait_for_selector("text=Your choice is saved") is not None
    assert page.is_checked("input[name='locale'][value='en']")
    assert stored(site, address) == [("en", None)]
