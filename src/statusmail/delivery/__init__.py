"""Getting messages out: the audience taken into the ledger's queue (``intake``), the
selection a run delivers while it delivers (``stream``, ``takeover``), the engine that
claims, builds, throttles, sends and records (``engine``; with a DKIM key a signer
process beside it signs, ``signing``), the transports (``smtp``,
what its replies mean in ``smtp_replies``, ``maildir``, ``transport``), the rate limit
(``throttle``), what a run prints (``report``) and shows while it waits (``waiting``),
the dry run (``dry_run``), entries
already sent and corrections of them (``corrections``), test sends (``test_send``) and
pause, resume, cancel and retry (``controls``).

May import: ``project``, ``content``, ``ledger``, ``metrics``, ``domain``, ``errors``
(and ``validation`` for the entry-level rules the intake enforces); never ``feedback``,
``web``, ``ci`` or the commands. Invariant: at most one unrecorded message per
connection; a recipient suppressed before its attempt starts is never sent to.
Imported by: ``pipeline``, the commands, ``ci``.
"""
