"""The fault harness (issue 20): N ``statusmail send`` senders and two ``statusmail
watch`` watchers on one PostgreSQL ledger of their own, against a recording relay,
with ``serve`` answering one-click unsubscribes, while faults are injected at seeded
random moments; then the whole history is checked (``chaos.history``).

By hand, from the repository (``--help`` for the knobs)::

    .venv/bin/python tests/chaos --seconds 600

and in a short form in the suite, ``tests/test_chaos.py``."""
