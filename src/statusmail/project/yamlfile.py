"""YAML loading that remembers where things are, so problems can say ``file:line``."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from statusmail.errors import InputError, Problem
from statusmail.project.yamlhints import explain, undecodable

try:  # the C loader is much faster where libyaml is available
    _BaseLoader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover
    _BaseLoader = yaml.SafeLoader

MAX_FILE_BYTES = 16 * 1024 * 1024
_BOOL_TAG = "tag:yaml.org,2002:bool"


def _spelled(node: yaml.Node) -> str | None:
    """How a value YAML 1.1 reads as a boolean without ``true``/``false`` was written
    (``yes``, ``NO``, ``off``): in a text field it was meant as text."""
    plain = isinstance(node, yaml.ScalarNode) and node.tag == _BOOL_TAG and not node.style
    return str(node.value) if plain and node.value.lower() not in ("true", "false") else None


class LineDict(dict[Any, Any]):
    """A mapping from YAML that knows its own line and each key's line (1-based)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.line = 0
        self.key_lines: dict[Any, int] = {}
        self.spelled: dict[Any, str] = {}  # a boolean value's spelling, see _spelled

    def line_of(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)


class LineList(list[Any]):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.line = 0
        self.item_lines: list[int] = []
        self.spelled: dict[int, str] = {}

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if index < len(self.item_lines) else self.line


class _Loader(_BaseLoader):  # type: ignore[misc,valid-type]
    pass


_MERGE = "tag:yaml.org,2002:merge"  # a "<<: *anchor" key


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> LineDict:
    explicit = sum(1 for key_node, _ in node.value if key_node.tag != _MERGE)
    loader.flatten_mapping(node)  # the merged (<<: *x) pairs first, then the mapping's own
    merged = len(node.value) - explicit
    from_merge: set[Any] = set()
    result = LineDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | int | bool | float) and key is not None:
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be plain values", key_node.start_mark
            )
        if key in result and key not in from_merge:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        # a key of the mapping's own overrides one it merged (YAML's merge key)
        (from_merge.add if index < merged else from_merge.discard)(key)
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
        if (spelled := _spelled(value_node)) is not None:
            result.spelled[key] = spelled
    return result


def _construct_sequence(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    result.spelled = {
        index: spelled
        for index, child in enumerate(node.value)
        if (spelled := _spelled(child)) is not None
    }
    return result


def _construct_timestamp(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    try:
        return yaml.constructor.SafeConstructor.construct_yaml_timestamp(loader, node)
    except ValueError as exc:
        raise yaml.constructor.ConstructorError(
            None, None, f"invalid date {node.value!r}: {exc}", node.start_mark
        ) from exc


def _construct_number(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    """An int or a float, as PyYAML reads them; one it cannot (5,000 digits, or
    ``!!int "abc"``) is a problem at its line, not a ValueError."""
    construct = (
        yaml.constructor.SafeConstructor.construct_yaml_int
        if node.tag.endswith(":int")
        else yaml.constructor.SafeConstructor.construct_yaml_float
    )
    try:
        return construct(loader, node)
    except ValueError as exc:
        shown = node.value if len(node.value) <= 40 else node.value[:40] + "…"
        why = f"{len(node.value)} digits" if "digits" in str(exc) else str(exc)
        raise yaml.constructor.ConstructorError(
            None, None, f"invalid number {shown!r}: {why}", node.start_mark
        ) from None


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)
_Loader.add_constructor("tag:yaml.org,2002:int", _construct_number)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_number)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def read_text(path: Path, limit: int = MAX_FILE_BYTES) -> str:
    """Read a UTF-8 file, refusing absurdly large ones and anything not a regular file
    (a link to /dev/zero has size 0 and never ends: review), wrapping OS errors."""

    def refused(said: str, code: str = "file-too-large") -> InputError:
        return InputError([Problem(path, None, said, code=code)])

    try:
        found = path.stat()
        if not stat.S_ISREG(found.st_mode):
            raise refused("is not a regular file", "unreadable-file")
        if found.st_size > limit:
            raise refused(f"file is {found.st_size} bytes; the limit is {limit}")
        with path.open("rb") as handle:
            data = handle.read(limit + 1)  # (what grows while it is read stops here)
        if len(data) > limit:
            raise refused(f"file is over the limit of {limit} bytes")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, message = undecodable(data, exc)
        raise InputError([Problem(path, line, message, code="unreadable-file")]) from exc
    except OSError as exc:
        raise refused(f"cannot read: {exc.strerror or exc}", "unreadable-file") from exc


def load_yaml(path: Path) -> Any:
    """Parse one YAML document; syntax errors become an ``InputError`` with the line."""
    return parse_yaml(read_text(path), path)


def parse_yaml(text: str, path: Path) -> Any:
    """``load_yaml`` for text already read from ``path``."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        line, message = explain(exc, text)
        raise InputError([Problem(path, line, message, code="yaml-syntax")]) from exc
    except yaml.YAMLError as exc:
        raise InputError([Problem(path, None, f"invalid YAML: {exc}", code="yaml-syntax")]) from exc


def spelled(container: Any, key: Any) -> str | None:
    """How a value read as a boolean was written, when not ``true``/``false``."""
    return getattr(container, "spelled", {}).get(key)


def line_of(container: Any, key: Any) -> int | None:
    """The line of ``key`` in a loaded mapping or list, when known."""
    if isinstance(container, LineDict | LineList):
        return container.line_of(key)
    return None


# (path, mtime in ns, size) of each file: what watching the project's files compares.
Stamps = tuple[tuple[str, int, int], ...]


def file_stamps(paths: Iterable[Path]) -> Stamps:
    """The size and modification time of each of ``paths`` that can be read now."""
    stamps = []
    for path in paths:
        with contextlib.suppress(OSError):
            st = path.stat()
            stamps.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(stamps)


def write_anew(path: Path, text: str, *, mode: int = 0o644, errors: str = "strict") -> None:
    """Write ``text`` to a file made anew at ``path``: whatever was there (a link a change
    left, say) is removed, never followed; OSError as the caller's to report."""
    path.unlink(missing_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    with os.fdopen(os.open(path, flags, mode), "w", encoding="utf-8", errors=errors) as out:
        out.write(text)
