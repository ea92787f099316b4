"""What every test shares: the sample project in a temporary folder, a clean
environment, and the few helpers that run statusmail and wait for real parts."""

from __future__ import annotations

import base64
import compileall
import contextlib
import email
import email.policy
import http.client
import importlib.util
import json
import logging
import mailbox
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, NoReturn, TypeVar

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from browser_helpers import SharedChromium
from statusmail.cli import main

if TYPE_CHECKING:
    from playwright.sync_api import Browser
from statusmail.project.entries import load_entries

REPO = Path(__file__).resolve().parent.parent
SAMPLE_FILES = ("statusmail.yaml", "regions.yaml")
SAMPLE_DIRS = ("updates", "subscribers", "templates")
# What statusmail reads from the environment besides its own STATUSMAIL_* variables (the
# secrets' *_FILE ones among them): the CI system's and systemd's.
OUTSIDE_VARIABLES = (
    "GITHUB_STEP_SUMMARY",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "CREDENTIALS_DIRECTORY",
)


def read_by_statusmail(name: str) -> bool:
    """Whether statusmail reads the variable ``name``; the caller's value never reaches a
    test (a shell with $STATUSMAIL_LEDGER set, a suite run in GitHub Actions or under
    systemd). The tests' own settings (STATUSMAIL_TEST_*) are not statusmail's."""
    if name.startswith("STATUSMAIL_"):
        return not name.startswith("STATUSMAIL_TEST_")
    return name in OUTSIDE_VARIABLES


T = TypeVar("T")

# The sample project (the repo's statusmail.yaml, updates/, subscribers/, templates/).
UPDATE = "update-2020-04-21"
BLOCK = "block-2020-01-23"
SAMPLE_ENTRIES = sorted(load_entries(REPO / "updates")[0])
UPDATE_AUDIENCE = 14  # who gets UPDATE: active, service-status, in RU, BY or KZ
BLOCK_AUDIENCE = 18  # who gets BLOCK
RU_AUDIENCE = 9  # of UPDATE_AUDIENCE, the readers in Russia
CSV_HEADER = "email,name,locale,region,topics,status\n"
SECRET = "a-test-secret-of-enough-length-for-tokens"  # $STATUSMAIL_UNSUBSCRIBE_SECRET
SECRET_ENV = {"STATUSMAIL_UNSUBSCRIBE_SECRET": SECRET}  # an SMTP project needs one


# -- the sample project and the environment ----------------------------------------------


def copy_sample(dest: Path) -> Path:
    """Copy the repo's sample project to ``dest``; returns the config path."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in SAMPLE_FILES:
        shutil.copy(REPO / name, dest / name)
    for name in SAMPLE_DIRS:
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("*.mo"))
    return dest / "statusmail.yaml"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The sample project in a temporary folder; returns its config path."""
    return copy_sample(tmp_path / "project")


@pytest.fixture
def signed_project(project: Path) -> tuple[Path, bytes]:
    """The sample project signing with a fresh 2048-bit DKIM key; (config, the DNS record)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    (project.parent / "dkim.key").write_bytes(pem)
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with project.open("a", encoding="utf-8") as handle:
        handle.write("dkim: {domain: startmail.example, selector: status, key_file: dkim.key}\n")
    return project, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


@pytest.fixture(autouse=True, scope="session")
def _clean_env() -> Iterator[None]:
    """Tests, and module-scoped fixtures too, never see the caller's statusmail settings;
    a test sets what it needs with ``monkeypatch`` or a helper's ``env``."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [name for name in os.environ if read_by_statusmail(name)]:
            patch.delenv(name)
        yield


