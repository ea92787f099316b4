"""A real IMAP server for tests: Debian's Dovecot (``dovecot-imapd``), run in the
foreground with a configuration of its own in a temporary folder.

Usage::

    with Dovecot(tmp_path, ca) as imap:      # STARTTLS on imap.port, TLS on imap.tls_port
        imap.append(b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
        imap.folder("INBOX")                  # {uid: (flags, bytes)}

One user, ``bounces``, with ``imap.password``. ``capabilities`` replaces what the
server advertises after login (to take MOVE away, say). Dovecot keeps a raw log of every
session after login, and ``imap.commands()`` lists the commands it received, as it read
them. ``Relay`` stands between a client and the plain port and cuts the connection at a
given command, as a network does when it dies. The server is found at
``/usr/sbin/dovecot``; ``.ci/run`` installs it. When it is missing the tests that need
it skip saying why, and under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
USER = "bounces"


def require_dovecot() -> str:
    if Path(DOVECOT).is_file():
        return DOVECOT
    reason = "Dovecot is not installed (apt-get install dovecot-imapd); .ci/run installs it"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Dovecot:
    def __init__(
        self,
        cert_file: Path,
        key_file: Path,
        *,
        password: str = "imap-password-for-the-bounce-box-0123",
        capabilities: str | None = None,
    ) -> None:
        self.binary = require_dovecot()
        self.password = password
        self.port = _free_port()
        self.tls_port = _free_port()
        # Dovecot's sockets live here: a short path (sun_path holds 108 bytes).
        self.base = Path(tempfile.mkdtemp(prefix="dv", dir="/tmp"))
        self.base.chmod(0o755)
        self.mail = self.base / "mail"
        self.mail.mkdir()
        self.rawlog = self.base / "rawlog"  # each session's input and output, as read
        self.rawlog.mkdir()
        (self.base / "passwd").write_text(f"{USER}:{{PLAIN}}{password}\n", encoding="utf-8")
        if os.geteuid() == 0:  # Dovecot runs its processes as these users, never as root
            internal, login, uid = "dovecot", "dovenull", "dovecot"
            owner = pwd.getpwnam("dovecot")
            group = grp.getgrgid(owner.pw_gid).gr_name
            os.chown(self.mail, owner.pw_uid, owner.pw_gid)
            os.chown(self.rawlog, owner.pw_uid, owner.pw_gid)
        else:  # everything as whoever runs the tests
            internal = login = uid = pwd.getpwuid(os.geteuid()).pw_name
            group = grp.getgrgid(os.getegid()).gr_name
        extra = f"imap_capability = {capabilities}\n" if capabilities else ""
        self.config = self.base / "dovecot.conf"
        self.config.write_text(
            f"""base_dir = {self.base}/run
