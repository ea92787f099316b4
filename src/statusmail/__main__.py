"""``statusmail`` and ``python -m statusmail``.

A signal handler goes in before anything else is imported, so that SIGINT or SIGTERM at
any moment ends the program with an exit code and a line, never by the signal. An
exception nothing expected is, under ``--log-format json``, one JSON line (exit 1).
"""

from __future__ import annotations

import signal
import sys


class _Early(BaseException):
    """A signal while statusmail was still starting (before its own handlers)."""


def _early(signum: int, _frame: object) -> None:
    raise _Early(signum)


def run() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _early)
    try:
        from statusmail import signals

        signals.install()
        from statusmail.cli import main

        main()
    except _Early as exc:
        name = signal.Signals(exc.args[0]).name
        print(f"interrupted by {name} while starting; nothing was done", file=sys.stderr)
        sys.exit(0 if "watch" in sys.argv[1:] else 4)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        from statusmail.errors import Interrupted

        if not isinstance(exc, Interrupted):
            from statusmail.cli import log_crash

            if not log_crash(exc):
                raise
            sys.exit(1)
        name = signal.Signals(exc.signum).name
        print(f"interrupted by {name} while starting; nothing was done", file=sys.stderr)
        sys.exit(0 if "watch" in sys.argv[1:] else 4)


if __name__ == "__main__":
    run()