# The modules that take longest, longest first (as measured on two cores in a fresh
# checkout, as CI runs: mypy without its cache; down to about 2 s; a stale order costs
# only a little balance): the workers get them first (pyproject.toml's addopts keep
# xdist to this order), the short ones fill in around them, and neither worker is left
# alone at the end with seconds of PostgreSQL, watching or a browser to go. The browser
# modules sit together: a worker that takes one of the two short ones takes the other
# next, and lends it the same Chromium (see browser_helpers).
LONGEST_FIRST = (
    "test_postgres_deployment.py",
    "test_processes.py",
    "test_ops_metrics.py",
    "test_postgres_senders.py",
    "test_watch.py",
    "test_watch_promises.py",
    "test_quality.py",
    "test_layout_browser.py",
    "test_publish_browser.py",
    "test_csrf_browser.py",
    "test_ledger_backends.py",
    "test_delivery.py",
    "test_serve.py",
    "test_almost_right.py",
    "test_subscribers.py",
    "test_subscriber_files_properties.py",
    "test_ci_pipelines.py",
    "test_preferences.py",
    "test_encodings.py",
    "test_refusing_database.py",
    "test_chaos.py",
    "test_wheel.py",
    "test_feedback_imap.py",
    "test_confirm.py",
    "test_waits_show_progress.py",
    "test_selection_lease.py",
    "test_ci_changes.py",
    "test_watch_standby.py",
    "test_ops_logs.py",
    "test_dkim.py",
    "test_pause_cancel_retry.py",
    "test_readers_in_russia.py",
    "test_catalog.py",
    "test_spamassassin.py",
    "test_streaming.py",
    "test_group_commit.py",
    "test_fencing.py",
    "test_feedback_e2e.py",
    "test_unsubscribe_race.py",
    "test_tokens.py",
    "test_ops_units.py",
    "test_check.py",
    "test_footer_topics.py",
    "test_typography.py",
    "test_rerun.py",
    "test_corrections.py",
    "test_publish.py",
    "test_audience_first.py",
    "test_webhooks.py",
    "test_render.py",
)


def pytest_configure() -> None:
    """Python's bytecode cache, on for the suite whatever the environment says
    ($PYTHONDONTWRITEBYTECODE): without it each ``python -m statusmail`` a test starts
    compiles statusmail's modules again (0.15 s of CPU a process, a hundred processes a
    run), and each worker rewrites the asserts of every test module again (seconds).
    The package is compiled here, before the workers start; pytest keeps its rewritten
    test modules as it does by default."""
    sys.dont_write_bytecode = False
    package = importlib.util.find_spec("statusmail")
    assert package is not None and package.origin is not None
    compileall.compile_dir(Path(package.origin).parent, quiet=2)


_STRAY = pytest.StashKey[set[str] | None]()


def _stray_files() -> set[str] | None:
    """The files in the checkout git does not know and does not ignore; None outside a
    git checkout (an unpacked sdist, say)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        return None
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "--others", "--exclude-standard"],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    return set(listed.stdout.splitlines()) if listed.returncode == 0 else None


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):  # the controller, before any test
        session.config.stash[_STRAY] = _stray_files()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A test writes in its own temporary folders, never in the checkout (one wrote its
    previews there, and they were committed with it)."""
    if hasattr(session.config, "workerinput"):
        return
    before, after = session.config.stash.get(_STRAY, None), _stray_files()
    if before is None or after is None or not (new := sorted(after - before)):
        return
    print(f"\nthe tests left files in the checkout {REPO}: {', '.join(new[:10])}")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: in each module and among the others, as collected


def clean_environ(**extra: str) -> dict[str, str]:
    """This process's environment without statusmail's variables, plus ``extra``."""
    environ = {k: v for k, v in os.environ.items() if not read_by_statusmail(k)}
    environ.update(extra)
    return environ


def missing(reason: str) -> NoReturn:
    """A part the test needs is missing: skip saying why, but under CI=true fail."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: this test must run)", pytrace=False)
    pytest.skip(reason)


# Headless, and never reaching out: the machines have no network but the registries.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium() -> str:
    """Debian's Chromium, the browser the pages a person sees are checked in."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        missing("chromium is not installed (apt-get install chromium)")
    return found


