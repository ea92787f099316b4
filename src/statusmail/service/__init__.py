"""The pieces of ``statusmail watch``, the service (its loop is ``watch``, at the top):
each a part of ``watch.Watcher``, as ``feedback.loop.Feedback`` is made of its halves.
``options`` (``WatchOptions``), ``readiness`` (``/healthz``, ``/readyz`` and the metrics
endpoint), ``leadership`` (PostgreSQL: leading, standing by, connecting again),
``background`` (file events and the bounce mailbox's passes beside the sending),
``bookkeeping`` (what is due, what was said once, the lists imported, what an entry's
run reads).

May import: ``project``, ``ledger``, ``feedback``, ``web`` (health), ``delivery`` (only
how a ledger time reads), ``metrics``, ``signals``, ``domain``, ``errors``; never the
commands, the command line or ``watch`` itself, and nothing but ``watch`` imports it
(the contracts in pyproject.toml); nor the pipeline, which only the loop in ``watch``
drives. Imported by: ``watch`` only.
"""
