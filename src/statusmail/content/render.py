"""From an entry to the text and HTML of one recipient's message.

Everything that is the same for every recipient of a *variant* (locale, access region,
whether the greeting has a name) is rendered once, with placeholders where the
recipient's name, unsubscribe URL and preferences URL go; each recipient then costs a
few string substitutions. In the plain-text part the greeting's whole line is one
placeholder, wrapped per recipient as the template wraps every other line.
``render_from_scratch`` renders the templates with the real values and exists so tests
can prove the two give the same output.
"""

from __future__ import annotations

import copy
import datetime as dt
import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
from babel.dates import format_date
from markupsafe import Markup, escape

from statusmail.content import markdown
from statusmail.content.catalog import (
    catalog_path,
    load_translations,
    render_error,
    template_environment,
)
from statusmail.content.typography import typeset
from statusmail.content.variants import VariantKey
from statusmail.domain import Entry
from statusmail.errors import Problem, RenderError, StatusmailError
from statusmail.project.locales import FALLBACK_LOCALE, SUPPORTED_LOCALES, normalize_locale
from statusmail.project.regions import Region
from statusmail.project.selection import chosen_topics

_LINE_BREAKS = re.compile(r"[ \t]*[\r\n]+[ \t]*")  # a subject is one line
_COUNT_BEFORE_WORD = re.compile(r"(%\((?:num|count)\)[sd]) (?=\w)")
TEXT_TEMPLATE = "message.txt.j2"
HTML_TEMPLATE = "message.html.j2"
SUBJECT_TEMPLATE = "subject.txt.j2"  # a correction's starts with "Correction: "

# Control characters cannot occur in names (subscribers.clean_name) or URLs.
NAME_SLOT = "\x00name\x00"
URL_SLOT = "\x00url\x00"
PREFERENCES_SLOT = "\x00prefs\x00"
# The plain-text greeting's line, with the name in it: wrapped per recipient.
GREETING_SLOT = "\x00greeting\x00"
TEXT_WIDTH = 78  # columns of the plain-text part, as message.txt.j2 wraps it


def wrap_line(line: str) -> str:
    """``line`` as message.txt.j2's ``wordwrap(78, break_long_words=False,
    break_on_hyphens=False)`` gives it: broken only at spaces, so never inside a word,
    a URL or an address (a longer word stands alone on its line)."""
    if len(line) <= TEXT_WIDTH and line == line.strip():
        return line
    return "\n".join(
        textwrap.wrap(
            line,
            width=TEXT_WIDTH,
            expand_tabs=False,
            replace_whitespace=False,
            break_long_words=False,
            break_on_hyphens=False,
        )
    )


def escape_html(value: str) -> str:
    """What autoescape would write for ``value``."""
    return str(escape(value))


@dataclass(frozen=True, slots=True)
class Access:
    heading: str
    html: Markup
    text: str


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    summary: str
    text: str
    html: str
    locale: str
    # A variant's plain-text greeting line with NAME_SLOT in it (its place in ``text`` is
    # GREETING_SLOT); empty when the greeting has no name or the names are filled in.
    greeting: str = ""

    def greeting_line(self, name: str) -> str:
        """The plain-text greeting for ``name``, wrapped."""
        return wrap_line(self.greeting.replace(NAME_SLOT, name)) if self.greeting else ""


def _greeting_slotted(rendered: Rendered) -> Rendered:
    """``rendered`` with the plain-text line that holds the name made GREETING_SLOT, so
    that a long name wraps with the words around it."""
    lines = rendered.text.split("\n")
    for index, line in enumerate(lines):
        if NAME_SLOT in line:
            lines[index] = GREETING_SLOT
            return replace(rendered, text="\n".join(lines), greeting=line)
    return rendered


