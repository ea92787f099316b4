"""What ``statusmail watch`` is told: its options (``--once``, the poll interval, the
backoffs, the leadership's timings, the metrics endpoint)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WatchOptions:
    once: bool = False
    # --rate and --concurrency: over the config's sending settings, after a reload too
    rate: float | None = None
    concurrency: int | None = None
    poll_interval: float = 2.0
    backoff_initial: float = 5.0
    backoff_max: float = 300.0
    # PostgreSQL: how soon a standby watcher takes over from one that is gone (seconds)
    takeover: float = 30.0
    # PostgreSQL: how often the leader checks its lock's connection, and the backoff of
    # connecting again when it is lost or refused (seconds)
    lock_check: float = 1.0
    lock_retry_initial: float = 0.5
    lock_retry_max: float = 30.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None  # None: no metrics endpoint
