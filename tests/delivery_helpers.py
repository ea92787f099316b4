"""Helpers for the SMTP delivery tests: a sample project pointed at a test server."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import yaml

from conftest import CSV_HEADER, SECRET_ENV, UPDATE, invoke


def point_at(
    config: Path,
    port: int,
    *,
    security: str = "none",
    username: str | None = None,
    ca_file: Path | None = None,
    timeout: float = 2.0,
    **sending: Any,
) -> Path:
    """Rewrite the sample config for SMTP to 127.0.0.1:port with fast retries."""
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["transport"] = "smtp"
    data["smtp"] = {"host": "127.0.0.1", "port": port, "security": security, "timeout": timeout}
    if username:
        data["smtp"]["username"] = username
    if ca_file:
        data["smtp"]["ca_file"] = str(ca_file)
    data["sending"] = {
        "rate": 0,
        "concurrency": 2,
        "max_attempts": 5,
        "stop_after_failures": 0.5,
        "retry_initial": 0.01,
        "retry_max": 0.05,
        **sending,
    }
    config.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return config


def add_subscribers(
    config: Path, count: int, *, region: str = "RU", locale: str = "ru"
) -> list[str]:
    """Append ``count`` generated active subscribers who get update-2020-04-21."""
    addresses = [f"user{i:05d}@example.net" for i in range(count)]
    with (config.parent / "subscribers" / "generated.csv").open("w", encoding="utf-8") as handle:
        handle.write(CSV_HEADER)
        for i, address in enumerate(addresses):
            handle.write(f"{address},User {i},{locale},{region},service-status,active\n")
    return addresses


def send(config: Path, entry_id: str = UPDATE, *extra: str) -> tuple[int, dict[str, Any], str]:
    """``statusmail send ID --yes --json`` in process; (exit code, report, stderr)."""
    result = invoke(config, "send", entry_id, "--yes", "--json", *extra, env=SECRET_ENV)
    payload = json.loads(result.stdout) if result.stdout.strip().startswith("{") else {}
    return result.exit_code, payload, result.stderr


def ledger_rows(config: Path, entry_id: str = UPDATE) -> dict[str, dict[str, Any]]:
    """The entry's rows by address; empty when there is no ledger at all."""
    path = config.parent / "statusmail.db"
    if not path.exists():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        rows = db.execute("SELECT * FROM deliveries WHERE entry_id = ?", (entry_id,)).fetchall()
        return {row["address"]: dict(row) for row in rows}
    finally:
        db.close()


def suppressed(config: Path) -> dict[str, str]:
    db = sqlite3.connect(config.parent / "statusmail.db")
    try:
        return dict(db.execute("SELECT address, reason FROM suppressions").fetchall())
    finally:
        db.close()
