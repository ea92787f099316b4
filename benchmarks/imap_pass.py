#!/usr/bin/env python3
"""The IMAP feedback pass against its own dry run (issue 19).

Sends update-2020-04-21 to --reports (default 10,000) subscribers spread over 1,000
receiving domains (so that no domain's share trips the storm guard) through the maildir
transport, then fills the tests' real Dovecot (tests/imap_server.py, STARTTLS against a
trustme CA) with one bounce report per recipient: the feedback corpus's proof-bearing
shapes (Postfix and Exim DSNs, Office 365, Yandex, Mail.ru, Gmail over quota, ARF
complaints, mailto unsubscribes, ...) in turn, each filled in with statusmail's own
tokens for that recipient (the VERP return path, the Message-ID, the unsubscribe token)
and a Message-ID of its own, appended 500 to a MULTIAPPEND.

Then, in the same run and each in a child process (wall time, CPU, peak RSS):

  dry run   `statusmail feedback --dry-run --json`: reads and classifies every report,
            ties it to its delivery, records and moves nothing;
  real      `statusmail feedback --json`: the same, and records each event and moves
            every handled report to `processed`.

--reps (default 3) pairs of them, in turn; between two, the real pass is undone (its
reports moved back to the inbox in one UID MOVE, the ledger copied back as it was).
It prints both (median, min-max), the ratio per pair (target: the median real pass
<= 1.5x its dry run), the IMAP commands Dovecot read during each pass and the seconds
it took to answer them (from its raw log: FETCHes, MOVEs), and checks that the real
pass left exactly the unhandled reports in the inbox. `--src DIR` runs the statusmail
of another source tree (an older commit, for a before/after).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import common

from feedback_helpers import _PLACEHOLDER as PLACEHOLDER  # the corpus's placeholders
from feedback_helpers import CORPUS, corpus_index
from imap_server import Dovecot
from statusmail.project.tokens import Keyring, message_id, return_path_token, unsubscribe_token

DOMAINS = 1000
PASSWORD_ENV = "BENCH_IMAP_PASSWORD"
TARGET = 1.5
PROVEN = ("hard", "soft", "complaint", "unsubscribe")  # the corpus index's outcomes


def write_subscribers(path: Path, n: int) -> Path:
    """``n`` subscribers selected by the update, ``DOMAINS`` receiving domains."""
    with path.open("w", encoding="utf-8") as handle:
        handle.write("email,name,locale,region,topics,status\n")
        for i in range(n):
            row = common.subscriber_row(i)
            handle.write(row.replace("@example.net,", f"@m{i % DOMAINS:03d}.example.net,", 1))
    return path


def shapes() -> list[tuple[str, str, bytes]]:
    """(file, the address it is about, its bytes) of each corpus report that feedback
    proves and applies, about one recipient."""
    found = []
    for name, meta in corpus_index().items():
        if meta.get("outcome") not in PROVEN or len(meta.get("addresses", [])) > 1:
            continue
        found.append((name, str(meta["address"]), (CORPUS / name).read_bytes()))
    return found


class Filler:
    """The corpus placeholders filled in for any recipient, as ``feedback_helpers.fill``
    does for one, from the ledger's deliveries read once."""

    def __init__(self, config: Path) -> None:
        self.keys = Keyring(common.SECRET.encode())
        self.domain = "startmail.example"
        db = sqlite3.connect(f"file:{config.parent / 'statusmail.db'}?mode=ro", uri=True)
        try:
            self.sent = {
                (entry, address): (rowid, mid)
                for rowid, entry, address, mid in db.execute(
                    "SELECT rowid, entry_id, address, message_id FROM deliveries"
                )
            }
        finally:
            db.close()

    def report(self, i: int, about: str, template: bytes, address: str) -> bytes:
        data = template.replace(about.encode(), address.encode())

        def value(match: re.Match[bytes]) -> bytes:
            kind = match.group(1).decode()
            entry = (match.group(2) or b"").decode()
            whom = (match.group(3) or b"").decode()
            if kind == "VERP":
                rowid, _ = self.sent[(entry, whom)]
                return return_path_token(self.keys, entry, whom, "bounces", rowid).encode()
            if kind == "MSGID":
                mid = self.sent.get((entry, whom), (0, None))[1]
                return str(mid or message_id(self.keys, entry, whom, self.domain)).encode()
            if kind == "UNSUB":
                return unsubscribe_token(self.keys, entry).encode()
            return unsubscribe_token(Keyring(b"x" * 40), "someone@example.org").encode()

        data = PLACEHOLDER.sub(value, data)
        head, sep, body = data.partition(b"\n\n")
        own = f"Message-ID: <bench-{i:06d}@reports.example>".encode()
        head, found = re.subn(rb"(?im)^message-id:.*$", own, head, count=1)
        head = head if found else head + b"\n" + own
        return (head + sep + body).replace(b"\n", b"\r\n")


