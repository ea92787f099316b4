"""The languages statusmail writes in, and how a subscriber's locale resolves to one."""

from __future__ import annotations

from collections.abc import Mapping

SUPPORTED_LOCALES = ("en", "ru")
FALLBACK_LOCALE = "en"


def normalize_locale(raw: str | None) -> str | None:
    """``ru``, ``ru-RU``, ``ru_RU`` and ``RU`` all mean ``ru``; unknown ones give None."""
    if not raw:
        return None
    language = raw.strip().replace("-", "_").split("_", 1)[0].lower()
    return language if language in SUPPORTED_LOCALES else None


def resolve_locale(raw: str | None, region: str | None, by_region: Mapping[str, str]) -> str:
    """The subscriber's own locale, else the region's default, else English."""
    own = normalize_locale(raw)
    if own:
        return own
    if region:
        regional = normalize_locale(by_region.get(region))
        if regional:
            return regional
    return FALLBACK_LOCALE
