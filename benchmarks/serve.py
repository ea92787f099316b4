#!/usr/bin/env python3
"""`statusmail serve` with its ledger on PostgreSQL against SQLite (issue 20): requests
per second of what a reader's click costs, the unsubscribe page's GET and then the
one-click POST, on both engines in the same run.

Setup: the sample project with PAIRS x REPS generated subscribers, sent once to a Maildir
with the ledger in a SQLite file and once with it in a fresh PostgreSQL schema, so each
page looks up a recipient the ledger knows. Then two `serve` processes, one per ledger,
run side by side for the whole run. A repetition visits PAIRS subscribers not visited
before on each engine, one engine after the other (the order alternating): CLIENTS
concurrent clients each take a subscriber, GET its page (the ledger's language lookup),
then POST the one-click body (the lookup again, and the suppression's insert). Every
request goes on a new TCP connection (`Connection: close`), as a mail client's click
does; `--keep-alive` keeps one connection per client instead.

Reported per engine: req/s (median of the repetitions, min-max), serve's CPU per request
(from /proc), the answers that were not 200; the ratio PostgreSQL/SQLite of the medians
and of each repetition's pair, against the target (>= 0.8); and the connections serve
held to PostgreSQL at the end (pg_stat_activity, by application_name).

    python benchmarks/serve.py [--pairs 500] [--reps 5] [--clients 8] [--keep-alive]
        [--postgres postgresql://127.0.0.1:5432/test] [--src DIR] [--keep]

`--src DIR` runs the sends and both `serve` processes from another source tree (an
older commit, or a patched copy). Everything talks to 127.0.0.1 only; each repetition is
bounded (10 s per request, 300 s per repetition), and the schema is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

from statusmail.project.tokens import Keyring, unsubscribe_token

ONE_CLICK = b"List-Unsubscribe=One-Click"
REQUEST_TIMEOUT = 10.0
REP_TIMEOUT = 300.0
TARGET = 0.8
APPLICATION = "statusmail-bench-serve"


def path_of(address: str) -> str:
    return "/status/unsubscribe/" + unsubscribe_token(Keyring(common.SECRET.encode()), address)


def request_bytes(method: str, path: str, keep_alive: bool) -> bytes:
    head = [
        f"{method} {path} HTTP/1.1",
        "Host: www.startmail.example",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    body = b""
    if method == "POST":
        body = ONE_CLICK
        head += ["Content-Type: application/x-www-form-urlencoded", f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


class Client:
    """One client's HTTP/1.1 connection(s) to 127.0.0.1:port."""

    def __init__(self, port: int, keep_alive: bool) -> None:
        self.port = port
        self.keep_alive = keep_alive
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(self, method: str, path: str) -> int:
        """The answer's status code (0: no answer)."""
        return await asyncio.wait_for(self._request(method, path), REQUEST_TIMEOUT)

    async def _request(self, method: str, path: str) -> int:
        if self.streams is None:
            self.streams = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self.streams
        writer.write(request_bytes(method, path, self.keep_alive))
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        if not self.keep_alive:
            await self.close()
        return status

    async def close(self) -> None:
        if self.streams is not None:
            writer = self.streams[1]
            self.streams = None
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def visit_all(
    port: int, addresses: list[str], clients: int, keep_alive: bool
) -> tuple[float, collections.Counter[int]]:
    """GET then POST for each address from ``clients`` concurrent clients: (seconds,
    statuses)."""
    todo = iter(addresses)
    statuses: collections.Counter[int] = collections.Counter()

    async def one_client() -> None:
        client = Client(port, keep_alive)
        try:
            for address in todo:
                path = path_of(address)
                for method in ("GET", "POST"):
                    try:
                        statuses[await client.request(method, path)] += 1
                    except (TimeoutError, OSError, asyncio.IncompleteReadError):
                        statuses[0] += 1
                        await client.close()
        finally:
            await client.close()

    start = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(one_client() for _ in range(clients))), REP_TIMEOUT)
    return time.perf_counter() - start, statuses