def local_date(date: dt.date, locale: str) -> str:
    """CLDR's long date (``21 апреля 2020 г.``, ``April 21, 2020``), set so that no line
    breaks inside it where the language's typography says so.

    CLDR puts a narrow no-break space (U+202F) before ``г.``; some mail clients show it
    as a box, so it becomes an ordinary no-break space (U+00A0).
    """
    return typeset(format_date(date, format="long", locale=locale).replace("\u202f", " "), locale)


def typeset_environment(
    templates_dir: Path, locale: str, *, autoescape: bool
) -> jinja2.Environment:
    """The templates' environment for ``locale``, its catalog installed: fixed strings get
    the language's typography too (no-break spaces), in mail, on the site and on the
    pages ``serve`` answers."""
    env = template_environment(templates_dir, autoescape=autoescape)
    catalog = load_translations(templates_dir, locale)

    def gettext(message: str) -> str:
        return typeset(catalog.gettext(message), locale)

    def ngettext(singular: str, plural: str, n: int) -> str:
        # The count is filled in after this: bind it to its word now, as a number.
        text = typeset(catalog.ngettext(singular, plural, n), locale)
        return _COUNT_BEFORE_WORD.sub("\\1\u00a0", text) if locale == "ru" else text

    env.install_gettext_callables(gettext, ngettext, newstyle=True)  # type: ignore[attr-defined]
    env.filters["quoted_inside"] = lambda text: quoted_inside(str(text), locale)
    return env


# The language's outer quotes, and the ones a quote inside them takes.
_INNER_QUOTES = {"ru": str.maketrans("«»", "„“"), "en": str.maketrans("“”", "‘’")}


def quoted_inside(text: str, locale: str) -> str:
    """``text`` as it reads inside the language's quotes: «Доступ к „StartMail“», not
    «Доступ к «StartMail»» (a topic's name in the footer's sentence)."""
    table = _INNER_QUOTES.get(normalize_locale(locale) or "")
    return text.translate(table) if table else text


