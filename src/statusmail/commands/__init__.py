"""The commands' work, one function each, returning an ``ExitCode``. The CLI only parses."""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from statusmail import signals
from statusmail.delivery import controls, corrections, test_send
from statusmail.delivery.report import (
    ProgressReporter,
    breakdown_rows,
    breakdown_table,
    print_json,
)
from statusmail.domain import DeliveryStatus, ExitCode, Preference, mask_address, scrub
from statusmail.errors import (
    ConnectError,
    InputError,
    Interrupted,
    StatusmailError,
    StoppedEarly,
)
from statusmail.feedback import suppression
from statusmail.ledger import FEEDBACK_OUTCOMES, Ledger, copy_ledger
from statusmail.ledger import controls as ledger_controls
from statusmail.ledger import describe as ledger_describe
from statusmail.ledger import exists as ledger_exists
from statusmail.project.config import Config, is_url
from statusmail.project.entries import (
    entry_file,
    entry_paths,
    find_entry,
    load_entry,
    unknown_entry,
)

if TYPE_CHECKING:  # the pipeline is imported by the commands that send, when they run
    from statusmail import pipeline
    from statusmail.delivery.transport import Transport

log = logging.getLogger("statusmail")


# -- send ------------------------------------------------------------------------------


@dataclass
class SendOptions:
    limit: int | None = None
    yes: bool = False
    json: bool = False
    show_addresses: bool = False
    interactive: bool = False
    accept_removals: bool = False
    now: bool = False


def confirm_prompt(console: Console, target: str) -> pipeline.Confirm:
    def confirm(prepared: pipeline.Prepared, started: pipeline.Started) -> bool:
        locales = ", ".join(f"{n} {loc}" for loc, n in started.stats.by_locale().items())
        pending = started.plan.pending_after if started.plan else started.stats.total
        console.print(
            f"Send [bold]{prepared.entry.id}[/] to [bold]{pending}[/]"
            f" recipients ({locales or 'none'}) through {target}?"
        )
        # No lock is held while this waits; Ctrl-C here raises Interrupted at once.
        answer = console.input("Type yes to send: ")
        return answer.strip().lower() in ("y", "yes")

    return confirm


def send(config: Config, entry_id: str, options: SendOptions, console: Console) -> ExitCode:
    from statusmail import pipeline

    entry = find_entry(config.paths.updates, entry_id)
    if (code := controls.before_send(config, entry.id, options.json, console)) is not None:
        return code  # cancelled (a paused entry is resumed by this send)
    if (done := corrections.already_sent(config, entry)) is not None:
        return corrections.print_already_sent(done, options.json, console)
    prepared = pipeline.prepare(config, entry, send_now=options.now)
    for warning in prepared.warnings:
        log.warning("%s", warning)
    transport = pipeline.make_transport(config)
    request = pipeline.Request(
        limit=options.limit,
        accept_removals=options.accept_removals,
        mask=(lambda a: a) if options.show_addresses else mask_address,
    )
    if options.interactive and not options.yes:
        request.confirm = confirm_prompt(console, pipeline.describe_target(config))
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
            report = asyncio.run(_deliver(prepared, held, transport, request, started, console))
        except ConnectError as exc:
            log.error("cannot start: %s", exc, extra={"event": "relay_unreachable"})
            return ExitCode.NOT_STARTED
    _print_report(report, options.json, console)
    return report.exit_code


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
    try:
        sent = asyncio.run(test_send.deliver(prepared, transport, keys, request))
    except ConnectError as exc:
        log.error("cannot start: %s", exc, extra={"event": "relay_unreachable"})
        return ExitCode.NOT_STARTED
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


