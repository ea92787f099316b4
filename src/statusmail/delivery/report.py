"""What a run tells people: progress while it runs, a summary table and JSON at the end."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter, deque
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from statusmail.domain import Outcome, Recipient

log = logging.getLogger("statusmail")


class ProgressReporter:
    """A rich progress bar on a terminal, a plain log line every few seconds otherwise.

    An outcome only counts; the bar is redrawn at most every ``redraw`` seconds (by the
    outcome that finds it due, so no thread competes with sending for the interpreter).
    ``total`` is None while the selection is still streaming in. The rate is over the
    last ``WINDOW`` seconds of outcomes, begun afresh after a pause (the first line after
    a wait says how fast it goes now, not the average since the start).
    """

    WINDOW = 5.0

    def __init__(
        self, total: int | None, *, console: Console, interval: float = 5.0, redraw: float = 0.1
    ) -> None:
        self.total = total
        self.counts: Counter[str] = Counter()
        self.started = time.monotonic()
        self.interval = interval
        self.redraw = redraw
        self.redraws = 0
        self._last_line = self.started
        self._due = self.started
        self._marks: deque[tuple[float, int]] = deque()  # (when, done), a tenth apart
        self._progress: Progress | None = None
        if console.is_terminal and total != 0:
            self._progress = Progress(
                TextColumn("[bold]sending"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("sent {task.fields[sent]} · failed {task.fields[failed]}"),
                TextColumn("{task.fields[rate]:.1f}/s"),
                TimeRemainingColumn(),
                console=console,
                transient=True,
                auto_refresh=False,
            )
            self._task = self._progress.add_task("send", total=total, sent=0, failed=0, rate=0.0)
            self._progress.start()

    def __call__(self, outcome: Outcome, recipient: Recipient) -> None:
        self.counts[outcome.status] += 1
        self._show()

    def tally(self, counts: dict[str, int]) -> None:
        """Outcomes of the run's other sender processes, by status."""
        self.counts.update(counts)
        self._show()

    def _show(self) -> None:
        now = time.monotonic()
        marks = self._marks
        if not marks or now - marks[-1][0] >= 0.1:
            if marks and now - marks[-1][0] > self.WINDOW:  # a pause: the rate starts again
                marks.clear()
                self._last_line = now
            marks.append((now, self._messages()))
            while now - marks[0][0] > self.WINDOW:
                marks.popleft()
        if self._progress is not None:
            if now >= self._due:
                self._due = now + self.redraw
                self._draw(self._progress, now)
        elif now - self._last_line >= self.interval:
            self._last_line = now
            done, rate = sum(self.counts.values()), self._rate(now)
            log.info(
                "progress: %d of %s recipients done, %d sent, %d failed, %.1f messages/s",
                done,
                "?" if self.total is None else self.total,
                self.counts["sent"],
                self.counts["failed"],
                rate,
                extra={
                    "event": "progress",
                    "recipients": done,
                    "of": self.total,
                    "sent": self.counts["sent"],
                    "failed": self.counts["failed"],
                    "per_second": round(rate, 1),
                },
            )

    def _rate(self, now: float) -> float:
        if not self._marks or now - self._marks[0][0] < 0.1:
            return 0.0
        since, done = self._marks[0]
        return (self._messages() - done) / (now - since)

    def _messages(self) -> int:
        return self.counts["sent"] + self.counts["failed"]

    def _draw(self, progress: Progress, now: float) -> None:
        self.redraws += 1
        progress.update(
            self._task,
            completed=sum(self.counts.values()),
            sent=self.counts["sent"],
            failed=self.counts["failed"],
            rate=self._rate(now),
            refresh=True,
        )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def breakdown_table(
    title: str, rows: list[tuple[str, str | None, str, int]], *, feedback: bool = False
) -> Table:
    """Per locale and region: sent, failed, pending, skipped (and, with ``feedback``,
    the sent messages that bounced or drew a complaint since)."""
    statuses: tuple[str, ...] = ("sent", "failed", "pending", "skipped")
    if feedback:
        statuses += ("bounced", "complained")
    if any(row[2] == "cancelled" for row in rows):
        statuses += ("cancelled",)
    grouped: dict[tuple[str, str], Counter[str]] = {}
    for locale, region, status, count in rows:
        grouped.setdefault((locale or "-", region or "-"), Counter())[status] += count
    table = Table(title=title)
    for column in ("locale", "region", *statuses):
        table.add_column(column, justify="right" if column not in ("locale", "region") else "left")
    totals: Counter[str] = Counter()
    for (locale, region), counts in sorted(grouped.items()):
        totals.update(counts)
        table.add_row(locale, region, *(str(counts[s]) for s in statuses))
    table.add_row("total", "", *(str(totals[s]) for s in statuses), style="bold")
    return table


def breakdown_rows(rows: list[tuple[str, str | None, str, int]]) -> list[dict[str, Any]]:
    """The breakdown table's rows for ``--json``."""
    return [
        {"locale": locale, "region": region, "status": status, "count": count}
        for locale, region, status, count in rows
    ]


def print_json(data: Any, stream: TextIO | None = None) -> None:
    json.dump(data, stream or sys.stdout, ensure_ascii=False, indent=2, sort_keys=True)
    (stream or sys.stdout).write("\n")
