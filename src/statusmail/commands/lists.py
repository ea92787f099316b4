"""The lists the ledger keeps: suppressions, preferences, the subscribers imported; and
the ledger itself (migrate, copy)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from rich.console import Console

from statusmail.delivery.report import print_json
from statusmail.domain import ExitCode, Preference, counted, printable
from statusmail.feedback import suppression
from statusmail.ledger import Ledger, copy_ledger, reading
from statusmail.ledger import describe as ledger_describe
from statusmail.project.config import Config, is_url

log = logging.getLogger("statusmail")


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
    if dry_run:
        with reading(config.paths.ledger) as ledger:
            found = len(suppression.matching(ledger, selector))
        console.print(f"dry run: would remove {found} address(es) from the suppression list")
        return ExitCode.OK
    with Ledger(config.paths.ledger) as ledger:
        lifted = suppression.lift(ledger, selector)
    console.print(f"removed {lifted} address(es) from the suppression list")
    return ExitCode.OK


def suppress_show(config: Config, address: str, as_json: bool, console: Console) -> ExitCode:
    """Every event recorded for ``address``: its suppression, the reports, the lifts."""
    key = suppression.normalized(address)
    with reading(config.paths.ledger) as ledger:
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
    for line in lines:  # (rows stored before diagnostics were kept printable, too)
        console.print(printable(line), markup=False, highlight=False)
    return ExitCode.OK


def suppress_list(config: Config, as_json: bool, console: Console) -> ExitCode:
    """Every suppressed address, why, since when, and the evidence: the status code and
    date of the report that caused it (a bounce, a complaint), else the note kept."""
    with reading(config.paths.ledger) as ledger:  # a report: never creates nor migrates
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
            evidence = printable(" ".join((detail or "").split()))
            when = f" (reported {at})" if at and at[:10] != created[:10] else ""
            console.print(
                f"{address}\t{reason}\t{created}\t{evidence}{when}",
                markup=False,
                highlight=False,
            )
    return ExitCode.OK


def suppress_export(config: Config, output: Path | None) -> ExitCode:
    with reading(config.paths.ledger) as ledger:
        text = suppression.export_csv(ledger)
    if output:
        output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return ExitCode.OK


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
    with reading(config.paths.ledger) as ledger:
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
    from statusmail.delivery.waiting import import_shown, log_terminal

    with Ledger(config.paths.ledger) as ledger:
        # (``console`` is stdout, the counts: the wait goes where the log goes)
        imported = import_shown(
            ledger, config.paths.subscribers, console=log_terminal(), force=force
        )
    for problem in imported.problems:
        log.warning("skipped: %s", problem.masked())
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
    skipped = (
        f"{imported.invalid} invalid and {counted(imported.duplicates, 'duplicate row')} skipped"
    )
    subscribers = counted(imported.subscribers, "subscriber")
    if imported.changed:
        what = f"imported {subscribers} ({counted(imported.rows, 'row')} read; {skipped})"
    else:
        what = (
            f"unchanged since the import of {imported.at}, nothing read: {subscribers} ({skipped})"
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