def _print_report(report: pipeline.Report, as_json: bool, console: Console) -> None:
    result = report.result
    if as_json:
        print_json(
            {
                "entry": report.entry_id,
                "counts": report.counts,
                "breakdown": breakdown_rows(report.breakdown),
                "stopped": result.stopped,
                "this_run": {"sent": result.sent, "failed": result.failed},
            }
        )
        return
    if report.counts is not None:
        console.print(breakdown_table(report.entry_id, report.breakdown))
    if result.stopped:
        console.print(f"Stopped early: {result.stopped}. Re-run to continue.", markup=False)


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
    out_dir = preview_dir or Path("previews") / entry_id
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
        "invalid": [str(p) for p in stats.invalid],
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
        f"{stats.total} recipients, {report.rendered} rendered"
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
        f"  skipped: {stats.read.invalid} invalid, {stats.inactive} inactive, "
        f"{stats.suppressed} suppressed, {stats.read.duplicates} duplicate rows"
    )
    for problem in [*stats.invalid, *prepared.warnings]:
        console.print(f"  {problem}", markup=False)
    console.print(f"  previews: {files} files in {out_dir}/ (open index.html)")


# -- reports -----------------------------------------------------------------------------


def status(
    config: Config,
    entry_id: str,
    *,
    as_json: bool,
    failed: bool,
    show_addresses: bool,
    console: Console,
) -> ExitCode:
    has_file = entry_file(config.paths.updates, entry_id) is not None
    ledger_path = config.paths.ledger
    if not ledger_exists(ledger_path):
        if not has_file:
            raise unknown_entry(config.paths.updates, entry_id)
        if as_json:  # the document a sent entry gets, with nothing in it
            nothing = dict.fromkeys(DeliveryStatus, 0)
            empty = {"complete": False, "breakdown": [], "failures": []}
            print_json({"entry": entry_id, "known": False, **nothing, **empty})
            return ExitCode.OK
        console.print(f"{entry_id}: not sent yet (no ledger at {ledger_path})", markup=False)
        return ExitCode.OK
    mask = (lambda a: a) if show_addresses else mask_address
    with Ledger(ledger_path, readonly=True) as ledger:
        state = ledger.entry_state(entry_id)
        if state is None and not has_file:
            raise unknown_entry(config.paths.updates, entry_id)
        counts = {**ledger.counts(entry_id)}
        for outcome in (*FEEDBACK_OUTCOMES, DeliveryStatus.CANCELLED.value):
            counts.setdefault(outcome, 0)  # sent, then bounced or complained; cancelled
        held = ledger_controls.control(ledger, entry_id)
        breakdown = ledger.breakdown(entry_id)
        failures = ledger.failures(entry_id, None if failed else 20)
    listed = [
        {
            "address": mask(address),
            "code": code,
            "reply": scrub(detail or "", [address], mask),
            "attempts": attempts,
            "at": at,
        }
        for address, code, detail, attempts, at in failures
    ]
    if as_json:
        print_json(
            {
                "entry": entry_id,
                "known": state is not None,
                **counts,
                "complete": bool(state and state[1]),
                "control": held and {"state": held.state, "since": held.since},
                "breakdown": breakdown_rows(breakdown),
                "failures": listed,
            }
        )
        return ExitCode.OK
    if state is None:
        console.print(f"{entry_id}: not sent yet", markup=False)
    if held:
        console.print(f"{entry_id}: {controls.describe(held)}", markup=False, highlight=False)
    console.print(breakdown_table(entry_id, breakdown, feedback=True))
    for row in listed:
        console.print(
            f"  failed {row['address']}: {row['code'] or ''} {row['reply']} "
            f"({row['attempts']} attempts, {row['at']})",
            markup=False,
            highlight=False,
        )
    if not failed and counts["failed"] > len(listed):
        console.print(f"  … {counts['failed'] - len(listed)} more: status {entry_id} --failed")
    return ExitCode.OK


LISTED = ("sent", "failed", "pending", "skipped", "cancelled")  # list's counts


