"""How far entries have gone: ``status`` of one, the ``list`` of all; and ``config``,
the settings in force."""

from __future__ import annotations

import contextlib
import sys

from rich.console import Console

from statusmail.delivery import controls
from statusmail.delivery.report import breakdown_rows, breakdown_table, print_json
from statusmail.domain import DeliveryStatus, ExitCode, counted, mask_address, printable, scrub
from statusmail.errors import StatusmailError
from statusmail.ledger import FEEDBACK_OUTCOMES, Ledger, reading
from statusmail.ledger import controls as ledger_controls
from statusmail.ledger import exists as ledger_exists
from statusmail.ledger.controls import CANCELLED, Control
from statusmail.project.config import Config
from statusmail.project.entries import entry_file, entry_paths, load_entry, unknown_entry


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
    with reading(ledger_path) as ledger:  # (a server's database with no schema yet: empty)
        state = ledger.entry_state(entry_id)
        if state is None and not has_file:
            raise unknown_entry(config.paths.updates, entry_id)
        counts = {**ledger.counts(entry_id)}
        for outcome in (*FEEDBACK_OUTCOMES, DeliveryStatus.CANCELLED.value):
            counts.setdefault(outcome, 0)  # sent, then bounced or complained; cancelled
        held = ledger_controls.control(ledger, entry_id)
        breakdown = ledger.breakdown(entry_id)
        failures = ledger.failures(entry_id, None if failed else 20)
        unfinished = state is not None and _selecting(ledger, entry_id, held)
    listed = [
        {
            "address": mask(addresses[0]),
            "code": code,
            # (the relay quotes the address as it was given: maybe its ASCII form)
            "reply": scrub(detail or "", addresses, mask),
            "attempts": attempts,
            "at": at,
        }
        for addresses, code, detail, attempts, at in failures
    ]
    if as_json:
        print_json(
            {
                "entry": entry_id,
                "known": state is not None,
                **counts,
                "complete": bool(state and state[1]),
                "selection_unfinished": unfinished,
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
    if unfinished:  # the counts are of what was selected so far, not of the list
        console.print(UNFINISHED.format(entry_id), markup=False, highlight=False)
    console.print(breakdown_table(entry_id, breakdown, feedback=True))
    for row, (_, _, _, attempts, _) in zip(listed, failures, strict=True):
        console.print(  # (a relay's reply stored before replies were kept printable)
            printable(
                f"  failed {row['address']}: {row['code'] or ''} {row['reply']} "
                f"({counted(attempts, 'attempt')}, {row['at']})"
            ),
            markup=False,
            highlight=False,
        )
    if not failed and counts["failed"] > len(listed):
        console.print(f"  … {counts['failed'] - len(listed)} more: status {entry_id} --failed")
    return ExitCode.OK


LISTED = ("sent", "failed", "pending", "skipped", "cancelled")  # list's counts
UNFINISHED = (
    "{}: its selection stopped before the end of the lists: these counts are of the "
    "recipients selected so far, and the next run selects the rest"
)


def _selecting(ledger: Ledger, entry_id: str, held: Control | None) -> bool:
    """Whether the next run selects more of the lists for the entry: its selection
    stopped short, and it is not cancelled."""
    cancelled = held is not None and held.state == CANCELLED
    return not cancelled and ledger.selection_unfinished(entry_id)


def list_entries(config: Config, as_json: bool, console: Console) -> ExitCode:
    rows = []
    target = config.paths.ledger
    with contextlib.ExitStack() as stack:
        ledger = stack.enter_context(reading(target)) if ledger_exists(target) else None
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
            unfinished = bool(total) and ledger is not None and _selecting(ledger, path.stem, held)
            rows.append(
                {
                    "id": path.stem,
                    "date": date,
                    "status": status,
                    "send_at": send_at,
                    "selected": total,
                    **{k: counts.get(k, 0) for k in LISTED},
                    "selection_unfinished": unfinished,
                    "progress": (f"{done}/{total}" if total else "not sent")
                    + ("+ (selecting)" if unfinished else "")
                    + (f" ({held.state})" if held else ""),
                }
            )
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
