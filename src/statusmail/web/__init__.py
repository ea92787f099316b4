"""What answers a browser or a supervisor: ``serve`` (one-click unsubscribe, the
preferences pages, the webhooks), the pages' templates and forms (``pages``), and the
health, readiness and metrics endpoints (``health``).

May import: ``project``, ``content``, ``ledger``, ``feedback``, ``metrics``, ``domain``,
``errors``; never ``delivery`` or the commands. Invariant: no state changes on a request
that is not proven (a token, a same-origin form).
Imported by: ``watch``, ``validation`` (the pages' templates are checked), the CLI.
"""
