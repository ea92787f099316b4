"""A long generated list already imported into the ledger, made by SQL in a fraction of
the time the import itself takes (which validates each row: tests/ledger covers it), for
the tests whose subject is what comes after the import."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import CSV_HEADER
from statusmail.ledger import Ledger
from statusmail.ledger.subscribers import digest_of, span


def seeded_list(project: Path, rows: int) -> Path:
    """The project's subscribers become ``rows`` readers in Russia (all selected by
    update-2020-04-21) in one file, imported as ``statusmail import`` would."""
    folder = project.parent / "subscribers"
    for old in folder.iterdir():
        old.unlink()
    path = folder / "everyone.csv"
    with path.open("w", encoding="utf-8") as handle:
        handle.write(CSV_HEADER)
        handle.writelines(
            f"reader{i}@example.org,Читатель {i},ru,RU,service-status,active\n" for i in range(rows)
        )
    with Ledger(project.parent / "statusmail.db") as ledger, ledger.transaction():
        db = ledger.database
        base = span(1)[0]
        db.execute(
            "INSERT INTO subscriber_imports (id, folder, state, subscribers, rows_read,"
            " started_at, finished_at) VALUES (1, :f, 'current', :n, :n, 'now', 'now')",
            {"f": str(folder), "n": rows},
        )
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < :last)"
            " INSERT INTO subscribers SELECT :base + i + 1, 1, 'reader' || i || '@example.org',"
            " 'reader' || i || '@example.org', 'reader' || i || '@example.org',"
            " 'Читатель ' || i, 'ru', 'RU', 'service-status', 'active', :file, i + 2 FROM n",
            {"last": rows - 1, "base": base, "file": str(path)},
        )
        db.execute(
            "INSERT INTO subscriber_groups VALUES (1, 'active', 'ru', 'RU', 'service-status',"
            " :n, 0)",
            {"n": rows},
        )
        st = os.stat(path)
        db.execute(
            "INSERT INTO subscriber_files VALUES (1, :p, :s, :m, :d)",
            {"p": str(path), "s": st.st_size, "m": st.st_mtime_ns, "d": digest_of(path)},
        )
    return path
