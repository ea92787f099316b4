"""``statusmail publish``: the ready entries as a static site and feeds, one edition per
link treatment of ``regions.yaml`` (README: "The status site and its feeds").

Every page is rendered from the entry's Markdown, the catalog, the typography and the
CLDR dates exactly as the messages are (through ``content.render.Renderer``), from the
templates under ``templates/site/``. An edition's links are rewritten as its region's
readers get them, and its region's access block is on every page.

Each publish writes a new folder under ``releases/`` and then renames the link
``current`` to it, so a web server serving ``current/<edition>/`` never serves half a
site; nothing changes (no new folder, no hook) when the pages are what ``current`` holds.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from statusmail.domain import Entry
from statusmail.errors import InputError, Problem, RenderError
from statusmail.ledger import controls
from statusmail.ledger import reading as ledger_reading
from statusmail.project.config import Config
from statusmail.project.editions import Edition, load_editions
from statusmail.project.entries import load_entries
from statusmail.project.regions import load_regions
from statusmail.project.yamlfile import write_anew
from statusmail.web.site import SiteBuilder

log = logging.getLogger("statusmail.publish")

CURRENT = "current"
RELEASES = "releases"
STATE_NAME = ".statusmail-publish.json"
# The site's folders and files, as the web server (another user) must read them
FOLDER_MODE, FILE_MODE = 0o755, 0o644
KEEP_RELEASES = 3  # the current one and the two before it, for readers still on them


def is_published(entry: Entry, now: dt.datetime) -> bool:
    """Ready, and no longer waiting for its ``send_at``: drafts never reach the site."""
    return entry.ready and (entry.send_at is None or entry.send_at <= now)


def content_hash(entry: Entry, locale: str) -> str:
    content = entry.content[locale]
    text = "\n".join((content.subject, content.summary, content.body.strip()))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class Times:
    """When each entry's text in each language was first published and last changed,
    and the date its feed id names, kept in ``DIR/.statusmail-publish.json``: ``updated``
    moves only when the text does, and neither ``published`` nor the id moves when the
    entry's ``date`` is corrected (review: feed readers showed the correction as a new
    item). On a site that has been published before, an entry seen for the first time
    is published now, not back at its ``date``: a feed reader that keeps the newest time
    it saw would skip it (review). A new site dates each entry by its ``send_at`` or
    ``date``."""

    def __init__(self, path: Path, now: dt.datetime) -> None:
        self.path = path
        self.now = now
        self.data: dict[str, object] = {}
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                self.data = loaded
        self.new_site = not self.data
        texts = self.data.get("texts")
        self.texts: dict[str, list[str]] = texts if isinstance(texts, dict) else {}
        tags = self.data.get("tags")
        self.tags: dict[str, str] = tags if isinstance(tags, dict) else {}

    def stamps(self, entry: Entry, locale: str) -> tuple[dt.datetime, dt.datetime]:
        """(published, updated) of ``entry`` in ``locale``."""
        scheduled = entry.send_at or dt.datetime.combine(entry.date, dt.time(), dt.UTC)
        key, digest = f"{entry.id}/{locale}", content_hash(entry, locale)
        known = self.texts.get(key)
        if not (isinstance(known, list) and len(known) in (2, 3)):
            first = scheduled if self.new_site else max(scheduled, self.now)
            known = self.texts[key] = [digest, first.isoformat(), first.isoformat()]
        elif len(known) == 2:  # kept before the publishing time was: as it was shown
            known = self.texts[key] = [*known, scheduled.isoformat()]
        if known[0] != digest:
            known[:2] = [digest, self.now.isoformat()]
        published, updated = (_moment(known[2], scheduled), _moment(known[1], scheduled))
        return published, max(published, updated)

    def tag_date(self, entry: Entry) -> dt.date:
        """The date in ``entry``'s feed ids: its ``date`` when first published."""
        if not _is_date(self.tags.get(entry.id)):
            self.tags[entry.id] = entry.date.isoformat()
        return dt.date.fromisoformat(self.tags[entry.id])

    def get(self, key: str) -> object:
        return self.data.get(key)

    def save(self, **values: object) -> None:
        self.data.update(values, texts=self.texts, tags=self.tags)
        temporary = self.path.with_name(self.path.name + ".new")
        write_anew(temporary, json.dumps(self.data, indent=1, sort_keys=True), mode=FILE_MODE)
        os.replace(temporary, self.path)


def _moment(text: str, otherwise: dt.datetime) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return otherwise


def _is_date(text: object) -> bool:
    try:
        dt.date.fromisoformat(str(text))
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Published:
    site: Path  # DIR/current
    release: Path  # the folder ``current`` names
    changed: bool  # False: the pages were those already published
    pages: int
    editions: tuple[str, ...]
    after_pending: bool  # the publish.after command is still to run (or failed last time)
    # When the next ready entry's send_at comes: the site changes then, files or not.
    next_due: dt.datetime | None = None


