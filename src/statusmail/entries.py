"""``updates/<ID>.yaml``: one status-update entry per file."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from statusmail.errors import InputError, Problem
from statusmail.fields import Fields
from statusmail.locales import SUPPORTED_LOCALES, normalize_locale
from statusmail.regions import REGION_CODE, Region
from statusmail.yamlfile import load_yaml, read_text

STATUSES = ("draft", "ready")


@dataclass(frozen=True)
class Content:
    subject: str
    summary: str
    body: str  # Markdown


@dataclass(frozen=True)
class Audience:
    """Who an entry is for: OR within a key, AND across keys; None means any."""

    regions: frozenset[str] | None = None
    topics: frozenset[str] | None = None
    locales: frozenset[str] | None = None

    def matches(self, region: str | None, topics: frozenset[str], locale: str) -> bool:
        if self.regions is not None and region not in self.regions:
            return False
        if self.topics is not None and not (self.topics & topics):
            return False
        return self.locales is None or locale in self.locales


@dataclass(frozen=True)
class Entry:
    id: str
    date: dt.date
    status: str
    content: Mapping[str, Content]
    audience: Audience = field(default_factory=Audience)
    thread: str | None = None
    access_instructions: bool = True
    send_at: dt.datetime | None = None
    path: Path | None = None
    lines: Mapping[str, int] = field(default_factory=dict)
    digest: str = ""  # of the file's text, to notice edits after sending

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def line(self, key: str) -> int | None:
        return self.lines.get(key)


def load_entry(path: Path) -> Entry:
    """Load and validate one entry file on its own (cross-file checks are in ``check``)."""
    data = load_yaml(path)
    problems: list[Problem] = []
    f = Fields(path, data, problems)
    f.unknown_keys(
        {"id", "date", "status", "thread", "audience", "access_instructions", "content", "send_at"}
    )
    entry_id = f.text("id", required=True)
    if entry_id and entry_id != path.stem:
        f.problem(f.line_of("id"), f"id {entry_id!r} does not match the file name {path.stem!r}")
    date = f.date("date", required=True)
    status = f.text("status", required=True)
    if status and status not in STATUSES:
        f.problem(f.line_of("status"), f"status is {status!r}; expected draft or ready")

    audience_f = f.sub("audience")
    audience_f.unknown_keys({"regions", "topics", "locales"})
    regions = audience_f.text_list("regions")
    for code in regions or []:
        if not REGION_CODE.match(code):
            audience_f.problem(
                audience_f.line_of("regions"),
                f"region {code!r} is not an ISO 3166-1 alpha-2 code (like RU)",
            )
    locales = audience_f.text_list("locales")
    normalized_locales = []
    for raw in locales or []:
        locale = normalize_locale(raw)
        if locale is None:
            audience_f.problem(
                audience_f.line_of("locales"),
                f"locale {raw!r} is not one of {', '.join(SUPPORTED_LOCALES)}",
            )
        else:
            normalized_locales.append(locale)
    topics = audience_f.text_list("topics")
    audience = Audience(
        regions=frozenset(regions) if regions is not None else None,
        topics=frozenset(topics) if topics is not None else None,
        locales=frozenset(normalized_locales) if locales is not None else None,
    )

    content_f = f.sub("content")
    content: dict[str, Content] = {}
    for raw_locale in content_f.data:
        locale = normalize_locale(str(raw_locale))
        if locale is None or locale != raw_locale:
            content_f.problem(
                content_f.line_of(raw_locale),
                f"content locale {raw_locale!r}: expected one of {', '.join(SUPPORTED_LOCALES)}",
            )
            continue
        block = content_f.sub(locale)
        block.unknown_keys({"subject", "summary", "body"})
        content[locale] = Content(
            subject=block.line_text("subject", required=True),
            summary=block.line_text("summary", required=True),
            body=block.text("body", required=True),
        )
    if not content_f.data:
        f.problem(f.line_of("content"), "the entry has no content")
    elif "en" not in content:
        f.problem(f.line_of("content"), "content needs an 'en' block (the fallback language)")

    thread = f.optional_text("thread")
    access_instructions = f.boolean("access_instructions", True)
    send_at = f.datetime("send_at")
    if problems:
        raise InputError(problems)
    assert date is not None
    lines = {key: f.line_of(key) for key in f.data}
    for locale in content:
        lines[f"content.{locale}"] = content_f.line_of(locale)
    return Entry(
        id=entry_id,
        date=date,
        status=status,
        content=content,
        audience=audience,
        thread=thread,
        access_instructions=access_instructions,
        send_at=send_at,
        path=path,
        lines=lines,
        digest=hashlib.sha256(read_text(path).encode()).hexdigest(),
    )


def entry_paths(updates_dir: Path) -> list[Path]:
    return sorted(p for p in updates_dir.glob("*.yaml") if p.is_file())


def load_entries(updates_dir: Path) -> tuple[dict[str, Entry], list[Problem]]:
    """Every entry that loads, and the problems of those that do not."""
    entries: dict[str, Entry] = {}
    problems: list[Problem] = []
    if not updates_dir.is_dir():
        return entries, [Problem(updates_dir, None, "updates folder not found")]
    for path in entry_paths(updates_dir):
        try:
            entries[path.stem] = load_entry(path)
        except InputError as exc:
            problems.extend(exc.problems)
    return entries, problems


def find_entry(updates_dir: Path, entry_id: str) -> Entry:
    path = updates_dir / f"{entry_id}.yaml"
    if not path.is_file():
        known = ", ".join(p.stem for p in entry_paths(updates_dir)) or "none"
        raise InputError([Problem(path, None, f"no entry {entry_id!r} (entries: {known})")])
    return load_entry(path)


def cross_check(
    entry: Entry, known_ids: Iterable[str], regions: Mapping[str, Region]
) -> list[Problem]:
    """Problems that need the other files: unknown regions, a dangling thread."""
    problems: list[Problem] = []
    path = entry.path or Path(f"{entry.id}.yaml")
    for code in sorted(entry.audience.regions or ()):
        if code not in regions:
            problems.append(
                Problem(path, entry.line("audience"), f"unknown region {code!r} (not in regions)")
            )
    if entry.thread and entry.thread not in set(known_ids):
        problems.append(
            Problem(path, entry.line("thread"), f"thread {entry.thread!r} names no entry")
        )
    if entry.audience.locales:
        for locale in sorted(entry.audience.locales - set(entry.content)):
            problems.append(
                Problem(
                    path,
                    entry.line("content"),
                    f"the audience includes locale {locale!r} but content has no {locale!r} block",
                )
            )
    return problems
