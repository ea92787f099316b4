"""``statusmail`` and ``python -m statusmail``.

The signal handlers go in before anything else is imported, so that SIGINT or SIGTERM
at any moment ends the program with an exit code and a line, never by the signal.
"""

from __future__ import annotations

import sys


def run() -> None:
    from statusmail import signals
    from statusmail.errors import Interrupted

    signals.install()
    try:
        from statusmail.cli import main

        main()
    except Interrupted as exc:  # before a command could take it (while starting up)
        print(f"interrupted by {signals.name(exc.signum)} while starting", file=sys.stderr)
        sys.exit(0 if "watch" in sys.argv[1:] else 4)


if __name__ == "__main__":
    run()
