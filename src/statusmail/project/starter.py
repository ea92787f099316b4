"""``statusmail init DIR``: a new project, made from the sample that ships with statusmail.

The sample (``project/sample/``, the repository's own sample project, packaged with the
wheel) passes ``check`` and previews at once: a config with every key written or
commented, entries in English and Russian, templates and their catalog, regions and a
small subscriber list. ``init`` copies it and never overwrites: a folder that already
holds any of its files is refused, naming them.
"""

from __future__ import annotations

import shutil
from importlib.resources import as_file, files
from pathlib import Path

from statusmail.errors import StatusmailError

SAMPLE_PARTS = ("statusmail.yaml", "regions.yaml", "updates", "subscribers", "templates")


class InitError(StatusmailError):
    """The folder cannot take a new project."""


def init_project(folder: Path) -> list[Path]:
    """Copy the sample into ``folder`` (made if missing); the paths written, top level."""
    folder = folder.absolute()
    if folder.exists() and not folder.is_dir():
        raise InitError(f"{folder}: is a file, not a folder")
    taken = [folder / part for part in SAMPLE_PARTS if (folder / part).exists()]
    if taken:
        names = ", ".join(p.name for p in taken)
        raise InitError(
            f"{folder}: already holds {names}; init never overwrites (choose an empty folder)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with as_file(files("statusmail.project") / "sample") as sample:
        for part in SAMPLE_PARTS:
            source, target = sample / part, folder / part
            if source.is_dir():
                _copy_folder(source, target)
            else:
                shutil.copyfile(source, target)
            written.append(target)
    return written


def _copy_folder(source: Path, target: Path) -> None:
    """``source``'s files into ``target``, made as the user makes files (the umask's
    modes, now's times): copied with their modes, a read-only install (a Nix store, an
    image layer) gave a project nobody could add an entry to."""
    for path in sorted(source.rglob("*")):
        if "__pycache__" in path.parts:
            continue
        copy = target / path.relative_to(source)
        if path.is_dir():
            copy.mkdir(parents=True, exist_ok=True)
        else:
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)
    target.mkdir(parents=True, exist_ok=True)
