"""The real PostgreSQL server for tests: a schema of its own per test, dropped after.

The server is ``$STATUSMAIL_TEST_POSTGRES`` (default ``postgresql://127.0.0.1:5432/test``).
Without one, the tests that need it skip saying why; under ``CI=true`` they fail.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

DEFAULT = "postgresql://127.0.0.1:5432/test"


def server_url() -> str:
    return os.environ.get("STATUSMAIL_TEST_POSTGRES") or DEFAULT


def in_schema(url: str, schema: str) -> str:
    """``url`` whose connections work in ``schema`` (its tables, its advisory locks)."""
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


@pytest.fixture
def postgres() -> Iterator[str]:
    """A ledger URL on the real server, in a schema made for this test and dropped after."""
    import psycopg

    url = server_url()
    try:
        admin = psycopg.connect(url, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        reason = f"no PostgreSQL at {url} ({exc}); set $STATUSMAIL_TEST_POSTGRES"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    schema = f"statusmail_test_{secrets.token_hex(6)}"
    with admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            yield in_schema(url, schema)
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_target(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Each backend in turn: a SQLite file, then a PostgreSQL schema."""
    if request.param == "sqlite":
        return tmp_path / "ledger" / "statusmail.db"
    url: str = request.getfixturevalue("postgres")
    return url


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on the ledger at ``url``, read as an outsider would."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return list(conn.execute(sql, params).fetchall())
