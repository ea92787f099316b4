"""``statusmail.yaml``'s ``publish`` section: where ``statusmail publish`` (and ``watch``
after each send) writes the status site, and the command run after each publish."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from statusmail.project.fields import Fields


@dataclass(frozen=True)
class PublishSettings:
    # The folder the site goes into: each publish is a new folder under it, and the link
    # ``current`` is swapped to it in one rename.
    out: Path = Path("site")
    # A shell command run after each publish (e.g. rsync to the mirror), with
    # $STATUSMAIL_SITE naming the published folder; "" runs nothing.
    after: str = ""
    # Seconds before a failed ``after`` command is tried again (doubling up to an hour).
    retry: float = 60.0
    # Whether watch keeps the site current: by default when the section is there.
    watch: bool = False


def parse_publish(f: Fields, root: Path) -> PublishSettings:
    d = PublishSettings()
    f.unknown_keys(set(d.__dataclass_fields__))
    return PublishSettings(
        out=root / f.text("out", str(d.out)),
        after=f.line_text("after"),
        retry=f.number("retry", d.retry, minimum=1),
        watch=f.boolean("watch", bool(f.data)),
    )
