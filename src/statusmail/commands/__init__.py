"""The commands' work, one function each, returning an ``ExitCode``; the CLI only parses.
``sending`` (send, its dry run, test sends), ``reports`` (status, list, config),
``lists`` (suppressions, preferences, import, the ledger itself), ``feedback``.

May import every package below the top and ``pipeline``; never ``watch`` and its
``service`` (peers over the pipeline) nor ``cli``. Imported by ``cli``, and the dry
run's report (``sending``) by ``ci``.
"""
