"""``statusmail`` and ``python -m statusmail``.

A signal handler goes in with the first statement of ``run``, before anything else is
imported, so that from there on SIGINT or SIGTERM ends the program with an exit code and
a line, never by the signal. Before it, while the interpreter itself starts (about the
first 20 ms: Python's own set-up and ``site``), Python's defaults hold: SIGTERM ends the
process by the signal (status 143 in a shell) and SIGINT prints Python's
``KeyboardInterrupt``; nothing of statusmail has run then. An exception nothing
expected is, under ``--log-format json``, one JSON line (exit 1).
"""

from __future__ import annotations

import signal
import sys


class _Early(BaseException):
    """A signal while statusmail was still starting (before its own handlers)."""


# The signals statusmail's handlers took, however their exception surfaced: one raised
# while a C extension initialises (``import ssl``) can come out as another exception.
_received: list[int] = []


def _early(signum: int, _frame: object) -> None:
    # The program ends now: a second signal must not cut short the line that says so.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    _received.append(signum)
    raise _Early(signum)


def _unraisable(args: sys.UnraisableHookArgs) -> None:
    """A signal's exception raised inside a callback Python runs on its own (a weakref's,
    during an import, say) cannot leave it: Python would print it as "Exception ignored"
    with a traceback and go on as if no signal had come. The signal is sent again
    instead, a millisecond later from a thread, so that its exception comes where the
    program is by then (sent from here, its handler would run inside this hook)."""
    value = args.exc_value
    if isinstance(value, _Early):
        signum: int | None = value.args[0]
        signal.signal(value.args[0], _early)  # (it ignored both signals from then on)
    elif type(value).__name__ == "Interrupted" and type(value).__module__ == "statusmail.errors":
        signum = getattr(value, "signum", None)
    else:
        signum = None
    if signum is None:
        sys.__unraisablehook__(args)
        return
    import os
    import threading
    import time

    left = threading.Event()

    def again() -> None:
        # Not before this hook has returned: a signal still inside it is "ignored" again,
        # with a traceback (a timer started here fired while starting the thread waited
        # for the interpreter, on a busy machine)
        left.wait()
        time.sleep(0.005)
        os.kill(os.getpid(), signum)

    threading.Thread(target=again, daemon=True).start()
    left.set()  # the last thing the hook does


def _signal_taken() -> int | None:
    """The first signal a handler of statusmail's took, if any."""
    module = sys.modules.get("statusmail.signals")
    later: list[int] = getattr(module, "received", []) if module else []
    taken = _received or later
    return taken[0] if taken else None


def _settled() -> None:
    """The program has its exit code: a signal now changes nothing (at finalization Python
    would otherwise give SIGTERM its default action back, and the process would end by
    the signal instead of with its code)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def run() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _early)
    sys.unraisablehook = _unraisable
    try:
        _main()
    finally:
        _settled()


def _main() -> None:
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

        signum = exc.signum if isinstance(exc, Interrupted) else _signal_taken()
        if signum is None:
            from statusmail.cli import log_crash

            if not log_crash(exc):
                raise
            sys.exit(1)
        name = signal.Signals(signum).name
        print(f"interrupted by {name} while starting; nothing was done", file=sys.stderr)
        sys.exit(0 if "watch" in sys.argv[1:] else 4)


if __name__ == "__main__":
    run()
