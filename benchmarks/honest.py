#!/usr/bin/env python3
"""Issue 22's honest benchmark: statusmail against the floors and the other senders, all
in one run, interleaved, on this machine, against a sink on the same machine.

Every repetition (default 3) runs each of these once, in an order rotated from one
repetition to the next, so that a change in the machine's load hits them alike; each
figure is the median of the repetitions (min–max):

  raw floor        the messages statusmail builds for the list (its own factory, 8bit,
                   the list's mix of variants, each with its VERP return path), sent
                   over C reused aiosmtplib sessions on the raw DATA path (MAIL, RCPT,
                   DATA, the bytes as they are): the least any Python sender on this
                   stack can cost. Its loop alone is timed.
  raw floor,       the same messages over the same sessions, pipelined (RFC 2920:
    pipelined      MAIL, RCPT and DATA in one write) through statusmail's own exchange,
                   as statusmail sends when the relay offers PIPELINING (smtp-sink
                   does); aiosmtplib cannot. Shown beside the issue's floor, which it
                   undercuts: the fair floor's target is the issue's, the raw loop's.
  fair floor       raw floor + building each message + recording each outcome in a
                   SQLite ledger (in groups of C), each measured in the same process
                   (benchmarks/fair.py): what statusmail cannot avoid doing. CPU per
                   message is the sum of the three; its throughput is that of the
                   "fair loop", the same three done together in one loop. "fair
                   floor, pipelined" is the same sum with the pipelined raw loop.
  email+smtplib    a plain sender (benchmarks/plain_smtplib.py): EmailMessage per
                   recipient from statusmail's text and HTML, smtplib's send_message,
                   C connections (a thread each); --plain-n recipients (its rate does
                   not depend on N).
  mailmerge        (PyPI) one message per row, one connection per message (its way):
                   --mailmerge-n rows, from a scratch venv; skipped, saying why, if absent.
  smtp-source      Postfix's C load generator, the median message, C reused sessions:
                   the machine's limit; skipped, saying why, if absent.
  statusmail       `statusmail send update-2020-04-21 --yes --json` on a generated
                   project of N recipients (default 5,000), a child, everything included
                   (start-up, selection into the ledger, rendering, sending, commits):
                   DKIM off and on (a generated 2048-bit RSA key), at each C, SQLite;
                   once with the ledger on PostgreSQL (C = the last of -c); with
                   `sending.processes` = each of --processes once the tree has that
                   setting. Its CPU is also read when it logs "delivering through",
                   which splits start-up from delivery.
  dry run          `statusmail send --dry-run --json --preview-dir DIR` of --dry-n
                   recipients (100,000) and of 84 (start-up alone): CPU per recipient.

CPU is user + system time: of the loop (getrusage) for the floors and the plain sender,
of the whole process (os.wait4) for statusmail, mailmerge and smtp-source. The sink is
Postfix's smtp-sink when it is found, else benchmarks/fastsink.py (asyncio), a fresh one
for each run; every run's count at the sink is checked against N.

--quick (N 500, 1 repetition, a dry run of 10,000) tries it all out in under a minute.

Targets (issue 22): DKIM on >= 0.8x DKIM off at C = 1 and 8; statusmail's CPU per
message <= 1.2x the fair floor's at C = 8; PostgreSQL >= 0.8x SQLite; the dry run
<= 55 us of CPU per recipient at 100,000.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import fair
import loopback

HERE = Path(__file__).resolve().parent

ENTRY = common.ENTRY
DKIM = {"domain": "startmail.example", "selector": "status", "key_file": "dkim.key"}
POSTGRES = os.environ.get("STATUSMAIL_TEST_POSTGRES", "postgresql://127.0.0.1:5432/test")


# -- the sink --------------------------------------------------------------------


@dataclass
class Postfix:
    """Where Postfix's smtp-sink and smtp-source are, and the environment they need."""

    sink: Path | None
    source: Path | None
    env: dict[str, str]
    why_not: str = ""

    @classmethod
    def find(cls, root: Path | None) -> Postfix:
        if root is not None:  # an unpacked postfix .deb: its libraries beside it
            sbin, libs = root / "usr/sbin", root / "usr/lib/postfix"
            env = {"LD_LIBRARY_PATH": str(libs)}
        else:
            sbin, env = Path("/usr/sbin"), {}
        sink, source = sbin / "smtp-sink", sbin / "smtp-source"
        if not source.exists():
            return cls(
                sink if sink.exists() else None,
                None,
                env,
                f"{source} not found (Debian package postfix; see benchmarks/README.md)",
            )
        return cls(sink if sink.exists() else None, source, env)


