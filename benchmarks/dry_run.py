#!/usr/bin/env python3
"""The dry run's CPU per recipient at 100,000 (issue 22: at most 55 µs).

Generates a copy of the sample project with --n (default 100,000) subscribers and one
with --small (default 100) in a temporary folder, and runs
`statusmail send update-2020-04-21 --dry-run --json --preview-dir DIR` on each as a
child process, --reps (default 3) times, interleaved. CPU is the child's user + system
time (``os.wait4``); the small run's CPU is the start-up (interpreter, imports, config,
rendering the variants, the previews), subtracted before dividing by the difference in
recipients:

    CPU per recipient = (CPU at n - CPU at small) / (n - small)

``--baseline-src DIR`` also runs another tree's ``src`` (for example
``git archive HEAD src | tar -x -C /tmp/base``) in the same rounds, so that "before" and
"after" share the machine's load. The load average is printed before and after.
Prints min/median/max per tree and the verdict against 55 µs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

TARGET_US = 55.0


def dry_run(config: Path, src: Path | None, previews: Path) -> common.ChildResult:
    shutil.rmtree(previews, ignore_errors=True)
    argv = common.statusmail_argv(
        "send", common.ENTRY, "--dry-run", "--json", "--preview-dir", str(previews)
    )
    env = {"STATUSMAIL_UNSUBSCRIBE_SECRET": common.SECRET}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    child = common.run_child([*argv, "--config", str(config)], env=env, cwd=config.parent)
    if child.returncode != 0:
        raise SystemExit(f"dry run of {config} failed (exit {child.returncode}):\n{child.stderr}")
    return child


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--baseline-src", type=Path, help="another tree's src, run alongside")
    args = parser.parse_args()
    trees: dict[str, Path | None] = {"this tree": None}
    if args.baseline_src:
        trees = {"baseline": args.baseline_src.resolve(), **trees}
    with tempfile.TemporaryDirectory(prefix="dry-run-") as tmp_name:
        tmp = Path(tmp_name)
        big = common.make_project(tmp / "big", args.n)
        small = common.make_project(tmp / "small", args.small)
        for config in (big, small):
            common.configure(config, transport="maildir")
        print(f"dry run: {args.n:,} and {args.small:,} recipients, {args.reps} rounds")
        print(f"load average before: {load()} ({os.cpu_count()} cores)")
        cpu: dict[str, dict[str, common.Stats]] = {
            name: {"big": common.Stats(), "small": common.Stats(), "per": common.Stats()}
            for name in trees
        }
        counted: dict[str, object] = {}
        for _ in range(args.reps):
            for name, src in trees.items():
                low = dry_run(small, src, tmp / "previews-small")
                high = dry_run(big, src, tmp / "previews-big")
                counted[name] = high.json().get("variants")
                cpu[name]["small"].add(low.cpu)
                cpu[name]["big"].add(high.cpu)
                cpu[name]["per"].add((high.cpu - low.cpu) / (args.n - args.small) * 1e6)
        print(f"load average after:  {load()}")
        for name, figures in cpu.items():
            per = figures["per"]
            verdict = "MET" if per.median <= TARGET_US else "MISSED"
            print(
                f"{name:>10}: CPU s at {args.n:,} {figures['big'].show('{:.2f}')}, "
                f"at {args.small:,} {figures['small'].show('{:.2f}')}; "
                f"µs per recipient {per.show('{:.1f}')} (≤ {TARGET_US:.0f}: {verdict})"
            )
        if len({repr(v) for v in counted.values()}) > 1:
            print("the trees counted different variants:", counted)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