def list_entries(config: Config, as_json: bool, console: Console) -> ExitCode:
    rows = []
    target = config.paths.ledger
    ledger = Ledger(target, readonly=True) if ledger_exists(target) else None
    try:
        for path in entry_paths(config.paths.updates):
            try:
                entry = load_entry(path)
                status, date = entry.status.value, entry.date.isoformat()
                send_at = entry.send_at.isoformat() if entry.send_at else ""
            except StatusmailError:
                status, date, send_at = "invalid", "", ""
            counts = ledger.counts(path.stem) if ledger else {}
            total = sum(counts.values())
            done = total - counts.get("pending", 0)
            held = ledger_controls.control(ledger, path.stem) if ledger else None
            rows.append(
                {
                    "id": path.stem,
                    "date": date,
                    "status": status,
                    "send_at": send_at,
                    "selected": total,
                    **{k: counts.get(k, 0) for k in LISTED},
                    "progress": (f"{done}/{total}" if total else "not sent")
                    + (f" ({held.state})" if held else ""),
                }
            )
    finally:
        if ledger:
            ledger.close()
    if as_json:
        print_json(rows)
        return ExitCode.OK
    columns = ("id", "date", "status", "send_at", "progress", "sent", "failed", "pending")
    if not console.is_terminal:  # piped: whole values, tab-separated, never truncated
        sys.stdout.write("\t".join(columns) + "\n")
        for row in rows:
            sys.stdout.write("\t".join(str(row[c]) for c in columns) + "\n")
        return ExitCode.OK
    from rich.table import Table

    table = Table(title="entries")
    for column in columns:
        table.add_column(column, no_wrap=column == "id")
    for row in rows:
        table.add_row(*(str(row[c]) for c in columns))
    console.print(table)
    return ExitCode.OK


# -- suppression -------------------------------------------------------------------------


def suppress_add(
    config: Config, addresses: tuple[str, ...], reason: str, detail: str | None, console: Console
) -> ExitCode:
    with Ledger(config.paths.ledger) as ledger:
        added = suppression.add(ledger, addresses, reason, detail)
    console.print(f"suppressed {added} new address(es); {len(addresses) - added} already were")
    return ExitCode.OK


def suppress_remove(config: Config, addresses: tuple[str, ...], console: Console) -> ExitCode:
    with Ledger(config.paths.ledger) as ledger:
        removed = suppression.remove(ledger, addresses)
    console.print(f"removed {removed} address(es) from the suppression list")
    return ExitCode.OK


def suppress_lift(
    config: Config, selector: suppression.Selector, *, dry_run: bool, console: Console
) -> ExitCode:
    """Lift every suppression ``selector`` names (or, with ``dry_run``, count them)."""
    with Ledger(config.paths.ledger, readonly=dry_run) as ledger:
        if dry_run:
            found = len(suppression.matching(ledger, selector))
            console.print(f"dry run: would remove {found} address(es) from the suppression list")
            return ExitCode.OK
        lifted = suppression.lift(ledger, selector)
    console.print(f"removed {lifted} address(es) from the suppression list")
    return ExitCode.OK


def suppress_show(config: Config, address: str, as_json: bool, console: Console) -> ExitCode:
    """Every event recorded for ``address``: its suppression, the reports, the lifts."""
    key = suppression.normalized(address)
    with Ledger(config.paths.ledger, readonly=True) as ledger:
        history = ledger.history(key)
    if as_json:
        print_json(history)
        return ExitCode.OK
    now = history["suppressed"]
    state = f"suppressed as {now['reason']} since {now['since']}" if now else "not suppressed"
    lines = [f"{key}: {state}" + (f" ({now['detail']})" if now and now["detail"] else "")]
    for e in history["events"]:
        what = " ".join(
            part
            for part in (e["kind"], e["cause"], e["code"], e["state"], e["entry"] or "")
            if part
        )
        mark = "; it suppressed the address" if e["suppressed"] else ""
        lines.append(f"  {e['event_at']}  {what}: {e['diagnostic'] or ''} [{e['source']}]{mark}")
    for lift in history["lifted"]:
        lines.append(
            f"  {lift['lifted_at']}  lifted the {lift['reason']} suppression of "
            f"{lift['suppressed_at']} ({lift['why']})"
        )
    for line in lines:
        console.print(line, markup=False, highlight=False)
    return ExitCode.OK