state_dir = {self.base}/state
log_path = {self.base}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{cert_file}
ssl_key = <{key_file}
disable_plaintext_auth = no
auth_mechanisms = plain login
# a wrong password is refused at once, not after the 2 s that slow down a guesser
auth_failure_delay = 0
default_internal_user = {internal}
default_internal_group = {group}
default_login_user = {login}
mail_location = maildir:{self.mail}/%u
rawlog_dir = {self.rawlog}
first_valid_uid = 1
first_valid_gid = 1
{extra}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.base}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={group} home={self.mail}/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.tls_port}
    ssl = yes
  }}
  chroot =
}}
service anvil {{
  chroot =
}}
""",
            encoding="utf-8",
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Dovecot:
        self.process = subprocess.Popen(
            [self.binary, "-F", "-c", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: see stop
        )
        deadline = time.monotonic() + 15
        while not self._greets():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"Dovecot did not start: {self.log()}")
            time.sleep(0.05)
        return self

    def _greets(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                return sock.recv(64).startswith(b"* OK")
        except OSError:
            return False

    def log(self) -> str:
        path = self.base / "dovecot.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def commands(self, since: float = 0.0) -> list[str]:
        """Every command the server read after a login from ``since`` on (a
        ``time.time()``), in the order it read them, each without its tag (``UID MOVE
        1:3 "processed"``). Dovecot writes a line as it reads it, before it answers, so
        a command that was answered is there."""
        found: list[tuple[float, str]] = []
        for log in self.rawlog.glob("*.in"):
            for line in log.read_bytes().decode("utf-8", "replace").splitlines():
                stamp, _, text = line.partition(" ")  # each line starts with when it came
                _tag, _, command = text.partition(" ")
                if float(stamp) >= since:
                    found.append((float(stamp), command))
        return [command for _stamp, command in sorted(found, key=lambda item: item[0])]

    def stop(self) -> None:
        if self.process is not None:
            # The whole group at once, killed: told alone, the master waits a second for
            # each of its processes to go; told with them (SIGTERM), it may start a new
            # log process when the old one ends first, and wait 6 s for it. Nothing the
            # server holds outlives the test.
            with contextlib.suppress(ProcessLookupError):  # all gone already
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.communicate(timeout=15)
            self.process = None
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Dovecot:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- a client's view -----------------------------------------------------------

    def client(self) -> Any:
        from imapclient import IMAPClient

        client = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=10)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the test's own view; statusmail verifies
        client.starttls(context)
        client.login(USER, self.password)
        return client

    def append(self, data: bytes, folder: str = "INBOX") -> None:
        client = self.client()
        try:
            client.append(folder, data)
        finally:
            client.logout()

    def append_many(self, messages: Iterable[bytes], folder: str = "INBOX") -> int:
        """Append every message, 500 to a MULTIAPPEND (RFC 3502): one round trip each,
        the literals sent without waiting (LITERAL+); one APPEND each where the server
        was told not to advertise MULTIAPPEND. Returns how many."""
        client = self.client()
        count = 0
        try:
            if not client.has_capability("MULTIAPPEND"):
                for data in messages:
                    client.append(folder, data)
                    count += 1
                return count
            batch: list[bytes] = []
            for data in messages:
                batch.append(data)
                if len(batch) == 500:
                    client.multiappend(folder, batch)
                    count += len(batch)
                    batch = []
            if batch:
                client.multiappend(folder, batch)
                count += len(batch)
        finally:
            client.logout()
        return count

    def folder(self, name: str) -> dict[int, tuple[tuple[bytes, ...], bytes]]:
        """{uid: (flags, bytes)} of every message in ``name`` (read without a trace)."""
        client = self.client()
        try:
            if not client.folder_exists(name):
                return {}
            client.select_folder(name, readonly=True)
            uids = client.search(["ALL"])
            if not uids:
                return {}
            found = client.fetch(uids, ["FLAGS", "BODY.PEEK[]"])
            return {uid: (tuple(v[b"FLAGS"]), v[b"BODY[]"]) for uid, v in found.items()}
        finally:
            client.logout()


class Relay:
    """A TCP relay on 127.0.0.1 to ``port`` (the server's plain IMAP port) that cuts the
    connection once, at the first client command holding ``cut_at`` (``b"UID MOVE"``),
    as a network does when it dies: with ``server_did_it`` false the command never
    reaches the server; with it true the server gets it and does it, and its answer
    never comes back. Every other byte, and every later connection, passes as it is.
    ``cut`` tells whether it happened."""

    def __init__(self, port: int, cut_at: bytes, *, server_did_it: bool) -> None:
        self.target = port
        self.cut_at = cut_at
        self.server_did_it = server_did_it
        self.cut = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Relay:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self._close(self._listener, *self._sockets)
        for thread in self._threads:
            thread.join(5)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    @staticmethod
    def _close(*sockets: socket.socket) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked on it
            sock.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # the listener closed: the relay's end
            while True:
                client, _ = self._listener.accept()
                server = socket.create_connection(("127.0.0.1", self.target), timeout=10)
                server.settimeout(None)
                self._sockets += [client, server]
                answer: list[bytes] = []  # the tag of the cut command, when the server has it
                self._spawn(self._to_server, client, server, answer)
                self._spawn(self._to_client, server, client, answer)

    def _to_server(self, client: socket.socket, server: socket.socket, answer: list[bytes]) -> None:
        pending = b""
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                pending += data
                *lines, pending = pending.split(b"\r\n")
                for line in lines:
                    tag, _, command = line.partition(b" ")
                    if self.cut_at in command.upper() and not self.cut.is_set():
                        if not self.server_did_it:
                            self.cut.set()
                            self._close(client, server)
                            return
                        answer.append(tag + b" ")
                    server.sendall(line + b"\r\n")

    def _to_client(self, server: socket.socket, client: socket.socket, answer: list[bytes]) -> None:
        held = b""
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                if not answer:
                    client.sendall(data)
                    continue
                held += data  # nothing reaches the client from here on
                if any(line.startswith(answer[0]) for line in held.split(b"\r\n")):
                    self.cut.set()  # the server did it and said so; the client never hears
                    self._close(client, server)
                    return
