"""What ``contrib/`` ships for running statusmail for real (issues 13 and 20): the systemd
units pass ``systemd-analyze verify``, their command lines are ones statusmail accepts,
the services run under the units' ``MemoryDenyWriteExecute=``, and the PostgreSQL
drop-in verifies with both units, opens serve's address filter to the database, and
hands libpq a password from a credential. (The nginx example: test_nginx.py.)"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import (
    REPO,
    SECRET,
    clean_environ,
    free_port,
    http_request,
    invoke,
    missing,
    port_open,
    server_url,
    wait_for,
)
from delivery_helpers import point_at
from ops_helpers import need, scrape, value
from smtp_server import RecordingServer
from statusmail.project.tokens import Keyring, unsubscribe_token

CONTRIB = REPO / "contrib"
UNITS = ("statusmail-watch.service", "statusmail-serve.service")
INSTALLED = "/srv/statusmail/.venv/bin/statusmail"
STATUSMAIL = Path(sys.executable).with_name("statusmail")


def unit_settings(name: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (CONTRIB / name).read_text(encoding="utf-8").splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def installed_unit(name: str, folder: Path) -> Path:
    """The shipped unit in ``folder``, its ExecStart pointing at this installation
    (verify checks that the program exists)."""
    text = (CONTRIB / name).read_text(encoding="utf-8")
    assert INSTALLED in text
    unit = folder / name
    unit.write_text(text.replace(INSTALLED, str(STATUSMAIL)), encoding="utf-8")
    return unit


def verify(unit: Path) -> str:
    """``systemd-analyze verify`` of the unit (and its drop-ins beside it): its output,
    which must be empty of warnings (an unknown key, say, exits 0 too)."""
    analyze = need("systemd-analyze", "apt-get install systemd")
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert str(unit.parent) not in output, output
    return output


@pytest.mark.parametrize("name", UNITS)
def test_unit_passes_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    verify(installed_unit(name, tmp_path))


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


def test_watch_unit_may_write_the_bounce_maildir_the_readme_shows() -> None:
    """watch reads bounces and moves each handled report into the Maildir's .processed
    folder: under ProtectSystem=strict a Maildir outside ReadWritePaths is read-only,
    and every pass stopped at its first move ("Read-only file system")."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    shown = re.search(r"^  maildir: (/\S+)", readme, re.MULTILINE)
    assert shown is not None, "the README's bounces: example names no Maildir"
    writable = [path.lstrip("-") for path in unit_settings(UNITS[0])["ReadWritePaths"]]
    maildir = Path(shown.group(1))
    assert any(maildir.is_relative_to(path) for path in writable), (maildir, writable)


# -- the PostgreSQL drop-in ------------------------------------------------------------

DROP_IN = "statusmail-postgresql.conf"


def with_drop_in(name: str, folder: Path) -> Path:
    """The unit in ``folder`` with the shipped drop-in where systemd looks for it."""
    unit = installed_unit(name, folder)
    drop_ins = folder / f"{name}.d"
    drop_ins.mkdir()
    shutil.copy(CONTRIB / DROP_IN, drop_ins / "postgresql.conf")
    return unit


def address_filter(unit: Path) -> str:
    """What ``systemd-analyze security`` says of the unit's IPAddressDeny=/Allow=."""
    analyze = need("systemd-analyze", "apt-get install systemd")
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--json=short", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    checks = json.loads(result.stdout)
    return str(next(c["description"] for c in checks if c["name"] == "IPAddressDeny="))


@pytest.mark.parametrize("name", UNITS)
def test_the_postgresql_drop_in_verifies_with_each_unit(name: str, tmp_path: Path) -> None:
    # no warning: every key known, every specifier (%d, the credentials) resolved
    verify(with_drop_in(name, tmp_path))


def test_the_drop_in_opens_serve_to_the_database_host_only(tmp_path: Path) -> None:
    plain = address_filter(installed_unit(UNITS[1], tmp_path))
    (tmp_path / "with").mkdir()
    opened = address_filter(with_drop_in(UNITS[1], tmp_path / "with"))
    assert "non-localhost" not in plain and "non-localhost" in opened, (plain, opened)
    settings = unit_settings(DROP_IN)
    assert [a for a in settings["IPAddressAllow"] if a not in ("localhost", "any")]
    assert "IPAddressDeny" not in settings  # serve's own deny-all stays
    # the password comes as a credential, never in the environment
    assert "password" not in " ".join(settings["Environment"]).lower()
    assert settings["LoadCredential"]


def test_libpq_reads_the_password_from_the_credential(
    project: Path, postgres: str, tmp_path: Path
) -> None:
    """The drop-in's environment, with its credential as systemd lays it out: mode 0440
    where systemd shares it with the service user through an ACL (libpq would ignore a
    password file like that, not a service file). The server trusts loopback, so the
    password itself is checked on libpq's side; the service file's search_path shows
    that statusmail's connections read it."""
    import psycopg

    credentials = tmp_path / "credentials"
    credentials.mkdir()
    name, _, _ = unit_settings(DROP_IN)["LoadCredential"][0].partition(":")
    schema = parse_qs(urlsplit(postgres).query)["options"][0].split("=", 1)[1]
    password = secrets.token_urlsafe(16)
    env = {"CREDENTIALS_DIRECTORY": str(credentials), "STATUSMAIL_LEDGER": server_url()}
    for line in unit_settings(DROP_IN)["Environment"]:
        for assignment in shlex.split(line):
            key, _, value = assignment.partition("=")
            if key != "STATUSMAIL_LEDGER":  # the test's server instead of the example's
                env[key] = value.replace("%d", str(credentials))
    service = Path(env["PGSERVICEFILE"])
    assert service.parent == credentials and service.name == name
    service.write_text(
        f"[{env['PGSERVICE']}]\npassword={password}\noptions=-csearch_path={schema}\n",
        encoding="utf-8",
    )
    service.chmod(0o440)

    result = invoke(project, "ledger", "migrate", env=env)
    assert result.exit_code == 0, result.output
    with psycopg.connect(postgres, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchone()
    assert tables is not None and tables[0] > 0
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        with psycopg.connect(server_url(), autocommit=True) as conn:
            assert conn.info.password == password


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
        missing("the kernel has no PR_SET_MDWE (Linux 6.3 or later)")


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
