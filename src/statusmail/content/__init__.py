"""What a reader receives: Markdown to HTML and text, typography, the catalogs, the
rendered variants, the wire-ready message bytes with their DKIM signatures, and the
dry-run previews of them.

Holds: ``render``, ``markdown``, ``typography``, ``catalog`` (loading the catalogs; what
``check`` finds wrong with them in ``catalog_gaps`` and ``fixed_text``), ``message`` (the
headers and envelope; each MIME part's encodings in ``parts``), ``dkim_signing``,
``preview``; what ``check`` and every run find by building an entry's variants in
``render_checks``.
May import: ``project``, ``domain``, ``errors``; never the ledger, delivery, feedback,
web or the commands. Invariant: a message is wire-ready by construction (CRLF only, no
line over 998 octets, its ``Shape`` says whether it needs 8BITMIME or SMTPUTF8).
Imported by: ``validation``, ``delivery``, ``web``, ``ci``, the commands.
"""
