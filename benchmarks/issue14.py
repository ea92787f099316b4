#!/usr/bin/env python3
"""Every target of issue 14 in one run: start-up, message size, CPU per message and
throughput, with mailmerge and smtp-source beside them.

Runs, one after the other and with this interpreter, `startup.py` (first message at
100k and 1M subscribers, fresh and on resume), `encoding.py` (Russian bytes against the
UTF-8 size of their parts), `loopback.py` (CPU per message and msg/s against the raw
floor, the sendmail() floor, smtp-source and mailmerge), `attribution.py` (where
statusmail's CPU goes while it delivers) and `bound.py` (the least it could cost: the
floor plus building and recording, each measured alone); their output is shown as it
comes, then every target's row again under one heading. About 9 minutes with the
defaults; `--quick` scales every script down to try it out (not figures to quote).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

FULL = {
    "startup.py": [],
    "encoding.py": [],
    "loopback.py": [],
    "attribution.py": [],
    "bound.py": [],
}
QUICK = {
    "startup.py": ["--sizes", "10000,50000", "--reps", "1"],
    "encoding.py": ["--reps", "1", "--n", "2000"],
    "loopback.py": ["--n", "2000", "--reps", "1", "--mailmerge-n", "100"],
    "attribution.py": ["--n", "2000", "--reps", "1"],
    "bound.py": ["--n", "2000", "--reps", "1"],
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="scaled down, to try it out")
    args = parser.parse_args()
    verdicts: list[tuple[str, str]] = []
    failed: list[str] = []
    began = time.monotonic()
    for script, options in (QUICK if args.quick else FULL).items():
        print(f"\n# {script} {' '.join(options)}", flush=True)
        with subprocess.Popen(
            [sys.executable, str(HERE / script), *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as child:
            assert child.stdout is not None
            for line in child.stdout:
                print(line, end="", flush=True)
                if line.rstrip().endswith(("MET", "MISSED", "reachable", "out of reach")):
                    verdicts.append((script, line.rstrip()))
        if child.returncode != 0:
            failed.append(f"{script} exited {child.returncode}")
    print(f"\n# issue 14, every target of this run ({time.monotonic() - began:.0f} s)")
    for script, line in verdicts:
        print(f"{script:<15} {line}")
    for problem in failed:
        print(problem)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
