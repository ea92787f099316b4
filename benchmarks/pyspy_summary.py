#!/usr/bin/env python3
"""Summarize a py-spy collapsed-stack file (`py-spy record -f raw`): where the time goes.

Prints the functions with the most *self* samples (the frame on top of the stack) and
the most *inclusive* samples (anywhere on the stack), as shares of all samples. With
`py-spy record --idle` the samples include time spent waiting (e.g. in epoll), so the
shares are of wall-clock time. loopback.py and million.py write such a file with
`--py-spy OUT.txt`.

    python benchmarks/pyspy_summary.py profile.txt [--top 25] [--filter statusmail]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    return f"{m['file']}:{m['func']}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--filter", default="", help="only list frames whose file contains this")
    parser.add_argument(
        "--all-threads",
        action="store_true",
        help="count every thread (default: only stacks that start in the main "
        "module, i.e. the main thread; idle pool threads are left out)",
    )
    args = parser.parse_args()
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in args.file.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [
            short(f)
            for f in stack.split(";")
            if f and not f.startswith("process ") and not f.startswith("thread ")
        ]
        if not frames:
            continue
        if not args.all_threads and "_run_module_as_main" not in frames[0]:
            continue
        total += n
        self_c[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    if not total:
        sys.exit("no samples")
    print(f"{total} samples")
    for title, counter in (("self", self_c), ("inclusive", incl)):
        print(f"\n## top {args.top} by {title} time")
        shown = 0
        for frame, n in counter.most_common():
            if args.filter and args.filter not in frame:
                continue
            print(f"{n / total:6.1%}  {frame}")
            shown += 1
            if shown >= args.top:
                break
    return 0


if __name__ == "__main__":
    sys.exit(main())
