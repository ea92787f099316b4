"""Reading typed fields out of a loaded YAML mapping, collecting located problems."""

from __future__ import annotations

import datetime as dt
import math
import re
from pathlib import Path
from typing import Any

from statusmail.errors import Problem
from statusmail.project.yamlfile import LineDict, line_of, spelled


def quote_it(written: str) -> str:
    """What to do about an unquoted ``yes``/``no``/``on``/``off`` meant as text."""
    return f'YAML reads an unquoted {written} as {_BOOLEAN[written.lower()]}: write "{written}"'


def zone_missing(naive: dt.datetime) -> str:
    """What to say of a date and time without a zone: which zone to add, and how."""
    written = naive.isoformat()
    offset = naive.astimezone().strftime("%z")  # in force on that date (DST), not today
    local = f"{offset[:3]}:{offset[3:]}"
    ours = f"{written}{local} (this computer's zone), " if local != "+00:00" else ""
    return (
        f"{written} has no time zone, so nobody can tell when it is: add the zone it "
        f"means, as {ours}{written}+03:00 (Moscow) or {written}Z (UTC)"
    )


# What no text of a project may hold: the C0 controls but tab and line breaks, the
# non-characters U+FFFE and U+FFFF, and lone surrogates (XML 1.0 cannot hold any of them).
NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
BIDI_CONTROL = re.compile("[\u202a-\u202e\u2066-\u2069]")  # embeddings, overrides, isolates
_BOOLEAN = {"yes": "true", "on": "true", "y": "true", "no": "false", "off": "false", "n": "false"}


