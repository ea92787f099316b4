"""``updates/<ID>.yaml``: one status-update entry per file."""

from __future__ import annotations

import hashlib
import re
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
# An entry file is read whichever of YAML's two usual endings it has.
SUFFIXES = (".yaml", ".yml")
# An id names the entry's Message-IDs (<id.digest@domain>: a dot-atom), its page on the
# status site (id.html, beside index.html) and its argument on the command line.
ENTRY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*")
RESERVED_IDS = frozenset({"index"})
ALL_TOPICS = "all"  # topics: all, an entry for every subscriber whatever their topics


def entry_id_of(given: str) -> str:
    """The entry ID a command was given: ``updates/x.yaml`` (a path, as a shell completes
    it) is taken as ``x``."""
    path = Path(given)
    return path.stem if path.suffix in SUFFIXES or len(path.parts) > 1 else given


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
    if entry_id and not ENTRY_ID.fullmatch(entry_id):
        f.problem(
            f.line_of("id"),
            f"id {entry_id!r} may hold only ASCII letters, digits, '-', '_' and single "
            "dots, starting with a letter or digit (it names the entry's Message-IDs and "
            "its page); rename the file and its id",
            code="entry-id",
        )
    elif entry_id in RESERVED_IDS:
        f.problem(
            f.line_of("id"),
            f"id {entry_id!r} is the status site's own page; rename the file and its id",
            code="entry-id",
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
    everyone = audience_f.data.get("topics") == ALL_TOPICS
    topics = None if everyone else audience_f.text_list("topics")
    if topics == []:
        audience_f.problem(audience_f.line_of("topics"), _NO_TOPICS, code="missing-topics")
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
    if "topics" in audience_f.data:  # named, or all: see topics_problems
        lines["audience.topics"] = audience_f.line_of("topics")
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


_NO_TOPICS = (
    "the audience names no topics: say which, as topics: [service-status], or send it "
    "to every subscriber with topics: all"
)


def topics_problems(entry: Entry) -> list[Problem]:
    """An entry says whom it is for: the topics its readers chose, or all of them."""
    # Named, or all; a correction goes to whom what it corrects reached; an entry made in
    # code, not read from a file (no line for its id), has nothing to point into.
    named = entry.audience.topics is not None or entry.line("audience.topics")
    if named or entry.corrects or "id" not in entry.lines:
        return []
    line = entry.line("audience") or entry.line("status") or entry.line("id")
    return [Problem(entry.where, line, _NO_TOPICS, code="missing-topics")]


def entry_paths(updates_dir: Path) -> list[Path]:
    return (
        sorted(
            p
            for p in updates_dir.iterdir()
            if p.suffix in SUFFIXES and p.is_file() and not p.name.startswith((".", "~$"))
        )
        if updates_dir.is_dir()
        else []
    )


def twin_problems(paths: list[Path]) -> list[Problem]:
    """``x.yaml`` and ``x.yml`` both: neither is taken, since either may be the one meant."""
    stems: dict[str, list[Path]] = {}
    for path in paths:
        stems.setdefault(path.stem, []).append(path)
    return [
        Problem(
            twins[-1],
            None,
            f"{twins[0].name} and {twins[-1].name} are both entry {stem!r}: keep one",
            code="duplicate-entry",
        )
        for stem, twins in stems.items()
        if len(twins) > 1
    ]


def load_entries(updates_dir: Path) -> tuple[dict[str, Entry], list[Problem]]:
    """Every entry that loads, and the problems of those that do not."""
    entries: dict[str, Entry] = {}
    problems: list[Problem] = []
    if not updates_dir.is_dir():
        return entries, [
            Problem(updates_dir, None, "updates folder not found", code="missing-file")
        ]
    paths = entry_paths(updates_dir)
    problems += twin_problems(paths)
    twice = {Path(problem.path).stem for problem in problems}
    for path in paths:
        if path.stem in twice:
            continue
        try:
            entries[path.stem] = load_entry(path)
        except InputError as exc:
            problems.extend(exc.problems)
    return entries, problems


def unknown_entry(updates_dir: Path, entry_id: str) -> InputError:
    known = ", ".join(sorted({p.stem for p in entry_paths(updates_dir)})) or "none"
    path = updates_dir / f"{entry_id}.yaml"
    return InputError(
        [Problem(path, None, f"no entry {entry_id!r} (entries: {known})", code="unknown-entry")]
    )


def entry_file(updates_dir: Path, entry_id: str) -> Path | None:
    """The file of entry ``entry_id`` (``.yaml`` or ``.yml``), None when it has none;
    refused when it has both."""
    try:
        found = [p for p in (updates_dir / f"{entry_id}{s}" for s in SUFFIXES) if p.is_file()]
    except OSError:  # a name no file can have (too long): no such entry
        return None
    if len(found) > 1:
        raise InputError(twin_problems(found))
    return found[0] if found else None


def find_entry(updates_dir: Path, entry_id: str) -> Entry:
    path = entry_file(updates_dir, entry_id)
    if path is None:
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