@contextmanager
def launched_chromium(*flags: str) -> Iterator[Browser]:
    """Debian's Chromium driven by playwright (which never downloads a browser of its
    own), with ``flags`` beside the headless, offline ones; closed on leaving."""
    if importlib.util.find_spec("playwright") is None:
        missing("the playwright package is not installed: pip install -e '.[test]'")
    executable = chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=[*CHROMIUM_FLAGS, *flags], timeout=30_000
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def _chromium() -> Iterator[SharedChromium]:
    """The worker's Chromium, while browser modules follow one another. It resolves every
    host under ``.test`` (reserved for tests) to this machine, the port the URL's."""
    shared = SharedChromium(lambda: launched_chromium("--host-resolver-rules=MAP *.test 127.0.0.1"))
    yield shared
    shared.close()


@pytest.fixture(autouse=True, scope="module")
def _chromium_closed_for_others(request: pytest.FixtureRequest, _chromium: SharedChromium) -> None:
    """A module that has no use for the browser (its first test does not ask for it) finds
    the worker's closed, its loop and its processes gone."""
    if "browser" not in request.fixturenames:
        _chromium.close()


@pytest.fixture(scope="module")
def browser(_chromium: SharedChromium) -> Iterator[Browser]:
    """Chromium for the module, the worker's (see browser_helpers): a test opens a context
    of its own in it and closes it."""
    yield from _chromium.lend()


# -- waiting for real parts --------------------------------------------------------------


def free_port() -> int:
    """A port nothing listens on now (something may take it later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def closed_port() -> Iterator[int]:
    """A port that refuses every connection while the block runs: it is bound but never
    listened on, so no other test (or xdist worker) can start a server there."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def wait_for(
    check: Callable[[], T | None], *, timeout: float = 30.0, what: str = "the condition"
) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


# -- running statusmail ------------------------------------------------------------------


def cli_args(config: Path | None, args: tuple[str, ...]) -> list[str]:
    """``ARGS --config CONFIG``; the option goes before a ``--`` that ends the options."""
    if config is None:
        return list(args)
    option = ["--config", str(config)]
    if "--" in args:
        at = args.index("--")
        return [*args[:at], *option, *args[at:]]
    return [*args, *option]


def command(config: Path | None, *args: str) -> list[str]:
    """The command line of ``statusmail ARGS --config CONFIG`` run by this Python."""
    return [sys.executable, "-m", "statusmail", *cli_args(config, args)]