def digest(files: Mapping[str, bytes]) -> str:
    hashed = hashlib.sha256()
    for name in sorted(files):
        hashed.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return hashed.hexdigest()


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One publish into ``out`` at a time (watch's and a command's)."""
    # never truncated, never followed: a link there would have emptied its target
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW
    try:
        handle = os.open(out / ".lock", flags, FILE_MODE)
    except OSError as exc:
        raise InputError([Problem(out / ".lock", None, f"cannot open it: {exc.strerror}")]) from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


def write_release(out: Path, files: Mapping[str, bytes], now: dt.datetime) -> Path:
    """Write ``files`` into a new folder under ``out/releases`` and rename ``out/current``
    to it in one step."""
    releases = out / RELEASES
    if releases.is_symlink():  # prune would remove folders wherever it points
        raise InputError(
            [Problem(releases, None, "is a link: publish writes only a folder of its own")]
        )
    _readable_folder(releases)
    stamp = now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    # Numbered in the order written (under the publish lock): publishes in one second
    # would otherwise sort by mkdtemp's random suffix, and prune could drop the newest
    number = max((_number(p) for p in releases.iterdir()), default=0) + 1
    folder = Path(tempfile.mkdtemp(prefix=f"{number:06d}-{stamp}-", dir=releases))
    folder.chmod(FOLDER_MODE)  # mkdtemp makes it private
    for name, data in files.items():
        path = folder / name
        _readable_folder(path.parent)
        path.write_bytes(data)
        path.chmod(FILE_MODE)
    link = out / f".{CURRENT}-{folder.name}"
    os.symlink(Path(RELEASES) / folder.name, link)
    os.replace(link, out / CURRENT)  # atomic: readers see the old site or the new one
    return folder


def _readable_folder(folder: Path) -> None:
    """``folder`` and the parents it lacks, made readable by all whatever the umask (the
    watch unit's is 0077, and the web server or the mirror's rsync is another user)."""
    if folder.is_dir():
        return
    _readable_folder(folder.parent)
    folder.mkdir(exist_ok=True)
    folder.chmod(FOLDER_MODE)


_RELEASE = re.compile(r"(\d{6}-)?\d{8}T\d{6}Z-")  # write_release's names, numbered or not


def _number(folder: Path) -> int:
    """A release's number, in the order written; 0 for one named before they had one
    (then only the date and time: their names sort as they were written, to the
    second)."""
    head = folder.name.partition("-")[0]
    return int(head) if len(head) == 6 and head.isascii() and head.isdigit() else 0


def prune(out: Path, keep: int = KEEP_RELEASES) -> None:
    """Remove all but the newest ``keep`` releases (never the current one), and nothing
    publish did not name: a folder put there by someone else stays (review: every folder
    of a linked ``releases`` was removed)."""
    current = (out / CURRENT).resolve()
    folders = sorted(
        (
            p
            for p in (out / RELEASES).iterdir()
            if _RELEASE.match(p.name) and p.is_dir() and not p.is_symlink()
        ),
        key=lambda p: (_number(p), p.name),
        reverse=True,
    )
    for folder in folders[keep:]:
        if folder.resolve() != current:
            shutil.rmtree(folder, ignore_errors=True)


def held_entries(config: Config) -> dict[str, str]:
    """The entries the ledger holds back (paused, cancelled): not for the public either,
    although their files say ready (review: a paused entry was on the site and in its
    feeds before anyone was mailed it). Read only; no ledger yet holds none."""
    with ledger_reading(config.paths.ledger) as ledger:
        return controls.held(ledger)


def site_files(
    config: Config, now: dt.datetime, times: Times, held: Mapping[str, str] | None = None
) -> tuple[dict[str, bytes], tuple[str, ...], dt.datetime | None]:
    """Every file of every edition, the editions' names, and the next ``send_at``;
    ``held`` entries (paused, cancelled) are left out."""
    regions = load_regions(config.paths.regions)
    editions = load_editions(config.paths.regions, regions)
    if not editions:
        raise InputError(
            [
                Problem(
                    config.paths.regions,
                    None,
                    "declares no 'editions': publish needs at least one (its url is where "
                    "the site is served; README: The status site and its feeds)",
                    code="missing-field",
                )
            ]
        )
    entries, problems = load_entries(config.paths.updates)
    if problems:
        raise InputError(problems)
    shown = [e for e in entries.values() if is_published(e, now) and e.id not in (held or {})]
    waiting = [e.send_at for e in entries.values() if e.ready and e.send_at and e.send_at > now]
    builder = SiteBuilder(config, regions, shown, times.stamps, times.tag_date)
    files: dict[str, bytes] = {}
    leaks: list[Problem] = []
    for edition in editions.values():
        made = builder.edition_files(edition)
        leaks += _leaks(config, edition, made, entries)
        for name, data in made.items():
            files[f"{edition.name}/{name}"] = data
    if leaks:
        raise InputError(leaks)
    return files, tuple(editions), min(waiting, default=None)


def _leaks(
    config: Config, edition: Edition, made: Mapping[str, bytes], entries: Mapping[str, Entry]
) -> list[Problem]:
    """Links an edition's pages and feeds give its readers to a domain their region
    blocks: the mail's check looks at the regions of an entry's audience, but every
    edition publishes every entry (an entry for NL on the mirror its RU readers read).
    Named at the entry whose page has it; at the templates only when no entry's does
    (an entry's link shows in the feeds and indexes too)."""
    found: list[Problem] = []
    explained: set[tuple[str, str]] = set()
    pages = sorted(made.items(), key=lambda item: Path(item[0]).stem not in entries)
    for name, data in pages:
        text = data.decode("utf-8", "replace")
        entry = entries.get(Path(name).stem)
        for region in edition.treated_regions:
            for host in region.blocked_hosts_in(text):
                said = (
                    f"readers in {region.code} of the {edition.name!r} edition still get a"
                    f" link to {host} in {name}"
                )
                if entry is not None:
                    explained.add((region.code, host))
                    said += (
                        f": write it as {region.links[0][0]}… so that regions.yaml's links"
                        " rewrite it"
                    )
                    problem = Problem(entry.where, entry.line("content"), said, code="blocked-link")
                elif (region.code, host) in explained:
                    continue
                else:
                    problem = Problem(config.paths.templates, None, said, code="blocked-link")
                if problem not in found:
                    found.append(problem)
    return found


def publish(
    config: Config,
    out: Path | None = None,
    now: dt.datetime | None = None,
    held: Mapping[str, str] | None = None,
) -> Published:
    """Render the site and, if it changed, make it ``out/current`` (default:
    ``publish.out``), leaving out the ``held`` entries (default: as the ledger holds them
    now). InputError for what cannot be rendered; the current site stays."""
    out = (out or config.publish.out).absolute()
    now = now or dt.datetime.now(dt.UTC)
    current = out / CURRENT
    if current.exists() and not current.is_symlink():
        raise InputError(
            [Problem(current, None, "is not a link publish made: move it away", code="bad-value")]
        )
    try:
        _readable_folder(out)
    except OSError as exc:
        raise InputError([Problem(out, None, f"cannot create it: {exc.strerror}")]) from exc
    held = held_entries(config) if held is None else held
    with _locked(out):
        times = Times(out / STATE_NAME, now)
        files, editions, due = site_files(config, now, times, held)
        fresh = digest(files)
        pending = bool(config.publish.after) and times.get("after_pending") is not False
        if fresh == times.get("digest") and current.is_dir():
            times.save()
            return Published(current, current.resolve(), False, len(files), editions, pending, due)
        release = write_release(out, files, now)
        times.save(digest=fresh, after_pending=bool(config.publish.after))
        prune(out)
    log.info(
        "published %d files of %s into %s",
        len(files),
        ", ".join(editions),
        release,
        extra={"event": "published", "release": str(release)},
    )
    after = bool(config.publish.after)
    return Published(current, release, True, len(files), editions, after, due)


def after_done(config: Config, out: Path | None, ok: bool) -> None:
    """Record whether ``publish.after`` last ran through, so a failed one is run again."""
    out = (out or config.publish.out).absolute()
    with _locked(out):
        Times(out / STATE_NAME, dt.datetime.now(dt.UTC)).save(after_pending=not ok)


def pages_of(release: Path) -> Sequence[Path]:
    """Every HTML page of a published folder."""
    return sorted(release.rglob("*.html"))


def preview_pages(config: Config, entry: Entry, out_dir: Path) -> list[Path]:
    """``entry``'s pages as each edition would publish them (a draft too: this is its
    preview), with the index and feeds of a site holding only it, into ``out_dir``
    (the CI dry run's gallery); none when ``regions.yaml`` declares no editions."""
    regions = load_regions(config.paths.regions)
    editions = load_editions(config.paths.regions, regions)
    shutil.rmtree(out_dir, ignore_errors=True)
    if not editions:
        return []

    def stamps(entry: Entry, _locale: str) -> tuple[dt.datetime, dt.datetime]:
        first = entry.send_at or dt.datetime.combine(entry.date, dt.time(), dt.UTC)
        return first, first

    builder = SiteBuilder(config, regions, [entry], stamps)
    written: list[Path] = []
    for edition in editions.values():
        for name, data in builder.edition_files(edition).items():
            path = out_dir / edition.name / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            written.append(path)
    return written


def site_problems(config: Config) -> list[Problem]:
    """What would stop ``publish`` now (a template, a translation), for ``check`` of a
    project that keeps a site (a ``publish`` section); nothing is written."""
    if config.line("publish") is None:
        return []
    now = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            site_files(config, now, Times(Path(scratch) / STATE_NAME, now))
        except InputError as exc:
            return exc.problems
        except RenderError as exc:
            where = config.paths.templates
            return [exc.problem or Problem(where, None, str(exc), code="render-error")]
    return []
