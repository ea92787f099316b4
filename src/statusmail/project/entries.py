"""``updates/<ID>.yaml``: one status-update entry per file."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from statusmail.domain import Audience, Content, Entry, EntryStatus
from statusmail.errors import InputError, Problem
from statusmail.project.fields import Fields
from statusmail.project.locales import FALLBACK_LOCALE, SUPPORTED_LOCALES, normalize_locale
from statusmail.project.regions import REGION_CODE
from statusmail.project.yamlfile import parse_yaml, read_text

STATUSES = tuple(status.value for status in EntryStatus)
SOURCE_HASH_CHARS = 12


def source_hash(content: Content) -> str:
    """What a translation records as ``source:``: a short hash of the English block, so
    ``check`` can tell when the English changed after the translation was made."""
    text = "\n".join((content.subject, content.summary, content.body.strip()))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:SOURCE_HASH_CHARS]


def load_entry(path: Path) -> Entry:
    """Load and validate one entry file on its own (cross-file checks are in ``check``)."""
    text = read_text(path)
    data = parse_yaml(text, path)
    problems: list[Problem] = []
    f = Fields(path, data, problems)
    f.unknown_keys(
        {"id", "date", "status", "thread", "corrects", "audience", "access_instructions"}
        | {"content", "send_at"}
    )
    entry_id = f.text("id", required=True)
    if entry_id and entry_id != path.stem:
        f.problem(
            f.line_of("id"),
            f"id {entry_id!r} does not match the file name {path.stem!r}",
            code="id-mismatch",
        )
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
    lines: dict[str, int] = {}
    for raw_locale in content_f.data:
        locale = normalize_locale(str(raw_locale))
        if locale is None or locale != raw_locale:
            content_f.problem(
                content_f.line_of(raw_locale),
                f"content locale {raw_locale!r}: expected one of {', '.join(SUPPORTED_LOCALES)}",
            )
            continue
        block = content_f.sub(locale)
        allowed = {"subject", "summary", "body"}
        if locale != FALLBACK_LOCALE:
            allowed.add("source")
        block.unknown_keys(allowed)
        content[locale] = Content(
            subject=block.line_text("subject", required=True),
            summary=block.line_text("summary", required=True),
            body=block.text("body", required=True),
            source=block.optional_text("source"),
        )
        for key in ("subject", "summary", "body", "source"):
            if key in block.data:
                lines[f"content.{locale}.{key}"] = block.line_of(key)
    if not content_f.data:
        f.problem(f.line_of("content"), "the entry has no content", code="missing-field")
    elif "en" not in content:
        f.problem(
            f.line_of("content"),
            "content needs an 'en' block (the fallback language)",
            code="missing-field",
        )

    thread = f.optional_text("thread")
    corrects = f.optional_text("corrects")  # threaded under what it corrects
    access_instructions = f.boolean("access_instructions", True)
    send_at = f.datetime("send_at")
    if problems:
        raise InputError(problems)
    assert date is not None
    lines.update({key: f.line_of(key) for key in f.data})
    for locale in content:
        lines[f"content.{locale}"] = content_f.line_of(locale)
    return Entry(
        id=entry_id,
        date=date,
        status=EntryStatus(status),
        content=content,
        audience=audience,
        thread=corrects or thread,
        corrects=corrects,
        access_instructions=access_instructions,
        send_at=send_at,
        path=path,
        lines=lines,
        digest=hashlib.sha256(text.encode()).hexdigest(),
    )


def entry_paths(updates_dir: Path) -> list[Path]:
    return sorted(p for p in updates_dir.glob("*.yaml") if p.is_file())


def load_entries(updates_dir: Path) -> tuple[dict[str, Entry], list[Problem]]:
    """Every entry that loads, and the problems of those that do not."""
    entries: dict[str, Entry] = {}
    problems: list[Problem] = []
    if not updates_dir.is_dir():
        return entries, [
            Problem(updates_dir, None, "updates folder not found", code="missing-file")
        ]
    for path in entry_paths(updates_dir):
        try:
            entries[path.stem] = load_entry(path)
        except InputError as exc:
            problems.extend(exc.problems)
    return entries, problems


def unknown_entry(updates_dir: Path, entry_id: str) -> InputError:
    known = ", ".join(p.stem for p in entry_paths(updates_dir)) or "none"
    path = updates_dir / f"{entry_id}.yaml"
    return InputError(
        [Problem(path, None, f"no entry {entry_id!r} (entries: {known})", code="unknown-entry")]
    )


def find_entry(updates_dir: Path, entry_id: str) -> Entry:
    path = updates_dir / f"{entry_id}.yaml"
    if not path.is_file():
        raise unknown_entry(updates_dir, entry_id)
    return load_entry(path)


def missing_language_problems(entry: Entry, locales: Iterable[str]) -> list[Problem]:
    """An audience that reads a language the entry lacks is an error, not a fallback."""
    missing = sorted(set(locales) - set(entry.content))
    if not missing:
        return []
    return [
        Problem(
            entry.where,
            entry.line("content"),
            f"subscribers in the audience read {', '.join(missing)} "
            "but the entry has no content in it",
            code="missing-translation",
        )
    ]
