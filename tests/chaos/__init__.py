"""The fault harness (issue 20): N ``statusmail send`` senders and ``statusmail watch``
watchers on one ledger of their own (a PostgreSQL schema, or with ``--ledger sqlite`` a
SQLite file), against a recording relay, with ``serve`` answering one-click
unsubscribes, while faults are injected at seeded random moments; then the whole history
is checked (``chaos.history``).

By hand, from the repository (``--help`` for the knobs)::

    .venv/bin/python tests/chaos --seconds 600
    .venv/bin/python tests/chaos --ledger sqlite --seconds 90 --rate 250

and in a short form in the suite, ``tests/test_chaos.py``."""
