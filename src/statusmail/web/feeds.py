"""The status site's feeds: Atom (RFC 4287) and JSON Feed 1.1, one of each per language
and edition, holding the same entries as the language's index.

Entry ids are ``tag:`` URIs (RFC 4151) made of the sender's domain, the entry's date and
id and the language, so they never change with the edition or a rewrite of the text;
``updated`` is when the entry's text in that language last changed (``publish.Times``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from xml.etree import ElementTree as ET

ATOM_NS = "http://www.w3.org/2005/Atom"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
ATOM_TYPE = "application/atom+xml"
JSON_FEED_TYPE = "application/feed+json"
ATOM_NAME = "feed.atom"
JSON_FEED_NAME = "feed.json"


def tag_uri(authority: str, date: dt.date, specific: str) -> str:
    """``tag:startmail.example,2020-01-23:status/block-2020-01-23/en``."""
    return f"tag:{authority.lower()},{date.isoformat()}:{specific}"


@dataclass(frozen=True)
class FeedItem:
    id: str
    url: str
    title: str
    summary: str
    content_html: str
    published: dt.datetime
    updated: dt.datetime


@dataclass(frozen=True)
class Feed:
    title: str
    language: str
    home_url: str  # the language's index in this edition
    atom_url: str
    json_url: str
    author: str
    items: Sequence[FeedItem]  # newest first

    @property
    def updated(self) -> dt.datetime:
        """The newest change of any item: stays put while nothing changes."""
        return max((i.updated for i in self.items), default=dt.datetime(1970, 1, 1, tzinfo=dt.UTC))


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def atom(feed: Feed) -> bytes:
    ET.register_namespace("", ATOM_NS)

    def sub(parent: ET.Element, name: str, text: str | None = None, **attrs: str) -> ET.Element:
        element = ET.SubElement(parent, f"{{{ATOM_NS}}}{name}", attrs)
        element.text = text
        return element

    root = ET.Element(f"{{{ATOM_NS}}}feed", {XML_LANG: feed.language})
    sub(root, "id", feed.atom_url)
    sub(root, "title", feed.title)
    sub(root, "updated", _stamp(feed.updated))
    sub(sub(root, "author"), "name", feed.author)
    sub(root, "link", rel="self", type=ATOM_TYPE, href=feed.atom_url)
    sub(root, "link", rel="alternate", type="text/html", hreflang=feed.language, href=feed.home_url)
    for item in feed.items:
        entry = sub(root, "entry")
        sub(entry, "id", item.id)
        sub(entry, "title", item.title)
        sub(entry, "published", _stamp(item.published))
        sub(entry, "updated", _stamp(item.updated))
        sub(entry, "link", rel="alternate", type="text/html", href=item.url)
        sub(entry, "summary", item.summary)
        sub(entry, "content", item.content_html, type="html")
    ET.indent(root)
    written: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return written + b"\n"


def json_feed(feed: Feed) -> bytes:
    document = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": feed.title,
        "home_page_url": feed.home_url,
        "feed_url": feed.json_url,
        "language": feed.language,
        "authors": [{"name": feed.author}],
        "items": [
            {
                "id": item.id,
                "url": item.url,
                "title": item.title,
                "summary": item.summary,
                "content_html": item.content_html,
                "date_published": _stamp(item.published),
                "date_modified": _stamp(item.updated),
                "language": feed.language,
            }
            for item in feed.items
        ],
    }
    return json.dumps(document, ensure_ascii=False, indent=1).encode("utf-8") + b"\n"
