"""What answers a browser or a supervisor: ``serve`` (the app and its process: the
one-click unsubscribe and preferences routes in ``endpoints``, their paths and origins in
``urls``, the ledger as they reach it in ``ledger_access``, the webhooks), the pages'
templates and forms (``pages``), the health, readiness and metrics endpoints
(``health``), and the static status site and its feeds (``publish``, ``site``,
``feeds``, ``republish``: ``statusmail publish``).

May import: ``project``, ``content``, ``ledger``, ``feedback``, ``metrics``, ``domain``,
``errors``; never ``delivery`` or the commands. Invariant: no state changes on a request
that is not proven (a token, a same-origin form).
Imported by: ``watch`` (it republishes the site), ``validation`` (the pages' templates
are checked), ``ci`` (the site's pages in the previews), the CLI.
"""
