"""contrib/nginx-statusmail.conf in Debian's nginx, in front of a real ``statusmail serve``
(issue 20): both hosts' unsubscribe and preferences links work through it, the webhooks
reach serve under the public prefix, nothing else does, and after a flood that trips the
rate limit neither the access log nor the error log holds a token.

One nginx and one serve for the module; the shipped file is used as it is, but for its
ports, certificate and log paths, replaced line by line."""

from __future__ import annotations

import http.client
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlencode

import pytest

from conftest import (
    REPO,
    SECRET,
    Reply,
    copy_sample,
    free_port,
    http_request,
    port_open,
    serving,
    wait_for,
)
from delivery_helpers import suppressed
from feedback_helpers import query
from ops_helpers import need
from statusmail.project.tokens import Keyring, preferences_token, unsubscribe_token

SHIPPED = REPO / "contrib" / "nginx-statusmail.conf"
# The main site (unsubscribe.url's host) and the mirror regions.yaml's links rewrite it to.
HOSTS = ("www.startmail.example", "startmail-ru.test")
KEYS = Keyring(SECRET.encode())
ONE_CLICK = b"List-Unsubscribe=One-Click"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
PROVIDERS = ("ses", "postmark", "mailgun", "sendgrid")


# The server's own logging as a website's server {} block has it, where the file says to
# copy the statusmail locations: Debian's combined access log and an error log at error.
SITE_LOGGING = {
    "\n    access_log /var/log/nginx/statusmail.log statusmail;": (
        "\n    access_log {folder}/site-access.log combined;"
    ),
    "\n    error_log /var/log/nginx/statusmail-error.log crit;": (
        "\n    error_log {folder}/site-error.log error;"
    ),
    "\n    limit_req_log_level info;": "",
    "\n    limit_conn_log_level info;": "",
}


def nginx_config(
    folder: Path, serve_port: int, https_port: int, cert: Path, key: Path, *, merged: bool
) -> Path:
    """The shipped file with this test's ports, certificate and logs, in a minimal
    nginx.conf; every replaced line must be in it as shipped. ``merged``: its locations
    in a website's server block, with the website's own logging."""
    text = SHIPPED.read_text(encoding="utf-8")
    if merged:
        for old, new in SITE_LOGGING.items():
            assert text.count(old) == 1, old
            text = text.replace(old, new.format(folder=folder))
    for old, new in {
        "server 127.0.0.1:8080;": f"server 127.0.0.1:{serve_port};",
        "listen 443 ssl;": f"listen 127.0.0.1:{https_port} ssl;",
        "listen [::]:443 ssl;": "",
        "/etc/ssl/startmail/fullchain.pem": str(cert),
        "/etc/ssl/startmail/privkey.pem": str(key),
        "/var/log/nginx/statusmail.log": str(folder / "access.log"),
        "/var/log/nginx/statusmail-error.log": str(folder / "statusmail-error.log"),
    }.items():
        # (the logs are named again in each location; merged, the server's are the site's)
        assert old in text or (merged and old.startswith("/var/log/")), old
        text = text.replace(old, new)
    (folder / "statusmail.conf").write_text(text, encoding="utf-8")
    temp = " ".join(
        f"{kind}_temp_path {folder / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = folder / "nginx.conf"
    # The main error log as Debian's nginx.conf has it (level error).
    main.write_text(
        f"daemon off; master_process off; pid {folder / 'nginx.pid'};\n"
        f"error_log {folder / 'error.log'};\n"
        "events { worker_connections 256; }\n"
        f"http {{ {temp} access_log off; include {folder / 'statusmail.conf'}; }}\n",
        encoding="utf-8",
    )
    return main


@dataclass
class Proxy:
    """nginx on ``port`` in front of serve on ``serve_port``; every token a test sent
    through it is kept, to look for in the logs."""

    port: int
    serve_port: int
    context: ssl.SSLContext
    project: Path
    logs: Path
    tokens: set[str] = field(default_factory=set)

    def request(
        self,
        host: str,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        *,
        conn: http.client.HTTPSConnection | None = None,
    ) -> Reply:
        """One request through nginx to ``host`` (on ``conn`` if given, kept open)."""
        if path.startswith(("/status/unsubscribe/", "/status/preferences/")):
            self.tokens.add(path.split("/")[3])
            self.tokens.discard("")  # the bare prefix
        own = conn is None
        conn = conn or self.connection()
        try:
            conn.request(method, path, body, {"Host": host, **FORM, **(headers or {})})
            response = conn.getresponse()
            data = response.read().decode("utf-8")
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
        finally:
            if own:
                conn.close()

    def connection(self, source: str = "127.0.0.1") -> http.client.HTTPSConnection:
        """A connection from the loopback address ``source`` (nginx limits per client)."""
        return http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.context, timeout=10, source_address=(source, 0)
        )

    def log(self, name: str) -> str:
        path = self.logs / name
        return path.read_text(encoding="utf-8") if path.exists() else ""

    def logged(self, *lines: str) -> str:
        """The access log once it has each of ``lines`` (nginx writes a request's line
        after its answer has gone)."""

        def complete() -> str | None:
            text = self.log("access.log")
            return text if all(line in text for line in lines) else None

        return wait_for(complete, timeout=5, what=f"{lines} in the access log")


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    yield from running_proxy(tmp_path_factory, merged=False)


