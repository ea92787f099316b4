"""The project's files by kind, and which of them changed since a git ref.

``git`` runs as a subprocess in the project's folder; nothing here writes to the
repository. Paths shown to people and CI tools are relative to the repository root (the
git top-level holding the config), else to the config's folder.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from statusmail.content.catalog import catalog_path
from statusmail.errors import StatusmailError
from statusmail.project.config import Config
from statusmail.project.entries import SUFFIXES, entry_paths
from statusmail.project.locales import FALLBACK_LOCALE, SUPPORTED_LOCALES
from statusmail.project.subscriber_rows import subscriber_files

# The kinds of project file, in the order reports list them.
KINDS = ("config", "regions", "entries", "templates", "catalogs", "subscribers")
# A change to one of these may change every entry's messages.
AFFECT_EVERY_ENTRY = ("config", "regions", "templates", "catalogs")
CATALOG_SUFFIXES = (".po", ".pot", ".mo")
SUBSCRIBER_SUFFIXES = (".csv", ".yaml", ".yml")
GIT_TIMEOUT = 60


class GitError(StatusmailError):
    """git is missing, the project is in no repository, or the ref is unknown."""


def project_files(config: Config) -> list[tuple[str, Path]]:
    """Every file ``check`` reads, as (kind, path), in ``KINDS`` order."""
    paths = config.paths
    found: list[tuple[str, Path]] = [("config", config.path), ("regions", paths.regions)]
    if paths.updates.is_dir():
        found += [("entries", p) for p in entry_paths(paths.updates)]
    if paths.templates.is_dir():
        found += [("templates", p) for p in sorted(paths.templates.rglob("*.j2")) if p.is_file()]
        for locale in SUPPORTED_LOCALES:
            catalog = catalog_path(paths.templates, locale)
            if locale != FALLBACK_LOCALE and catalog.is_file():
                found.append(("catalogs", catalog))
    if paths.subscribers.exists():
        found += [("subscribers", p) for p in subscriber_files(paths.subscribers)]
    return found


def kind_of(config: Config, path: Path) -> str | None:
    """Which kind of project file ``path`` is (it need not exist), or None."""
    paths = config.paths
    path = path.resolve()
    if path == config.path.resolve():
        return "config"
    if path == paths.regions.resolve():
        return "regions"
    if path.parent == paths.updates.resolve() and path.suffix in SUFFIXES:
        return "entries"
    if path.is_relative_to(paths.templates.resolve()):
        return "catalogs" if path.suffix in CATALOG_SUFFIXES else "templates"
    subscribers = paths.subscribers.resolve()
    if path == subscribers or (
        path.parent == subscribers and path.suffix.lower() in SUBSCRIBER_SUFFIXES
    ):
        return "subscribers"
    return None


def _git(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("git") is None:
        raise GitError("git is not installed; --changed-since and --all-changed-since need it")
    try:
        return subprocess.run(
            ["git", "-C", str(folder), *args],
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="surrogateescape",
            stdin=subprocess.DEVNULL,
            timeout=GIT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GitError(f"git {' '.join(args[:1])} in {folder} failed: {exc}") from exc


def repository_root(folder: Path) -> Path | None:
    """The git top-level holding ``folder``; None without git or outside a repository."""
    if shutil.which("git") is None:
        return None
    result = _git(folder, "rev-parse", "--show-toplevel")
    return Path(result.stdout.strip()) if result.returncode == 0 and result.stdout.strip() else None


def display_root(config_path: Path) -> Path:
    """What paths are shown relative to: the repository root, else the config's folder."""
    folder = config_path.absolute().parent
    return (repository_root(folder) or folder).resolve()


@dataclass
class Changes:
    """The project's files that differ from ``ref`` (commits since, staged, unstaged and
    untracked files alike), by kind."""

    ref: str
    root: Path
    files: dict[str, list[Path]] = field(default_factory=lambda: {kind: [] for kind in KINDS})

    @property
    def entries(self) -> list[str]:
        """IDs of the changed entries that still exist (a removed one has nothing to show)."""
        return [p.stem for p in self.files["entries"] if p.is_file()]

    @property
    def removed_entries(self) -> list[str]:
        return [p.stem for p in self.files["entries"] if not p.exists()]

    @property
    def every_entry(self) -> bool:
        """Whether every entry's messages may look different: the templates, catalogs,
        regions or config changed."""
        return any(self.files[kind] for kind in AFFECT_EVERY_ENTRY)

    def to_preview(self, config: Config) -> list[str]:
        if self.every_entry:
            return [p.stem for p in entry_paths(config.paths.updates)]
        return self.entries

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def as_json(self) -> dict[str, object]:
        listed: dict[str, object] = {
            kind: [self.relative(p) for p in self.files[kind]] for kind in KINDS
        }
        return {
            "since": self.ref,
            **listed,
            "entries": self.entries,
            "removed_entries": self.removed_entries,
            "every_entry": self.every_entry,
        }

    @property
    def any(self) -> bool:
        return any(self.files.values())

    def described(self) -> list[str]:
        """For people: one line per kind that changed."""
        shown = []
        for kind in KINDS:
            if kind == "entries":
                names = self.entries + [f"{e} (removed)" for e in self.removed_entries]
            else:
                names = [self.relative(p) for p in self.files[kind]]
            if names:
                shown.append(f"{kind}: {', '.join(names)}")
        if self.every_entry:
            shown.append("every entry's messages are affected")
        return shown

    def lines(self) -> list[str]:
        if not self.any:
            return [f"nothing statusmail reads changed since {self.ref}"]
        return [f"changed since {self.ref}:", *(f"  {line}" for line in self.described())]


def _no_ref(ref: str, root: Path) -> GitError:
    shallow = _git(root, "rev-parse", "--is-shallow-repository").stdout.strip() == "true"
    hint = (
        " (this clone is shallow: fetch the history, e.g. actions/checkout with "
        "fetch-depth: 0, or GIT_DEPTH: 0 on GitLab)"
        if shallow
        else ""
    )
    return GitError(f"git knows no commit {ref!r} in {root}{hint}")


def changed_since(config: Config, ref: str) -> Changes:
    """The project's files that differ between ``ref`` and the working tree."""
    folder = config.path.absolute().parent
    if not ref or ref.startswith("-"):
        raise GitError(f"{ref!r} is not a git ref")
    top = _git(folder, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise GitError(
            f"{folder} is not in a git repository, so it cannot be compared with {ref!r} "
            f"({top.stderr.strip() or 'git rev-parse failed'})"
        )
    root = Path(top.stdout.strip()).resolve()
    commit = _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if commit.returncode != 0:
        raise _no_ref(ref, root)
    sha = commit.stdout.strip()
    listed: set[str] = set()
    for args in (
        ("diff", "--name-only", "-z", "--no-renames", sha, "--"),
        ("ls-files", "--others", "--exclude-standard", "--full-name", "-z"),
    ):
        result = _git(root, *args)
        if result.returncode != 0:
            raise GitError(f"git {args[0]} failed in {root}: {result.stderr.strip()}")
        listed.update(name for name in result.stdout.split("\0") if name)
    changes = Changes(ref, root)
    for name in sorted(listed):
        path = root / name
        kind = kind_of(config, path)
        if kind is not None:
            changes.files[kind].append(path)  # (resolved, a link could lead out of root)
    return changes
