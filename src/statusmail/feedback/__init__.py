"""The loop back from the world: bounce and complaint mail read from mailboxes
(``bouncebox``); classified (``classify``, the verdict, saying it in ``classified``'s
terms) by what reads each kind of message (``reading``, the message's parts;
``bounces``; ``complaints``; ``replies``, auto-replies and a person's words; ``clues``,
whom it is about) and by cause (``causes``); applied by a pass (``loop``: what a report
proves in ``proof``, what proven events do in ``policy``, the pass's ``reports``);
providers' signed webhooks (``webhooks``, each provider's check and reader in
``providers``) and the suppression list's bulk commands (``suppression``).

May import: ``project``, ``ledger``, ``metrics``, ``domain``, ``errors``; never
``delivery``, ``content``, ``web`` or the commands. Invariant: a report changes a
subscriber's state only with proof statusmail made (a VERP token, a signed Message-ID,
an unsubscribe token, a verified provider signature).
Imported by: ``watch``, ``web`` (webhooks and one-click), the commands, ``ci``.
"""
