"""From an entry to the text and HTML of one recipient's message.

Everything that is the same for every recipient of a *variant* (locale, access region,
whether the greeting has a name) is rendered once, with placeholders where the
recipient's name and unsubscribe URL go; each recipient then costs two string
substitutions. ``render_from_scratch`` renders the templates with the real values and
exists so tests can prove the two give the same output.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
from babel.dates import format_date
from markupsafe import Markup, escape

from statusmail import markdown
from statusmail.catalog import catalog_path, load_translations, render_error
from statusmail.catalog import catalog_problems as catalog_problems  # for check and send
from statusmail.entries import Entry
from statusmail.errors import RenderError
from statusmail.locales import FALLBACK_LOCALE
from statusmail.regions import Region

TEXT_TEMPLATE = "message.txt.j2"
HTML_TEMPLATE = "message.html.j2"

# Control characters cannot occur in names (subscribers.clean_name) or URLs.
NAME_SLOT = "\x00name\x00"
URL_SLOT = "\x00url\x00"


def escape_html(value: str) -> str:
    """What autoescape would write for ``value``."""
    return str(escape(value))


@dataclass(frozen=True, slots=True)
class VariantKey:
    locale: str
    access_region: str | None  # the region whose access block is included, if any
    named: bool = True  # the greeting names the recipient

    @property
    def label(self) -> str:
        return f"{self.locale}-{self.access_region}" if self.access_region else self.locale


@dataclass(frozen=True, slots=True)
class Access:
    region_name: str
    html: Markup
    text: str


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    summary: str
    text: str
    html: str
    locale: str


def local_date(date: dt.date, locale: str) -> str:
    """CLDR's long date (``21 апреля 2020 г.``, ``April 21, 2020``).

    CLDR puts a narrow no-break space before ``г.``; it is replaced with a plain space,
    as the SPEC spells the date, because some mail clients show U+202F as a box.
    """
    return format_date(date, format="long", locale=locale).replace("\u202f", " ")


class Renderer:
    """Compiles the templates once per locale and caches each variant's rendering."""

    def __init__(self, templates_dir: Path, regions: Mapping[str, Region], sender_name: str):
        self.templates_dir = templates_dir
        self.regions = regions
        self.sender_name = sender_name
        self._envs: dict[tuple[str, bool], jinja2.Environment] = {}
        self._variants: dict[tuple[str, VariantKey], Rendered] = {}

    def _env(self, locale: str, html: bool) -> jinja2.Environment:
        key = (locale, html)
        if key not in self._envs:
            env = jinja2.Environment(
                loader=jinja2.FileSystemLoader(self.templates_dir),
                undefined=jinja2.StrictUndefined,
                autoescape=html,
                extensions=["jinja2.ext.i18n"],
                trim_blocks=True,
                lstrip_blocks=True,
                keep_trailing_newline=True,
                auto_reload=False,
            )
            env.install_gettext_translations(  # type: ignore[attr-defined]
                load_translations(self.templates_dir, locale), newstyle=True
            )
            self._envs[key] = env
        return self._envs[key]

    def access_region(self, entry: Entry, region: str | None) -> str | None:
        """The region whose access block this recipient gets, if any."""
        if not entry.access_instructions or region is None:
            return None
        known = self.regions.get(region)
        return region if known is not None and known.access else None

    def variant_key(self, entry: Entry, locale: str, region: str | None, name: str) -> VariantKey:
        return VariantKey(locale, self.access_region(entry, region), bool(name))

    @cached_property
    def _markdown_cache(self) -> dict[str, tuple[Markup, str]]:
        return {}

    def _markdown(self, source: str) -> tuple[Markup, str]:
        cache = self._markdown_cache
        if source not in cache:
            cache[source] = (markdown.to_html(source), markdown.to_text(source))
        return cache[source]

    def _context(self, entry: Entry, key: VariantKey, name: str, url: str) -> dict[str, Any]:
        if key.locale not in entry.content:
            raise RenderError(f"{entry.path}: entry {entry.id!r} has no {key.locale!r} content")
        content = entry.content[key.locale]
        body_html, body_text = self._markdown(content.body)
        access = None
        if key.access_region:
            region = self.regions[key.access_region]
            source = region.access.get(key.locale)
            if source is None:
                raise RenderError(
                    f"{region.path}:{region.line}: region {region.code} has no "
                    f"{key.locale!r} access instructions"
                )
            html, text = self._markdown(source)
            access = Access(region.name(key.locale), html, text)
        return {
            "locale": key.locale,
            "sender_name": self.sender_name,
            "subject": content.subject,
            "summary": content.summary,
            "date": local_date(entry.date, key.locale),
            "body_html": body_html,
            "body_text": body_text,
            "access": access,
            "name": name,
            "unsubscribe_url": url,
        }

    def _render(self, entry: Entry, key: VariantKey, name: str, url: str) -> Rendered:
        context = self._context(entry, key, name, url)
        catalog = None
        if key.locale != FALLBACK_LOCALE:
            catalog = catalog_path(self.templates_dir, key.locale)
        parts = []
        for template, html in ((TEXT_TEMPLATE, False), (HTML_TEMPLATE, True)):
            try:
                parts.append(self._env(key.locale, html).get_template(template).render(context))
            except jinja2.TemplateSyntaxError as exc:
                raise RenderError(f"{exc.filename}:{exc.lineno}: {exc.message}") from exc
            except jinja2.TemplateError as exc:
                raise RenderError(f"{self.templates_dir}: {exc}") from exc
            except (KeyError, ValueError, TypeError) as exc:  # a %-format in gettext
                raise render_error(exc, self.templates_dir / template, catalog) from exc
        text, html_part = parts
        return Rendered(context["subject"], context["summary"], text, html_part, key.locale)

    def variant(self, entry: Entry, key: VariantKey) -> Rendered:
        """The variant rendered once, with slots for the name and the unsubscribe URL."""
        cache_key = (entry.id, key)
        if cache_key not in self._variants:
            self._variants[cache_key] = self._render(
                entry, key, NAME_SLOT if key.named else "", URL_SLOT
            )
        return self._variants[cache_key]

    def render(self, entry: Entry, key: VariantKey, name: str, url: str) -> Rendered:
        variant = self.variant(entry, key)
        html_name, html_url = escape_html(name), escape_html(url)
        return Rendered(
            variant.subject,
            variant.summary,
            variant.text.replace(NAME_SLOT, name).replace(URL_SLOT, url),
            variant.html.replace(NAME_SLOT, html_name).replace(URL_SLOT, html_url),
            variant.locale,
        )

    def render_from_scratch(self, entry: Entry, key: VariantKey, name: str, url: str) -> Rendered:
        return self._render(entry, key, name, url)
