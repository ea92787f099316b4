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

It prints both, the ratio (target: real <= 1.5x the dry run), the IMAP commands Dovecot
read during each pass (counted from its raw log: FETCHes, MOVEs), and checks that the
real pass left exactly the unhandled reports in the inbox. `--src DIR` runs the
statusmail of another source tree (an older commit, for a before/after).
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
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import common

from feedback_helpers import _PLACEHOLDER as PLACEHOLDER  # the corpus's placeholders
from feedback_helpers import CORPUS, corpus_index
from imap_server import Dovecot
from statusmail.tokens import Keyring, message_id, return_path_token, unsubscribe_token

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


def feedback(
    config: Path, server: Dovecot, src: Path | None, *extra: str
) -> tuple[common.ChildResult, dict[str, Any], Counter[str]]:
    """One pass in a child: its result, its JSON report, the commands Dovecot read."""
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
    verbs: Counter[str] = Counter()
    for command in server.commands(start):
        words = command.upper().split()
        verbs[" ".join(words[:2] if words[:1] == ["UID"] else words[:1])] += 1
    return result, result.json(), verbs


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reports", type=int, default=10_000, help="reports in the box")
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

        (root / "tls").mkdir()
        _ca, cert, key = certificate(root / "tls")
        with Dovecot(cert, key) as server:
            point_at(config, server, root / "tls" / "ca.pem")
            addresses = [row.split(",", 1)[0] for row in subscribers.read_text().splitlines()[1:]]
            start = time.perf_counter()
            appended = server.append_many(reports(config, addresses))
            print(
                f"appended {appended} reports ({len(shapes())} shapes) to Dovecot "
                f"in {time.perf_counter() - start:.1f} s"
            )

            dry, dry_json, dry_verbs = feedback(config, server, args.src, "--dry-run")
            real, real_json, real_verbs = feedback(config, server, args.src)
            inbox, processed = len(server.folder("INBOX")), len(server.folder("processed"))

        print(
            f"\n{'pass':<9} {'wall s':>8} {'CPU s':>7} {'peak MB':>8} {'handled':>8}  IMAP commands"
        )
        for label, result, payload, verbs in (
            ("dry run", dry, dry_json, dry_verbs),
            ("real", real, real_json, real_verbs),
        ):
            shown = ", ".join(f"{verb} {count}" for verb, count in sorted(verbs.items()))
            print(
                f"{label:<9} {result.wall:>8.1f} {result.cpu:>7.1f} {result.peak_rss_mb:>8.0f} "
                f"{payload.get('handled', '?'):>8}  {shown}"
            )
        ratio = real.wall / dry.wall
        verdict = "MET" if ratio <= TARGET else "MISSED"
        print(f"\nreal / dry run: {ratio:.2f}x (target <= {TARGET}x): {verdict}")
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
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
