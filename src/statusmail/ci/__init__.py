"""What CI runs for a reviewer: ``check`` in the formats CI systems read (``formats``),
the files changed since a git ref (``changes``), ``check`` itself (``review``), the dry
run of every changed entry (``dry_run``) and the Markdown summary a reviewer reads first
(``summary``).

May import: everything but the CLI and ``watch``; nothing imports it but the CLI.
"""
