"""``statusmail pause|resume|cancel|retry ID``, and what ``send``, ``status`` and ``list``
say of an entry paused or cancelled. The state is the ledger's (``ledger.controls``);
a running ``send`` or ``watch`` asks for it about twice a second (``delivery.engine``):
paused or cancelled, it stops taking recipients, finishes those in flight and hands the
rest back (pending; cancelled, for a cancel), so nothing is lost or sent twice.
"""

from __future__ import annotations

import logging

from rich.console import Console

from statusmail.delivery.corrections import when
from statusmail.delivery.report import print_json
from statusmail.domain import ExitCode
from statusmail.errors import StatusmailError
from statusmail.ledger import Ledger
from statusmail.ledger import controls as ledger_controls
from statusmail.ledger import exists as ledger_exists
from statusmail.ledger.controls import CANCELLED, PAUSED, Control
from statusmail.project.config import Config
from statusmail.project.entries import entry_file, unknown_entry

log = logging.getLogger("statusmail")


def _open(config: Config, entry_id: str) -> Ledger:
    """The ledger, for an entry that has a file or that the ledger knows."""
    target = config.paths.ledger
    has_file = entry_file(config.paths.updates, entry_id) is not None
    if not has_file and not ledger_exists(target):
        raise unknown_entry(config.paths.updates, entry_id)
    ledger = Ledger(target)
    if not has_file and ledger.entry_state(entry_id) is None:
        ledger.close()
        raise unknown_entry(config.paths.updates, entry_id)
    return ledger


def _sent_in_full(ledger: Ledger, entry_id: str) -> bool:
    state = ledger.entry_state(entry_id)
    return bool(state and state[1]) and not ledger.counts(entry_id)["pending"]


def _print(console: Console, text: str) -> None:
    console.print(text, markup=False, highlight=False)


def _tell(console: Console, as_json: bool, entry_id: str, said: str, **facts: object) -> None:
    """What a control command did: its sentence; with ``--json`` one JSON document with
    the facts, the sentence as its ``message``."""
    if as_json:
        print_json({"ok": True, "entry": entry_id, **facts, "message": said})
    else:
        _print(console, said)


def pause(config: Config, entry_id: str, console: Console, as_json: bool = False) -> ExitCode:
    with _open(config, entry_id) as ledger:
        if ledger_controls.control(ledger, entry_id) is None and _sent_in_full(ledger, entry_id):
            said = f"{entry_id} was sent in full: nothing to pause."
            _tell(console, as_json, entry_id, said, state="sent", pending=0)
            return ExitCode.OK
        before = ledger_controls.control(ledger, entry_id)
        now = ledger_controls.pause(ledger, entry_id)
        pending = ledger.counts(entry_id)["pending"]
    if now.state == CANCELLED:
        said = f"{entry_id} was cancelled {when(now.since)}: it is never sent."
    elif before is not None:
        said = f"{entry_id} is already paused (paused {when(now.since)})."
    else:
        said = (
            f"{entry_id} paused ({pending} pending): a running send or watch stops taking "
            "recipients within a second and finishes those in flight; watch leaves it. "
            f"statusmail resume {entry_id} (or statusmail send {entry_id}) continues."
        )
    _tell(console, as_json, entry_id, said, state=now.state, since=now.since, pending=pending)
    return ExitCode.OK


def resume(config: Config, entry_id: str, console: Console, as_json: bool = False) -> ExitCode:
    with _open(config, entry_id) as ledger:
        lifted = ledger_controls.resume(ledger, entry_id)
        pending = ledger.counts(entry_id)["pending"]
    if lifted is not None and lifted.state == CANCELLED:
        raise StatusmailError(
            f"{entry_id} was cancelled {when(lifted.since)}: a cancelled entry is never "
            "resumed (write a new entry)"
        )
    if lifted is None:
        said, resumed = f"{entry_id} is not paused.", False
    else:
        said, resumed = (
            (
                f"{entry_id} resumed ({pending} pending): watch sends it at its next look, "
                f"or run statusmail send {entry_id}."
            ),
            True,
        )
    _tell(console, as_json, entry_id, said, resumed=resumed, pending=pending)
    return ExitCode.OK


