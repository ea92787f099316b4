"""The ledger: who should get which entry, and what happened when we tried.

It lives in an embedded SQLite file (the default) or in PostgreSQL (``paths.ledger`` or
``$STATUSMAIL_LEDGER`` a ``postgresql://`` URL). All of statusmail's SQL is in this
package: ``schema`` (numbered migrations), ``database`` (the two engines), ``store``
(the ``Ledger``, built from ``base``, ``staging``, ``outcomes``, ``suppressions``,
``events`` and ``preferences``), ``copying`` (``ledger copy``), ``queries`` and
``queue`` (the delivery side), ``subscribers`` and ``importing`` (the lists held in it),
``corrections`` (what went out, to whom), ``controls`` (an entry paused or cancelled,
failed rows retried), ``locks``, ``pool`` (the connections ``serve`` keeps).

May import: ``project`` (the config), ``domain``, ``errors``; never content, delivery,
feedback, web or the commands. Invariants: every outcome is recorded before the next
message on its connection is handed over; a claim is fenced (a sender that lost its
lease writes nothing); migrations are numbered and only ever added.
Imported by: ``delivery``, ``feedback``, ``web``, ``pipeline``, ``watch``, the commands.
"""

from statusmail.ledger.base import now_iso
from statusmail.ledger.copying import copy_ledger
from statusmail.ledger.database import describe
from statusmail.ledger.events import FeedbackEvent
from statusmail.ledger.locks import run_lock
from statusmail.ledger.outcomes import FEEDBACK_OUTCOMES, OUTCOMES
from statusmail.ledger.pool import LedgerPool
from statusmail.ledger.queue import DeliveryQueue, LocalQueue, ServerQueue
from statusmail.ledger.schema import FEEDBACK_READS, SCHEMA_VERSION
from statusmail.ledger.staging import Plan, StagedRow
from statusmail.ledger.store import (
    Ledger,
    exists,
    read_preferences,
    read_suppressions,
    reading,
)
from statusmail.project.config import is_url

__all__ = [
    "FEEDBACK_OUTCOMES",
    "FEEDBACK_READS",
    "OUTCOMES",
    "SCHEMA_VERSION",
    "DeliveryQueue",
    "FeedbackEvent",
    "Ledger",
    "LedgerPool",
    "LocalQueue",
    "Plan",
    "ServerQueue",
    "StagedRow",
    "copy_ledger",
    "describe",
    "exists",
    "is_url",
    "now_iso",
    "read_preferences",
    "read_suppressions",
    "reading",
    "run_lock",
]
