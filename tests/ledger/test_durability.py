"""``ledger.durability``: how a SQLite ledger commits (issue 21, item 7).

A power loss cannot be simulated here, so what ``full`` promises is shown where it is
decided: the connections a send really uses read back ``PRAGMA synchronous``, and the
system calls of a real ``statusmail send`` (under strace) show each commit written to
the write-ahead log followed by a sync of the log before anything else is written to it.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import UPDATE, UPDATE_AUDIENCE, clean_environ, command, invoke, missing, outbox_count
from editing import line_of
from statusmail import pipeline
from statusmail.errors import ConfigError
from statusmail.ledger import Ledger
from statusmail.ledger.database import SqliteDatabase
from statusmail.project.config import load_config

# PRAGMA synchronous reads back as a number: NORMAL is 1, FULL is 2.
SYNCHRONOUS = {"normal": 1, "full": 2}
SERVER = "postgresql://127.0.0.1:5432/test"


def choose(config: Path, durability: str) -> Path:
    with config.open("a", encoding="utf-8") as handle:
        handle.write(f"ledger: {{durability: {durability}}}\n")
    return config


def synchronous(ledger: Ledger) -> int:
    database = ledger.database
    assert isinstance(database, SqliteDatabase)
    value: int = database.db.execute("PRAGMA synchronous").fetchone()[0]
    return value


@pytest.mark.parametrize("durability", [None, "normal", "full"])
def test_the_connection_a_send_writes_through_commits_as_chosen(
    project: Path, durability: str | None
) -> None:
    if durability is not None:
        choose(project, durability)
    config = load_config(project, {})
    assert config.ledger.durability == (durability or "normal")
    with pipeline.open_ledger(config, UPDATE) as held:
        assert synchronous(held.ledger) == SYNCHRONOUS[durability or "normal"]
    # any other writer of the same file (serve, feedback, the selection) alike
    with Ledger(config.paths.ledger) as other:
        assert synchronous(other) == SYNCHRONOUS[durability or "normal"]


def test_only_the_file_its_config_names_is_written_so(project: Path, tmp_path: Path) -> None:
    load_config(choose(project, "full"), {})
    with Ledger(tmp_path / "elsewhere.db") as elsewhere:
        assert synchronous(elsewhere) == SYNCHRONOUS["normal"]


def test_an_unknown_durability_is_a_problem_at_its_line(project: Path) -> None:
    choose(project, "fast")
    line = line_of(project, "durability: fast")
    with pytest.raises(ConfigError) as info:
        load_config(project, {})
    assert [str(p) for p in info.value.problems] == [
        f"{project}:{line}: 'ledger.durability' is 'fast'; expected one of normal, full"
    ]


def test_a_postgresql_ledger_refuses_the_key_in_one_line(project: Path) -> None:
    # without the key the config is fine on the server: its durability is the server's
    assert load_config(project, {"STATUSMAIL_LEDGER": SERVER}).ledger.durability == "normal"
    choose(project, "full")
    line = line_of(project, "durability: full")
    result = invoke(project, "check", env={"STATUSMAIL_LEDGER": SERVER})
    assert result.exit_code == 1, result.output
    problems = [text for text in result.stderr.splitlines() if "ledger.durability" in text]
    assert problems == [
        f"{project}:{line}: 'ledger.durability' applies to a SQLite ledger only: a PostgreSQL "
        "ledger (paths.ledger or $STATUSMAIL_LEDGER) is as durable as the server's "
        "synchronous_commit makes it; remove the key"
    ]


# -- the system calls of a real send ---------------------------------------------------

STRACE = shutil.which("strace")
# strace -y -xx: each call with its file's path, and the first bytes of what is written,
# in hex (a frame header of the write-ahead log is 24 bytes: the page number, then the
# database's size in pages after the commit for a commit's last frame, else 0).
CALL = re.compile(
    r"^\d+ +(?P<call>pwrite64|fsync|fdatasync)\(\d+<(?P<path>(?:\\x[0-9a-f]{2})*)>"
    r'(?:, "(?P<data>(?:\\x[0-9a-f]{2})*)"(?:\.\.\.)?, (?P<size>\d+), \d+)?'
)
FRAME_HEADER = 24


@dataclass
class LogWrites:
    """What a send did to the ledger's write-ahead log, in order."""

    commits: int = 0  # commit frames written
    unsynced: int = 0  # of those, followed by another frame before a sync of the log
    syncs: int = 0


def unhex(text: str) -> bytes:
    return bytes.fromhex(text.replace("\\x", ""))


def calls(trace: str) -> Iterator[tuple[str, str, bytes, int]]:
    for line in trace.splitlines():
        found = CALL.match(line)
        if found:
            path = unhex(found["path"]).decode()
            yield found["call"], path, unhex(found["data"] or ""), int(found["size"] or 0)


def log_writes(trace: str, wal: Path) -> LogWrites:
    writes = LogWrites()
    waiting = False  # a commit frame not synced yet
    for call, path, data, size in calls(trace):
        if path != str(wal):
            continue
        if call == "pwrite64" and size == FRAME_HEADER:
            writes.unsynced += waiting
            waiting = int.from_bytes(data[4:8], "big") != 0
            writes.commits += waiting
        elif call in ("fsync", "fdatasync"):
            writes.syncs += 1
            waiting = False
    writes.unsynced += waiting
    return writes


def traced_send(project: Path, durability: str) -> LogWrites:
    """``statusmail send --yes`` of the sample entry under strace; what it did to the log."""
    if STRACE is None:
        missing("strace is not installed (apt-get install strace)")
    trace = project.parent / "strace.txt"
    # --seccomp-bpf: the calls not traced run at full speed
    argv = [STRACE, "-f", "--seccomp-bpf", "-y", "-xx", "-s", "8", "-o", str(trace)]
    argv += ["-e", "trace=pwrite64,fsync,fdatasync"]
    send = command(choose(project, durability), "send", UPDATE, "--yes", "--rate", "0")
    result = subprocess.run(
        [*argv, *send],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env=clean_environ(),
    )
    if result.returncode != 0 and result.stderr.startswith("strace:"):
        missing(f"strace cannot trace here: {result.stderr.splitlines()[0]}")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert outbox_count(project) == UPDATE_AUDIENCE
    ledger = Path(load_config(project, {}).paths.ledger)
    with Ledger(ledger, readonly=True) as done:
        assert done.counts(UPDATE)["sent"] == UPDATE_AUDIENCE
    return log_writes(trace.read_text(encoding="utf-8"), ledger.with_name(f"{ledger.name}-wal"))


def test_full_syncs_the_log_after_every_commit(project: Path) -> None:
    writes = traced_send(project, "full")
    concurrency = load_config(project, {}).sending.concurrency
    # every outcome was group-committed, each commit carrying at most one per connection
    assert writes.commits >= math.ceil(UPDATE_AUDIENCE / concurrency)
    assert writes.unsynced == 0
    assert writes.syncs >= writes.commits


def test_normal_leaves_commits_to_the_next_checkpoint(project: Path) -> None:
    writes = traced_send(project, "normal")
    concurrency = load_config(project, {}).sending.concurrency
    assert writes.commits >= math.ceil(UPDATE_AUDIENCE / concurrency)
    # Only the log's creation and the checkpoint as the send closed the ledger synced the
    # log: every other commit was left to the page cache.
    assert writes.syncs <= 2
    assert writes.unsynced >= writes.commits - writes.syncs
