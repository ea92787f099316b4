"""``regions.yaml``: per-region names, alternative-access instructions and link rewrites."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from urllib.parse import urlsplit

from statusmail.errors import InputError, Problem
from statusmail.fields import Fields
from statusmail.yamlfile import load_yaml

REGION_CODE = re.compile(r"^[A-Z]{2}$")


@dataclass(frozen=True)
class Region:
    code: str
    names: dict[str, str]
    blocked_since: dt.date | None = None
    heading: dict[str, str] = field(default_factory=dict)  # locale -> the access block's heading
    access: dict[str, str] = field(default_factory=dict)  # locale -> Markdown
    # URL prefix -> the prefix that works in this region (a mirror of a blocked site),
    # longest first, so the most specific rewrite wins.
    links: tuple[tuple[str, str], ...] = ()
    path: Path | None = None
    line: int | None = None
    lines: dict[str, int] = field(default_factory=dict)

    def name(self, locale: str) -> str:
        return self.names.get(locale) or self.names.get("en") or self.code

    def rewrite(self, url: str) -> str:
        """``url`` as a reader in this region must get it."""
        for prefix, replacement in self.links:
            if url.startswith(prefix):
                return replacement + url[len(prefix) :]
        return url

    def rewrite_text(self, text: str) -> str:
        """Every occurrence of a rewritten prefix in ``text`` (a rendered part), in one
        pass, so that a replacement is never rewritten again."""
        if not self.links:
            return text
        return self._links_pattern.sub(lambda match: self._links_map[match[0]], text)

    @cached_property
    def _links_map(self) -> dict[str, str]:
        return dict(self.links)

    @cached_property
    def _links_pattern(self) -> re.Pattern[str]:
        return re.compile("|".join(re.escape(prefix) for prefix, _ in self.links))

    def blocked_hosts(self) -> set[str]:
        """The hosts this region's links rewrite away from (they do not open there)."""
        return {urlsplit(prefix).hostname or "" for prefix, _ in self.links} - {""}


def _url_prefix(f: Fields, key: str, value: object) -> str | None:
    text = str(value).strip() if isinstance(value, str) else ""
    parts = urlsplit(text)
    unsafe = any(ch.isspace() or ch in "\"'<>`\\" for ch in text)
    if (
        parts.scheme not in ("https", "http")
        or not parts.hostname
        or not text.endswith("/")
        or unsafe
    ):
        f.problem(
            f.line_of(key),
            f"{f.name(str(key))!r}: {text or value!r} must be an http(s) URL prefix ending in '/'",
        )
        return None
    return text


def load_regions(path: Path) -> dict[str, Region]:
    data = load_yaml(path)
    problems: list[Problem] = []
    top = Fields(path, data, problems)
    regions: dict[str, Region] = {}
    for code in top.data:
        line = top.line_of(code)
        if not isinstance(code, str) or not REGION_CODE.match(code):
            problems.append(
                Problem(
                    path,
                    line,
                    f"region code {code!r} is not ISO 3166-1 alpha-2 (like RU)",
                    code="bad-value",
                )
            )
            continue
        f = top.sub(code)
        f.unknown_keys({"name", "blocked_since", "heading", "access", "links"})
        names_f, heading_f, access_f = f.sub("name"), f.sub("heading"), f.sub("access")
        links_f = f.sub("links")
        links: list[tuple[str, str]] = []
        for prefix in links_f.data:
            source = _url_prefix(links_f, prefix, prefix)
            target = _url_prefix(links_f, prefix, links_f.data[prefix])
            if source and target:
                if urlsplit(source).hostname == urlsplit(target).hostname:
                    links_f.problem(
                        links_f.line_of(prefix),
                        f"{source!r} is rewritten to the same host; a mirror needs another domain",
                    )
                links.append((source, target))
        regions[code] = Region(
            code=code,
            names={str(k): names_f.line_text(str(k)) for k in names_f.data},
            blocked_since=f.date("blocked_since"),
            heading={str(k): heading_f.line_text(str(k)) for k in heading_f.data},
            access={str(k): access_f.text(str(k)) for k in access_f.data},
            links=tuple(sorted(links, key=lambda pair: -len(pair[0]))),
            path=path,
            line=line,
            lines={key: f.line_of(key) for key in f.data},
        )
    if problems:
        raise InputError(problems)
    return regions
