"""``feedback``: one pass over the bounce mailbox, or the events the storm guard held."""

from __future__ import annotations

from rich.console import Console

from statusmail import signals
from statusmail.delivery.report import print_json
from statusmail.domain import ExitCode, mask_address
from statusmail.errors import InputError, Interrupted, StatusmailError, StoppedEarly
from statusmail.project.config import Config


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
