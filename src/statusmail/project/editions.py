"""The status site's editions (``regions.yaml``'s ``editions``): one per link treatment,
each served at a base URL of its own.

An edition without ``region`` is the canonical site. One with ``region`` gets that
region's link rewrites (after its own ``links``, which win) and the region's access block
on every page. ``readers`` names the regions whose messages link to the edition as the
place to follow the news; every other reader gets the first edition without a region.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from statusmail.errors import InputError, Problem
from statusmail.project.config import Config
from statusmail.project.fields import Fields
from statusmail.project.regions import Region, _url_prefix
from statusmail.project.yamlfile import load_yaml

EDITIONS_KEY = "editions"
EDITION_KEYS = {"url", "region", "links", "readers"}


@dataclass(frozen=True)
class Edition:
    name: str
    url: str  # where the edition's root is served, ending in '/'
    # The links as a reader of this edition gets them, and the region whose access block
    # every page carries (None: the canonical site, links as written).
    treatment: Region | None = None
    readers: tuple[str, ...] = ()
    path: Path | None = None
    line: int | None = None
    readers_regions: tuple[Region, ...] = ()

    @property
    def treated_regions(self) -> list[Region]:
        """The regions whose blocks this edition's links must get around: its own (whose
        links its pages get) and its readers' regions, each once."""
        treated = {r.code: r for r in (self.treatment, *self.readers_regions) if r}
        return list(treated.values())

    @property
    def region(self) -> Region | None:
        """The region whose access block the edition's pages carry."""
        return self.treatment if self.treatment and self.treatment.access else None

    def rewrite_text(self, text: str) -> str:
        return self.treatment.rewrite_text(text) if self.treatment else text

    def rewrite(self, url: str) -> str:
        return self.treatment.rewrite(url) if self.treatment else url


def _names(f: Fields) -> list[str]:
    return [str(name) for name in f.data]


def read_editions(
    path: Path, regions: Mapping[str, Region]
) -> tuple[dict[str, Edition], list[Problem]]:
    """The editions ``path`` declares (none without the key), and their problems."""
    problems: list[Problem] = []
    top = Fields(path, load_yaml(path), problems)
    f = top.sub(EDITIONS_KEY)
    editions: dict[str, Edition] = {}
    for name in _names(f):
        if not name.replace("-", "").isalnum() or not name.isascii() or name in ("en", "ru"):
            f.problem(
                f.line_of(name),
                f"edition name {name!r} must be letters, digits and '-' (a folder's name), "
                "and not a language code",
            )
            continue
        g = f.sub(name)
        g.unknown_keys(EDITION_KEYS)
        url = _url_prefix(g, "url", g.data.get("url")) if g.has("url") else None
        if url is None and not g.has("url"):
            g.problem(g.line_of("url"), f"missing {g.name('url')!r}", "missing-field")
        code = g.optional_text("region")
        region = regions.get(code) if code else None
        if code and region is None:
            g.problem(g.line_of("region"), f"{g.name('region')!r}: {code!r} is not a region")
        links_f = g.sub("links")
        own: list[tuple[str, str]] = []
        for prefix in links_f.data:
            source = _url_prefix(links_f, prefix, prefix)
            target = _url_prefix(links_f, prefix, links_f.data[prefix])
            if source and target:
                own.append((source, target))
        readers = g.text_list("readers") or []
        for reader in readers:
            if reader not in regions:
                g.problem(
                    g.line_of("readers"), f"{g.name('readers')!r}: {reader!r} is not a region"
                )
        treatment = None
        if region is not None or own:
            base = region or Region(code="", names={}, path=path, line=f.line_of(name))
            theirs = [pair for pair in base.links if pair[0] not in dict(own)]
            links = tuple(sorted(own + theirs, key=lambda pair: -len(pair[0])))
            treatment = replace(base, links=links)
        editions[name] = Edition(
            name,
            url or "",
            treatment,
            tuple(readers),
            path,
            f.line_of(name),
            tuple(regions[code] for code in readers if code in regions),
        )
    return editions, problems


def load_editions(path: Path, regions: Mapping[str, Region]) -> dict[str, Edition]:
    editions, problems = read_editions(path, regions)
    if problems:
        raise InputError(problems)
    return editions


def canonical(editions: Mapping[str, Edition]) -> Edition | None:
    """The first edition with no link treatment: the site as written."""
    return next((e for e in editions.values() if e.treatment is None), None)


def news_urls(editions: Mapping[str, Edition]) -> dict[str | None, str]:
    """Region code (None: any other reader) -> the base URL of the edition its readers
    follow the news on. Empty when no edition is declared."""
    urls: dict[str | None, str] = {}
    main = canonical(editions)
    if main is not None:
        urls[None] = main.url
    for edition in editions.values():
        for code in edition.readers:
            urls.setdefault(code, edition.url)
    return urls


def edition_problems(editions: Mapping[str, Edition]) -> list[Problem]:
    """An edition served on a domain its own region, or its readers' region, blocks."""
    problems: list[Problem] = []
    for edition in editions.values():
        for region in edition.treated_regions:
            if region.blocked_hosts_in(edition.url):
                problems.append(
                    Problem(
                        edition.path or "regions.yaml",
                        edition.line,
                        f"edition {edition.name!r} is served at {edition.url}, on a domain "
                        f"region {region.code} blocks",
                        code="blocked-link",
                    )
                )
    return problems


def publish_problems(config: Config, editions: Mapping[str, Edition]) -> list[Problem]:
    """A ``publish`` section (watch keeps the site current) with no edition to publish."""
    if editions or config.line("publish") is None:
        return []
    return [
        Problem(
            config.path,
            config.line("publish"),
            f"'publish' needs at least one edition in {config.paths.regions.name}'s "
            "'editions' (where the status site is served)",
            code="missing-field",
        )
    ]