def reports(config: Path, addresses: list[str]) -> Iterator[bytes]:
    filler = Filler(config)
    kinds = shapes()
    for i, address in enumerate(addresses):
        _name, about, template = kinds[i % len(kinds)]
        yield filler.report(i, about, template, address)


def certificate(folder: Path) -> tuple[Path, Path, Path]:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = (folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    ca.cert_pem.write_to_path(str(files[0]))
    cert.cert_chain_pems[0].write_to_path(str(files[1]))
    cert.private_key_pem.write_to_path(str(files[2]))
    for file in files:
        file.chmod(0o644)
    return files


def point_at(config: Path, server: Dovecot, ca_file: Path) -> None:
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["bounces"] = {
        "address": "bounces@startmail.example",
        "imap": {
            "host": "127.0.0.1",
            "port": server.port,
            "security": "starttls",
            "username": "bounces",
            "password_env": PASSWORD_ENV,
            "folder": "INBOX",
            "ca_file": str(ca_file),
            "timeout": 60,
        },
    }
    config.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


@dataclass
class Pass:
    """One pass in a child: its result, its JSON report, and per IMAP verb the commands
    Dovecot read and the seconds it took to answer them."""

    result: common.ChildResult
    report: dict[str, Any]
    verbs: Counter[str] = field(default_factory=Counter)
    server_seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))


def server_time(server: Dovecot, since: float) -> tuple[Counter[str], defaultdict[str, float]]:
    """Per verb (``UID MOVE``, ``UID FETCH``, ...): how many commands Dovecot read from
    ``since`` on, and the seconds from reading each to writing its tagged answer, from
    its raw log (a session's ``.in`` and ``.out``, each line stamped)."""
    count: Counter[str] = Counter()
    seconds: defaultdict[str, float] = defaultdict(float)
    for log_in in server.rawlog.glob("*.in"):
        asked: dict[str, tuple[float, str]] = {}
        for line in log_in.read_text(errors="replace").splitlines():
            stamp, _, text = line.partition(" ")
            tag, _, command = text.partition(" ")
            words = command.upper().split()
            if float(stamp) >= since and words:
                verb = " ".join(words[:2] if words[0] == "UID" else words[:1])
                asked[tag] = (float(stamp), verb)
        log_out = log_in.with_suffix(".out")
        answers = log_out.read_text(errors="replace").splitlines() if log_out.exists() else []
        for line in answers:
            stamp, _, text = line.partition(" ")
            tag, _, status = text.partition(" ")
            if tag in asked and status[:3] in ("OK ", "NO ", "BAD"):
                at, verb = asked.pop(tag)
                count[verb] += 1
                seconds[verb] += float(stamp) - at
    return count, seconds


def feedback(config: Path, server: Dovecot, src: Path | None, *extra: str) -> Pass:
    env = {"STATUSMAIL_UNSUBSCRIBE_SECRET": common.SECRET, PASSWORD_ENV: server.password}
    if src is not None:
        env["PYTHONPATH"] = str(src / "src")
    start = time.time()
    result = common.run_child(
        common.statusmail_argv("feedback", "--json", *extra, "--config", str(config)),
        env=env,
        cwd=config.parent,
    )
    if result.returncode != 0:
        sys.exit(f"feedback {' '.join(extra)}: exit {result.returncode}\n{result.stderr[-3000:]}")
    return Pass(result, result.json(), *server_time(server, start))


