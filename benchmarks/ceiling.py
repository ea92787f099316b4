#!/usr/bin/env python3
"""What the cores allow DKIM on (issue 22): the ceiling of DKIM on / DKIM off, measured.

One sender without DKIM keeps one core busy: its rate is 1 / S (S: its CPU a message)
while the sink fits beside it on another core. With DKIM each message also costs the RSA
operation (R) and canonicalizing and hashing it (P), done by the signer process beside
the sender. Spread perfectly over the cores, with nothing spent handing messages to the
signer and back, the rate is at most cores / (S + P + R + K), K the sink's CPU a
message. So

    DKIM on / DKIM off  <=  cores x S / (S + P + R + K)          (the ceiling)

and a million recipients with DKIM on take at least 10^6 x (S + P + R + K) / cores.
S, K and both rates are measured in a window of steady delivery (the sink has counted
--warm of the recipients; then --window seconds, each process's CPU from /proc), in
interleaved repetitions of `statusmail send` (sending.processes 1, C connections) on
Postfix's smtp-sink with DKIM off and with a 2048-bit RSA key; R (cryptography's RSA
sign of a SHA-256 digest, as the signer makes it) and P (`DkimSigner.prepare` over the
messages statusmail builds for the list's first 84 rows) in this process. The hand-over
is what DKIM on cost beyond that: (its total CPU a message) - (S + P + R + its sink's).
Figures are medians (min-max) of the repetitions.

    python benchmarks/ceiling.py [--n 40000] [--reps 3] [-c 8] [--window 3]
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import dkim_speed

POLL = 0.05


def window(config: Path, n: int, conc: int, warm: float, seconds: float) -> dict[str, float]:
    """One send; in its steady part: msg/s, and CPU µs a message of the sender, its
    signer (if any) and the sink."""
    with common.SmtpSink() as sink, tempfile.TemporaryFile() as log:
        common.fresh_ledger(config)
        common.configure(config, port=sink.port, concurrency=conc, processes=1)
        argv = common.statusmail_argv("send", common.ENTRY, "--yes", "--json", "--config")
        proc = subprocess.Popen([*argv, str(config)], stdout=subprocess.DEVNULL, stderr=log)
        try:
            while sink.messages() < warm * n:
                if proc.poll() is not None:
                    log.seek(0)
                    said = log.read().decode(errors="replace")[-2000:]
                    raise RuntimeError(
                        f"statusmail send ended early (exit {proc.returncode}): {said}"
                    )
                time.sleep(POLL)
            helpers = subprocess.run(
                ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False
            ).stdout.split()
            pids = {"sender": proc.pid, "sink": sink.proc.pid}
            if helpers:
                pids["signer"] = int(helpers[0])
            before = {who: common.proc_cpu(pid) for who, pid in pids.items()}
            counted, started = sink.messages(), time.perf_counter()
            time.sleep(seconds)
            after = {who: common.proc_cpu(pid) for who, pid in pids.items()}
            sent, wall = sink.messages() - counted, time.perf_counter() - started
            if proc.poll() is not None or sink.messages() >= n:
                raise RuntimeError("the send ended within the window: raise --n")
        except BaseException:
            proc.kill()
            raise
        finally:
            proc.wait(600)
    figures = {"msg/s": sent / wall}
    for who in pids:
        start, end = before[who], after[who]
        if start is not None and end is not None:
            figures[who] = (end - start) / sent * 1e6
    return figures


def per_message(config: Path, calls: int) -> tuple[float, float]:
    """R and P in this process, µs: one RSA signature of a digest; one prepare."""
    import hashlib

    factory, recipients = common.factory_and_recipients(config, 84)
    signer = factory.signer
    data = [factory.build(r, eight_bit=True, signed=False).envelope.data for r in recipients]
    digest = hashlib.sha256(b"statusmail").digest()
    turns = itertools.cycle(data)
    rsa = min(common.per_call_us(lambda: signer.signatures([digest]), calls) for _ in range(3))
    prepare = min(common.per_call_us(lambda: signer.prepare(next(turns)), calls) for _ in range(3))
    return rsa, prepare


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=40000, help="recipients a send (default 40000)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    parser.add_argument("-c", "--concurrency", type=int, default=8, help="connections (default 8)")
    parser.add_argument(
        "--warm", type=float, default=0.2, help="share of N counted before the window (0.2)"
    )
    parser.add_argument("--window", type=float, default=3.0, help="seconds measured (default 3)")
    parser.add_argument("--calls", type=int, default=2000, help="calls for R and P (default 2000)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    tmp = Path(tempfile.mkdtemp(prefix="sm-bench-ceiling-"))
    print(
        f"ceiling: N={args.n} C={args.concurrency} reps={args.reps} window={args.window}s  "
        f"({time.strftime('%Y-%m-%d %H:%M')}, {common.machine()})\nstart: {common.load()}",
        flush=True,
    )
    try:
        config = common.configure(common.make_project(tmp / "project", args.n))
        dkim_speed.write_keys(config.parent)
        dkim_speed.set_mode(config, "rsa")
        rsa, prepare = per_message(config, args.calls)
        runs: dict[str, dict[str, common.Stats]] = defaultdict(lambda: defaultdict(common.Stats))
        for rep in range(args.reps):
            print(f"repetition {rep + 1}/{args.reps}: {common.load()}", flush=True)
            for mode in ("off", "rsa") if rep % 2 == 0 else ("rsa", "off"):
                dkim_speed.set_mode(config, mode)
                for what, value in window(
                    config, args.n, args.concurrency, args.warm, args.window
                ).items():
                    runs[mode][what].add(value)
        print(f"end: {common.load()}")
        report(runs, rsa, prepare, cores)
    finally:
        common.remove_unless_kept(tmp, args.keep)
    return 0


def report(
    runs: dict[str, dict[str, common.Stats]], rsa: float, prepare: float, cores: int
) -> None:
    per = common.Table("steady delivery: median (min–max) of the repetitions")
    per.add("DKIM", "msg/s", "sender µs/msg", "signer µs/msg", "sink µs/msg", "all µs/msg")
    for mode in ("off", "rsa"):
        figures = runs[mode]
        total = common.Stats(
            [
                sum(
                    figures[who].values[i] for who in ("sender", "signer", "sink") if who in figures
                )
                for i in range(len(figures["msg/s"].values))
            ]
        )
        figures["all"] = total
        per.add(
            mode,
            *(figures[w].show() if w in figures else "-" for w in ("msg/s", "sender", "signer")),
            figures["sink"].show(),
            total.show(),
        )
    per.print()
    off, on = runs["off"], runs["rsa"]
    s, k_off, k_on = off["sender"].median, off["sink"].median, on["sink"].median
    need = s + prepare + rsa + k_on
    ceiling = min(1.0, cores * s / need)
    achieved = on["msg/s"].median / off["msg/s"].median
    handover = on["all"].median - (s + prepare + rsa + k_on)
    million = 1e6 * need / cores / 1e6 / 60
    bound = common.Table(f"what {cores} cores allow")
    bound.add("figure", "value")
    bound.add("S: the sender's CPU a message, DKIM off", f"{s:.0f} µs")
    bound.add("R: one RSA-2048 signature (cryptography), this process", f"{rsa:.0f} µs")
    bound.add(
        "P: canonicalizing and hashing a message (prepare), this process", f"{prepare:.0f} µs"
    )
    bound.add("K: the sink's CPU a message, DKIM on (off)", f"{k_on:.0f} µs ({k_off:.0f})")
    bound.add("DKIM on / off, achieved (medians of msg/s)", f"{achieved:.2f}")
    bound.add(f"DKIM on / off, ceiling: min(1, {cores}·S / (S+P+R+K))", f"{ceiling:.2f}")
    bound.add("the hand-over: DKIM on's CPU a message beyond S+P+R+K", f"{handover:.0f} µs")
    bound.add("a million with DKIM on, at the ceiling", f"{million:.1f} min")
    bound.add("target: DKIM on / off >= 0.8 (issue 22)", common.verdict(achieved >= 0.8))
    bound.add("target reachable here at all (ceiling >= 0.8)", "yes" if ceiling >= 0.8 else "no")
    bound.print()


if __name__ == "__main__":
    sys.exit(main())
