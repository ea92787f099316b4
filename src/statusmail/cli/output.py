"""Where the command line's output goes: reports to ``out`` (standard output), what goes
wrong and what is going on to ``console`` (standard error) and the log, whose format
(text or one JSON object a line) ``setup_logging`` sets."""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

from rich.console import Console

console = Console(stderr=True, soft_wrap=True, emoji=False)  # "file:100:" is no emoji
out = Console(soft_wrap=True, emoji=False)

# Attributes every LogRecord has; anything else was passed in ``extra`` and is a field.
_RECORD_ATTRIBUTES = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _masked(text: str) -> str:
    from statusmail.domain import mask_addresses

    return mask_addresses(text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors (``--log-format json``): ``time``,
    ``level``, ``logger``, ``event`` (``other`` for a line that names none),
    ``message``, and the fields a line carries (``entry``, counts, ``relay``, a masked
    ``recipient``; ``type`` and ``traceback`` for an exception). Every address in every
    field is masked, whatever the caller passed."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": "other",
            "message": _masked(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                keep = isinstance(value, int | float | bool | None)
                entry[key] = value if keep else _masked(str(value))
        if record.exc_info and record.exc_info[0] is not None:
            entry["type"] = record.exc_info[0].__name__
            entry["traceback"] = _masked(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """A log line of text with its message printable (``domain.printable``): a bounce's
    address or a relay's reply holding ESC sequences or a line break acts on no terminal
    and passes for no other line."""

    def format(self, record: logging.LogRecord) -> str:
        from statusmail.domain import printable

        shown = logging.makeLogRecord(record.__dict__)
        shown.msg, shown.args = printable(record.getMessage()), None
        return super().format(shown)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is at each line, not as it was at set-up (a test's
    runner swaps it for each command it runs in-process)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class ConsoleLog:
    """What the command prints to ``console`` (stderr) as log records instead, with
    ``--log-format json``: each print is one record (``error: …`` lines as ``error``,
    ``file:line: …`` problems as ``problem``, the rest as ``output``), so stderr holds
    JSON only."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self.log = logging.getLogger("statusmail")

    def write(self, text: str) -> int:
        self._text.append(text)
        return len(text)

    def flush(self) -> None:
        text, self._text = "".join(self._text).rstrip("\n"), []
        if not text:
            return
        if text.startswith("error: "):
            level, event = logging.ERROR, "error"
        elif text.startswith("interrupted by "):
            level, event = logging.WARNING, "interrupted"
        elif _PROBLEM.match(text):
            warning = ": warning: " in text
            level, event = (logging.WARNING if warning else logging.ERROR), "problem"
        else:
            level, event = logging.INFO, "output"
        self.log.log(level, "%s", text, extra={"event": event})

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise OSError("no file descriptor: lines become log records")


# A problem as the commands print it: ``path[:line]: message`` or ``$VARIABLE: message``.
_PROBLEM = re.compile(r"(?:\$\w+|[^\s:]*/[^\s:]*)(?::\d+)?: ")
# Libraries whose warnings and errors share statusmail's log format: the PostgreSQL driver
# and its pool, the event loop, the HTTP server, and Python's ``warnings``.
LIBRARY_LOGGERS = ("psycopg", "asyncio", "uvicorn", "py.warnings")
LOGGERS = ("statusmail", *LIBRARY_LOGGERS)


def setup_logging(verbose: int, log_format: str = "text") -> None:
    """statusmail's log lines, and the libraries' warnings and errors, in one format on
    stderr; with ``json``, whatever the command prints to stderr too (see ``ConsoleLog``)."""
    level = logging.DEBUG if verbose > 1 else logging.INFO
    console.file = None  # type: ignore[assignment]  # back to sys.stderr, as made
    formatter: logging.Formatter
    if log_format == "json":
        formatter = JsonFormatter()
        handler: logging.Handler = StderrHandler()
        console.file = ConsoleLog()  # type: ignore[assignment]
    elif console.is_terminal:
        from rich.logging import RichHandler

        formatter = TextFormatter("%(message)s")
        handler = RichHandler(console=console, show_path=False, markup=False)
    else:
        formatter = TextFormatter("%(asctime)s %(levelname)s %(message)s")
        handler = StderrHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger("statusmail")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # The HTTP server's own lines (serve, watch --metrics-port) in the same format, as
    # the libraries' warnings: a psycopg pool that cannot connect, a task nobody awaited.
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
        if name != "uvicorn":
            logger.setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)
    logging.captureWarnings(True)


def log_crash(exc: BaseException) -> bool:
    """An exception nothing expected, logged as one record with its ``type`` and
    ``traceback`` when the log is JSON (a collector reads one object, not a traceback's
    lines); False when it is not, and Python prints the traceback."""
    log = logging.getLogger("statusmail")
    if not any(isinstance(h.formatter, JsonFormatter) for h in log.handlers):
        return False
    log.critical(
        "unexpected %s: %s",
        type(exc).__name__,
        exc,
        exc_info=(type(exc), exc, exc.__traceback__),
        extra={"event": "crash"},
    )
    return True