class Sink:
    """A fresh SMTP sink on 127.0.0.1: Postfix's smtp-sink, or fastsink.py (asyncio)."""

    def __init__(self, kind: str, postfix: Postfix) -> None:
        self.kind = kind
        self._out = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop)
        if kind == "smtp-sink":
            assert postfix.sink is not None
            self.port = common.free_port()
            argv = [str(postfix.sink), "-c", "-m", "256"]
            if os.geteuid() == 0:
                argv += ["-u", "nobody"]
            argv += [f"127.0.0.1:{self.port}", "1000"]
            self.proc = subprocess.Popen(
                argv,
                stdout=self._out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **postfix.env},
            )
            deadline = time.monotonic() + 5
            while True:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                    break
                except OSError as error:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        self.stop()
                        raise RuntimeError(
                            f"smtp-sink did not start on 127.0.0.1:{self.port}"
                        ) from error
                    time.sleep(0.02)
        else:
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / "fastsink.py")],
                stdout=subprocess.PIPE,
                stderr=self._out,
            )
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline().decode()  # "ready PORT" once it listens
            if not line.startswith("ready "):
                self.stop()
                raise RuntimeError(f"fastsink.py did not start: {line!r}")
            self.port = int(line.split()[1])

    def count(self, expected: int) -> int:
        """The messages taken, once the sender is done; stops the sink."""
        if self.kind == "smtp-sink":
            # smtp-sink prints its counters as sessions end: wait (2 s at most) for the
            # last one, then stop it.
            deadline = time.monotonic() + 2
            got = 0
            while time.monotonic() < deadline:
                self._out.seek(0)
                found = [int(x) for x in mesg_counters(self._out.read())]
                got = found[-1] if found else 0
                if got >= expected:
                    break
                time.sleep(0.02)
            self.stop()
            return got
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=10)
        self._out.close()
        for line in out.decode().splitlines():
            if line.startswith("messages "):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._out.close()


def mesg_counters(data: bytes) -> list[bytes]:
    import re

    return re.findall(rb"mesg=(\d+)", data)


# -- results ---------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    sender: str
    dkim: str = "off"
    conc: str = "-"
    processes: str = "1"
    ledger: str = "-"


Figures = dict[str, common.Stats]


@dataclass
class Run:
    args: argparse.Namespace
    tmp: Path
    config: Path
    subscribers: Path
    postfix: Postfix
    sink_kind: str
    dkim_config: Path
    results: dict[Row, Figures] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(common.Stats))
    )
    problems: list[str] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)  # the 1-minute load before each run
    skipped: dict[str, str] = field(default_factory=dict)

    def sink(self) -> Sink:
        return Sink(self.sink_kind, self.postfix)

    def complain(self, what: str, detail: str) -> None:
        line = f"{what}: {detail}"
        print(f"  PROBLEM {line}", flush=True)
        self.problems.append(line)


# -- the project -----------------------------------------------------------------


def set_config(
    config: Path,
    *,
    port: int = 25,
    conc: int = 8,
    dkim: bool = False,
    processes: int | None = None,
    transport: str = "smtp",
) -> None:
    common.configure(config, transport=transport, port=port, concurrency=conc)
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data.pop("dkim", None)
    if dkim:
        data["dkim"] = dict(DKIM)
    if processes is not None:
        data["sending"]["processes"] = processes
    config.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


