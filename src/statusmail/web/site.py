"""The status site's pages and feeds for one edition, rendered as the messages are.

Per language (``/en/``, ``/ru/``): an index of the entries, newest story first, each
story's follow-ups together (an entry's ``thread`` names the entry it follows up); a
page per entry; ``feed.atom`` and ``feed.json``. At the edition's root a page that
names the languages. Links between pages are relative (the folder reads the same from
any base URL or from disk); ``hreflang`` alternates and feeds use the edition's URL.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
from markupsafe import Markup

from statusmail.content import markdown
from statusmail.content.catalog import catalog_path, render_error
from statusmail.content.render import Renderer, local_date
from statusmail.content.typography import typeset
from statusmail.domain import Entry
from statusmail.errors import Problem, RenderError, StatusmailError
from statusmail.project.config import Config
from statusmail.project.editions import Edition
from statusmail.project.locales import FALLBACK_LOCALE, SUPPORTED_LOCALES
from statusmail.project.regions import Region
from statusmail.web import feeds
from statusmail.web.pages import language_name

INDEX_TEMPLATE = "site/index.html.j2"
ENTRY_TEMPLATE = "site/entry.html.j2"
ROOT_TEMPLATE = "site/root.html.j2"
Stamps = Callable[[Entry, str], tuple[dt.datetime, dt.datetime]]


class _CompiledTemplates(jinja2.BytecodeCache):
    """The site's templates compiled once per process, not at every publish (watch's
    publishes parse them again only when a template's text changes: jinja2 keys each
    bucket by the template's name and checks the source's checksum)."""

    def __init__(self) -> None:
        self.code: dict[str, bytes] = {}

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        if bucket.key in self.code:
            bucket.bytecode_from_string(self.code[bucket.key])

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        self.code[bucket.key] = bucket.bytecode_to_string()


_COMPILED = _CompiledTemplates()


@dataclass(frozen=True)
class Item:
    """One entry in one language, as an edition shows it."""

    id: str
    href: str  # relative to the language's folder
    url: str  # absolute, in this edition
    subject: str
    summary: str
    date: str  # CLDR's long date in the language
    iso_date: str
    body: Markup
    published: dt.datetime
    updated: dt.datetime
    story: str  # the id of the story's first entry


@dataclass(frozen=True)
class Language:
    code: str
    name: str
    href: str  # from the page being rendered
    url: str


def story_of(entry: Entry, by_id: Mapping[str, Entry]) -> str:
    """The first entry of ``entry``'s thread (following ``thread`` back)."""
    seen = {entry.id}
    while entry.thread and entry.thread in by_id and entry.thread not in seen:
        entry = by_id[entry.thread]
        seen.add(entry.id)
    return entry.id


def stories(items: Sequence[Item]) -> list[list[Item]]:
    """The items grouped by story, each newest first, the newest story first."""
    grouped: dict[str, list[Item]] = {}
    for item in items:  # already newest first
        grouped.setdefault(item.story, []).append(item)
    return list(grouped.values())