@pytest.fixture(scope="module")
def merged_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    yield from running_proxy(tmp_path_factory, merged=True)


def running_proxy(tmp_path_factory: pytest.TempPathFactory, *, merged: bool) -> Iterator[Proxy]:
    nginx = need("nginx", "apt-get install nginx")
    import trustme

    folder = tmp_path_factory.mktemp("nginx")
    project = copy_sample(folder / "project")
    ca = trustme.CA()
    issued = ca.issue_cert(*HOSTS, "127.0.0.1")
    cert, key = folder / "cert.pem", folder / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    context = ssl.create_default_context()
    ca.configure_trust(context)

    with serving(project, SECRET) as serve_port:
        https_port = free_port()
        config = nginx_config(folder, serve_port, https_port, cert, key, merged=merged)
        args = [nginx, "-c", str(config), "-p", str(folder), "-e", str(folder / "error.log")]
        checked = subprocess.run([*args, "-t"], capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stderr
        process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: port_open(https_port) or process.poll() is not None, what="nginx")
            assert process.poll() is None, process.communicate()[1]
            yield Proxy(https_port, serve_port, context, project, folder)
        finally:
            process.terminate()
            process.communicate(timeout=10)


class Page(HTMLParser):
    """What a browser takes from a page: what it loads (src, link href) and what its
    form submits (hidden fields, the ticked radio buttons and checkboxes)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.loads: list[str] = []
        self.fields: list[tuple[str, str]] = []
        self.choices: dict[str, list[str]] = {}
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = {name: value or "" for name, value in attrs}
        if "src" in named:
            self.loads.append(named["src"])
        if tag == "link" and "href" in named:
            self.loads.append(named["href"])
        if tag != "input" or "name" not in named:
            return
        kind = named.get("type", "text")
        if kind in ("radio", "checkbox"):
            self.choices.setdefault(named["name"], []).append(named.get("value", "on"))
            if "checked" not in named:
                return
        self.fields.append((named["name"], named.get("value", "")))

    def value(self, name: str) -> str:
        return next(value for key, value in self.fields if key == name)


def test_both_hosts_links_work_through_nginx(proxy: Proxy) -> None:
    for host in HOSTS:
        address = f"reader@{host}"
        unsubscribe = f"/status/unsubscribe/{unsubscribe_token(KEYS, address)}"
        preferences = f"/status/preferences/{preferences_token(KEYS, address)}"

        confirm = proxy.request(host, "GET", unsubscribe)
        assert confirm.status == 200, confirm.body
        form = proxy.request(host, "GET", preferences)
        assert form.status == 200, form.body
        for page in (confirm, form):  # whatever the pages load comes through nginx too
            for url in Page(page.body).loads:
                assert proxy.request(host, "GET", url).status == 200, url

        # the form as a browser posts it back, from the page's own origin, in the other
        # language
        shown = Page(form.body)
        other = next(code for code in shown.choices["locale"] if code != shown.value("locale"))
        fields = [(k, v) for k, v in shown.fields if k != "locale"] + [("locale", other)]
        origin = {"Origin": f"https://{host}"}
        saved = proxy.request(host, "POST", preferences, urlencode(fields).encode(), origin)
        assert saved.status == 200, saved.body
        assert Page(saved.body).value("locale") == other
        stored = query(proxy.project, "SELECT locale FROM preferences WHERE address = ?", address)
        assert stored == [(other,)]

        assert proxy.request(host, "POST", unsubscribe, ONE_CLICK).status == 200
        assert suppressed(proxy.project).get(address) == "unsubscribed"


NOT_PUBLIC = (
    "/metrics",
    "/healthz",
    "/readyz",
    "/",
    "/favicon.ico",
    "/status/",
    "/status/unsubscribe/",
    "/webhooks/ses",
)


def test_nothing_else_reaches_serve(proxy: Proxy) -> None:
    token = unsubscribe_token(KEYS, "reader@example.org")
    for path in ("/metrics", "/healthz", "/readyz"):  # serve answers them on loopback ...
        assert http_request(proxy.serve_port, "GET", path).status == 200, path
    served_404 = http_request(proxy.serve_port, "GET", "/nothing-here")
    assert served_404.status == 404
    sneaking = (
        f"/status/unsubscribe/{token}/../../../metrics",
        "/status/unsubscribe/..%2F..%2Fmetrics",
        f"/status/unsubscribe/{token}/more",
        f"/status/preferences/{token}/more",
    )
    for host in HOSTS:  # ... and nginx refuses them, and the rest, itself
        for path in (*NOT_PUBLIC, *sneaking):
            reply = proxy.request(host, "GET", path)
            assert reply.status == 404, path
            assert reply.body != served_404.body, path  # nginx's page: serve never saw it


def test_webhooks_reach_serve_under_the_public_prefix(proxy: Proxy) -> None:
    body = b'{"hello": "from a provider"}'
    json = {"Content-Type": "application/json"}
    refused = proxy.request(HOSTS[0], "POST", "/webhooks/ses", body, json)
    assert refused.status == 404
    for provider in PROVIDERS:
        direct = http_request(proxy.serve_port, "POST", f"/webhooks/{provider}", body, json)
        forwarded = proxy.request(HOSTS[0], "POST", f"/status/webhooks/{provider}", body, json)
        assert forwarded.pair() == direct.pair(), provider
        assert forwarded.body != refused.body, provider
    # the provider, never the URI or the body
    access = proxy.logged(*(f'"POST webhook-{provider}" ' for provider in PROVIDERS))
    assert "hello" not in access and "/webhooks/" not in access, access


def test_a_mail_provider_s_wave_of_one_click_posts_all_reaches_serve(proxy: Proxy) -> None:
    """The large mailbox providers post every "Unsubscribe" click of their users from a
    few addresses of theirs: the readers' budget of 60 a minute (burst 30) answered the
    31st with 429 (review), and a refused unsubscribe may never be made again."""
    addresses = [f"reader{n}@example.org" for n in range(80)]
    conn = proxy.connection("127.0.0.3")
    try:
        answers = [
            proxy.request(
                HOSTS[0],
                "POST",
                f"/status/unsubscribe/{unsubscribe_token(KEYS, address)}",
                b"List-Unsubscribe=One-Click",
                {"Content-Type": "application/x-www-form-urlencoded"},
                conn=conn,
            ).status
            for address in addresses
        ]
    finally:
        conn.close()
    assert answers == [200] * len(addresses), answers
    assert set(addresses) <= set(suppressed(proxy.project))


@pytest.mark.parametrize("where", ["proxy", "merged_proxy"])
def test_a_flood_is_limited_and_no_log_holds_a_token(
    where: str, request: pytest.FixtureRequest
) -> None:
    """As shipped, and with its locations copied into a website's server block, as the
    file says to do on a host that has one: the logging settings were the server's, so
    the website's combined access log then held every token."""
    proxy: Proxy = request.getfixturevalue(where)
    # A client address of its own, so that the budget the other tests spent is not this
    # one's: nginx limits per address, and all of 127/8 is this machine.
    page = f"/status/unsubscribe/{unsubscribe_token(KEYS, 'flood@example.org')}"
    answers: list[int] = []
    conn = proxy.connection("127.0.0.2")
    try:
        while 429 not in answers and len(answers) < 200:
            answers.append(proxy.request(HOSTS[1], "GET", page, conn=conn).status)
    finally:
        conn.close()
    assert answers[-1] == 429 and set(answers[:-1]) == {200}, answers
    # a body too large is an error nginx logs with the request line
    assert proxy.request(HOSTS[0], "POST", page, b"x" * 5000).status == 413
    proxy.logged('"GET unsubscribe" 429', '"POST unsubscribe" 413')  # the page, not the path
    names = ("access.log", "statusmail-error.log", "error.log", "site-access.log", "site-error.log")
    logs = {name: proxy.log(name) for name in names}
    assert proxy.tokens
    for name, text in logs.items():
        assert "/status/" not in text, name
        leaked = [token for token in proxy.tokens if token in text]
        assert not leaked, f"{name} holds {len(leaked)} tokens"
