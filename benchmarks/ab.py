#!/usr/bin/env python3
"""Before and after, in one run: `statusmail send` of two trees, interleaved, on the same
project and sink, so that a change is measured against its own baseline whatever the
machine is doing (on a shared two-core VM one run's spread is wider than most changes).

Each tree is a commit copied with git archive (``--base``, default HEAD~1; ``--new``,
default the checkout as it is, uncommitted changes included). Each repetition sends N
recipients (default 5,000) once per tree and setting, in an order reversed from one
repetition to the next, to Postfix's smtp-sink (found on PATH, or under
``--postfix-root``); every send's count at the sink is checked. Printed per tree: the
median msg/s and CPU µs a message (statusmail's processes, ``os.wait4``) with min–max,
and new ÷ base.

    python benchmarks/ab.py [--base REV] [--new REV] [--n 5000] [--reps 5] [-c 8]
        [--ledger sqlite|postgresql] [--dkim off|rsa] [--processes 1]

``sending.processes`` is 1 unless ``--processes`` says: left unset it depends on the
DKIM key (the cores without one, half of them with one), which would compare unlike
runs.
"""

from __future__ import annotations

import argparse
import compileall
import os
import secrets
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import dkim_speed
from honest import ENTRY, POSTGRES, admin, set_config


def tree_at(rev: str | None, where: Path) -> tuple[Path, str]:
    """The src folder of ``rev`` (git archive into ``where``), or of the checkout; its
    bytecode compiled, as an installed package's is (with $PYTHONDONTWRITEBYTECODE set
    each send would compile it again, a cost of start-up neither tree has in use)."""
    if rev is None:
        compileall.compile_dir(common.REPO / "src", quiet=2)
        return common.REPO / "src", f"checkout ({common.revision()})"
    return common.archived(rev, where, "src") / "src", rev


def send(config: Path, src: Path, args: argparse.Namespace) -> tuple[float, float]:
    """One send of the project by the tree at ``src``: (msg/s, CPU µs a message)."""
    common.fresh_ledger(config)
    env = {"STATUSMAIL_UNSUBSCRIBE_SECRET": common.SECRET, "PYTHONPATH": str(src)}
    schema = None
    if args.ledger == "postgresql":
        schema = f"statusmail_ab_{secrets.token_hex(4)}"
        admin(args.postgres, f"CREATE SCHEMA {schema}")
        sep = "&" if "?" in args.postgres else "?"
        env["STATUSMAIL_LEDGER"] = f"{args.postgres}{sep}options=-csearch_path%3D{schema}"
    try:
        with common.SmtpSink() as sink:
            set_config(
                config,
                port=sink.port,
                conc=args.concurrency,
                dkim=args.dkim == "rsa",
                processes=args.processes,
            )
            argv = common.statusmail_argv("send", ENTRY, "--yes", "--json", "--config", str(config))
            child = common.run_child(argv, env=env, cwd=config.parent, timeout=1800)
            got = common.sink_count(sink)
    finally:
        if schema is not None:
            admin(args.postgres, f"DROP SCHEMA {schema} CASCADE")
    if child.returncode != 0 or got != args.n:
        sys.exit(f"{src}: exit {child.returncode}, the sink got {got} of {args.n}\n{child.stderr}")
    return args.n / child.wall, child.cpu / args.n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="HEAD~1", help="the baseline commit (HEAD~1)")
    parser.add_argument("--new", help="the commit to compare (default: the checkout)")
    parser.add_argument("--n", type=int, default=5000, help="recipients per send")
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions")
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("--ledger", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--postgres", default=POSTGRES, help="PostgreSQL server (%(default)s)")
    parser.add_argument("--dkim", choices=("off", "rsa"), default="off")
    parser.add_argument("--processes", type=int, default=1, help="sending.processes")
    parser.add_argument("--postfix-root", type=Path, help="an unpacked postfix .deb")
    args = parser.parse_args()
    if args.postfix_root is not None:
        common.SMTP_SINK = str(args.postfix_root / "usr/sbin/smtp-sink")
        os.environ["LD_LIBRARY_PATH"] = str(args.postfix_root / "usr/lib/postfix")

    with tempfile.TemporaryDirectory(prefix="statusmail-ab-") as scratch:
        tmp = Path(scratch)
        trees = dict(
            base=tree_at(args.base, tmp / "base"),
            new=tree_at(args.new, tmp / "new"),
        )
        config = common.make_project(tmp / "project", args.n)
        dkim_speed.write_keys(config.parent)
        print(
            f"ab: N={args.n:,} C={args.concurrency} {args.ledger} DKIM {args.dkim} "
            f"processes {args.processes}, {args.reps} repetitions; base {trees['base'][1]}, "
            f"new {trees['new'][1]}; {common.machine()}; {common.load()}",
            flush=True,
        )
        rates: dict[str, list[float]] = {name: [] for name in trees}
        cpus: dict[str, list[float]] = {name: [] for name in trees}
        for rep in range(args.reps):
            for name in list(trees) if rep % 2 == 0 else list(trees)[::-1]:
                rate, cpu = send(config, trees[name][0], args)
                rates[name].append(rate)
                cpus[name].append(cpu)
                print(
                    f"  {rep + 1}/{args.reps} {name}: {rate:,.0f} msg/s, {cpu:,.0f} µs", flush=True
                )
        for name in trees:
            r, c = rates[name], cpus[name]
            print(
                f"{name}: {statistics.median(r):,.0f} msg/s ({min(r):,.0f}–{max(r):,.0f}), "
                f"{statistics.median(c):,.0f} µs of CPU a message ({min(c):,.0f}–{max(c):,.0f})"
            )
        ratio = statistics.median(rates["new"]) / statistics.median(rates["base"])
        cpu_ratio = statistics.median(cpus["new"]) / statistics.median(cpus["base"])
        print(f"new / base: {ratio:.2f}x msg/s, {cpu_ratio:.2f}x CPU a message; {common.load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
