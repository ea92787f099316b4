#!/usr/bin/env python3
"""DKIM on against DKIM off (issue 22): throughput and CPU per message of `statusmail send`
on smtp-sink, in interleaved repetitions, and the CPU of one signature.

N recipients (default 10,000) of update-2020-04-21, at each concurrency C (default 1
and 8), repeated R times (default 5); in each repetition, for each C, one run in each
mode, in turn, so that a change in the machine's load hits them alike:

  off          no `dkim:` section
  rsa          `dkim: {domain, selector, key_file}`, a 2048-bit RSA key
  rsa+ed25519  the same and `ed25519_key_file`/`ed25519_selector`: two signatures

Each run is `benchmarks/loopback.py`'s: `statusmail send --yes --json` as a child, its
wall and CPU time (whole run, and from "delivering through" on: delivery), the messages
smtp-sink counted. Figures are medians (min–max) of the repetitions; the ratios are of
medians. Target (issue 22): DKIM on >= 0.8x the throughput of DKIM off at C=1 and C=8.

Before the runs, the CPU per call (this process, `--calls` calls, medians of 5) of
building one message with each mode, and of dkimpy's `dkim.sign` (the signer before,
pure-Python RSA) on the same message.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import loopback

MODES = ("off", "rsa", "rsa+ed25519")
DKIM = {"domain": "startmail.example", "selector": "status", "key_file": "dkim.key"}
ED25519 = {"ed25519_key_file": "dkim-ed25519.key", "ed25519_selector": "status-ed"}


def write_keys(root: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (root / "dkim.key").write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (root / "dkim-ed25519.key").write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def set_mode(config: Path, mode: str, processes: int | None = None) -> Path:
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    if processes is not None:
        data.setdefault("sending", {})["processes"] = processes
    data.pop("dkim", None)
    if mode != "off":
        data["dkim"] = {**DKIM, **(ED25519 if mode == "rsa+ed25519" else {})}
    config.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return config


def build_us(factory: Any, recipients: list[Any], calls: int) -> float:
    """CPU µs per ``factory.build`` over ``calls`` messages, the recipients in turn."""
    turns = iter(recipients * (calls // len(recipients) + 1))
    return float(common.per_call_us(lambda: factory.build(next(turns), eight_bit=True), calls))


def per_call(config: Path, calls: int) -> common.Table:
    """CPU µs per message built, per mode, and per dkimpy signature (the signer before)."""
    import dkim

    table = common.Table(f"CPU per call, this process: median (min–max) of 5 × {calls} calls")
    table.add("what", "us/call")
    messages: dict[str, bytes] = {}
    for mode in MODES:
        factory, recipients = common.factory_and_recipients(set_mode(config, mode), 84)
        figures = common.Stats()
        for _ in range(5):
            figures.add(build_us(factory, recipients, calls))
        table.add(f"build one message, DKIM {mode}", figures.show("{:.0f}"))
        messages[mode] = factory.build(recipients[0], eight_bit=True).envelope.data
    key = (config.parent / "dkim.key").read_bytes()
    unsigned = messages["off"]
    old = common.Stats()
    for _ in range(5):
        old.add(
            common.per_call_us(
                lambda: dkim.sign(
                    unsigned,
                    b"status",
                    b"startmail.example",
                    key,
                    canonicalize=(b"relaxed", b"relaxed"),
                ),
                max(calls // 20, 5),
            )
        )
    table.add("dkimpy's dkim.sign (the signer before), one message", old.show("{:.0f}"))
    return table


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10000, help="recipients (default 10000)")
    parser.add_argument(
        "--concurrency", "-c", default="1,8", help="connections, comma-separated (default 1,8)"
    )
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions (default 5)")
    parser.add_argument("--calls", type=int, default=2000, help="calls per CPU-per-call figure")
    parser.add_argument(
        "--src",
        type=Path,
        metavar="DIR",
        help="run statusmail from this source tree (e.g. `git archive COMMIT | tar -x -C DIR`, "
        "or a tree with a change to try)",
    )
    parser.add_argument(
        "--also-src",
        type=Path,
        metavar="DIR",
        help="also run statusmail from this tree in each repetition, its rows named after "
        "the folder (before and after, or two ways, in the same run)",
    )
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated (default {','.join(MODES)})"
    )
    parser.add_argument(
        "--processes",
        type=int,
        help="sending.processes for every run (default: statusmail's, the cores)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    modes = [m for m in MODES if m in args.modes.split(",")]
    trees: list[tuple[str, Path | None]] = [("", args.src.resolve() if args.src else None)]
    if args.also_src:
        trees.append((f" [{args.also_src.name}]", args.also_src.resolve()))
    tmp = Path(tempfile.mkdtemp(prefix="sm-bench-dkim-"))
    print(
        f"dkim_speed: N={args.n} concurrency={levels} reps={args.reps}  "
        f"({time.strftime('%Y-%m-%d %H:%M')}, {common.machine()})\nstart: {common.load()}"
    )
    try:
        config = common.make_project(tmp / "project", args.n)
        if args.src is not None:  # its own sample: the project's files follow its code
            for item in common.SAMPLE_ITEMS:
                source = args.src / item
                if source.is_dir():
                    shutil.copytree(source, config.parent / item, dirs_exist_ok=True)
                else:
                    shutil.copy2(source, config.parent / item)
        config = common.configure(config)
        write_keys(config.parent)
        per_call(config, args.calls).print()

        results: dict[tuple[str, int], loopback.Figures] = defaultdict(
            lambda: defaultdict(common.Stats)
        )
        for rep in range(args.reps):
            print(f"repetition {rep + 1}/{args.reps}: {common.load()}", flush=True)
            for conc in levels:
                for label, src in trees:
                    for mode in modes:
                        set_mode(config, mode, args.processes)
                        figures = results[mode + label, conc]
                        loopback.run_statusmail(config, args.n, conc, figures, src)
        print(f"end: {common.load()}")

        table = common.Table("statusmail send on smtp-sink: median (min–max) of the repetitions")
        table.add("DKIM", "C", "msg/s", "CPU us/msg", "delivery msg/s", "delivery CPU us/msg")
        for (mode, conc), figures in sorted(results.items(), key=lambda kv: kv[0][1]):
            table.add(
                mode,
                conc,
                figures["msg/s"].show(),
                figures["CPU us/msg"].show(),
                figures["delivery msg/s"].show(),
                figures["delivery CPU us/msg"].show(),
            )
        table.print()

        ratios = common.Table("DKIM on / DKIM off, ratios of medians (target >= 0.8)")
        ratios.add("DKIM", "C", "msg/s", "delivery msg/s", "per-rep msg/s ratios", "verdict")
        for conc in levels:
            for label, _ in trees:
                off = results["off" + label, conc]
                for mode in [m + label for m in modes if m != "off"]:
                    on = results[mode, conc]
                    whole = on["msg/s"].median / off["msg/s"].median
                    delivery = on["delivery msg/s"].median / off["delivery msg/s"].median
                    pairs = [
                        a / b for a, b in zip(on["msg/s"].values, off["msg/s"].values, strict=True)
                    ]
                    ratios.add(
                        mode,
                        conc,
                        f"{whole:.2f}",
                        f"{delivery:.2f}",
                        f"median {statistics.median(pairs):.2f} "
                        f"({min(pairs):.2f}–{max(pairs):.2f})",
                        common.verdict(whole >= 0.8),
                    )
        ratios.print()
        return 0
    finally:
        common.remove_unless_kept(tmp, args.keep)


if __name__ == "__main__":
    sys.exit(main())
