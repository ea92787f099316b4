"""Reading a YAML subscriber list: a list of flat mappings, streamed event by event
so a long list is never held whole (see ``project/subscribers.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from statusmail.project.subscriber_rows import (
    COLUMNS,
    NO_SUBSCRIBERS,
    Build,
    FileBroken,
    RowProblem,
    Subscriber,
    _bad_character,
    _LimitedReader,
    make_subscriber,
)
from statusmail.project.yamlfile import _BaseLoader

# -- YAML ----------------------------------------------------------------------------


def _read_yaml(path: Path, build: Build = make_subscriber) -> Iterator[Subscriber | RowProblem]:
    """Stream a YAML list of flat mappings by parse events, never building the whole list."""
    with path.open(encoding="utf-8-sig") as handle:
        events = yaml.parse(_LimitedReader(handle), Loader=_BaseLoader)
        try:
            yield from _yaml_subscribers(path, events, build)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else 0
            raise FileBroken(line, f"invalid YAML: {exc.problem}") from exc
        except yaml.reader.ReaderError as exc:
            raise FileBroken(*_bad_character(path, exc.reason)) from exc
        except yaml.YAMLError as exc:
            raise FileBroken(0, f"invalid YAML: {exc}") from exc


def _yaml_subscribers(
    path: Path, events: Iterator[yaml.Event], build: Build
) -> Iterator[Subscriber | RowProblem]:
    for event in events:
        if isinstance(event, yaml.SequenceStartEvent):
            start = _line(event)
            break
        if isinstance(event, yaml.ScalarEvent) and _is_null(event):
            raise FileBroken(_line(event), f"{NO_SUBSCRIBERS}: the document is empty")
        if isinstance(event, yaml.NodeEvent):
            raise FileBroken(_line(event), "expected a list of subscribers")
    else:
        raise FileBroken(1, f"{NO_SUBSCRIBERS}: it is empty")
    count = 0
    for event in events:
        if isinstance(event, yaml.SequenceEndEvent):
            break
        count += 1
        line = _line(event)
        if not isinstance(event, yaml.MappingStartEvent):
            yield RowProblem(path, line, "each subscriber must be a mapping", "")
            _skip_node(event, events)
            continue
        row, bad = _read_flat_mapping(events)
        if bad:
            yield RowProblem(path, line, bad, str(row.get("email", "")))
        elif (item := build(row, path, line)) is not None:
            yield item
    if not count:
        raise FileBroken(start, f"{NO_SUBSCRIBERS}: the list is empty")
    for event in events:
        if isinstance(event, yaml.DocumentStartEvent):
            raise FileBroken(
                _line(event),
                "a second YAML document starts here; a subscriber file holds one list "
                '(remove the "---" or move these subscribers into the first list)',
            )


def _is_null(event: yaml.ScalarEvent) -> bool:
    plain = event.implicit[0] and event.tag is None
    return bool(plain) and event.value in ("", "~", "null", "Null", "NULL")


def _line(event: yaml.Event) -> int:
    mark = event.start_mark
    return mark.line + 1 if mark is not None else 0


def _skip_node(first: yaml.Event, events: Iterator[yaml.Event]) -> None:
    depth = 1 if isinstance(first, yaml.MappingStartEvent | yaml.SequenceStartEvent) else 0
    while depth:
        event = next(events)
        if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            depth += 1
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            depth -= 1


def _read_flat_mapping(events: Iterator[yaml.Event]) -> tuple[dict[str, Any], str]:
    row: dict[str, Any] = {}
    key_lines: dict[str, int] = {}
    bad = ""
    while True:
        key_event = next(events)
        if isinstance(key_event, yaml.MappingEndEvent):
            return row, bad
        if not isinstance(key_event, yaml.ScalarEvent):  # a list, a mapping, an alias
            _skip_node(key_event, events)
            _skip_node(next(events), events)  # and its value: the next key comes after it
            bad = "keys must be plain names"
            continue
        key = key_event.value.strip().lower()
        if key in key_lines:
            raise FileBroken(
                _line(key_event),
                f"duplicate key {key!r} in this subscriber (first on line {key_lines[key]})",
            )
        key_lines[key] = _line(key_event)
        value_event = next(events)
        if isinstance(value_event, yaml.ScalarEvent):
            # a plain null (name: null, ~, or nothing) is no value, as YAML reads it
            row[key] = "" if _is_null(value_event) else value_event.value
        elif isinstance(value_event, yaml.SequenceStartEvent):
            items: list[str] = []
            for item in events:
                if isinstance(item, yaml.SequenceEndEvent):
                    break
                if isinstance(item, yaml.ScalarEvent):
                    if not _is_null(item):
                        items.append(item.value)
                else:
                    _skip_node(item, events)
                    bad = f"{key!r} must be a list of plain values"
            row[key] = items
        else:
            _skip_node(value_event, events)
            bad = f"{key!r} must be a plain value or a list"
        if key not in COLUMNS:
            bad = f"unknown key {key!r}; expected {', '.join(COLUMNS)}"
