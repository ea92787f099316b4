"""What the recipients of one variant of a message share (``VariantKey``), and the
made-up recipient a variant is built for in previews and checks (``probe_recipient``)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from statusmail.domain import Recipient
from statusmail.project.locales import FALLBACK_LOCALE

_UNSAFE_IN_LABEL = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True, repr=False)
class VariantKey:
    """What the recipients of one variant share: the language, the region whose
    treatment they get (its access block and/or its link rewrites), whether the access
    block is included, whether the greeting has a name, and, of an entry for several
    topics, those the footer names when not all of them (None: the entry's own)."""

    locale: str
    region: str | None = None
    access: bool = False
    named: bool = True
    topics: frozenset[str] | None = None

    def __repr__(self) -> str:
        # The message's MIME boundary is made from it: the same in every process (a
        # frozenset's order is not), and for a key without topics what it always was.
        topics = "" if self.topics is None else f", topics={sorted(self.topics)!r}"
        return (
            f"VariantKey(locale={self.locale!r}, region={self.region!r}, "
            f"access={self.access!r}, named={self.named!r}{topics})"
        )

    @property
    def access_region(self) -> str | None:
        return self.region if self.access else None

    @property
    def label(self) -> str:
        """A file-name-safe label: ``ru-RU`` (access block), ``ru-RU-links``, ``en``,
        ``en+product-news`` (the footer names that topic only)."""
        label = self.locale
        if self.region is not None:
            label = f"{self.locale}-{self.region}" + ("" if self.access else "-links")
        for topic in sorted(self.topics or ()):
            safe = _UNSAFE_IN_LABEL.sub("-", topic)
            if safe != topic:  # two topics told apart only by what was replaced stay apart
                safe += "-" + hashlib.sha256(topic.encode()).hexdigest()[:6]
            label += "+" + safe
        return label

    @property
    def title(self) -> str:
        """For people: ``ru · RU access``, ``en · no access block``, ``en · no access
        block · for product-news``."""
        if self.region is None:
            title = f"{self.locale} · no access block"
        else:
            title = f"{self.locale} · {self.region} " + ("access" if self.access else "links")
        if self.topics is not None:
            title += " · for " + ", ".join(sorted(self.topics))
        return title


PROBE_ADDRESS = "preview@example.invalid"  # never a subscriber's: previews and checks only
PROBE_NAMES = {"en": "Alex Example", "ru": "Алекс Пример"}


def probe_recipient(key: VariantKey) -> Recipient:
    """The made-up recipient a variant is built for in previews and checks."""
    return Recipient(
        address=PROBE_ADDRESS,
        email=PROBE_ADDRESS,
        ascii_email=PROBE_ADDRESS,
        name=PROBE_NAMES.get(key.locale, PROBE_NAMES[FALLBACK_LOCALE]) if key.named else "",
        locale=key.locale,
        region=key.region,
        topics=key.topics,
    )
