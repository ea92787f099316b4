"""The rate a progress line gives is the recent one: after a pause (a late resume, the
hourly cap, another sender's lease) the first line says how fast it goes now, not the
average since the start."""

from __future__ import annotations

import io
import logging
import time

import pytest
from rich.console import Console

from statusmail.delivery.report import ProgressReporter
from statusmail.domain import DeliveryStatus, Outcome, Recipient

RECIPIENT = Recipient("a@example.org", "a@example.org", "a@example.org", "", "en", None)
SENT = Outcome("a@example.org", DeliveryStatus.SENT, 1, 250)


def send_for(reporter: ProgressReporter, seconds: float) -> float:
    """Outcomes for ``seconds``, about 200 a second; how many a second there were."""
    start = time.monotonic()
    count = 0
    while time.monotonic() < start + seconds:
        reporter(SENT, RECIPIENT)
        count += 1
        time.sleep(0.005)
    return count / (time.monotonic() - start)


def test_the_first_line_after_a_pause_gives_the_rate_since(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reporter = ProgressReporter(None, console=Console(file=io.StringIO()), interval=0.15)
    reporter.WINDOW = 0.2
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="statusmail"):
        send_for(reporter, 0.1)
        time.sleep(0.5)  # the pause: more than two windows without an outcome
        caplog.clear()
        now = send_for(reporter, 0.3)
    average = reporter.counts["sent"] / (time.monotonic() - started)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]
    assert lines, "no progress line"
    said = float(lines[0].split(", ")[-1].split()[0])
    print(f"said {said:.0f}/s, sending {now:.0f}/s, {average:.0f}/s since the start")
    assert said > 0.7 * now and said > 1.5 * average, lines