class Served:
    """``statusmail serve`` of one project (and one ledger) on a free port."""

    def __init__(self, name: str, config: Path, env: dict[str, str]) -> None:
        self.name = name
        self.port = common.free_port()
        self.log = config.parent / "serve.log"
        argv = common.statusmail_argv("serve", "--port", str(self.port), "--config", str(config))
        with self.log.open("wb") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                argv,
                env={**os.environ, **env},
                cwd=config.parent,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise SystemExit(
                    f"serve ({name}) exited {self.process.returncode}:\n{self.output()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"serve ({name}) did not listen within 30 s") from None
                time.sleep(0.05)

    def cpu(self) -> float:
        return common.proc_cpu(self.process.pid) or 0.0

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# -- PostgreSQL ------------------------------------------------------------------------


def admin(base: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    import psycopg

    with psycopg.connect(base, autocommit=True, connect_timeout=5) as conn:
        cursor = conn.execute(sql, params)
        return list(cursor.fetchall()) if cursor.description else []


def backends(base: str) -> int:
    rows = admin(
        base, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", APPLICATION
    )
    return int(str(rows[0][0]))


# -- the run ---------------------------------------------------------------------------


def setup(root: Path, n: int, env: dict[str, str]) -> Path:
    """The project with ``n`` subscribers, sent once to a Maildir with the ledger
    ``env`` names (or the SQLite file)."""
    config = common.configure(common.make_project(root, n), transport="maildir")
    done = common.run_child(
        common.statusmail_argv("send", common.ENTRY, "--yes", "--json", "--config", str(config)),
        env={**os.environ, "STATUSMAIL_UNSUBSCRIBE_SECRET": common.SECRET, **env},
        cwd=config.parent,
        timeout=600,
    )
    sent = done.json().get("counts", {}).get("sent")
    if done.returncode != 0 or sent != n:
        raise SystemExit(f"setup send: exit {done.returncode}, sent {sent} of {n}\n{done.stderr}")
    return config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=500, help="GET+POST pairs per repetition")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--keep-alive", action="store_true", help="a connection per client")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("STATUSMAIL_TEST_POSTGRES", "postgresql://127.0.0.1:5432/test"),
    )
    parser.add_argument("--src", type=Path, help="run statusmail from this source tree")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    env = {"STATUSMAIL_UNSUBSCRIBE_SECRET": common.SECRET}
    if args.src is not None:
        env["PYTHONPATH"] = str(args.src.resolve() / "src")
    schema = f"statusmail_bench_{secrets.token_hex(4)}"
    url = f"{args.postgres}{'&' if '?' in args.postgres else '?'}options=-csearch_path%3D{schema}"
    url += f"&application_name={APPLICATION}"
    n = args.pairs * args.reps
    tmp = Path(tempfile.mkdtemp(prefix="statusmail-serve-"))
    print(common.machine())
    print(
        f"{args.pairs} GET+POST pairs x {args.reps} repetitions per engine, {args.clients} "
        f"clients, {'keep-alive' if args.keep_alive else 'a new connection per request'}"
        f"{f', statusmail from {args.src}' if args.src else ''}; {common.load()}"
    )
    admin(args.postgres, f"CREATE SCHEMA {schema}")
    served: list[Served] = []
    try:
        configs = {
            "sqlite": setup(tmp / "sqlite", n, env),
            "postgresql": setup(tmp / "postgresql", n, env | {"STATUSMAIL_LEDGER": url}),
        }
        engines = {
            "sqlite": Served("sqlite", configs["sqlite"], env),
            "postgresql": Served(
                "postgresql", configs["postgresql"], env | {"STATUSMAIL_LEDGER": url}
            ),
        }
        served = list(engines.values())
        # the same subscribers on both engines, each visited once
        addresses = [common.subscriber_row(i).split(",", 1)[0] for i in range(n)]
        rates = {name: common.Stats() for name in engines}
        cpu = {name: common.Stats() for name in engines}
        failed = {name: 0 for name in engines}
        pairs: list[float] = []
        for rep in range(args.reps):
            batch = addresses[rep * args.pairs : (rep + 1) * args.pairs]
            order = list(engines) if rep % 2 == 0 else list(reversed(engines))
            this: dict[str, float] = {}
            for name in order:
                engine = engines[name]
                before = engine.cpu()
                seconds, statuses = asyncio.run(
                    visit_all(engine.port, batch, args.clients, args.keep_alive)
                )
                requests = sum(statuses.values())
                this[name] = requests / seconds
                rates[name].add(this[name])
                cpu[name].add((engine.cpu() - before) / requests * 1e3)
                failed[name] += requests - statuses[200]
                print(f"  rep {rep + 1} {name:<10} {this[name]:7.0f} req/s  {dict(statuses)}")
            pairs.append(this["postgresql"] / this["sqlite"])
        connections = backends(args.postgres)

        table = common.Table("serve: unsubscribe page GET + one-click POST")
        table.add("engine", "req/s median (min-max)", "serve CPU ms/request", "not 200")
        for name in engines:
            table.add(name, rates[name].show(), cpu[name].show("{:.2f}"), failed[name])
        table.print()
        ratio = rates["postgresql"].median / rates["sqlite"].median
        paired = common.Stats(pairs)
        print(
            f"\nPostgreSQL / SQLite: {ratio:.2f} (medians); per repetition "
            f"{paired.show('{:.2f}')}; target >= {TARGET}: {common.verdict(ratio >= TARGET)}"
        )
        print(f"serve's connections to PostgreSQL at the end: {connections}")
        print(common.load())
        for engine in served:
            problems = [line for line in engine.output().splitlines() if " INFO " not in line]
            if problems:
                print(f"serve ({engine.name}) said:\n  " + "\n  ".join(problems[-10:]))
        return 0 if ratio >= TARGET and not any(failed.values()) else 1
    finally:
        for engine in served:
            engine.stop()
        admin(args.postgres, f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        common.remove_unless_kept(tmp, args.keep)


if __name__ == "__main__":
    sys.exit(main())
