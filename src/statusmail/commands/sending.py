"""What send does: the real send (asked for, followed, reported), its dry run and the test sends."""

from __future__ import annotations

import asyncio
import io
import logging
import select
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from statusmail import signals
from statusmail.delivery import controls, corrections, test_send
from statusmail.delivery.report import ProgressReporter, breakdown_rows, breakdown_table, print_json
from statusmail.domain import ExitCode, counted, mask_address
from statusmail.errors import Interrupted, LedgerError
from statusmail.project.config import Config
from statusmail.project.entries import find_entry

if TYPE_CHECKING:  # the pipeline is imported by the commands that send, when they run
    from statusmail import pipeline
    from statusmail.delivery.transport import Transport

log = logging.getLogger("statusmail")


@dataclass
class SendOptions:
    limit: int | None = None
    yes: bool = False
    json: bool = False
    show_addresses: bool = False
    interactive: bool = False
    accept_removals: bool = False
    accept_edit: bool = False
    now: bool = False


def confirm_prompt(console: Console, target: str, limit: int | None = None) -> pipeline.Confirm:
    def confirm(prepared: pipeline.Prepared, started: pipeline.Started) -> bool:
        locales = ", ".join(f"{n} {loc}" for loc, n in started.stats.by_locale().items())
        selected = started.stats.total
        pending = started.plan.pending_after if started.plan else selected
        if pending == 0:
            return True  # nothing to send: no question to ask (the run says what it found)
        going = pending if limit is None else min(pending, limit)
        # The breakdown is of the whole selection: said as such when this run sends
        # fewer (a re-run, a --limit), so that the numbers add up.
        breakdown = locales or "none"
        if going != selected:
            breakdown = f"of {selected} selected: {breakdown}"
        console.print(
            f"Send [bold]{prepared.entry.id}[/] to [bold]{going}[/]"
            f" recipients ({breakdown}) through {target}?"
        )
        # No lock is held while this waits; Ctrl-C here raises Interrupted at once.
        answer = _answer(console, "Type yes to send: ")
        return answer.strip().lower() in ("y", "yes")

    return confirm