def suppress_list(config: Config, as_json: bool, console: Console) -> ExitCode:
    """Every suppressed address, why, since when, and the evidence: the status code and
    date of the report that caused it (a bounce, a complaint), else the note kept."""
    with Ledger(config.paths.ledger) as ledger:
        rows = ledger.suppression_evidence()
    if as_json:
        print_json(
            [
                {
                    "email": a,
                    "reason": r,
                    "detail": d,
                    "suppressed_at": t,
                    "code": code,
                    "reported_at": at,
                }
                for a, r, d, t, code, at in rows
            ]
        )
    else:
        for address, reason, detail, created, _code, at in rows:
            evidence = " ".join((detail or "").split())
            when = f" (reported {at})" if at and at[:10] != created[:10] else ""
            console.print(
                f"{address}\t{reason}\t{created}\t{evidence}{when}",
                markup=False,
                highlight=False,
            )
    return ExitCode.OK


def suppress_export(config: Config, output: Path | None) -> ExitCode:
    with Ledger(config.paths.ledger) as ledger:
        text = suppression.export_csv(ledger)
    if output:
        output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return ExitCode.OK


# -- feedback and preferences ------------------------------------------------------------


def feedback(
    config: Config,
    *,
    dry_run: bool,
    as_json: bool,
    show_addresses: bool,
    release_held: str | None = None,
    console: Console,
) -> ExitCode:
    """Read the bounce mailbox once (bounces, complaints, mailto unsubscribes), or apply
    what the storm guard held for a domain. With ``as_json`` a JSON document is printed
    whatever happens, failures and signals included."""
    mask = (lambda a: a) if show_addresses else mask_address
    # A signal raises Interrupted: the chunk in hand is rolled back, nothing half done.
    from statusmail.feedback import loop as feedback_pass  # its parsers only for this command

    report = feedback_pass.PassReport(dry_run)
    try:
        if release_held is not None:
            report = feedback_pass.release_held(config, release_held, dry_run=dry_run, mask=mask)
        else:
            feedback_pass.run_pass(config, dry_run=dry_run, mask=mask, report=report)
    except (StatusmailError, Interrupted) as exc:
        if as_json:
            report.error = _said(exc)
            print_json(report.as_json())
        if isinstance(exc, Interrupted) or not report.read:
            raise  # nothing could start (exit 1), or a signal (exit 4)
        raise StoppedEarly(exc) from exc  # a mailbox lost mid-pass: a rerun goes on
    summary = report.as_json()
    code = ExitCode.STOPPED if report.stopped else ExitCode.OK
    if as_json:
        print_json(summary)
        return code
    for event in report.events:
        console.print(
            f"{event['kind']}\t{event['address']}\t{event['entry'] or '-'}\t"
            f"{event['code'] or ''}\t{event['effect']}",
            markup=False,
            highlight=False,
        )
    if release_held is not None:
        verb = "would apply" if dry_run else "applied"
        console.print(f"{verb} {report.released} held event(s) of {release_held}", markup=False)
        return code
    would = "would be " if dry_run else ""
    console.print(
        ("dry run: " if dry_run else "")
        + f"read {summary['read']} message(s) in {', '.join(summary['mailboxes'])}: "
        f"{summary['hard']} hard and {summary['soft']} soft bounce(s), "
        f"{summary['complaints']} complaint(s), {summary['unsubscribes']} unsubscribe(s), "
        f"{summary['newly_suppressed']} {would}newly suppressed; "
        f"{summary['unverified']} unverified and {summary['forged']} forged report(s) "
        f"applied to nobody; {summary['untouched']} left where they were "
        f"({summary['auto_replies']} auto-replies, {summary['unrecognized']} for a person)",
        markup=False,
        highlight=False,
    )
    for group in summary["held"]:
        console.print(
            f"HELD: {group['events']} {group['cause']} bounce(s) from {group['domain']} "
            f"(a storm); look, then: statusmail feedback --release-held {group['domain']}",
            markup=False,
            highlight=False,
        )
    if report.stopped:
        console.print(f"Stopped early: {report.stopped}. Run again to continue.", markup=False)
    return code


def _said(exc: StatusmailError | Interrupted) -> str:
    """An error in the words its line on stderr uses."""
    if isinstance(exc, Interrupted):
        return f"interrupted by {signals.name(exc.signum)}"
    if isinstance(exc, InputError):
        return "; ".join(map(str, exc.problems))
    return str(exc)


