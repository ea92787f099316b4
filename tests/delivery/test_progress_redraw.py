"""The progress bar on a terminal is redrawn at most ~10 times a second, however fast
outcomes come, and still shows the last state it drew correctly."""

from __future__ import annotations

import io
import time

from rich.console import Console

from statusmail.delivery.report import ProgressReporter
from statusmail.domain import DeliveryStatus, Outcome, Recipient

RECIPIENT = Recipient("a@example.org", "a@example.org", "a@example.org", "", "en", None)


class CountingFile(io.StringIO):
    """A terminal's output: counts the writes rich makes."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_outcomes_faster_than_redraws_redraw_at_most_ten_times_a_second() -> None:
    out = CountingFile()
    console = Console(file=out, force_terminal=True, width=120)
    total = 10_000_000
    reporter = ProgressReporter(total, console=console)
    sent = Outcome("a@example.org", DeliveryStatus.SENT, 1, 250)
    failed = Outcome("a@example.org", DeliveryStatus.FAILED, 1, 550)
    started = time.monotonic()
    calls = 0
    while time.monotonic() - started < 0.45 and calls < total:  # outcomes, flat out
        reporter(failed if calls % 100 == 0 else sent, RECIPIENT)
        calls += 1
    elapsed = time.monotonic() - started
    writes_before_close = out.writes
    reporter.close()
    assert reporter.counts["sent"] + reporter.counts["failed"] == calls
    assert reporter.counts["failed"] == (calls + 99) // 100
    # one at the first outcome, then one per 0.1 s at most: a few, not one per outcome
    assert 3 <= reporter.redraws <= elapsed / 0.1 + 2
    assert calls > 100 * reporter.redraws
    assert writes_before_close <= 2 * reporter.redraws + 2  # start, and one per redraw
    assert "sent" in out.getvalue() and "failed" in out.getvalue()


def test_no_terminal_no_bar() -> None:
    out = CountingFile()
    console = Console(file=out, force_terminal=False)
    reporter = ProgressReporter(10, console=console)
    for _ in range(10):
        reporter(Outcome("a@example.org", DeliveryStatus.SENT, 1, 250), RECIPIENT)
    reporter.close()
    assert reporter.redraws == 0 and out.writes == 0
    assert reporter.counts["sent"] == 10