def _answer(console: Console, prompt: str) -> str:
    """The line typed after ``prompt``, read once select says it is there, waiting a
    tenth of a second at a time: a Ctrl-C that comes between the prompt and the read
    then ends the wait at once, where a blocking read would hold its handler until
    Enter (Python runs a signal's handler between two bytecodes)."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return console.input(prompt)  # not a file: nothing to wait for
    console.print(prompt, end="", markup=False, highlight=False)
    while not select.select([fd], [], [], 0.1)[0]:
        pass
    return sys.stdin.readline()


def send(
    config: Config, entry_id: str, options: SendOptions, console: Console, out: Console
) -> ExitCode:
    """Send entry ID: questions and progress on ``console`` (standard error), the closing
    table, or the line saying it was already sent, on ``out`` (standard output)."""
    from statusmail import pipeline

    entry = find_entry(config.paths.updates, entry_id)
    if (code := controls.before_send(config, entry.id, options.json, console)) is not None:
        return code  # cancelled (a paused entry is resumed by this send)
    done = corrections.already_sent(config, entry)
    if done is not None and done.as_selected:
        return corrections.print_already_sent(done, options.json, out)
    # sent in full, but the lists or preferences changed since: select again, and if
    # nobody new turns up, say it was already sent rather than print the same table
    prepared = pipeline.prepare(config, entry, send_now=options.now)
    for warning in prepared.warnings:
        log.warning("%s", warning)
    transport = pipeline.make_transport(config)
    request = pipeline.Request(
        limit=options.limit,
        accept_removals=options.accept_removals,
        accept_edit=options.accept_edit,
        mask=(lambda a: a) if options.show_addresses else mask_address,
        console=console,
    )
    if options.interactive and not options.yes:
        request.confirm = confirm_prompt(console, pipeline.describe_target(config), options.limit)
    with pipeline.open_ledger(config, entry.id) as held:
        try:
            started = pipeline.start(prepared, held, request)
        except pipeline.Declined:
            console.print("Not sent; nothing was recorded.")
            return ExitCode.NOT_STARTED
        except Interrupted as exc:
            log.warning(
                "interrupted by %s before delivery: nothing was sent; recipients already "
                "queued stay pending for the next run",
                signals.name(exc.signum),
                extra={"event": "interrupted", "entry": entry.id},
            )
            return ExitCode.STOPPED
        try:
            # (a relay that cannot be reached is the command's error: cli.app says it, in
            # --json's "errors" too)
            report = asyncio.run(_deliver(prepared, held, transport, request, started, console))
        except Interrupted as exc:  # the stop's second: what was in flight was cut short
            _said_interrupted(held, entry.id, signals.name(exc.signum))
            return ExitCode.STOPPED
    if done is not None and corrections.sent_nothing_new(done, report.counts):
        return corrections.print_already_sent(done, options.json, out)
    _print_report(report, options.json, out, console)
    return report.exit_code


def _said_interrupted(held: pipeline.Held, entry_id: str, signal_name: str) -> None:
    """What the ledger holds after a stop that could not wait for the relay (it said only
    "interrupted by SIGTERM")."""
    try:
        counts = held.ledger.counts(entry_id)
    except LedgerError:
        counts = {}
    recorded = ", ".join(f"{status} {n}" for status, n in counts.items() if n) or "nothing"
    log.warning(
        "interrupted by %s while delivering: a message the relay had not answered yet "
        "stays pending (the next run sends it, perhaps a second time); recorded in all: "
        "%s (statusmail status %s)",
        signal_name,
        recorded,
        entry_id,
        extra={"event": "interrupted", "entry": entry_id},
    )


def send_test(
    config: Config, entry_id: str, request: test_send.Request, console: Console
) -> ExitCode:
    """``send ID --test-to``: every variant (or one) to the test addresses, unrecorded."""
    from statusmail import pipeline

    test_send.refuse_unlisted(config, request)
    prepared = pipeline.prepare(config, find_entry(config.paths.updates, entry_id), preview=True)
    for warning in prepared.warnings:
        log.warning("%s", warning)
    keys = test_send.chosen_variants(prepared, request)
    transport = pipeline.make_transport(config)
    sent = asyncio.run(test_send.deliver(prepared, transport, keys, request))
    return test_send.report(prepared, sent, pipeline.describe_target(config), console)


async def _deliver(
    prepared: pipeline.Prepared,
    held: pipeline.Held,
    transport: Transport,
    request: pipeline.Request,
    started: pipeline.Started,
    console: Console,
) -> pipeline.Report:
    from statusmail import pipeline

    stop = asyncio.Event()
    # While the selection streams, the total is not known yet: the bar counts up.
    reporter = ProgressReporter(
        started.plan.pending_after if started.plan else None, console=console
    )
    try:
        with signals.stop_on_signal(stop.set):
            return await pipeline.finish(
                prepared,
                held,
                transport,
                request,
                started,
                stop=stop,
                on_outcome=reporter,
                on_counts=reporter.tally,
            )
    finally:
        reporter.close()


def _print_report(report: pipeline.Report, as_json: bool, out: Console, console: Console) -> None:
    result = report.result
    if as_json:
        print_json(
            {
                "entry": report.entry_id,
                "counts": report.counts,
                "breakdown": breakdown_rows(report.breakdown),
                "stopped": report.stopped,
                "this_run": {"sent": result.sent, "failed": result.failed},
            }
        )
        return
    if report.counts is not None:
        out.print(breakdown_table(report.entry_id, report.breakdown))
    if report.stopped and not report.continues:
        console.print(f"Stopped: {report.stopped}.", markup=False)
    elif report.stopped:
        # (a relay that cannot take the project's messages takes none on a plain re-run)
        then = "Re-run to continue"
        if report.result.relay_unfit:
            then = "Fix the relay or the project's addresses, then re-run to continue"
        console.print(f"Stopped early: {report.stopped}. {then}.", markup=False)


def send_dry_run(
    config: Config,
    entry_id: str,
    preview_dir: Path | None,
    limit: int | None,
    as_json: bool,
    console: Console,
) -> ExitCode:
    from statusmail import pipeline
    from statusmail.content.preview import write_previews

    entry = find_entry(config.paths.updates, entry_id)
    prepared = pipeline.prepare(config, entry, preview=True)
    report = pipeline.dry_run(prepared, limit=limit)
    out_dir = (preview_dir or Path("previews")) / entry_id
    written = write_previews(prepared.factory, report.stats, out_dir)
    if as_json:
        print_json(dry_run_json(prepared, report, out_dir))
    else:
        print_dry_run(prepared, report, out_dir, len(written), console)
    for failure in report.failures:
        log.error("render failed: %s", failure)
    return ExitCode.NOT_STARTED if report.failures else ExitCode.OK


def dry_run_json(
    prepared: pipeline.Prepared, report: pipeline.DryRun, out_dir: Path
) -> dict[str, object]:
    stats = report.stats
    return {
        "entry": prepared.entry.id,
        "status": prepared.entry.status.value,
        "send_at": prepared.entry.send_at.isoformat() if prepared.entry.send_at else "",
        "selected": stats.total,
        "rendered": report.rendered,
        "by_locale": stats.by_locale(),
        "by_region": stats.by_region(),
        "fallbacks": stats.fallback_lines(),
        "variants": report.variants,
        "invalid": [p.masked() for p in stats.invalid],  # (CI logs: no address in them)
        "warnings": [str(p) for p in prepared.warnings],
        "render_failures": report.failures,
        "previews": str(out_dir),
    }


def print_dry_run(
    prepared: pipeline.Prepared,
    report: pipeline.DryRun,
    out_dir: Path,
    files: int,
    console: Console,
) -> None:
    entry_id, stats = prepared.entry.id, report.stats
    console.print(
        f"[bold]{entry_id}[/] (dry run, status {prepared.entry.status.value}): "
        f"{counted(stats.total, 'recipient')}, {report.rendered} rendered"
    )
    for what, counts in (("locale", stats.by_locale()), ("region", stats.by_region())):
        console.print(f"  by {what}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if prepared.entry.send_at:
        console.print(f"  send_at: {prepared.entry.send_at.isoformat()}", markup=False)
    for line in stats.fallback_lines():
        console.print(f"  language: {line}", markup=False)
    for line in corrections.dry_run_lines(prepared.config, prepared.entry, stats.total):
        console.print(f"  {line}", markup=False)
    console.print(
        f"  skipped: {stats.inactive} inactive, {stats.suppressed} suppressed of the audience; "
        f"{stats.read.invalid} invalid, {counted(stats.read.duplicates, 'duplicate row')}"
        " in the lists"
    )
    # Masked as in send's log and the summary: a dry run's output is CI's log
    for line in [*(p.masked() for p in stats.invalid), *map(str, prepared.warnings)]:
        console.print(f"  {line}", markup=False)
    console.print(f"  previews: {files} files in {out_dir}/ (open index.html)")
