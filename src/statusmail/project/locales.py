"""The languages statusmail writes in, and how a subscriber's locale resolves to one."""

from __future__ import annotations

from collections.abc import Mapping

from statusmail.domain import mask_address

SUPPORTED_LOCALES = ("en", "ru")
FALLBACK_LOCALE = "en"


def normalize_locale(raw: str | None) -> str | None:
    """``ru``, ``ru-RU``, ``ru_RU``, ``ru.UTF-8`` (POSIX) and ``RU`` all mean ``ru``;
    unknown ones give None."""
    if not raw:
        return None
    language = raw.strip().replace("-", "_").split(".", 1)[0].split("_", 1)[0].lower()
    return language if language in SUPPORTED_LOCALES else None


def resolve_locale(
    raw: str | None, region: str | None, by_region: Mapping[str, str]
) -> tuple[str, str | None]:
    """The language a subscriber gets, and, unless they chose it, how it was chosen.

    A locale the subscriber chose wins when statusmail writes it. One it does not write
    (``de``) falls back to the default language, never to a guess from the region: the
    subscriber said they do not read the region's language by default. Only an empty
    locale is guessed from the region (``default_locale_by_region``), then English.
    """
    wanted = (raw or "").strip()
    if wanted:
        own = normalize_locale(wanted)
        if own:
            return own, None
        # (reports and CI artifacts show it: a row whose columns ran together may hold
        # an address there)
        shown = mask_address(wanted) if "@" in wanted else wanted
        return FALLBACK_LOCALE, f"unsupported locale {shown!r}"
    if region:
        regional = normalize_locale(by_region.get(region))
        if regional:
            return regional, f"no locale, region {region}"
    return FALLBACK_LOCALE, "no locale"
