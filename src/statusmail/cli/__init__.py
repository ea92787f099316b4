"""The command line: parses options, sets up logging, calls one function in ``commands``.

Only what parsing needs is imported here; each command imports its own work when it
runs, so ``--help``, ``--version`` and a usage error start at once. ``app`` holds the
group and the options the commands share, ``output`` where reports and the log go; the
commands are in ``project``, ``sending``, ``lists`` and ``operations``, each imported
when one of its commands runs (``app.COMMAND_MODULES``).

May import every package (it is the top: it ties them). Imported by ``__main__`` and
nothing else (the contract "only the top level knows the command line").
"""

from statusmail.cli.app import main
from statusmail.cli.output import LOGGERS, JsonFormatter, TextFormatter, log_crash, setup_logging

__all__ = ["LOGGERS", "JsonFormatter", "TextFormatter", "log_crash", "main", "setup_logging"]