class SiteBuilder:
    def __init__(
        self,
        config: Config,
        regions: Mapping[str, Region],
        entries: Sequence[Entry],
        stamps: Stamps,
        tag_date: Callable[[Entry], dt.date] = lambda entry: entry.date,
    ) -> None:
        self.config = config
        self.tag_date = tag_date
        self.renderer = Renderer(config.paths.templates, regions, config.sender.name)
        self.entries = sorted(
            entries,
            key=lambda e: (e.date, e.send_at or dt.datetime.min.replace(tzinfo=dt.UTC), e.id),
            reverse=True,
        )
        self.by_id = {e.id: e for e in entries}
        self.stamps = stamps
        self.authority = config.sender.address.rpartition("@")[2] or config.list_id
        self._markdown: dict[tuple[str, str], str] = {}

    def locales(self, entry: Entry) -> list[str]:
        return [locale for locale in SUPPORTED_LOCALES if locale in entry.content]

    def _html(self, source: str, locale: str, edition: Edition) -> Markup:
        key = (source, locale)
        if key not in self._markdown:
            self._markdown[key] = str(markdown.to_html(source, locale))
        # Prefixes are validated URLs (no quotes or brackets): safe in HTML.
        return Markup(edition.rewrite_text(self._markdown[key]))

    def item(self, entry: Entry, locale: str, edition: Edition) -> Item:
        content = entry.content[locale]
        published, updated = self.stamps(entry, locale)
        return Item(
            id=entry.id,
            href=f"{entry.id}.html",
            url=f"{edition.url}{locale}/{entry.id}.html",
            subject=typeset(content.subject, locale),
            summary=typeset(content.summary, locale),
            date=local_date(entry.date, locale),
            iso_date=entry.date.isoformat(),
            body=self._html(content.body, locale, edition),
            published=published,
            updated=updated,
            story=story_of(entry, self.by_id),
        )

    def access(self, edition: Edition, locale: str) -> dict[str, Any] | None:
        region = edition.region
        if region is None or locale not in region.access:
            return None
        heading = typeset(region.heading.get(locale, region.name(locale)), locale)
        return {"heading": heading, "html": self._html(region.access[locale], locale, edition)}

    def languages(
        self, edition: Edition, have: Sequence[str], page: str, up: str
    ) -> list[Language]:
        return [
            Language(code, language_name(code), f"{up}{code}/{page}", f"{edition.url}{code}/{page}")
            for code in have
        ]

    def render(self, template: str, locale: str, context: Mapping[str, Any]) -> bytes:
        env = self.renderer.environment(locale, html=True)
        env.bytecode_cache = _COMPILED
        catalog = (
            None if locale == FALLBACK_LOCALE else catalog_path(self.config.paths.templates, locale)
        )
        try:
            html = env.get_template(template).render(
                lang=locale, site_name=self.config.sender.name, **context
            )
        except jinja2.TemplateSyntaxError as exc:
            where = exc.filename or self.config.paths.templates / template
            raise RenderError(problem=Problem(where, exc.lineno, exc.message or "")) from exc
        except StatusmailError:
            raise  # (a catalog that cannot be read says where already)
        except Exception as exc:  # the template's own: at its line, no traceback
            raise render_error(exc, self.config.paths.templates / template, catalog) from exc
        return html.encode("utf-8")

    def edition_files(self, edition: Edition) -> dict[str, bytes]:
        files: dict[str, bytes] = {}
        present = [
            loc for loc in SUPPORTED_LOCALES if any(loc in e.content for e in self.entries)
        ] or [FALLBACK_LOCALE]
        for locale in present:
            files.update(self.language_files(edition, locale, present))
        # The root speaks the language of the edition's region (the mirror's: Russian).
        region = edition.treatment.code if edition.treatment else ""
        root = self.config.default_locale_by_region.get(region, FALLBACK_LOCALE)
        root = root if root in present else present[0]
        files["index.html"] = self.render(
            ROOT_TEMPLATE,
            root,
            {
                "edition": edition,
                "languages": self.languages(edition, present, "index.html", ""),
                "access": self.access(edition, root),
                "url": edition.url,
                # its language's feeds: a feed reader pointed at the site's root finds them
                **_feed_links(edition, root, f"{root}/"),
            },
        )
        return files

    def language_files(
        self, edition: Edition, locale: str, present: Sequence[str]
    ) -> dict[str, bytes]:
        items = [self.item(e, locale, edition) for e in self.entries if locale in e.content]
        base = f"{edition.url}{locale}/"
        common = {
            "edition": edition,
            "access": self.access(edition, locale),
            **_feed_links(edition, locale, ""),
        }
        files = {
            f"{locale}/index.html": self.render(
                INDEX_TEMPLATE,
                locale,
                common
                | {
                    "stories": stories(items),
                    "url": f"{base}index.html",
                    "languages": self.languages(edition, present, "index.html", "../"),
                },
            )
        }
        by_story = {story[0].story: story for story in stories(items)}
        for item in items:
            entry = self.by_id[item.id]
            story = by_story[item.story]
            files[f"{locale}/{item.href}"] = self.render(
                ENTRY_TEMPLATE,
                locale,
                common
                | {
                    "item": item,
                    "story": story if len(story) > 1 else [],
                    "url": item.url,
                    "languages": self.languages(edition, self.locales(entry), item.href, "../"),
                },
            )
        title = self.render_title(locale)
        feed = feeds.Feed(
            title=title,
            language=locale,
            home_url=f"{base}index.html",
            atom_url=base + feeds.ATOM_NAME,
            json_url=base + feeds.JSON_FEED_NAME,
            author=self.config.sender.name,
            items=[
                feeds.FeedItem(
                    id=feeds.tag_uri(
                        self.authority, self.tag_date(self.by_id[i.id]), f"status/{i.id}/{locale}"
                    ),
                    url=i.url,
                    title=i.subject,
                    summary=i.summary,
                    content_html=str(i.body),
                    published=i.published,
                    updated=i.updated,
                )
                for i in items
            ],
        )
        files[f"{locale}/{feeds.ATOM_NAME}"] = feeds.atom(feed)
        files[f"{locale}/{feeds.JSON_FEED_NAME}"] = feeds.json_feed(feed)
        return files

    def render_title(self, locale: str) -> str:
        """The site's title in ``locale``, as the pages' ``<title>`` gives it."""
        env = self.renderer.environment(locale, html=False)
        title = env.from_string('{{ _("%(sender)s status updates", sender=sender) }}')
        return title.render(sender=self.config.sender.name)


def _feed_links(edition: Edition, locale: str, here: str) -> dict[str, str]:
    """The links to ``locale``'s feeds in ``edition``: absolute, and relative from a
    page ``here`` away from the language's folder ("" for a page in it)."""
    base = f"{edition.url}{locale}/"
    return {
        "atom_href": here + feeds.ATOM_NAME,
        "json_href": here + feeds.JSON_FEED_NAME,
        "atom_url": base + feeds.ATOM_NAME,
        "json_url": base + feeds.JSON_FEED_NAME,
    }
