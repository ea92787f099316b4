#!/usr/bin/env python3
"""Each part at its real size: message sizes per encoding, and what building costs.

In this process, on the sample project (both entries, every variant, a named
recipient), with statusmail's own MessageFactory:

  sizes      bytes of each variant's message as built for a connection that takes
             8-bit bodies (8bit parts) and for one that does not (the smaller of
             quoted-printable and base64 per part), against the UTF-8 size of its text
             and HTML parts (CRLF line endings); and, for reference, quoted-printable
             everywhere (what statusmail sent before).
  build      CPU (time.process_time) per message built, 8bit and 7-bit, over the
             generated list's mix of variants (84 recipients, the mix's period);
  base64     per recipient, a Russian part with its slots: the cached stretches
             (message._Base64.fill) against base64 of the whole filled part;
  scans      what SMTP no longer does per send: smtp._wire_ready, data.isascii() and
             _headers_are_ascii over each message;
  progress   report.ProgressReporter per outcome on a terminal (redrawn at most every
             0.1 s by an outcome, no thread), against what it did before: rich's
             Progress.update() on every outcome and rich's refresh thread redrawing 10
             times a second (this process's CPU, the thread's included).

Timed figures: median (min–max) of R interleaved repetitions (default 5).
Target (issue 14): a Russian message is at most 1.4x the UTF-8 size of its text and HTML.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

ENTRIES = ("update-2020-04-21", "block-2020-01-23")


class _Terminal(io.StringIO):
    """Stands for a terminal: rich draws into it."""


def progress_now(recipient: Any) -> tuple[Callable[[], None], Callable[[], None]]:
    """(stop, one outcome) for report.ProgressReporter as it is now."""
    from rich.console import Console

    from statusmail.delivery.report import ProgressReporter
    from statusmail.domain import DeliveryStatus, Outcome

    console = Console(file=_Terminal(), force_terminal=True, width=120)
    reporter = ProgressReporter(10**9, console=console)
    outcome = Outcome("a@example.org", DeliveryStatus.SENT, 1, 250)
    return reporter.close, lambda: reporter(outcome, recipient)


def progress_before() -> tuple[Callable[[], None], Callable[[], None]]:
    """(stop, one outcome) for the reporter as it was: rich's Progress.update() on every
    outcome, rich's refresh thread redrawing 10 times a second."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("[bold]sending"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("sent {task.fields[sent]} · failed {task.fields[failed]}"),
        TextColumn("{task.fields[rate]:.1f}/s"),
        TimeRemainingColumn(),
        console=Console(file=_Terminal(), force_terminal=True, width=120),
        transient=True,
    )
    task = progress.add_task("send", total=10**9, sent=0, failed=0, rate=0.0)
    progress.start()
    done = iter(range(1, 10**12))

    def update() -> None:
        n = next(done)
        progress.update(task, completed=n, sent=n, failed=0, rate=n / 10.0)

    return progress.stop, update


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    parser.add_argument("--n", type=int, default=20000, help="messages per timing (default 20000)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    from statusmail.content.message import MessageFactory
    from statusmail.content.parts import _b64, _Base64, _canonical, _qp
    from statusmail.content.render import (
        GREETING_SLOT,
        NAME_SLOT,
        PREFERENCES_SLOT,
        URL_SLOT,
        Renderer,
        VariantKey,
        probe_recipient,
    )
    from statusmail.delivery.smtp import _headers_are_ascii, _wire_ready
    from statusmail.domain import Recipient
    from statusmail.project.config import load_config
    from statusmail.project.entries import find_entry
    from statusmail.project.regions import load_regions
    from statusmail.project.selection import select
    from statusmail.project.tokens import Keyring

    tmp = Path(tempfile.mkdtemp(prefix="sm-bench-encoding-"))
    print(
        f"encoding: reps {args.reps}, n {args.n}  "
        f"({time.strftime('%Y-%m-%d %H:%M')}, {common.machine()})\nstart: {common.load()}"
    )
    try:
        config_path = common.make_project(tmp / "project", 84)
        config = load_config(config_path)
        regions = load_regions(config.paths.regions)
        renderer = Renderer(config.paths.templates, regions, config.sender.name)
        keys = Keyring(common.SECRET.encode())

        # -- sizes ---------------------------------------------------------------------
        table = common.Table("message bytes per variant (named recipient)")
        table.add(
            "entry", "variant", "UTF-8 parts", "8bit", "x", "7-bit", "x", "parts x", "QP only", "x"
        )
        worst = {"8bit": 0.0, "7-bit": 0.0, "7-bit parts": 0.0, "QP only": 0.0}
        for entry_id in ENTRIES:
            entry = find_entry(config.paths.updates, entry_id)
            factory = MessageFactory(config, entry, renderer, keys)
            for key in renderer.variant_keys(entry):
                recipient = probe_recipient(VariantKey(key.locale, key.region, key.access, True))
                eight = factory.build(recipient, eight_bit=True)
                seven = factory.build(recipient, eight_bit=False).envelope.data
                text, html = eight.rendered.text, eight.rendered.html
                utf8 = len(_canonical(text)) + len(_canonical(html))
                # what each 7-bit part takes, and the same message all in quoted-printable
                qp_bodies = len(_qp(text)) + len(_qp(html))
                seven_bodies = 0
                for part in (text, html):
                    b64, qp = _b64(_canonical(part)), _qp(part)
                    seven_bodies += len(b64) if b64 in seven else len(qp)
                qp_only = len(seven) - seven_bodies + qp_bodies
                qp_only += 10 * seven.count(b"Content-Transfer-Encoding: base64")
                ratios = {
                    "8bit": len(eight.envelope.data) / utf8,
                    "7-bit": len(seven) / utf8,
                    "7-bit parts": seven_bodies / utf8,
                    "QP only": qp_only / utf8,
                }
                if key.locale == "ru":
                    for name, value in ratios.items():
                        worst[name] = max(worst[name], value)
                table.add(
                    entry_id,
                    key.label,
                    utf8,
                    len(eight.envelope.data),
                    f"{ratios['8bit']:.2f}",
                    len(seven),
                    f"{ratios['7-bit']:.2f}",
                    f"{ratios['7-bit parts']:.2f}",
                    qp_only,
                    f"{ratios['QP only']:.2f}",
                )
        table.print()
        print(
            "\nx: message bytes / UTF-8 bytes of its text and HTML parts. parts x: the 7-bit "
            "build's encoded part bodies alone / the same."
        )
        verdicts = common.Table("Russian variants, the largest ratio (target <= 1.4)")
        verdicts.add("build", "ratio", "verdict")
        verdicts.add(
            "8bit (8BITMIME relay, Maildir)",
            f"{worst['8bit']:.2f}",
            common.verdict(worst["8bit"] <= 1.4),
        )
        verdicts.add(
            "7-bit (relay without 8BITMIME)",
            f"{worst['7-bit']:.2f}",
            common.verdict(worst["7-bit"] <= 1.4),
        )
        verdicts.add(
            "7-bit, part bodies only",
            f"{worst['7-bit parts']:.2f}",
            common.verdict(worst["7-bit parts"] <= 1.4),
        )
        verdicts.add(
            "quoted-printable everywhere (before)",
            f"{worst['QP only']:.2f}",
            common.verdict(worst["QP only"] <= 1.4),
        )
        verdicts.print()

        # -- timings -------------------------------------------------------------------
        entry = find_entry(config.paths.updates, common.ENTRY)
        factory = MessageFactory(config, entry, renderer, keys)
        mix = [
            item
            for item in select(entry, config.paths.subscribers, config.default_locale_by_region)
            if isinstance(item, Recipient)
        ]
        for recipient in mix:  # every variant prepared, every base64 offset seen
            factory.build(recipient, eight_bit=True)
            factory.build(recipient, eight_bit=False)
        built = [factory.build(r, eight_bit=True).envelope.data for r in mix]

        ru = next(k for k in renderer.variant_keys(entry) if k.locale == "ru" and k.access)
        variant = renderer.variant(entry, ru)
        names = ["Анна Петрова", "Иван Смирнов", "Кузнецова, Ольга", "Alex Morgan"]
        url = factory.unsubscribe_url("user0000001@example.net")
        encoders = {"text": _Base64(variant.text), "html": _Base64(variant.html)}
        sources = {"text": variant.text, "html": variant.html}

        def values(name: str) -> dict[str, str]:
            return {
                NAME_SLOT: name,
                GREETING_SLOT: variant.greeting_line(name),
                URL_SLOT: url,
                PREFERENCES_SLOT: url,
            }

        for enc in encoders.values():
            for name in names:
                enc.fill(values(name))

        timings: dict[str, common.Stats] = {}

        def timed(label: str, fn: Callable[[], object], n: int) -> None:
            timings.setdefault(label, common.Stats()).add(common.per_call_us(fn, n))

        count = iter(range(10**12))
        for rep in range(args.reps):
            print(f"repetition {rep + 1}/{args.reps}: {common.load()}", flush=True)
            timed(
                "build, 8bit",
                lambda: factory.build(mix[next(count) % len(mix)], eight_bit=True),
                args.n,
            )
            timed(
                "build, 7-bit",
                lambda: factory.build(mix[next(count) % len(mix)], eight_bit=False),
                args.n,
            )
            for part in ("text", "html"):
                enc, source = encoders[part], sources[part]
                timed(
                    f"base64 {part} part, cached stretches",
                    lambda enc=enc: enc.fill(values(names[next(count) % 4])),
                    args.n,
                )
                timed(
                    f"base64 {part} part, whole part per recipient",
                    lambda source=source: _b64(
                        _canonical(
                            source.replace(NAME_SLOT, names[next(count) % 4])
                            .replace(GREETING_SLOT, variant.greeting_line(names[0]))
                            .replace(URL_SLOT, url)
                            .replace(PREFERENCES_SLOT, url)
                        )
                    ),
                    args.n,
                )

            def scans() -> None:
                data = built[next(count) % len(built)]
                _wire_ready(data)
                data.isascii()
                _headers_are_ascii(data)

            timed("scans removed from each send", scans, args.n)
            stop_now, update_now = progress_now(mix[0])
            timed("progress bar, now", update_now, args.n * 5)
            stop_now()
            stop_before, update_before = progress_before()
            before = "progress bar, before (update per outcome + refresh thread)"
            timed(before, update_before, args.n * 5)
            stop_before()
        print(f"end: {common.load()}")
        table = common.Table("CPU per call, microseconds: median (min–max)")
        table.add("what", "us")
        for label, stats in timings.items():
            table.add(label, stats.show("{:.1f}"))
        table.print()
        cached = sum(
            len(v) for enc in encoders.values() for cache in enc._cache for v in cache.values()
        )
        print(
            f"\nbase64 cache of the ru-RU variant's two parts after these fills: "
            f"{cached / 1e3:.0f} kB (at most 57 offsets per stretch after a slot)"
        )
        return 0
    finally:
        common.remove_unless_kept(tmp, args.keep)


if __name__ == "__main__":
    sys.exit(main())
