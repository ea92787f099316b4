#!/usr/bin/env python3
"""A million subscribers: dry-run at 100k and 1M, and a maildir send of 100k.

Generates subscriber lists of --small (default 100,000) and --large (default 1,000,000)
rows across locales (en, ru, ru-RU, empty = by region) and regions (RU, BY, KZ), all
selected by update-2020-04-21, and runs, each in a child process whose peak RSS is
taken from /proc (VmHWM):

  dry-run   `statusmail send update-2020-04-21 --dry-run --json --preview-dir DIR`
            (every recipient selected and rendered, the variant previews written)
            at both sizes: wall time, recipients/s, peak RSS;
  maildir   `statusmail send update-2020-04-21 --yes --json --rate 0` with
            `transport: maildir` at the small size (ledger, rendering, one file per
            message in outbox/new): wall time, messages/s, peak RSS.

Baselines in the same run: the interpreter doing nothing but reading the same CSV with
the csv module (the parsing floor), and the small list's figures for the memory ratio.
Targets (issue 6): dry-run >= 20,000 recipients/s; peak memory <= 150 MB; memory flat as
the list grows (1M / 100k close to 1).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

CSV_FLOOR = (
    "import csv,sys\n"
    "n=0\n"
    "with open(sys.argv[1], encoding='utf-8', newline='') as f:\n"
    "    for row in csv.reader(f): n+=1\n"
    "print(n)\n"
)


def dry_run(config: Path, n: int, previews: Path, py_spy: str | None = None) -> common.ChildResult:
    args = ["send", common.ENTRY, "--dry-run", "--json", "--preview-dir", str(previews)]
    if py_spy:
        out = Path(py_spy).resolve()
        return common.run_child(
            common.py_spy_argv(out, *common.statusmail_argv(*args, "--config", str(config))),
            env={"STATUSMAIL_UNSUBSCRIBE_SECRET": common.SECRET},
            cwd=config.parent,
        )
    result = common.run_statusmail(config, *args)
    if result.returncode != 0:
        print(f"dry-run of {n}: exit {result.returncode}\n{result.stderr[-2000:]}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=100_000, help="small list (default 100000)")
    parser.add_argument("--large", type=int, default=1_000_000, help="large list (default 1000000)")
    parser.add_argument(
        "--maildir-n",
        type=int,
        default=None,
        help="maildir send size (default: the small list); 0 skips it",
    )
    parser.add_argument(
        "--py-spy",
        metavar="OUT",
        help="also record the large dry-run with py-spy into OUT "
        "(.txt: collapsed stacks, else speedscope JSON); a separate run",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    maildir_n = args.small if args.maildir_n is None else args.maildir_n

    tmp = Path(tempfile.mkdtemp(prefix="sm-bench-million-"))
    print(
        f"million: dry-run {args.small} and {args.large}, maildir send {maildir_n}  "
        f"({time.strftime('%Y-%m-%d %H:%M')}, {common.machine()})"
    )
    try:
        rows: dict[int, common.ChildResult] = {}
        floors: dict[int, common.ChildResult] = {}
        configs: dict[int, Path] = {}
        for n in (args.small, args.large):
            t0 = time.perf_counter()
            csv_path = common.write_subscribers(tmp / f"list-{n}.csv", n)
            print(
                f"generated {n} rows ({csv_path.stat().st_size / 1e6:.0f} MB) in "
                f"{time.perf_counter() - t0:.1f}s"
            )
            config = common.make_project(tmp / f"project-{n}", n, subscribers_csv=csv_path)
            common.configure(config, transport="maildir", rate=0)
            configs[n] = config
            floors[n] = common.run_child([sys.executable, "-c", CSV_FLOOR, str(csv_path)])
            rows[n] = dry_run(config, n, tmp / f"previews-{n}")

        maildir = None
        if maildir_n:
            if maildir_n == args.small:
                config = configs[args.small]
            else:
                csv_path = common.write_subscribers(tmp / f"list-{maildir_n}.csv", maildir_n)
                config = common.make_project(
                    tmp / f"project-{maildir_n}", maildir_n, subscribers_csv=csv_path
                )
                common.configure(config, transport="maildir", rate=0)
            common.fresh_ledger(config)
            maildir = common.run_statusmail(
                config, "send", common.ENTRY, "--yes", "--json", "--rate", "0"
            )
            files = sum(1 for _ in (config.parent / "outbox" / "new").iterdir())
            if maildir.returncode != 0 or files != maildir_n:
                print(
                    f"maildir send: exit {maildir.returncode}, {files} files of {maildir_n}\n"
                    f"{maildir.stderr[-2000:]}"
                )
            shutil.rmtree(config.parent / "outbox", ignore_errors=True)

        table = common.Table("a million subscribers")
        table.add("run", "recipients", "wall s", "recipients/s", "peak RSS MB", "CPU s")
        for n in (args.small, args.large):
            r = rows[n]
            rendered = r.json().get("rendered", n)
            table.add(
                f"dry-run {n:,}",
                rendered,
                f"{r.wall:.2f}",
                f"{n / r.wall:,.0f}",
                f"{r.peak_rss_mb:.0f}",
                f"{r.cpu:.1f}",
            )
        for n in (args.small, args.large):
            f = floors[n]
            table.add(
                f"floor: csv.reader only {n:,}",
                n,
                f"{f.wall:.2f}",
                f"{n / f.wall:,.0f}",
                f"{f.peak_rss_mb:.0f}",
                f"{f.cpu:.1f}",
            )
        if maildir is not None:
            table.add(
                f"maildir send {maildir_n:,}",
                maildir_n,
                f"{maildir.wall:.2f}",
                f"{maildir_n / maildir.wall:,.0f}",
                f"{maildir.peak_rss_mb:.0f}",
                f"{maildir.cpu:.1f}",
            )
        table.print()
        small, large = rows[args.small], rows[args.large]
        print(
            f"\nmemory, dry-run: {args.small:,} -> {small.peak_rss_mb:.0f} MB   "
            f"{args.large:,} -> {large.peak_rss_mb:.0f} MB"
        )
        ratios = common.Table("ratios (target)")
        ratios.add("measure", "value", "target", "verdict")
        slowest = min(args.small / small.wall, args.large / large.wall)
        ratios.add(
            "dry-run recipients/s (slower size)",
            f"{slowest:,.0f}",
            ">= 20,000",
            common.verdict(slowest >= 20000),
        )
        ratios.add(
            "dry-run / csv-floor time, large",
            f"{large.wall / floors[args.large].wall:.1f}x",
            "-",
            "-",
        )
        peak = max(r.peak_rss_mb for r in [small, large] + ([maildir] if maildir else []))
        ratios.add("peak RSS, MB (any run)", f"{peak:.0f}", "<= 150", common.verdict(peak <= 150))
        growth = large.peak_rss_mb / small.peak_rss_mb
        ratios.add(
            f"RSS {args.large:,} / {args.small:,}",
            f"{growth:.2f}",
            "~1 (flat; <= 1.2)",
            common.verdict(growth <= 1.2),
        )
        ratios.print()

        if args.py_spy:
            prof = dry_run(configs[args.large], args.large, tmp / "previews-prof", args.py_spy)
            print(
                f"\npy-spy profile: {args.py_spy} (exit {prof.returncode}, {prof.wall:.1f}s "
                "under the profiler)"
            )
        return 0
    finally:
        common.remove_unless_kept(tmp, args.keep)


if __name__ == "__main__":
    sys.exit(main())
