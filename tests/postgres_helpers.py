"""The real PostgreSQL server for tests: where it is, and reading a ledger on it as an
outsider would. The fixtures (``postgres``, ``ledger_target``) are in conftest.

The server is ``$STATUSMAIL_TEST_POSTGRES`` (default ``postgresql://127.0.0.1:5432/test``).
"""

from __future__ import annotations

import os
from typing import Any

DEFAULT = "postgresql://127.0.0.1:5432/test"


def server_url() -> str:
    return os.environ.get("STATUSMAIL_TEST_POSTGRES") or DEFAULT


def in_schema(url: str, schema: str) -> str:
    """``url`` whose connections work in ``schema`` (its tables, its advisory locks)."""
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on the ledger at ``url``, read as an outsider would."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return list(conn.execute(sql, params).fetchall())