class Renderer:
    """Compiles the templates once per locale and caches each variant's rendering."""

    def __init__(
        self,
        templates_dir: Path,
        regions: Mapping[str, Region],
        sender_name: str,
        news: Mapping[str | None, str] | None = None,
        topic_names: Mapping[str, Mapping[str, str]] | None = None,
    ):
        self.templates_dir = templates_dir
        self.regions = regions
        self.sender_name = sender_name
        # Topic -> locale -> what the topic is called there (the config's topic_names).
        self.topic_names = topic_names or {}
        # Region (None: any other) -> the status site edition its readers follow the news on.
        self.news = news or {}
        self._envs: dict[tuple[str, bool], jinja2.Environment] = {}
        self._variants: dict[tuple[str, VariantKey], Rendered] = {}
        self.subject_prefix = ""

    def environment(self, locale: str, *, html: bool) -> jinja2.Environment:
        """The templates' environment for ``locale``: its catalog and typography."""
        return self._env(locale, html)

    def _env(self, locale: str, html: bool) -> jinja2.Environment:
        key = (locale, html)
        if key not in self._envs:
            self._envs[key] = typeset_environment(self.templates_dir, locale, autoescape=html)
        return self._envs[key]

    def treatment(self, entry: Entry, region: str | None) -> tuple[str | None, bool]:
        """(the region whose treatment a recipient gets, whether with the access block)."""
        known = self.regions.get(region) if region else None
        if known is None:
            return None, False
        access = entry.access_instructions and bool(known.access)
        own_addresses = bool(known.mailto or known.reply_to)
        # An edition's readers follow the news there: their "follow the news" link is
        # their own, whatever else the region changes (or not).
        own_edition = self.news.get(known.code, self.news.get(None)) != self.news.get(None)
        treated = access or known.links or own_addresses or own_edition
        return (known.code, access) if treated else (None, False)

    def variant_key(
        self,
        entry: Entry,
        locale: str,
        region: str | None,
        name: str,
        topics: frozenset[str] | None = None,
    ) -> VariantKey:
        """The variant of a reader in ``locale`` and ``region`` with ``name``; ``topics``,
        those of the entry's they chose (``Recipient.topics``): kept only when they are
        some of the topics of an entry for several, not all."""
        treated, access = self.treatment(entry, region)
        chosen = None if topics is None else chosen_topics(entry, topics)
        return VariantKey(locale, treated, access, bool(name), chosen)

    def variant_keys(self, entry: Entry) -> list[VariantKey]:
        """Every locale × regional treatment the entry can produce (named greeting);
        of an entry for several topics, each also with a footer for each one alone
        (readers who chose some of its topics get the variant naming those)."""
        locales = [loc for loc in SUPPORTED_LOCALES if loc in entry.content]
        if entry.audience.locales is not None:
            locales = [loc for loc in locales if loc in entry.audience.locales]
        treatments: list[tuple[str | None, bool]] = [(None, False)]
        for code in sorted(self.regions):
            if entry.audience.regions is None or code in entry.audience.regions:
                treated = self.treatment(entry, code)
                if treated[0] is not None:
                    treatments.append(treated)
        alone: list[frozenset[str] | None] = [None]
        if entry.audience.topics is not None and len(entry.audience.topics) > 1:
            alone += [frozenset({topic}) for topic in sorted(entry.audience.topics)]
        return [
            VariantKey(locale, region, access, True, topics)
            for locale in locales
            for region, access in treatments
            for topics in alone
        ]

    def region(self, key: VariantKey) -> Region | None:
        return self.regions[key.region] if key.region else None

    @cached_property
    def _markdown_cache(self) -> dict[tuple[str, str, str | None], tuple[Markup, str]]:
        return {}

    def _markdown(self, source: str, locale: str, region: Region | None) -> tuple[Markup, str]:
        """HTML and text of ``source`` in ``locale``'s typography, its links rewritten as
        ``region`` needs them."""
        cache = self._markdown_cache
        key = (source, locale, region.code if region and region.links else None)
        if key not in cache:
            rewrite = region.rewrite_text if region is not None and region.links else None
            html = markdown.to_html(source, locale)
            # (the text's links rewritten before it is wrapped: see to_text)
            text = markdown.to_text(source, locale, rewrite=rewrite)
            if rewrite is not None:
                # Prefixes are validated URLs (no quotes or brackets): safe in HTML.
                html = Markup(rewrite(html))
            cache[key] = (html, text)
        return cache[key]

    def _context(
        self, entry: Entry, key: VariantKey, name: str, url: str, preferences_url: str
    ) -> dict[str, Any]:
        if key.locale not in entry.content:
            raise RenderError(f"{entry.path}: entry {entry.id!r} has no {key.locale!r} content")
        content = entry.content[key.locale]
        region = self.region(key)
        body_html, body_text = self._markdown(content.body, key.locale, region)
        access = None
        if key.access_region:
            region = self.regions[key.access_region]
            source = region.access.get(key.locale)
            heading = region.heading.get(key.locale)
            if source is None or heading is None:
                missing = "access instructions" if source is None else "access heading"
                raise RenderError(
                    f"{region.path}:{region.line}: region {region.code} has no "
                    f"{key.locale!r} {missing}"
                )
            html, text = self._markdown(source, key.locale, region)
            access = Access(typeset(heading, key.locale), html, text)
        return {
            "locale": key.locale,
            "sender_name": self.sender_name,
            "subject": typeset(content.subject, key.locale),
            "correction": bool(entry.corrects),
            "summary": typeset(content.summary, key.locale),
            "date": local_date(entry.date, key.locale),
            "body_html": body_html,
            "body_text": body_text,
            "access": access,
            "name": name,
            "unsubscribe_url": url,
            "preferences_url": preferences_url,
            "topics": self.topics(entry, key.locale, key.topics),
            "news_url": self.news_url(key),
        }

    def marked(self, prefix: str) -> Renderer:
        """This renderer with every subject starting with ``prefix`` ("[TEST] ")."""
        other = copy.copy(self)
        other.subject_prefix, other._variants = prefix, {}
        return other

    def news_url(self, key: VariantKey) -> str:
        """Where the variant's readers follow the news: their edition's language index."""
        base = self.news.get(key.region) or self.news.get(None)
        return f"{base}{key.locale}/" if base else ""

    def topics(self, entry: Entry, locale: str, chosen: frozenset[str] | None = None) -> list[str]:
        """The topics the reader gets the entry for as ``locale`` calls them, for the
        footer's "because you subscribed to": ``chosen`` (a variant's) if given, else the
        entry's; none for an entry to every subscriber (``topics: all``)."""
        names = [
            self.topic_names.get(topic, {}).get(locale)
            or self.topic_names.get(topic, {}).get(FALLBACK_LOCALE)
            or topic
            for topic in sorted(chosen or entry.audience.topics or ())
        ]
        return [typeset(name, locale) for name in names]

    def _render(
        self, entry: Entry, key: VariantKey, name: str, url: str, preferences_url: str
    ) -> Rendered:
        context = self._context(entry, key, name, url, preferences_url)
        catalog = None
        if key.locale != FALLBACK_LOCALE:
            catalog = catalog_path(self.templates_dir, key.locale)
        parts = []
        if not (self.templates_dir / SUBJECT_TEMPLATE).is_file():  # a project made before it
            parts.append(context["subject"])
        for template, html in (
            (SUBJECT_TEMPLATE, False),
            (TEXT_TEMPLATE, False),
            (HTML_TEMPLATE, True),
        )[len(parts) :]:
            try:
                parts.append(self._env(key.locale, html).get_template(template).render(context))
            except jinja2.TemplateSyntaxError as exc:
                where = exc.filename or self.templates_dir / template
                raise RenderError(problem=Problem(where, exc.lineno, exc.message or "")) from exc
            except StatusmailError:
                raise  # (a catalog that cannot be read says where already)
            except Exception as exc:  # the template's own: at its line, no traceback
                # an undefined name, a %-format in a translation, or what the template's
                # own expressions raise (a division by zero, recursion, the sandbox)
                raise render_error(exc, self.templates_dir / template, catalog) from exc
        subject, text, html_part = parts
        subject = self.subject_prefix + _LINE_BREAKS.sub(" ", subject).strip(" \t\r\n")
        return Rendered(subject, context["summary"], text, html_part, key.locale)

    def variant(self, entry: Entry, key: VariantKey) -> Rendered:
        """The variant rendered once, with slots for the name (the greeting's line in the
        plain-text part), the unsubscribe URL and the preferences URL."""
        cache_key = (entry.id, key)
        if cache_key not in self._variants:
            rendered = self._render(
                entry, key, NAME_SLOT if key.named else "", URL_SLOT, PREFERENCES_SLOT
            )
            self._variants[cache_key] = _greeting_slotted(rendered) if key.named else rendered
        return self._variants[cache_key]

    def render(
        self, entry: Entry, key: VariantKey, name: str, url: str, preferences_url: str = ""
    ) -> Rendered:
        variant = self.variant(entry, key)
        html_name, html_url = escape_html(name), escape_html(url)
        html_preferences = escape_html(preferences_url)
        return Rendered(
            variant.subject,
            variant.summary,
            variant.text.replace(GREETING_SLOT, variant.greeting_line(name))
            .replace(NAME_SLOT, name)
            .replace(URL_SLOT, url)
            .replace(PREFERENCES_SLOT, preferences_url),
            variant.html.replace(NAME_SLOT, html_name)
            .replace(URL_SLOT, html_url)
            .replace(PREFERENCES_SLOT, html_preferences),
            variant.locale,
        )

    def render_from_scratch(
        self, entry: Entry, key: VariantKey, name: str, url: str, preferences_url: str = ""
    ) -> Rendered:
        return self._render(entry, key, name, url, preferences_url)