def write_rsa_key(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def processes_supported() -> bool:
    """Whether this tree has `sending.processes` (another change adds it)."""
    from statusmail.project.sending import SendingSettings

    return "processes" in SendingSettings.__dataclass_fields__


def prepare_messages(run: Run) -> tuple[Path, Path, bytes]:
    """What the other senders send, all made by statusmail's own factory for the list's
    first 84 rows: smtp-source's file (the median 8bit message), the plain sender's
    templates (en and ru) and mailmerge's 7-bit message."""
    factory, recipients = fair.factory_and_recipients(run.config, common.SECRET, 84)
    eight = sorted((factory.build(r, eight_bit=True).envelope.data for r in recipients), key=len)
    seven = sorted((factory.build(r, eight_bit=False).envelope.data for r in recipients), key=len)
    sizes = [len(d) for d in eight]
    print(
        f"messages: 84 in the list's mix, {min(sizes)}–{max(sizes)} bytes (8bit), "
        f"mean {sum(sizes) / len(sizes):.0f}"
    )
    source_eml = run.tmp / "source.eml"  # smtp-source appends CRLF to each line
    source_eml.write_bytes(eight[len(eight) // 2].replace(b"\r\n", b"\n"))
    templates: dict[str, dict[str, str]] = {}
    for recipient in recipients:
        lang = "ru" if recipient.locale.startswith("ru") else "en"
        if lang in templates or not recipient.name:
            continue
        rendered = factory.build(recipient, eight_bit=True).rendered
        url = factory.unsubscribe_url(recipient.address)
        templates[lang] = {
            "subject": rendered.subject,
            "text": rendered.text.replace(recipient.name, "%NAME%").replace(url, "%URL%"),
            "html": rendered.html.replace(recipient.name, "%NAME%").replace(url, "%URL%"),
        }
    path = run.tmp / "templates.json"
    path.write_text(json.dumps(templates, ensure_ascii=False), encoding="utf-8")
    return source_eml, path, seven[len(seven) // 2]


# -- the runs --------------------------------------------------------------------


def fair_floor(run: Run, conc: int) -> None:
    n = run.args.n
    ledgers = run.tmp / "ledgers"
    shutil.rmtree(ledgers, ignore_errors=True)
    ledgers.mkdir()
    sink = run.sink()
    set_config(run.config, port=sink.port, conc=conc)  # DKIM off: a statusmail run set it
    child = common.run_child(
        [
            sys.executable,
            str(HERE / "fair.py"),
            *("--config", str(run.config), "--secret", common.SECRET),
            *("--port", str(sink.port), "--n", str(n), "--concurrency", str(conc)),
            *("--ledgers", str(ledgers), "--dkim-config", str(run.dkim_config)),
            *("--dkim-n", str(min(n, 2000))),
        ]
    )
    out = child.json() if child.returncode == 0 else {}
    sends = 3 if "pipelined" in out else 2  # the raw loop, the fair loop, pipelined
    got = sink.count(sends * n)
    if child.returncode != 0 or got != sends * n:
        run.complain(f"fair.py C={conc}", f"exit {child.returncode}, sink got {got} of {sends * n}")
        print(child.stderr[-1500:])
        return
    raw, loop = out["raw"], out["loop"]
    if loop["recorded"] != n:
        run.complain(f"fair loop C={conc}", f"{loop['recorded']} of {n} recorded")
    figures = run.results[Row("raw floor", conc=str(conc))]
    figures["msg/s"].add(n / raw["wall"])
    figures["CPU us/msg"].add(raw["cpu"] / n * 1e6)
    parts = run.results[Row("fair floor", conc=str(conc), ledger="SQLite")]
    parts["build us"].add(out["build_us"])
    parts["record us"].add(out["record_us"])
    parts["CPU us/msg"].add(raw["cpu"] / n * 1e6 + out["build_us"] + out["record_us"])
    parts["msg/s"].add(n / loop["wall"])
    parts["loop CPU us/msg"].add(loop["cpu"] / n * 1e6)
    parts["process CPU us/msg"].add(child.cpu / (sends * n) * 1e6)
    if "pipelined" in out:
        piped = out["pipelined"]
        figures = run.results[Row("raw floor, pipelined", conc=str(conc))]
        figures["msg/s"].add(n / piped["wall"])
        figures["CPU us/msg"].add(piped["cpu"] / n * 1e6)
        fair = run.results[Row("fair floor, pipelined", conc=str(conc), ledger="SQLite")]
        fair["CPU us/msg"].add(piped["cpu"] / n * 1e6 + out["build_us"] + out["record_us"])
    signed = run.results[Row("fair floor", dkim="RSA 2048", conc=str(conc), ledger="SQLite")]
    signed["build us"].add(out["build_dkim_us"])
    signed["record us"].add(out["record_us"])
    signed["CPU us/msg"].add(raw["cpu"] / n * 1e6 + out["build_dkim_us"] + out["record_us"])


def plain(run: Run, conc: int, templates: Path) -> None:
    n = run.args.plain_n
    sink = run.sink()
    child = common.run_child(
        [
            sys.executable,
            str(HERE / "plain_smtplib.py"),
            *("--port", str(sink.port), "--csv", str(run.subscribers)),
            *("--templates", str(templates), "--n", str(n), "--concurrency", str(conc)),
        ]
    )
    got = sink.count(n)
    if child.returncode != 0 or got != n:
        run.complain(f"email+smtplib C={conc}", f"exit {child.returncode}, sink got {got} of {n}")
        print(child.stdout[-500:], child.stderr[-1500:])
        return
    out = child.json()
    figures = run.results[Row("email + smtplib", conc=str(conc))]
    figures["msg/s"].add(n / out["wall"])
    figures["CPU us/msg"].add(out["cpu"] / n * 1e6)
    figures["process CPU us/msg"].add(child.cpu / n * 1e6)


def smtp_source(run: Run, conc: int, message: Path) -> None:
    n = run.args.n
    assert run.postfix.source is not None
    sink = run.sink()
    child = common.run_child(
        [
            str(run.postfix.source),
            *("-d", "-s", str(conc), "-m", str(n)),
            *("-f", "status@startmail.example", "-t", "user@example.net"),
            *("-F", str(message), f"127.0.0.1:{sink.port}"),
        ],
        env=run.postfix.env,
    )
    got = sink.count(n)
    if child.returncode != 0 or got != n:
        run.complain(f"smtp-source C={conc}", f"exit {child.returncode}, sink got {got} of {n}")
        return
    figures = run.results[Row("smtp-source", conc=str(conc))]
    figures["msg/s"].add(n / child.wall)
    figures["CPU us/msg"].add(child.cpu / n * 1e6)


def mailmerge(run: Run, program: str, seven: bytes) -> None:
    n = run.args.mailmerge_n
    sink = run.sink()
    argv = loopback.mailmerge_inputs(
        run.tmp / "mailmerge", seven, run.subscribers, n, sink.port, program=program
    )
    child = common.run_child(argv, timeout=600)
    got = sink.count(n)
    if child.returncode != 0 or got != n:
        run.complain("mailmerge", f"exit {child.returncode}, sink got {got} of {n}")
        print(child.stderr[-1500:])
        return
    figures = run.results[Row("mailmerge", conc="1/msg")]
    figures["msg/s"].add(n / child.wall)
    figures["CPU us/msg"].add(child.cpu / n * 1e6)


def statusmail(
    run: Run, conc: int, *, dkim: bool, processes: int | None, postgres: str | None
) -> None:
    n = run.args.n
    config = run.config
    common.fresh_ledger(config)
    env = {"STATUSMAIL_UNSUBSCRIBE_SECRET": common.SECRET}
    schema = None
    if postgres is not None:
        schema = f"statusmail_bench_{secrets.token_hex(4)}"
        admin(postgres, f"CREATE SCHEMA {schema}")
        sep = "&" if "?" in postgres else "?"
        env["STATUSMAIL_LEDGER"] = f"{postgres}{sep}options=-csearch_path%3D{schema}"
    label = (
        f"statusmail DKIM {'RSA' if dkim else 'off'} C={conc}"
        f"{'' if processes is None else f' processes={processes}'}"
        f"{' PostgreSQL' if postgres else ''}"
    )
    sink = run.sink()
    try:
        set_config(config, port=sink.port, conc=conc, dkim=dkim, processes=processes)
        marked = common.run_marked(
            common.statusmail_argv("send", ENTRY, "--yes", "--json", "--config", str(config)),
            " delivering through ",
            env=env,
            cwd=config.parent,
            timeout=900,
        )
    finally:
        got = sink.count(n)
        if schema is not None and postgres is not None:
            admin(postgres, f"DROP SCHEMA {schema} CASCADE")
    child = marked.child
    if child.returncode != 0 or got != n:
        run.complain(label, f"exit {child.returncode}, sink got {got} of {n}")
        print(child.stderr[-1500:])
        return
    row = Row(
        "statusmail",
        dkim="RSA 2048" if dkim else "off",
        conc=str(conc),
        processes=str(processes or 1),
        ledger="PostgreSQL" if postgres else "SQLite",
    )
    figures = run.results[row]
    figures["msg/s"].add(n / child.wall)
    figures["CPU us/msg"].add(child.cpu / n * 1e6)
    figures["peak RSS MB"].add(child.peak_rss_mb)
    # With several processes /proc of the first one does not say where delivery began.
    if marked.mark_wall is not None and marked.mark_cpu is not None and (processes or 1) == 1:
        figures["before delivery s"].add(marked.mark_wall)
        figures["delivery msg/s"].add(n / (child.wall - marked.mark_wall))
        figures["delivery CPU us/msg"].add((child.cpu - marked.mark_cpu) / n * 1e6)


def admin(base: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(base, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.encode())


def dry_run(run: Run, config: Path, n: int) -> None:
    previews = run.tmp / f"previews-{n}"
    shutil.rmtree(previews, ignore_errors=True)
    child = common.run_statusmail(
        config, "send", ENTRY, "--dry-run", "--json", "--preview-dir", str(previews)
    )
    if child.returncode != 0:
        run.complain(f"dry run of {n}", f"exit {child.returncode}")
        print(child.stderr[-1500:])
        return
    figures = run.results[Row("statusmail --dry-run", conc=f"{n:,} recipients")]
    figures["recipients/s"].add(n / child.wall)
    figures["CPU s"].add(child.cpu)
    figures["CPU us/recipient"].add(child.cpu / n * 1e6)
    figures["peak RSS MB"].add(child.peak_rss_mb)


# -- reporting -------------------------------------------------------------------


def md_table(title: str, header: list[str], rows: list[list[str]]) -> str:
    lines = [f"\n### {title}\n", "| " + " | ".join(header) + " |"]
    lines.append("| " + " | ".join("---" for _ in header) + " |")
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def show(figures: Figures, key: str, fmt: str = "{:,.0f}") -> str:
    return figures[key].show(fmt) if key in figures and figures[key].values else "–"


def med(run: Run, row: Row, key: str) -> float | None:
    figures = run.results.get(row)
    if figures is None or key not in figures or not figures[key].values:
        return None
    return figures[key].median


def report(run: Run, levels: list[int], processes: list[int]) -> str:
    out: list[str] = []
    senders: list[list[str]] = []
    order = [
        "raw floor",
        "raw floor, pipelined",
        "fair floor",
        "fair floor, pipelined",
        "email + smtplib",
        "mailmerge",
        "smtp-source",
        "statusmail",
    ]
    rows = sorted(
        (r for r in run.results if r.sender in order),
        key=lambda r: (
            order.index(r.sender),
            r.ledger == "PostgreSQL",
            r.processes,
            r.dkim != "off",
            int(r.conc) if r.conc.isdigit() else 0,
        ),
    )
    for row in rows:
        f = run.results[row]
        senders.append(
            [
                row.sender,
                row.dkim,
                row.conc,
                row.processes,
                row.ledger,
                show(f, "msg/s"),
                show(f, "CPU us/msg"),
                show(f, "delivery msg/s"),
                show(f, "delivery CPU us/msg"),
            ]
        )
    for name, why in run.skipped.items():
        senders.append([name, "–", "–", "–", "–", f"skipped: {why}", "–", "–", "–"])
    out.append(
        md_table(
            "Senders: median (min–max) of the repetitions",
            [
                "sender",
                "DKIM",
                "C",
                "processes",
                "ledger",
                "msg/s",
                "CPU µs/msg",
                "delivery msg/s",
                "delivery CPU µs/msg",
            ],
            senders,
        )
    )

    parts: list[list[str]] = []
    for conc in levels:
        raw = run.results.get(Row("raw floor", conc=str(conc)))
        fl = run.results.get(Row("fair floor", conc=str(conc), ledger="SQLite"))
        signed = run.results.get(
            Row("fair floor", dkim="RSA 2048", conc=str(conc), ledger="SQLite"), {}
        )
        if raw is None or fl is None:
            continue
        parts.append(
            [
                str(conc),
                show(raw, "CPU us/msg", "{:,.1f}"),
                show(fl, "build us", "{:,.1f}"),
                show(signed, "build us", "{:,.1f}"),
                show(fl, "record us", "{:,.1f}"),
                show(fl, "CPU us/msg", "{:,.1f}"),
                show(signed, "CPU us/msg", "{:,.1f}"),
                show(fl, "loop CPU us/msg", "{:,.1f}"),
                show(fl, "msg/s"),
            ]
        )
    if parts:
        out.append(
            md_table(
                "The fair floor's parts, CPU µs per message, one process",
                [
                    "C",
                    "raw loop",
                    "build",
                    "build, DKIM RSA",
                    f"record ({'/'.join(str(c) for c in levels)} per transaction)",
                    "fair floor = sum",
                    "the same, DKIM RSA",
                    "the three in one loop",
                    "that loop's msg/s",
                ],
                parts,
            )
        )

    dry = []
    for row, f in run.results.items():
        if row.sender == "statusmail --dry-run":
            dry.append(
                [
                    row.conc,
                    show(f, "recipients/s"),
                    show(f, "CPU s", "{:.2f}"),
                    show(f, "CPU us/recipient", "{:.1f}"),
                    show(f, "peak RSS MB"),
                ]
            )
    if dry:
        out.append(
            md_table(
                "Dry run (`send --dry-run --json --preview-dir`), whole process",
                ["list", "recipients/s", "CPU s", "CPU µs/recipient", "peak RSS MB"],
                dry,
            )
        )

    ratios: list[list[str]] = []

    def ratio(what: str, conc: str, a: float | None, b: float | None, target: str) -> None:
        if a is None or b is None:
            ratios.append([what, conc, "–", target, "not measured"])
            return
        value = a / b
        if target.startswith(">="):
            verdict = common.verdict(value >= float(target[2:]))
        elif target.startswith("<="):
            verdict = common.verdict(value <= float(target[2:]))
        else:
            verdict = ""
        ratios.append([what, conc, f"{value:.2f}", target or "–", verdict])

    def sm(conc: int, key: str, **kw: str) -> float | None:
        return med(run, Row("statusmail", conc=str(conc), **kw), key)

    last = levels[-1]
    for conc in levels:
        ratio(
            "msg/s, DKIM RSA / off",
            str(conc),
            sm(conc, "msg/s", dkim="RSA 2048", ledger="SQLite"),
            sm(conc, "msg/s", ledger="SQLite"),
            ">=0.8",
        )
        ratio(
            "CPU/msg, DKIM RSA / off",
            str(conc),
            sm(conc, "CPU us/msg", dkim="RSA 2048", ledger="SQLite"),
            sm(conc, "CPU us/msg", ledger="SQLite"),
            "",
        )
    fair_cpu = {
        c: med(run, Row("fair floor", conc=str(c), ledger="SQLite"), "CPU us/msg") for c in levels
    }
    for conc in levels:
        ratio(
            "CPU/msg, statusmail delivery / fair floor",
            str(conc),
            sm(conc, "delivery CPU us/msg", ledger="SQLite"),
            fair_cpu[conc],
            "<=1.2" if conc == 8 else "",
        )
        ratio(
            "CPU/msg, statusmail delivery / fair floor with the pipelined raw loop",
            str(conc),
            sm(conc, "delivery CPU us/msg", ledger="SQLite"),
            med(
                run,
                Row("fair floor, pipelined", conc=str(conc), ledger="SQLite"),
                "CPU us/msg",
            ),
            "",
        )
        ratio(
            "CPU/msg, statusmail delivery / fair floor, both DKIM RSA",
            str(conc),
            sm(conc, "delivery CPU us/msg", dkim="RSA 2048", ledger="SQLite"),
            med(
                run,
                Row("fair floor", dkim="RSA 2048", conc=str(conc), ledger="SQLite"),
                "CPU us/msg",
            ),
            "",
        )
        ratio(
            "CPU/msg, statusmail whole process / fair floor",
            str(conc),
            sm(conc, "CPU us/msg", ledger="SQLite"),
            fair_cpu[conc],
            "",
        )
        ratio(
            "msg/s, statusmail / fair loop",
            str(conc),
            sm(conc, "msg/s", ledger="SQLite"),
            med(run, Row("fair floor", conc=str(conc), ledger="SQLite"), "msg/s"),
            "",
        )
        ratio(
            "msg/s, statusmail / raw floor",
            str(conc),
            sm(conc, "msg/s", ledger="SQLite"),
            med(run, Row("raw floor", conc=str(conc)), "msg/s"),
            "",
        )
        ratio(
            "msg/s, statusmail / email + smtplib",
            str(conc),
            sm(conc, "msg/s", ledger="SQLite"),
            med(run, Row("email + smtplib", conc=str(conc)), "msg/s"),
            "",
        )
        if "mailmerge" not in run.skipped:
            ratio(
                "msg/s, statusmail / mailmerge",
                str(conc),
                sm(conc, "msg/s", ledger="SQLite"),
                med(run, Row("mailmerge", conc="1/msg"), "msg/s"),
                "",
            )
        if "smtp-source" not in run.skipped:
            ratio(
                "msg/s, raw floor / smtp-source",
                str(conc),
                med(run, Row("raw floor", conc=str(conc)), "msg/s"),
                med(run, Row("smtp-source", conc=str(conc)), "msg/s"),
                "",
            )
    if "PostgreSQL" not in run.skipped:
        ratio(
            "msg/s, PostgreSQL / SQLite",
            str(last),
            sm(last, "msg/s", ledger="PostgreSQL"),
            sm(last, "msg/s", ledger="SQLite"),
            ">=0.8",
        )
    for p in processes:
        for dkim in ("off", "RSA 2048"):
            ratio(
                f"msg/s, {p} processes / 1, DKIM {dkim}",
                str(last),
                sm(last, "msg/s", dkim=dkim, processes=str(p), ledger="SQLite"),
                sm(last, "msg/s", dkim=dkim, ledger="SQLite"),
                "",
            )
    dry_cpu = med(
        run,
        Row("statusmail --dry-run", conc=f"{run.args.dry_n:,} recipients"),
        "CPU us/recipient",
    )
    if dry_cpu is not None:
        ratios.append(
            [
                f"dry run, CPU µs per recipient at {run.args.dry_n:,}",
                "–",
                f"{dry_cpu:.1f}",
                "<= 55",
                common.verdict(dry_cpu <= 55) if run.args.dry_n == 100_000 else "(not at 100,000)",
            ]
        )
    big = Row("statusmail --dry-run", conc=f"{run.args.dry_n:,} recipients")
    small = Row("statusmail --dry-run", conc="84 recipients")
    big_cpu, small_cpu = med(run, big, "CPU s"), med(run, small, "CPU s")
    if big_cpu is not None and small_cpu is not None:
        marginal = (big_cpu - small_cpu) / (run.args.dry_n - 84) * 1e6
        ratios.append(
            [
                "the same, start-up (the 84-recipient run's CPU) taken off",
                "–",
                f"{marginal:.1f}",
                "–",
                "",
            ]
        )
    out.append(
        md_table(
            "Ratios of medians, against issue 22's targets",
            ["ratio", "C", "value", "target", "verdict"],
            ratios,
        )
    )
    return "\n".join(out)


# -- main ------------------------------------------------------------------------


def source_tree(args: argparse.Namespace, tmp: Path) -> tuple[Path, str]:
    """The statusmail tree to measure, and what to call it. Unless --worktree, a copy of
    a commit (--rev, default HEAD) made with git archive, so that edits to the checkout
    while the benchmark runs (other people's, in a shared tree) change nothing; every
    child and this process import statusmail from it (PYTHONPATH), and the projects
    are copies of its sample."""
    if args.worktree:
        compileall.compile_dir(common.REPO / "src", quiet=2)
        return common.REPO, common.revision()
    rev = subprocess.run(
        ["git", "-C", str(common.REPO), "rev-parse", "--short", args.rev],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    tree = common.archived(rev, tmp / "tree")
    src = str(tree / "src")
    sys.path.insert(0, src)
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = src + (os.pathsep + previous if previous else "")
    return tree, rev


def find_mailmerge(given: str | None) -> tuple[str | None, str]:
    candidates = [given] if given else []
    candidates += [
        str(Path(sys.executable).parent / "mailmerge"),
        shutil.which("mailmerge") or "",
        "/tmp/mm-venv/bin/mailmerge",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return candidate, ""
    return None, (
        "mailmerge not found (python3 -m venv /tmp/mm-venv && "
        "/tmp/mm-venv/bin/pip install mailmerge, or --mailmerge PATH)"
    )


def postgres_reachable(url: str) -> str:
    try:
        admin(url, "SELECT 1")
    except Exception as error:  # any failure: the column is skipped, saying why
        return f"PostgreSQL at {url} not reachable ({type(error).__name__}: {error})"
    return ""


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, help="recipients per send (default 5000; quick 500)")
    parser.add_argument("--reps", type=int, help="interleaved repetitions (default 3; quick 1)")
    parser.add_argument("-c", "--concurrency", default="1,8", help="connections (default 1,8)")
    parser.add_argument(
        "--processes",
        default=str(os.cpu_count() or 2),
        help="sending.processes values beside 1, comma-separated, run at the last -c once the "
        "tree has the setting (default: the cores, here %(default)s); '' for none",
    )
    parser.add_argument("--dry-n", type=int, help="dry-run list (default 100000; quick 10000)")
    parser.add_argument("--mailmerge-n", type=int, help="mailmerge rows (default 500; quick 100)")
    parser.add_argument(
        "--plain-n", type=int, help="email+smtplib recipients (default 2000; quick 300)"
    )
    parser.add_argument("--mailmerge", help="the mailmerge program (default: found)")
    parser.add_argument(
        "--sink",
        choices=("auto", "smtp-sink", "asyncio"),
        default="auto",
        help="smtp-sink (Postfix, C) or fastsink.py (asyncio); auto: smtp-sink if found",
    )
    parser.add_argument(
        "--postfix-root",
        type=Path,
        help="an unpacked postfix .deb (dpkg-deb -x) holding usr/sbin/smtp-source and its "
        "libraries, instead of /usr/sbin",
    )
    parser.add_argument("--postgres", default=POSTGRES, help="PostgreSQL server (%(default)s)")
    parser.add_argument(
        "--skip", default="", help="comma-separated: mailmerge,smtp-source,postgres"
    )
    parser.add_argument("--quick", action="store_true", help="a try-out in under a minute")
    parser.add_argument(
        "--rev",
        default="HEAD",
        help="the commit to measure, copied with git archive (default HEAD)",
    )
    parser.add_argument(
        "--worktree",
        action="store_true",
        help="measure the checkout as it is (uncommitted changes; others' edits too)",
    )
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    args.n = args.n or (500 if args.quick else 5000)
    args.dry_n = args.dry_n or (10_000 if args.quick else 100_000)
    args.reps = args.reps or (1 if args.quick else 3)
    args.mailmerge_n = args.mailmerge_n or (100 if args.quick else 500)
    args.plain_n = args.plain_n or (300 if args.quick else 2000)
    levels = [int(c) for c in args.concurrency.split(",")]
    skip = set(filter(None, args.skip.split(",")))

    postfix = Postfix.find(args.postfix_root)
    sink_kind = args.sink
    if sink_kind == "auto":
        sink_kind = "smtp-sink" if postfix.sink is not None else "asyncio"
    if sink_kind == "smtp-sink" and postfix.sink is None:
        sys.exit("smtp-sink not found: --postfix-root DIR or --sink asyncio")
    program, mailmerge_missing = find_mailmerge(args.mailmerge)
    processes = [int(p) for p in args.processes.split(",") if p.strip()]

    tmp = Path(tempfile.mkdtemp(prefix="sm-bench-honest-"))
    started = time.perf_counter()
    try:
        tree, revision = source_tree(args, tmp)
        has_processes = processes_supported()
        where = common.machine().rsplit(" · statusmail ", 1)[0] + f" · statusmail {revision}"
        print(
            f"honest: N={args.n} C={levels} reps={args.reps} dry-run {args.dry_n:,}  sink: "
            f"{sink_kind}  ({time.strftime('%Y-%m-%d %H:%M')}, {where})\n"
            f"start: {common.load()}",
            flush=True,
        )

        def make_project(root: Path, n: int, subscribers_csv: Path | None = None) -> Path:
            """common.make_project's, from the sample project of the tree measured."""
            root.mkdir(parents=True)
            for item in common.SAMPLE_ITEMS:
                source = tree / item
                if source.is_dir():
                    shutil.copytree(source, root / item)
                else:
                    shutil.copy2(source, root / item)
            (root / "subscribers").mkdir()
            if subscribers_csv is not None:
                (root / "subscribers" / "generated.csv").symlink_to(subscribers_csv)
            else:
                common.write_subscribers(root / "subscribers" / "generated.csv", n)
            return root / "statusmail.yaml"

        config = make_project(tmp / "project", args.n)
        write_rsa_key(config.parent / "dkim.key")
        dkim_config = config.parent / "statusmail-dkim.yaml"
        shutil.copy2(config, dkim_config)
        set_config(dkim_config, dkim=True)
        set_config(config)
        run = Run(
            args,
            tmp,
            config,
            config.parent / "subscribers" / "generated.csv",
            postfix,
            sink_kind,
            dkim_config,
        )
        if "mailmerge" in skip or program is None:
            run.skipped["mailmerge"] = "--skip" if "mailmerge" in skip else mailmerge_missing
        if "smtp-source" in skip or postfix.source is None:
            run.skipped["smtp-source"] = "--skip" if "smtp-source" in skip else postfix.why_not
        why_pg = "--skip" if "postgres" in skip else postgres_reachable(args.postgres)
        if why_pg:
            run.skipped["PostgreSQL"] = why_pg
        if not has_processes:
            run.skipped["statusmail, sending.processes > 1"] = (
                "this tree has no sending.processes yet"
            )
        one = 1 if has_processes else None  # once the setting exists its default is the cores
        source_eml, templates, seven = prepare_messages(run)

        dry_config = make_project(
            tmp / "dry",
            args.dry_n,
            subscribers_csv=common.write_subscribers(tmp / "dry.csv", args.dry_n),
        )
        common.configure(dry_config, transport="maildir")
        small_config = make_project(tmp / "dry-small", 84)
        common.configure(small_config, transport="maildir")

        jobs: list[tuple[str, Callable[[], None]]] = []
        for conc in levels:
            jobs.append((f"fair floor C={conc}", partial(fair_floor, run, conc)))
            jobs.append((f"email+smtplib C={conc}", partial(plain, run, conc, templates)))
            if "smtp-source" not in run.skipped:
                jobs.append((f"smtp-source C={conc}", partial(smtp_source, run, conc, source_eml)))
            for dkim in (False, True):
                name = f"statusmail DKIM {'RSA' if dkim else 'off'} C={conc}"
                jobs.append(
                    (name, partial(statusmail, run, conc, dkim=dkim, processes=one, postgres=None))
                )
        if program is not None and "mailmerge" not in run.skipped:
            jobs.append(("mailmerge", partial(mailmerge, run, program, seven)))
        if "PostgreSQL" not in run.skipped:
            name = f"statusmail PostgreSQL C={levels[-1]}"
            jobs.append(
                (
                    name,
                    partial(
                        statusmail,
                        run,
                        levels[-1],
                        dkim=False,
                        processes=one,
                        postgres=args.postgres,
                    ),
                )
            )
        for p in processes if has_processes else []:
            for dkim in (False, True):
                name = f"statusmail processes={p} DKIM {'RSA' if dkim else 'off'}"
                jobs.append(
                    (
                        name,
                        partial(statusmail, run, levels[-1], dkim=dkim, processes=p, postgres=None),
                    )
                )
        jobs.append((f"dry run {args.dry_n:,}", partial(dry_run, run, dry_config, args.dry_n)))
        jobs.append(("dry run 84", partial(dry_run, run, small_config, 84)))

        for rep in range(args.reps):
            shift = rep * len(jobs) // max(args.reps, 1)
            print(f"repetition {rep + 1}/{args.reps}: {common.load()}", flush=True)
            for name, job in jobs[shift:] + jobs[:shift]:
                run.loads.append(os.getloadavg()[0])
                t0 = time.perf_counter()
                job()
                print(f"  {name}: {time.perf_counter() - t0:.1f} s", flush=True)
        print(f"end: {common.load()}; {time.perf_counter() - started:.0f} s in all")

        text = report(run, levels, processes if has_processes else [])
        header = (
            f"`python benchmarks/honest.py{' --quick' if args.quick else ''}` "
            f"(N={args.n}, C={','.join(map(str, levels))}, {args.reps} repetitions, "
            f"email+smtplib {args.plain_n}, mailmerge {args.mailmerge_n}, sink {sink_kind}), "
            f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {where}; load average "
            f"{min(run.loads):.1f}–{max(run.loads):.1f} (median {statistics.median(run.loads):.1f})"
            f" before the runs, {time.perf_counter() - started:.0f} s in all"
        )
        print("\n" + header + "\n" + text)
        if run.problems:
            print("\nPROBLEMS:\n" + "\n".join(run.problems))
        if args.markdown:
            args.markdown.write_text(header + "\n" + text + "\n", encoding="utf-8")
        return 1 if run.problems else 0
    finally:
        common.remove_unless_kept(tmp, args.keep)


if __name__ == "__main__":
    sys.exit(main())
