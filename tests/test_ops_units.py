"""What ``contrib/`` ships for running statusmail for real (issue 13): the systemd units
pass ``systemd-analyze verify``, their command lines are ones statusmail accepts, the
services run under the units' ``MemoryDenyWriteExecute=``, and the nginx example
proxies the unsubscribe URL of both hosts (and nothing else) with its rate limit."""

from __future__ import annotations

import http.client
import os
import shlex
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, SECRET, clean_environ, free_port, http_request, port_open, wait_for
from delivery_helpers import point_at, suppressed
from ops_helpers import scrape, serve_process, value
from smtp_server import RecordingServer
from statusmail.tokens import Keyring, unsubscribe_token

CONTRIB = REPO / "contrib"
UNITS = ("statusmail-watch.service", "statusmail-serve.service")
INSTALLED = "/srv/statusmail/.venv/bin/statusmail"
STATUSMAIL = Path(sys.executable).with_name("statusmail")
ON_CI = os.environ.get("CI") == "true"


def need(tool: str, install: str) -> str:
    """The tool's path; a skip saying why when it is missing, a failure on CI."""
    found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if found is None:
        message = f"{tool} is not installed ({install})"
        if ON_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


def unit_settings(name: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (CONTRIB / name).read_text(encoding="utf-8").splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


@pytest.mark.parametrize("name", UNITS)
def test_unit_passes_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    analyze = need("systemd-analyze", "apt-get install systemd")
    text = (CONTRIB / name).read_text(encoding="utf-8")
    assert INSTALLED in text
    # verify checks that ExecStart's program exists: point it at this installation
    unit = tmp_path / name
    unit.write_text(text.replace(INSTALLED, str(STATUSMAIL)), encoding="utf-8")
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert name not in output, output  # warnings (an unknown key, say) exit 0 too


@pytest.mark.parametrize("name", UNITS)
def test_unit_runs_statusmail_hardened_with_credentials_and_a_watchdog(name: str) -> None:
    settings = unit_settings(name)
    assert settings["Type"] == ["notify"] and settings["NotifyAccess"] == ["main"]
    assert int(settings["WatchdogSec"][0]) > 0
    assert settings["Restart"] == ["on-failure"]
    credentials = [c.split(":")[0] for c in settings["LoadCredential"]]
    assert "STATUSMAIL_UNSUBSCRIBE_SECRET" in credentials
    assert "EnvironmentFile" not in settings and "Environment" not in settings
    for key, wanted in {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "MemoryDenyWriteExecute": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert settings[key] == [wanted], key
    # The command line is one statusmail accepts (asked for --help, it shows its help).
    argv = shlex.split(settings["ExecStart"][0])
    assert argv[0] == INSTALLED
    result = subprocess.run(
        [str(STATUSMAIL), *argv[1:], "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "Usage: statusmail" in result.stdout


def test_watch_unit_loads_the_smtp_password_too() -> None:
    credentials = [c.split(":")[0] for c in unit_settings(UNITS[0])["LoadCredential"]]
    assert "STATUSMAIL_SMTP_PASSWORD" in credentials


# -- MemoryDenyWriteExecute=: the same refusal, from the kernel (PR_SET_MDWE) ------------

MDWE = """
import ctypes, runpy, sys
if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, REFUSE_EXEC_GAIN
    sys.exit("PR_SET_MDWE: errno %d" % ctypes.get_errno())
sys.argv = ["statusmail", *sys.argv[1:]]
runpy.run_module("statusmail", run_name="__main__")
"""


def mdwe_supported() -> None:
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import ctypes, sys; sys.exit(ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0)",
        ],
        timeout=30,
    )
    if probe.returncode != 0:
        message = "the kernel has no PR_SET_MDWE (Linux 6.3 or later)"
        if ON_CI:
            pytest.fail(message)
        pytest.skip(message)


@pytest.mark.timeout(90)
def test_watch_and_serve_work_where_memory_may_not_become_executable(project: Path) -> None:
    mdwe_supported()
    with RecordingServer() as server:
        point_at(project, server.port)
        result = subprocess.run(
            [sys.executable, "-c", MDWE, "watch", "--once", "--config", str(project)],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_environ(STATUSMAIL_UNSUBSCRIBE_SECRET=SECRET),
        )
        assert result.returncode == 0, result.stderr
        assert len(server.messages) == 18 + 14

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", MDWE, "serve", "--port", str(port), "--config", str(project)],
        env=clean_environ(STATUSMAIL_UNSUBSCRIBE_SECRET=SECRET),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: port_open(port) or process.poll() is not None, what="serve")
        token = unsubscribe_token(Keyring(SECRET.encode()), "reader@example.org")
        status = http_request(
            port,
            "POST",
            f"/status/unsubscribe/{token}",
            b"List-Unsubscribe=One-Click",
            {"Content-Type": "application/x-www-form-urlencoded"},
        ).status
        assert status == 200
        assert value(scrape(port), "statusmail_unsubscribe_requests_total", outcome="done") == 1
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr


# -- the nginx example ---------------------------------------------------------------

HOSTS = ("www.startmail.example", "startmail-mirror.example")


def nginx_config(tmp: Path, serve_port: int, https_port: int, cert: Path, key: Path) -> Path:
    """contrib/nginx-statusmail.conf with this test's ports, certificate and log, in a
    minimal nginx.conf; every replaced line must be there, as shipped."""
    text = (CONTRIB / "nginx-statusmail.conf").read_text(encoding="utf-8")
    for old, new in {
        "server 127.0.0.1:8080;": f"server 127.0.0.1:{serve_port};",
        "listen 443 ssl;": f"listen 127.0.0.1:{https_port} ssl;",
        "listen [::]:443 ssl;": "",
        "/etc/ssl/startmail/fullchain.pem": str(cert),
        "/etc/ssl/startmail/privkey.pem": str(key),
        "/var/log/nginx/statusmail-unsubscribe.log": str(tmp / "access.log"),
    }.items():
        assert old in text, old
        text = text.replace(old, new)
    (tmp / "unsubscribe.conf").write_text(text, encoding="utf-8")
    temp = " ".join(
        f"{kind}_temp_path {tmp / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = tmp / "nginx.conf"
    main.write_text(
        f"daemon off; master_process off; pid {tmp / 'nginx.pid'};\n"
        f"error_log {tmp / 'error.log'} warn;\n"
        "events { worker_connections 256; }\n"
        f"http {{ {temp} access_log off; include {tmp / 'unsubscribe.conf'}; }}\n",
        encoding="utf-8",
    )
    return main


def https(
    port: int, context: ssl.SSLContext, host: str, method: str, path: str, body: bytes | None = None
) -> int:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    headers = {"Host": host, "Content-Type": "application/x-www-form-urlencoded"}
    try:
        conn.request(method, path, body, headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.mark.timeout(90)
def test_nginx_example_forwards_the_unsubscribe_url_of_both_hosts_with_a_rate_limit(
    project: Path, tmp_path: Path
) -> None:
    nginx = need("nginx", "apt-get install nginx")
    import trustme

    ca = trustme.CA()
    issued = ca.issue_cert(*HOSTS, "127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    keys = Keyring(SECRET.encode())
    one_click = b"List-Unsubscribe=One-Click"

    with serve_process(project) as (serve_port, _serve):
        https_port = free_port()
        config = nginx_config(tmp_path, serve_port, https_port, cert, key)
        checked = subprocess.run(
            [nginx, "-t", "-c", str(config), "-p", str(tmp_path), "-e", str(tmp_path / "e.log")],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert checked.returncode == 0, checked.stderr
        proxy = subprocess.Popen(
            [nginx, "-c", str(config), "-p", str(tmp_path), "-e", str(tmp_path / "e.log")],
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: port_open(https_port) or proxy.poll() is not None, what="nginx")
            assert proxy.poll() is None, proxy.communicate()[1]
            tokens = {host: unsubscribe_token(keys, f"reader@{host}") for host in HOSTS}
            for host, token in tokens.items():  # the main site and the mirror
                path = f"/status/unsubscribe/{token}"
                assert https(https_port, context, host, "POST", path, one_click) == 200
            assert set(suppressed(project)) == {f"reader@{host}" for host in HOSTS}
            for path in ("/metrics", "/healthz", "/readyz", "/"):  # loopback only
                assert https(https_port, context, HOSTS[0], "GET", path) == 404
            big = f"/status/unsubscribe/{tokens[HOSTS[0]]}"
            assert https(https_port, context, HOSTS[0], "POST", big, b"x" * 5000) == 413

            page = f"/status/unsubscribe/{tokens[HOSTS[1]]}"
            started = time.monotonic()
            answers = [https(https_port, context, HOSTS[1], "GET", page) for _ in range(60)]
            elapsed = time.monotonic() - started
            assert set(answers) == {200, 429}
            # a burst of 30 on top of 1 a second, some of it spent above already
            assert answers.count(200) <= 31 + int(elapsed) + 1
            assert answers[-1] == 429
        finally:
            proxy.terminate()
            proxy.communicate(timeout=10)
        counted = scrape(serve_port)
    assert value(counted, "statusmail_unsubscribe_requests_total", outcome="done") == 2
    log = (tmp_path / "access.log").read_text(encoding="utf-8")
    assert log.count("\n") >= 60 and "429" in log
    assert not any(token in log for token in tokens.values())
    assert "/status/unsubscribe" not in log