_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Fields:
    """A view over one mapping that records a ``file:line`` problem for each bad field."""

    def __init__(
        self,
        path: Path,
        data: Any,
        problems: list[Problem],
        what: str = "",
        line: int | None = None,
    ) -> None:
        self.path = path
        self.problems = problems
        self.what = what
        # Plain values carry no line of their own: the caller says where they stand.
        self.line = getattr(data, "line", None) or line or 1
        if isinstance(data, dict):
            self.data: dict[Any, Any] = data
        else:
            self.data = LineDict()
            if data is not None:
                self.problem(self.line, f"{what or 'the file'} must be a mapping")

    def problem(self, line: int | None, message: str, code: str = "bad-value") -> None:
        self.problems.append(Problem(self.path, line, message, code=code))

    def said(self, key: str) -> bool:
        """Whether a problem stands at ``key``'s line already (one problem a line)."""
        line = self.line_of(key)
        return any(problem.line == line and problem.path == self.path for problem in self.problems)

    def line_of(self, key: str) -> int:
        return line_of(self.data, key) or self.line

    def name(self, key: str) -> str:
        return f"{self.what}.{key}" if self.what else key

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def sub(self, key: str) -> Fields:
        value = self.data.get(key)
        return Fields(self.path, value, self.problems, self.name(key), self.line_of(key))

    def unknown_keys(self, allowed: set[str]) -> None:
        for key in self.data:
            if key not in allowed:
                self.problem(
                    self.line_of(key), f"unknown key {self.name(str(key))!r}", code="unknown-key"
                )

    def text(self, key: str, default: str | None = None, *, required: bool = False) -> str:
        value = self.data.get(key)
        if value is None:
            if required:
                self.problem(self.line, f"missing {self.name(key)!r}", code="missing-field")
            return default or ""
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            written = spelled(self.data, key)
            hint = f": {quote_it(written)}" if written else ""
            self.problem(self.line_of(key), f"{self.name(key)!r} must be a string{hint}")
            return default or ""
        text = str(value).strip()
        found = NOT_TEXT.search(text)
        if found is not None:
            # (YAML's "\v" or "\e", a Word soft break pasted in: no mail reader shows
            # them, and XML, which the feeds are, cannot hold them at all)
            where = text.count("\n", 0, found.start()) + 1
            self.problem(
                self.line_of(key),
                f"{self.name(key)!r} holds U+{ord(found.group()):04X}, a character no text"
                f" may hold (in its line {where})",
            )
            return NOT_TEXT.sub("", text)
        return text

    def optional_text(self, key: str) -> str | None:
        return self.text(key) if self.has(key) else None

    def line_text(self, key: str, *, required: bool = False) -> str:
        """A string that will end up in a header: one line, no control characters, and
        none of the controls that reorder what a reader sees (a subject holding U+202E
        showed "gnp.exe" as "exe.png": review)."""
        value = self.text(key, required=required)
        if "\r" in value or "\n" in value:
            self.problem(self.line_of(key), f"{self.name(key)!r} must be one line of text")
            return " ".join(value.split())
        found = BIDI_CONTROL.search(value)
        if found is not None:
            self.problem(
                self.line_of(key),
                f"{self.name(key)!r} holds U+{ord(found.group()):04X}, which reorders the "
                "text a mail client shows: write the text in the order it is read",
            )
            return BIDI_CONTROL.sub("", value)
        return value

    def number(self, key: str, default: float, *, minimum: float = 0) -> float:
        value = self.data.get(key, default)
        if value is None:
            return default
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)  # .nan passed every comparison; .inf is no bound
            or value < minimum
        ):
            self.problem(self.line_of(key), f"{self.name(key)!r} must be a number ≥ {minimum}")
            return default
        return float(value)

    def integer(
        self, key: str, default: int, *, minimum: int = 0, maximum: int | None = None
    ) -> int:
        value = self.data.get(key, default)
        if value is None:
            return default
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or value < minimum
            or (maximum is not None and value > maximum)
        ):
            bounds = f"from {minimum} to {maximum}" if maximum is not None else f"≥ {minimum}"
            self.problem(self.line_of(key), f"{self.name(key)!r} must be a whole number {bounds}")
            return default
        return value

    def optional_integer(self, key: str, *, minimum: int = 1) -> int | None:
        return self.integer(key, minimum, minimum=minimum) if self.has(key) else None

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.problem(self.line_of(key), f"{self.name(key)!r} must be true or false")
            return default
        return value

    def date(self, key: str, *, required: bool = False) -> dt.date | None:
        value = self.data.get(key)
        if value is None:
            if required:
                self.problem(self.line, f"missing {self.name(key)!r}", code="missing-field")
            return None
        if isinstance(value, dt.datetime):
            return value.date()
        if isinstance(value, dt.date):
            return value
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value.strip())
            except ValueError:
                pass
        self.problem(self.line_of(key), f"{self.name(key)!r} must be a date (YYYY-MM-DD)")
        return None

    def datetime(self, key: str) -> dt.datetime | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, dt.datetime):
            parsed = value
        elif isinstance(value, dt.date):
            parsed = dt.datetime(value.year, value.month, value.day)
        else:
            try:
                parsed = dt.datetime.fromisoformat(str(value).strip())
            except ValueError:
                self.problem(self.line_of(key), f"{self.name(key)!r} must be a date and time")
                return None
        if parsed.tzinfo is None:
            self.problem(self.line_of(key), f"{self.name(key)!r} {zone_missing(parsed)}")
            return None
        return parsed

    def variable(self, key: str, default: str) -> str:
        """The name of an environment variable that holds a secret (``*_env``). A value
        that is no such name is not quoted back: it is likely the secret itself, pasted
        in the wrong place, and ``check``'s output goes to CI logs."""
        value = self.text(key, default)
        if value and not _VARIABLE.fullmatch(value):
            self.problem(
                self.line_of(key),
                f"{self.name(key)!r} must name an environment variable (letters, digits and"
                " _), not hold the secret itself: put the secret in the environment",
            )
            return default
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.text(key, default)
        if value not in choices:
            self.problem(
                self.line_of(key),
                f"{self.name(key)!r} is {value!r}; expected one of {', '.join(choices)}",
            )
            return default
        return value

    def text_list(self, key: str) -> list[str] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            value = [value]
        where: tuple[Any, Any] = (self.data, key)
        if isinstance(value, list):
            where = next(((value, i) for i, v in enumerate(value) if isinstance(v, bool)), where)
        if written := spelled(*where):
            line = line_of(*where) or self.line_of(key)
            self.problem(line, f"{self.name(key)!r}: {quote_it(written)}")
            return None
        if not isinstance(value, list) or not all(
            isinstance(v, str | int) and not isinstance(v, bool) for v in value
        ):
            self.problem(self.line_of(key), f"{self.name(key)!r} must be a list of strings")
            return None
        return [str(v).strip() for v in value]