def cancel(config: Config, entry_id: str, console: Console, as_json: bool = False) -> ExitCode:
    with _open(config, entry_id) as ledger:
        before = ledger_controls.control(ledger, entry_id)
        if before is None and _sent_in_full(ledger, entry_id):
            said = f"{entry_id} was sent in full: nothing to cancel."
            _tell(console, as_json, entry_id, said, cancelled=0, held=0)
            return ExitCode.OK
        cancelled = ledger_controls.cancel(ledger, entry_id)
        held = ledger_controls.held_by_senders(ledger, entry_id)
        unselected = ledger.selection_unfinished(entry_id)
    said = f"{entry_id} cancelled: {cancelled} pending recipient(s) will never get it"
    if unselected:  # (a run stopped while it read the lists: the rest were never counted)
        said += ", nor will the readers its selection had not reached yet"
    if before is not None and before.state == CANCELLED:
        said = f"{entry_id} was cancelled {when(before.since)} ({cancelled} more now)"
    if held:
        said += (
            f"; a running send holds {held} more: it stops within a second, those in "
            "flight are sent, the rest are cancelled"
        )
    said += f". statusmail status {entry_id} shows them."
    _tell(console, as_json, entry_id, said, cancelled=cancelled, held=held)
    return ExitCode.OK


def retry(
    config: Config, entry_id: str, code: str | None, console: Console, as_json: bool = False
) -> ExitCode:
    with _open(config, entry_id) as ledger:
        found = ledger_controls.control(ledger, entry_id)
        if found is not None and found.state == CANCELLED:
            raise StatusmailError(
                f"{entry_id} was cancelled {when(found.since)}: nothing of it is sent again "
                "(write a new entry)"
            )
        retried = ledger_controls.retry(ledger, entry_id, code)
    of = f" of code {code}" if code else ""
    if not retried.requeued:
        said = f"{entry_id}: no failed recipient{of} to retry"
    else:
        said = (
            f"{entry_id}: {retried.requeued} failed recipient(s){of} queued again; "
            f"statusmail send {entry_id} (or watch) sends them"
        )
    if retried.suppressed:
        said += f"; {retried.suppressed} left failed: suppressed since (never retried)"
    if code and retried.unmatched:
        said += f"; {retried.unmatched} failed with another code"
    facts = {"requeued": retried.requeued, "suppressed": retried.suppressed}
    _tell(console, as_json, entry_id, said + ".", **facts, unmatched=retried.unmatched)
    return ExitCode.OK


# -- what send, status and list say ---------------------------------------------------------


def before_send(config: Config, entry_id: str, as_json: bool, console: Console) -> ExitCode | None:
    """A cancelled entry: said, and the exit (0: nothing more is sent). A paused one:
    this send resumes it. None: send goes on."""
    target = config.paths.ledger
    if not ledger_exists(target):
        return None
    with Ledger(target) as ledger:
        found = ledger_controls.control(ledger, entry_id)
        if found is None:
            return None
        if found.state == PAUSED:
            ledger_controls.resume(ledger, entry_id)
            log.warning(
                "%s was paused %s; this send resumes it",
                entry_id,
                when(found.since),
                extra={"event": "resumed_by_send", "entry": entry_id},
            )
            return None
        ledger_controls.cancel_pending(ledger, entry_id)  # rows a stopped sender left
        counts = ledger.counts(entry_id)
    if as_json:
        print_json({"entry": entry_id, "counts": counts, "cancelled_at": found.since})
    else:
        _print(
            console,
            f"{entry_id} was cancelled {when(found.since)}: nothing more of it is sent "
            f"({counts.get('cancelled', 0)} cancelled; statusmail status {entry_id}).",
        )
    return ExitCode.OK


def describe(control: Control) -> str:
    """The line ``status`` prints of a pause or cancel."""
    if control.state == PAUSED:
        return f"paused {when(control.since)}: statusmail resume continues it"
    return f"cancelled {when(control.since)}: the rest are never sent"
