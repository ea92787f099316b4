"""The commands' work, one function each, returning the exit code. The CLI only parses."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from statusmail.config import Config
from statusmail.entries import entry_paths, load_entry
from statusmail.errors import ConnectError, InputError, LedgerError, Problem, StatusmailError
from statusmail.ledger import Ledger, run_lock
from statusmail.maildir import MaildirTransport
from statusmail.preview import write_previews
from statusmail.report import (
    ProgressReporter,
    breakdown_table,
    mask_address,
    print_json,
    scrub,
)
from statusmail.sending import Declined, Selected, deliver, dry_run, prepare, select_into_ledger
from statusmail.transport import Transport

log = logging.getLogger("statusmail")

EXIT_OK, EXIT_NOT_STARTED, EXIT_USAGE, EXIT_FAILED, EXIT_STOPPED = 0, 1, 2, 3, 4


@dataclass
class SendOptions:
    limit: int | None = None
    yes: bool = False
    json: bool = False
    show_addresses: bool = False
    interactive: bool = False


def make_transport(config: Config) -> Transport:
    if config.transport == "smtp":
        from statusmail.smtp import SmtpTransport

        return SmtpTransport(config.smtp, config.smtp.password())
    return MaildirTransport(config.paths.outbox)


def describe_target(config: Config) -> str:
    if config.transport == "smtp":
        return f"SMTP {config.smtp.server}"
    return f"the maildir outbox {config.paths.outbox}"


def confirm_prompt(console: Console, entry_id: str, target: str) -> Callable[[Selected], bool]:
    def confirm(selected: Selected) -> bool:
        locales = ", ".join(f"{n} {loc}" for loc, n in sorted(_by_locale(selected).items()))
        console.print(
            f"Send [bold]{entry_id}[/] to [bold]{selected.pending}[/] recipients"
            f" ({locales or 'none'}) through {target}?"
        )
        answer = console.input("Type yes to send: ")
        return answer.strip().lower() in ("y", "yes")

    return confirm


def _by_locale(selected: Selected) -> dict[str, int]:
    counts: dict[str, int] = {}
    for (locale, _region), n in selected.stats.selected.items():
        counts[locale] = counts.get(locale, 0) + n
    return counts


async def send(config: Config, entry_id: str, options: SendOptions, console: Console) -> int:
    prepared = prepare(config, entry_id)
    transport = make_transport(config)
    mask = (lambda a: a) if options.show_addresses else mask_address
    with run_lock(config.paths.ledger, f"send-{entry_id}"), Ledger(config.paths.ledger) as ledger:
        confirm = None
        if options.interactive and not options.yes:
            confirm = confirm_prompt(console, entry_id, describe_target(config))
        try:
            selected = select_into_ledger(prepared, ledger, confirm)
        except Declined:
            console.print("Not sent; nothing was recorded.")
            return EXIT_NOT_STARTED
        stats = selected.stats
        log.info(
            "%s: %d selected (%d new), %d pending; skipped %d invalid, %d inactive, "
            "%d suppressed, %d duplicate rows",
            entry_id,
            stats.total,
            selected.new,
            selected.pending,
            stats.read.invalid,
            stats.inactive,
            stats.suppressed,
            stats.read.duplicates,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        reporter = ProgressReporter(selected.pending, console=console)
        try:
            result = await deliver(
                prepared,
                ledger,
                transport,
                limit=options.limit,
                stop=stop,
                on_outcome=reporter,
                mask=mask,
            )
        except ConnectError as exc:
            log.error("cannot start: %s", exc)
            return EXIT_NOT_STARTED
        except LedgerError as exc:
            # Some messages may have gone out: what is recorded stands, re-run for the rest.
            log.error("stopped: %s", exc)
            return EXIT_STOPPED
        finally:
            reporter.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
        if stop.is_set() and result.stopped is None:
            result.stopped = "interrupted by a signal"
        counts = ledger.counts(entry_id)
        if options.json:
            print_json(
                {
                    "entry": entry_id,
                    "counts": counts,
                    "stopped": result.stopped,
                    "this_run": {"sent": result.sent, "failed": result.failed},
                }
            )
        else:
            console.print(breakdown_table(f"{entry_id}", ledger.breakdown(entry_id)))
            if result.stopped:
                console.print(f"Stopped early: {result.stopped}. Re-run to continue.")
        if counts["pending"]:
            return EXIT_STOPPED
        if counts["failed"]:
            return EXIT_FAILED
        return EXIT_OK


def send_dry_run(
    config: Config,
    entry_id: str,
    preview_dir: Path | None,
    limit: int | None,
    as_json: bool,
    console: Console,
) -> int:
    prepared = prepare(config, entry_id, allow_draft=True)
    report = dry_run(prepared, limit=limit)
    out_dir = preview_dir or Path("previews") / entry_id
    written = write_previews(prepared.factory, prepared.regions, report.stats, out_dir)
    stats = report.stats
    by_locale: dict[str, int] = {}
    by_region: dict[str, int] = {}
    for (locale, region), n in stats.selected.items():
        by_locale[locale] = by_locale.get(locale, 0) + n
        by_region[region or "-"] = by_region.get(region or "-", 0) + n
    if as_json:
        print_json(
            {
                "entry": entry_id,
                "status": prepared.entry.status,
                "selected": stats.total,
                "rendered": report.rendered,
                "by_locale": by_locale,
                "by_region": by_region,
                "variants": report.variants,
                "invalid": [str(p) for p in stats.invalid],
                "render_failures": report.failures,
                "previews": str(out_dir),
            }
        )
    else:
        console.print(
            f"[bold]{entry_id}[/] (dry run, status {prepared.entry.status}): "
            f"{stats.total} recipients, {report.rendered} rendered"
        )
        console.print("  by locale: " + ", ".join(f"{k} {v}" for k, v in sorted(by_locale.items())))
        console.print("  by region: " + ", ".join(f"{k} {v}" for k, v in sorted(by_region.items())))
        console.print(
            f"  skipped: {stats.read.invalid} invalid, {stats.inactive} inactive, "
            f"{stats.suppressed} suppressed, {stats.read.duplicates} duplicate rows"
        )
        for problem in stats.invalid:
            console.print(f"  {problem}", markup=False)
        console.print(f"  previews: {len(written)} files in {out_dir}/ (open index.html)")
    for failure in report.failures:
        log.error("render failed: %s", failure)
    return EXIT_NOT_STARTED if report.failures else EXIT_OK


def status(config: Config, entry_id: str, as_json: bool, console: Console) -> int:
    if not config.paths.ledger.exists():
        raise InputError([_no_ledger(config)])
    with Ledger(config.paths.ledger) as ledger:
        counts = ledger.counts(entry_id)
        state = ledger.entry_state(entry_id)
        failures = ledger.failures(entry_id)
        if as_json:
            print_json(
                {
                    "entry": entry_id,
                    "known": state is not None,
                    **counts,
                    "complete": bool(state and state[1]),
                    "failures": [
                        {"address": mask_address(a), "code": c, "detail": scrub(d or "", [a])}
                        for a, c, d in failures
                    ],
                }
            )
        else:
            if state is None:
                console.print(f"{entry_id}: not in the ledger (never sent)")
            console.print(breakdown_table(entry_id, ledger.breakdown(entry_id)))
            for address, code, detail in failures[:20]:
                said = scrub(detail or "", [address])
                console.print(
                    f"  failed {mask_address(address)}: {code or ''} {said}", markup=False
                )
    return EXIT_OK


def list_entries(config: Config, as_json: bool, console: Console) -> int:
    rows = []
    ledger = Ledger(config.paths.ledger) if config.paths.ledger.exists() else None
    try:
        for path in entry_paths(config.paths.updates):
            try:
                entry = load_entry(path)
                status, date = entry.status, entry.date.isoformat()
            except StatusmailError:
                status, date = "invalid", ""
            counts = ledger.counts(path.stem) if ledger else {}
            total = sum(counts.values())
            done = counts.get("sent", 0) + counts.get("failed", 0) + counts.get("skipped", 0)
            rows.append(
                {
                    "id": path.stem,
                    "date": date,
                    "status": status,
                    "selected": total,
                    **{k: counts.get(k, 0) for k in ("sent", "failed", "pending", "skipped")},
                    "progress": f"{done}/{total}" if total else "not sent",
                }
            )
    finally:
        if ledger:
            ledger.close()
    if as_json:
        print_json(rows)
        return EXIT_OK
    from rich.table import Table

    table = Table(title="entries")
    for column in ("id", "date", "status", "progress", "sent", "failed", "pending"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            *(
                str(row[c])
                for c in ("id", "date", "status", "progress", "sent", "failed", "pending")
            )
        )
    console.print(table)
    return EXIT_OK


def _no_ledger(config: Config) -> Problem:
    return Problem(config.paths.ledger, None, "no ledger yet: nothing has been sent")