def prefs_list(config: Config, as_json: bool, console: Console) -> ExitCode:
    rows = _preferences(config)
    if as_json:
        print_json(
            [
                {
                    "email": address,
                    "locale": p.locale,
                    "topics": None if p.topics is None else sorted(p.topics),
                    "updated_at": updated,
                }
                for address, p, updated in rows
            ]
        )
        return ExitCode.OK
    for address, p, updated in rows:
        topics = "-" if p.topics is None else ";".join(sorted(p.topics))
        console.print(
            f"{address}\t{p.locale or '-'}\t{topics}\t{updated}", markup=False, highlight=False
        )
    return ExitCode.OK


def prefs_export(config: Config, output: Path | None) -> ExitCode:
    """CSV with the subscriber files' column names (an empty cell: the list's value)."""
    text = suppression.preferences_csv(_preferences(config))
    if output:
        output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return ExitCode.OK


def _preferences(config: Config) -> list[tuple[str, Preference, str]]:
    if not ledger_exists(config.paths.ledger):
        return []
    with Ledger(config.paths.ledger) as ledger:
        return list(ledger.preferences())


# -- the ledger itself -----------------------------------------------------------------


def ledger_migrate(config: Config, console: Console) -> ExitCode:
    with Ledger(config.paths.ledger) as ledger:
        version = ledger.schema_version()
    console.print(f"{ledger_describe(config.paths.ledger)}: schema version {version}", markup=False)
    return ExitCode.OK


def import_subscribers(config: Config, *, force: bool, as_json: bool, console: Console) -> ExitCode:
    """``statusmail import``: the lists into the ledger, if they changed since the last
    import (or ``force``); a broken file refuses the import (exit 1), the last good one stays."""
    from statusmail.ledger.importing import import_lists

    with Ledger(config.paths.ledger) as ledger:
        imported = import_lists(ledger, config.paths.subscribers, force=force)
    for problem in imported.problems:
        log.warning("skipped: %s", problem)
    if as_json:
        print_json(
            {
                "changed": imported.changed,
                "subscribers": imported.subscribers,
                "rows": imported.rows,
                "invalid": imported.invalid,
                "duplicates": imported.duplicates,
                "imported_at": imported.at,
            }
        )
        return ExitCode.OK
    skipped = f"{imported.invalid} invalid and {imported.duplicates} duplicate rows skipped"
    if imported.changed:
        what = f"imported {imported.subscribers} subscribers ({imported.rows} rows read; {skipped})"
    else:
        what = (
            f"unchanged since the import of {imported.at}, nothing read: "
            f"{imported.subscribers} subscribers ({skipped})"
        )
    console.print(f"{config.paths.subscribers}: {what}", markup=False)
    return ExitCode.OK


def ledger_copy(config: Config, to: str, console: Console) -> ExitCode:
    target: str | Path = to if is_url(to) else Path(to)
    with Ledger(config.paths.ledger) as source, Ledger(target) as copy:
        counts = copy_ledger(source, copy)
    sys.stdout.write("table\tsource\tcopy\n")
    for table, (there, here) in counts.items():
        sys.stdout.write(f"{table}\t{there}\t{here}\n")
    unequal = [table for table, (there, here) in counts.items() if there != here]
    if unequal:
        log.error("counts differ after the copy: %s", ", ".join(unequal))
        return ExitCode.FAILED
    console.print(f"copied into {ledger_describe(target)}: every count equal", markup=False)
    return ExitCode.OK


def show_config(config: Config, as_json: bool, console: Console) -> ExitCode:
    """``statusmail config``: every setting in force and where it came from."""
    from rich.table import Table

    from statusmail.project.effective import effective

    settings = effective(config)
    if as_json:
        print_json(
            {
                "config": str(config.path),
                "settings": [
                    {"key": s.key, "value": s.value, "origin": s.origin} for s in settings
                ],
            },
        )
        return ExitCode.OK
    table = Table(title=str(config.path), box=None, show_edge=False)
    for column in ("setting", "value", "from"):
        table.add_column(column, overflow="fold")
    for s in settings:
        table.add_row(s.key, s.value, s.origin)
    console.print(table, markup=False, highlight=False)
    return ExitCode.OK