def put_back(server: Dovecot, ledger: Path, saved: Path) -> None:
    """Undo a real pass: its reports back into the inbox (one UID MOVE), the ledger as
    it was before it."""
    client = server.client()
    try:
        client.select_folder("processed")
        if client.search(["ALL"]):
            client.move("1:*", "INBOX")
    finally:
        client.logout()
    for file in ledger.parent.glob(ledger.name + "*"):
        file.unlink()
    for file in saved.iterdir():
        shutil.copy2(file, ledger.parent / file.name)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reports", type=int, default=10_000, help="reports in the box")
    parser.add_argument("--reps", type=int, default=3, help="dry run and real pass, in turn")
    parser.add_argument("--src", type=Path, help="run the statusmail of this source tree")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    n = args.reports
    root = Path(tempfile.mkdtemp(prefix="imap-pass-"))
    try:
        subscribers = write_subscribers(root / "subscribers.csv", n)
        # the sample's config: the maildir outbox, the VERP return path bounces@
        config = common.make_project(root / "project", n, subscribers_csv=subscribers)
        sent = common.run_statusmail(config, "send", common.ENTRY, "--yes", "--rate", "0")
        if sent.returncode != 0:
            sys.exit(f"send: exit {sent.returncode}\n{sent.stderr[-3000:]}")
        print(f"sent {n} messages to the maildir outbox in {sent.wall:.1f} s")
        ledger, saved = config.parent / "statusmail.db", root / "ledger-before"
        saved.mkdir()
        for file in ledger.parent.glob(ledger.name + "*"):
            shutil.copy2(file, saved / file.name)

        (root / "tls").mkdir()
        _ca, cert, key = certificate(root / "tls")
        passes: list[tuple[Pass, Pass]] = []
        with Dovecot(cert, key) as server:
            point_at(config, server, root / "tls" / "ca.pem")
            addresses = [row.split(",", 1)[0] for row in subscribers.read_text().splitlines()[1:]]
            start = time.perf_counter()
            appended = server.append_many(reports(config, addresses))
            print(
                f"appended {appended} reports ({len(shapes())} shapes) to Dovecot "
                f"in {time.perf_counter() - start:.1f} s; {common.load()}"
            )
            for rep in range(args.reps):
                if rep:
                    put_back(server, ledger, saved)
                dry = feedback(config, server, args.src, "--dry-run")
                real = feedback(config, server, args.src)
                passes.append((dry, real))
                print(
                    f"  rep {rep + 1}: dry run {dry.result.wall:.1f} s, real "
                    f"{real.result.wall:.1f} s: {real.result.wall / dry.result.wall:.2f}x"
                )
            inbox, processed = len(server.folder("INBOX")), len(server.folder("processed"))
        print(common.load())
        return summarize(passes, n, inbox, processed)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def summarize(passes: list[tuple[Pass, Pass]], n: int, inbox: int, processed: int) -> int:
    print(
        f"\n{'pass':<8} {'wall s':>17} {'CPU s':>17} {'peak MB':>8} {'handled':>8}  "
        "IMAP commands (Dovecot's seconds answering them, last repetition)"
    )
    for index, label in ((0, "dry run"), (1, "real")):
        wall, cpu = common.Stats(), common.Stats()
        for pair in passes:
            wall.add(pair[index].result.wall)
            cpu.add(pair[index].result.cpu)
        last = passes[-1][index]
        shown = ", ".join(
            f"{verb} {count} ({last.server_seconds[verb]:.2f} s)"
            for verb, count in sorted(last.verbs.items())
        )
        print(
            f"{label:<8} {wall.show('{:.1f}'):>17} {cpu.show('{:.1f}'):>17} "
            f"{last.result.peak_rss_mb:>8.0f} {last.report.get('handled', '?'):>8}  {shown}"
        )
    ratios = common.Stats()
    for dry, real in passes:
        ratios.add(real.result.wall / dry.result.wall)
    verdict = common.verdict(ratios.median <= TARGET)
    print(
        f"\nreal / dry run, per repetition: {ratios.show('{:.2f}')}x "
        f"(target <= {TARGET}x, the median): {verdict}"
    )
    dry_json, real_json = passes[-1][0].report, passes[-1][1].report
    handled = int(real_json.get("handled", 0))
    print(f"inbox {inbox} left, processed {processed} (handled {handled} of {n})")
    mix = ("hard", "soft", "complaints", "unsubscribes", "unverified", "forged")
    held = sum(int(h["events"]) for h in real_json.get("held", []))
    print(
        "the real pass: "
        + ", ".join(f"{real_json.get(key, 0)} {key}" for key in mix)
        + f", {held} held, {real_json.get('newly_suppressed', 0)} newly suppressed"
    )
    if dry_json.get("handled") != handled or processed != handled or inbox != n - handled:
        print("MISMATCH: the dry run and the real pass disagree, or moves went astray")
        return 1
    return 0 if verdict == "MET" else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
