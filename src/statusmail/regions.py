"""``regions.yaml``: per-region facts and alternative-access instructions."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path

from statusmail.errors import InputError, Problem
from statusmail.fields import Fields
from statusmail.yamlfile import load_yaml

REGION_CODE = re.compile(r"^[A-Z]{2}$")


@dataclass(frozen=True)
class Region:
    code: str
    names: dict[str, str]
    blocked_since: dt.date | None = None
    access: dict[str, str] = field(default_factory=dict)  # locale -> Markdown
    path: Path | None = None
    line: int | None = None

    def name(self, locale: str) -> str:
        return self.names.get(locale) or self.names.get("en") or self.code


def load_regions(path: Path) -> dict[str, Region]:
    data = load_yaml(path)
    problems: list[Problem] = []
    top = Fields(path, data, problems)
    regions: dict[str, Region] = {}
    for code in top.data:
        line = top.line_of(code)
        if not isinstance(code, str) or not REGION_CODE.match(code):
            problems.append(
                Problem(path, line, f"region code {code!r} is not ISO 3166-1 alpha-2 (like RU)")
            )
            continue
        f = top.sub(code)
        f.unknown_keys({"name", "blocked_since", "access"})
        names = {str(k): str(v) for k, v in f.sub("name").data.items()}
        access_f = f.sub("access")
        access = {str(k): access_f.text(str(k)) for k in access_f.data}
        regions[code] = Region(
            code=code,
            names=names,
            blocked_since=f.date("blocked_since"),
            access=access,
            path=path,
            line=line,
        )
    if problems:
        raise InputError(problems)
    return regions
