"""``statusmail feedback``: what comes back to the return path, read and acted on only
where it is proven.

Each message of the bounce mailbox is classified (``classify``), then tied to a
delivery by something statusmail made and can verify: the VERP return-path token
(authenticated, naming the entry and the recipient), the Message-ID of the original it
quotes (its HMAC checked), or an unsubscribe token. Nothing else is proof:

- a report that names addresses but proves nothing is recorded as ``unverified`` (with
  those addresses, for the operator) and applied to nobody, unless
  ``bounces.trust_unsigned`` says to act on addresses statusmail sent to;
- a report whose token does not verify is ``forged``: recorded, counted, logged as a
  warning, applied to nobody;
- whatever arrives proven and is not an auto-reply (or a person's forwarded message) is
  a bounce, soft when no permanent cause can be read from it.

The policy acts by cause (``domain.Cause``): a bad or disabled mailbox suppresses at
once; a full mailbox, an expiry, a network failure or an unreadable cause scores like a
soft bounce (``bounces.soft_limit`` days within ``bounces.soft_window_days`` suppress,
at most one a day counts, older days fall out); a policy, spam, size or sender
authentication rejection never suppresses the recipient: it is the sender's problem,
counted per receiving domain. A complaint suppresses as ``complained``, an unsubscribe
as ``unsubscribed``.

The storm guard: when, for one entry, more than ``bounces.storm_share`` of one receiving
domain's recipients (and at least ``bounces.storm_minimum`` addresses) bounce for the
same cause, that domain and cause is ``held``: recorded, applied to nobody, until
``feedback --release-held DOMAIN``.

Every event is recorded once (by the report's Message-ID), so a report read twice counts
once. Handled messages move to the ``processed`` folder in batches, after they are
recorded; auto-replies, a person's forwarded reports and everything unrecognized stay
exactly where they were. ``--dry-run`` changes and moves nothing.

Signed reports from sending providers' webhooks (``webhooks``) come in through
``apply_reports`` and meet the same policy.

Here: the entry points and ``Feedback``, the pass itself; what a report proves and about
whom is in ``proof``, what the proven events do (storm guard, policy, telling) in
``policy``, the reports it deals in in ``reports``.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any

from statusmail import metrics
from statusmail.domain import EventState, mask_address
from statusmail.errors import ConfigError, Problem, StatusmailError
from statusmail.feedback.bouncebox import ImapBox, Mailbox, MaildirBox
from statusmail.feedback.classified import ReturnPath
from statusmail.feedback.policy import Applying
from statusmail.feedback.proof import Assessing
from statusmail.feedback.reports import PassReport, ProviderReport, Replayed, WebhookToken
from statusmail.feedback.suppression import domain_key
from statusmail.ledger import FEEDBACK_READS, FeedbackEvent, Ledger, run_lock
from statusmail.ledger import exists as ledger_exists
from statusmail.project.config import Config
from statusmail.project.secrets import imap_password_problem
from statusmail.project.tokens import Keyring

__all__ = [
    "Feedback",
    "PassReport",
    "ProviderReport",
    "WebhookToken",
    "apply_reports",
    "mailboxes",
    "record_forged",
    "release_held",
    "run_pass",
]

log = logging.getLogger("statusmail.feedback")

CHUNK = 500  # reports recorded in one transaction, then moved in one command


def mailboxes(config: Config, *, readonly: bool) -> list[Mailbox]:
    """The configured bounce mailboxes, opened; ``ConfigError`` when there is none."""
    bounces = config.bounces
    if bounces.maildir is None and bounces.imap is None:
        raise ConfigError(
            [
                Problem(
                    config.path,
                    config.line("bounces"),
                    "feedback needs a mailbox: set bounces.maildir or bounces.imap",
                )
            ]
        )
    boxes: list[Mailbox] = []
    try:
        if bounces.maildir is not None:
            boxes.append(MaildirBox(bounces.maildir, bounces.processed, readonly=readonly))
        if bounces.imap is not None:
            password = bounces.imap.password()
            if password is None:
                raise ConfigError([imap_password_problem(config)])
            boxes.append(ImapBox(bounces.imap, bounces.processed, password, readonly=readonly))
    except BaseException:
        for box in boxes:
            box.close()
        raise
    return boxes


def run_pass(
    config: Config,
    *,
    dry_run: bool = False,
    mask: Callable[[str], str] = mask_address,
    should_stop: Callable[[], bool] = lambda: False,
    report: PassReport | None = None,
) -> PassReport:
    """One pass over every configured mailbox (one pass per ledger at a time). What it
    did so far is in ``report`` (when given) also if it fails."""
    keys, _ = config.keyring(announce=True)
    report = report if report is not None else PassReport(dry_run)
    with run_lock(config.paths.ledger, "feedback"):
        boxes = mailboxes(config, readonly=dry_run)
        try:
            report.mailboxes = [box.name for box in boxes]
            if not ledger_exists(config.paths.ledger) and all(box.empty() for box in boxes):
                return report  # nothing, nowhere
            with _ledger(config, dry_run) as ledger:
                work = Feedback(config, keys, ledger, dry_run=dry_run, mask=mask, report=report)
                for box in boxes:
                    work.run(box, should_stop)
                    if report.stopped:
                        break
                work.finish()
        finally:
            for box in boxes:
                box.close()
    return report


def release_held(
    config: Config,
    domain: str,
    *,
    dry_run: bool = False,
    mask: Callable[[str], str] = mask_address,
) -> PassReport:
    """Apply the events held for ``domain`` (every cause) as if no storm had held them."""
    keys, _ = config.keyring(announce=True)
    report = PassReport(dry_run)
    with run_lock(config.paths.ledger, "feedback"), _ledger(config, dry_run) as ledger:
        work = Feedback(config, keys, ledger, dry_run=dry_run, mask=mask, report=report)
        work.release(domain_key(domain))
        work.finish()
    return report


def apply_reports(
    config: Config,
    reports: Sequence[ProviderReport],
    token: WebhookToken | None = None,
    *,
    mask: Callable[[str], str] = mask_address,
    ledger: Ledger | None = None,
) -> PassReport:
    """Apply signed provider reports with the mailbox's policy and storm guard, on
    ``ledger`` (one serve keeps) or on one opened for them. With a ``token``, it is
    taken first (``Replayed`` if it was already) and given back if they fail.

    The provider's signature proves who sent the report; the delivery it is about is
    the one with the Message-ID it quotes (its HMAC checked), else the last entry sent
    to the address it names. A report about nobody statusmail wrote to is left."""
    keys, _ = config.keyring()
    report = PassReport(False, sorted({f"webhook:{r.provider}" for r in reports}))
    opened = nullcontext(ledger) if ledger is not None else Ledger(config.paths.ledger)
    with opened as ledger:
        if token is not None and not ledger.take_webhook_token(
            token.provider, token.token, token.fresh_until, time.time()
        ):
            raise Replayed(f"a replayed {token.provider} token")
        try:
            work = Feedback(config, keys, ledger, mask=mask, report=report)
            batch = []
            for item in reports:
                report.read += 1
                events = work.from_provider(item)
                if events:
                    batch.append(events)
                else:
                    report.left[f"{item.provider} report about nobody statusmail wrote to"] += 1
            work.settle(batch)
            work.finish()
        except BaseException:
            if token is not None:
                # On a broken connection this fails too; the token then stays taken
                # until it is stale, as a retry of it would be by then.
                with suppress(StatusmailError):
                    ledger.give_back_webhook_token(token.provider, token.token)
            raise
    return report


def record_forged(config: Config, provider: str, why: str) -> None:
    """Count a webhook request that failed verification. It changes nothing, and the
    ledger is not written for it: an unauthenticated request never costs a row."""
    metrics.feedback_report(EventState.FORGED)
    log.warning(
        "forged %s webhook refused: %s",
        provider,
        why,
        extra={"event": "feedback_forged", "provider": provider},
    )


@contextmanager
def _ledger(config: Config, dry_run: bool) -> Iterator[Ledger]:
    """The ledger; a dry run reads it without a write (nor a migration), and with no
    ledger yet reads an empty one: nothing was ever sent."""
    path = config.paths.ledger
    if not dry_run:
        with Ledger(path) as ledger:
            yield ledger
        return
    if not ledger_exists(path):
        with tempfile.TemporaryDirectory() as scratch, Ledger(Path(scratch) / "l.db") as empty:
            yield empty
        return
    with Ledger(path, readonly=True) as ledger:
        if ledger.schema_version() < FEEDBACK_READS:
            raise ledger.error(
                "the ledger predates what statusmail feedback records; run it once without "
                "--dry-run (or any command that writes) to upgrade the ledger"
            )
        yield ledger


class Feedback(Assessing, Applying):
    """One pass over the mailboxes (or one batch of provider reports), against one
    ledger connection."""

    def __init__(
        self,
        config: Config,
        keys: Keyring,
        ledger: Ledger,
        *,
        dry_run: bool = False,
        mask: Callable[[str], str] = mask_address,
        now: dt.datetime | None = None,
        report: PassReport | None = None,
    ) -> None:
        self.config = config
        self.keys = keys
        self.ledger = ledger
        self.dry_run = dry_run
        self.mask = mask
        self.now = now or dt.datetime.now(dt.UTC)
        self.return_path = ReturnPath.of(config.bounces.address, config.bounces.delimiter)
        self.report = report if report is not None else PassReport(dry_run)
        self._suppressed = ledger.suppressed()
        self._seen: set[tuple[str, str, str]] = set()  # events of this pass
        self._days: defaultdict[str, set[str]] = defaultdict(set)  # soft days of this pass
        self._overruled: set[tuple[str, str, str]] = set()

    # -- a pass --------------------------------------------------------------------

    def run(self, box: Mailbox, should_stop: Callable[[], bool] = lambda: False) -> PassReport:
        """Read the whole box, decide the storms over all it holds, then record and move
        the handled messages chunk by chunk (recorded first: a rerun counts nothing
        twice)."""
        if box.name not in self.report.mailboxes:
            self.report.mailboxes.append(box.name)
        keys: list[Any] = []
        assessed: list[list[FeedbackEvent]] = []
        for key, data in box.messages():
            if should_stop():
                self.report.stopped = "interrupted by a signal"
                break
            self.report.read += 1
            if data is None:
                self.report.left["too large to be a report"] += 1
                continue
            try:
                events = self.assess(data)
            except StatusmailError:
                raise
            except Exception as exc:  # anyone can send what is read here
                # One message no parser copes with (nested a thousand deep, say) is
                # left where it is, named; the rest of the box is still read.
                self.report.left["unreadable"] += 1
                log.warning(
                    "%s: %s: cannot read this message (%s: %s); left where it is",
                    box.name,
                    key,
                    type(exc).__name__,
                    exc,
                    extra={"event": "feedback_unreadable"},
                )
                continue
            if events:
                keys.append(key)
                assessed.append(events)

        def move(chunk: slice) -> None:
            if not self.dry_run:
                box.move_to_processed(keys[chunk])

        self.settle(assessed, move)
        return self.report

    def handle(self, data: bytes) -> bool:
        """Classify one message and act on it; True when it was handled (to move)."""
        events = self.assess(data)
        if events:
            self.settle([events])
        return bool(events)

    def settle(
        self,
        assessed: Sequence[list[FeedbackEvent]],
        recorded: Callable[[slice], None] = lambda _chunk: None,
    ) -> None:
        """Decide the storms over ``assessed`` (the events of one report each), then
        apply and record them a chunk to a transaction, calling ``recorded`` with each
        chunk once it is committed."""
        held = self._storms(e for events in assessed for e in events)
        for start in range(0, len(assessed), CHUNK):
            chunk = slice(start, start + CHUNK)
            self._record(assessed[chunk], held)
            recorded(chunk)

    def finish(self) -> None:
        """Say what the pass held and what the sending side should look at."""
        for (domain, cause), n in sorted(self.report.held.items()):
            log.warning(
                "storm guard: %d %s bounce(s) from %s held, not applied; look, then run "
                "statusmail feedback --release-held %s",
                n,
                cause,
                domain,
                domain,
                extra={"event": "feedback_held", "domain": domain, "cause": cause, "events": n},
            )
        for (domain, cause), n in sorted(self.report.senders_side.items()):
            log.warning(
                "%s rejected %d message(s) for %s: a problem on the sending side, no "
                "recipient suppressed",
                domain,
                n,
                cause,
                extra={"event": "feedback_senders_side", "domain": domain, "cause": cause},
            )
        if not self.dry_run:
            metrics.feedback_held(self.ledger.held_count())