def statusmail(
    config: Path | None,
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``python -m statusmail ARGS --config CONFIG`` in a subprocess, as a user runs it,
    with none of the caller's statusmail variables but those in ``env``."""
    result = subprocess.run(
        command(config, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=clean_environ(**(env or {})),
        cwd=cwd,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


@contextmanager
def loggers_kept() -> Iterator[None]:
    """The command sets up statusmail's loggers and the libraries' it formats
    (``statusmail.cli.LOGGERS``) for its run, on the runner's streams, and may capture
    Python's warnings; afterwards they are as they were, so no later test logs into them."""
    from statusmail.cli import LOGGERS

    kept = [
        (logger, logger.handlers[:], logger.level, logger.propagate)
        for logger in map(logging.getLogger, LOGGERS)
    ]
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for logger, handlers, level, propagate in kept:
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate


def invoke(
    config: Path | None,
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Result:
    """The same command in this process, through click's runner: no interpreter to start
    and nothing to import (``python -m statusmail`` costs about 0.4 s of CPU), so every
    test that is not about the process itself uses it. ``env`` is set on top of the test's
    environment, which has none of the caller's statusmail variables (``_clean_env``) but
    keeps what the test set with ``monkeypatch``; it runs in ``cwd`` if given; its stdin is
    empty and no terminal. An exception that escapes the command fails the test with its
    traceback. Not for signals, a terminal, or a service to talk to: those need
    ``statusmail``, ``spawn`` or ``serving``."""
    where = contextlib.nullcontext() if cwd is None else contextlib.chdir(cwd)
    with loggers_kept(), where:
        result = CliRunner().invoke(main, cli_args(config, args), env=env, catch_exceptions=False)
    assert "Traceback" not in result.output, result.output
    return result


def dry_run(config: Path, entry_id: str, out_dir: Path) -> dict[str, Any]:
    """``statusmail send ID --dry-run --preview-dir DIR --json`` (the previews go to
    ``DIR/ID/``); returns the report."""
    result = invoke(config, "send", entry_id, "--dry-run", "--json", "--preview-dir", str(out_dir))
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def problem_lines(stderr: str) -> list[str]:
    """The problem lines of ``statusmail check``: not the summary, notes or warnings."""
    return [
        line
        for line in stderr.splitlines()
        if line.strip()
        and not line.startswith(("checked ", "note: "))
        and ": warning: " not in line
    ]


class Running:
    """A statusmail command in the background (see ``spawn``). Its stdout and stderr are
    read as they come, so a test waits for a line the program logs, never a guessed time.
    Use it as a context manager: on leaving, a process still running is killed."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._out: list[str] = []
        self._err: list[str] = []
        self._ended = 0  # streams at end of file
        self._changed = threading.Condition()
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in (
                (self.process.stdout, self._out),
                (self.process.stderr, self._err),
            )
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str], lines: list[str]) -> None:
        for line in stream:
            with self._changed:
                lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._ended += 1
            self._changed.notify_all()

    @property
    def pid(self) -> int:
        return self.process.pid

    def drained(self) -> bool:
        """Whether stdout and stderr are both at their end: every process that holds
        them has ended (a child the program started may hold them after it)."""
        with self._changed:
            return self._ended == 2

    @property
    def stdout(self) -> str:
        with self._changed:
            return "".join(self._out)

    @property
    def stderr(self) -> str:
        with self._changed:
            return "".join(self._err)

    def wait_for_line(self, text: str, *, count: int = 1, timeout: float = 30) -> str:
        """Wait until ``count`` lines on stderr contain ``text``; returns the last of them.
        Fails at once when the program ends first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [line for line in self._err if text in line]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if self._ended == 2 or left <= 0:
                    why = "the program ended" if self._ended == 2 else f"{timeout:g}s passed"
                    raise AssertionError(
                        f"{why} before {count} line(s) with {text!r} on stderr:\n"
                        + "".join(self._err)
                    )
                self._changed.wait(left)

    def send_signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait_until_catching(self, sig: int, timeout: float = 30) -> None:
        """Wait until the program has a handler for ``sig`` (Linux: SigCgt in
        /proc/PID/status): the first moment a signal can be the program's to handle
        rather than the interpreter's, which is still starting before it."""

        def catching() -> bool:
            assert self.process.poll() is None, f"the program ended:\n{self.stderr}"
            status = Path(f"/proc/{self.pid}/status").read_text(encoding="ascii")
            mask = next(line.split()[1] for line in status.splitlines() if line[:7] == "SigCgt:")
            return bool(int(mask, 16) >> (sig - 1) & 1)

        wait_for(catching, timeout=timeout, what=f"the program to catch signal {sig}")

    def finish(self, timeout: float = 30) -> int:
        """Wait for the program to end by itself; returns its exit code."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"still running after {timeout:g}s:\n{self.stderr}") from None
        finally:
            self.process.wait()
            for reader in self._readers:
                reader.join(timeout=10)
            for stream in (self.process.stdout, self.process.stderr):
                if stream is not None:
                    stream.close()
        assert "Traceback" not in self.stderr, self.stderr
        return self.process.returncode

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send ``sig`` (unless the program already ended) and wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.finish(timeout)

    def __enter__(self) -> Running:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process.returncode is None:
            self.process.kill()
            self.finish()


def spawn(config: Path, *args: str, env: Mapping[str, str] | None = None) -> Running:
    """``python -m statusmail ARGS --config CONFIG`` started in the background."""
    return Running(command(config, *args), clean_environ(**(env or {})))


@contextmanager
def serving(
    config: Path,
    secret: str | None,
    *extra: str,
    stop_with: int = signal.SIGTERM,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> Iterator[int]:
    """``statusmail serve`` on ``port`` (by default a free one), once it accepts
    connections; yields the port. ``env`` is added to its environment. On leaving it is
    stopped with ``stop_with`` and must exit 0."""
    port = port or free_port()
    env = dict(env or {})
    if secret is not None:
        env["STATUSMAIL_UNSUBSCRIBE_SECRET"] = secret
    with spawn(config, "serve", "--port", str(port), *extra, env=env) as server:
        try:
            wait_for(
                lambda: port_open(port) or server.process.poll() is not None,
                what="serve to listen",
            )
            assert server.process.poll() is None, server.stderr
            yield port
        finally:
            code = server.stop(stop_with, timeout=10)
        assert code == 0, server.stderr


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: str

    def pair(self) -> tuple[int, str]:
        return self.status, self.body

    def comparable(self) -> tuple[int, dict[str, str], str]:
        """Everything but the Date header."""
        return self.status, {k: v for k, v in self.headers.items() if k != "date"}, self.body


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """One HTTP request to 127.0.0.1:port, read whole."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body, dict(headers or {}))
        response = conn.getresponse()
        data = response.read().decode("utf-8")
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        conn.close()


def one_click(port: int, address: str, secret: str = SECRET) -> int:
    """The one-click POST of ``address``'s List-Unsubscribe URL, as a mail client sends it
    through the reverse proxy, to ``serve`` on ``port``; the reply's status."""
    from statusmail.project.tokens import Keyring, unsubscribe_token

    path = "/status/unsubscribe/" + unsubscribe_token(Keyring(secret.encode()), address)
    reply = http_request(
        port,
        "POST",
        path,
        b"List-Unsubscribe=One-Click",
        {"Content-Type": "application/x-www-form-urlencoded", "Host": "www.startmail.example"},
    )
    return reply.status


# -- what was sent -----------------------------------------------------------------------


def parse_message(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def part_text(message: EmailMessage, subtype: str) -> str:
    """The decoded text of a message's ``plain`` or ``html`` part."""
    part = message.get_body((subtype,))
    assert part is not None, f"no text/{subtype} part"
    return str(part.get_content())


def outbox_files(config: Path) -> list[bytes]:
    """The bytes of every message in the project's maildir outbox."""
    folder = config.parent / "outbox"
    if not (folder / "cur").is_dir():  # none yet, or a run is making tmp, new, cur now
        return []
    box = mailbox.Maildir(folder, create=False)
    return [box.get_bytes(key) for key in box.iterkeys()]


def outbox_messages(config: Path) -> list[EmailMessage]:
    """Every message in the project's maildir outbox, parsed."""
    return [parse_message(raw) for raw in outbox_files(config)]


def outbox_count(config: Path) -> int:
    """How many messages the maildir outbox holds, without reading them."""
    folder = config.parent / "outbox" / "new"
    return len(list(folder.iterdir())) if folder.exists() else 0


def recipient(message: EmailMessage) -> str:
    """The one address a message is to, lower-case."""
    to = message["To"]
    assert len(to.addresses) == 1, to
    return str(to.addresses[0].addr_spec).lower()


# -- the real PostgreSQL server ------------------------------------------------------------

POSTGRES_DEFAULT = "postgresql://127.0.0.1:5432/test"


def server_url() -> str:
    return os.environ.get("STATUSMAIL_TEST_POSTGRES") or POSTGRES_DEFAULT


def in_schema(url: str, schema: str) -> str:
    """``url`` whose connections work in ``schema`` (its tables, its advisory locks)."""
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


@pytest.fixture
def postgres() -> Iterator[str]:
    """A ledger URL on the real server, in a schema made for this test and dropped after."""
    import psycopg

    url = server_url()
    try:
        admin = psycopg.connect(url, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        missing(f"no PostgreSQL at {url} ({exc}); set $STATUSMAIL_TEST_POSTGRES")
    schema = f"statusmail_test_{secrets.token_hex(6)}"
    with admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            yield in_schema(url, schema)
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_target(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Each backend in turn: a SQLite file, then a PostgreSQL schema."""
    if request.param == "sqlite":
        return tmp_path / "ledger" / "statusmail.db"
    url: str = request.getfixturevalue("postgres")
    return url
