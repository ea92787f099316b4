"""Where serve's pages are: the paths of the unsubscribe and preferences URLs on every
host (each region's rewrite of them too), and the public origins a genuine form comes
from, against which a POST's ``Origin`` (or ``Sec-Fetch-Site``) is checked."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

from statusmail.errors import ConfigError, Problem
from statusmail.project.config import Config
from statusmail.project.regions import load_regions

DEFAULT_PORTS = {"http": 80, "https": 443}
# Sec-Fetch-Site values that stand for the page itself when a browser sent no Origin.
SAME_SITE_FETCHES = frozenset({"same-origin", "none"})


def route_path(config: Config, url: str | None = None, key: str = "unsubscribe.url") -> str:
    """The path of ``unsubscribe.url`` (or ``url``), with ``{token}`` as the path
    parameter."""
    path = unquote(urlsplit(url or config.unsubscribe.url).path)
    rest = path.replace("{token}", "", 1)
    if not path.startswith("/") or "{token}" not in path or "{" in rest or "}" in rest:
        message = f"{key!r}: serve needs {{token}} exactly once in the URL's path"
        raise ConfigError([Problem(config.path, None, message)])
    return path


def route_paths(config: Config, url: str | None = None, key: str = "unsubscribe.url") -> list[str]:
    """Every path the unsubscribe URL (or ``url``) has on any host: its own, and each
    region's rewrite of it (a mirror may serve it under another path). ``serve``
    answers the token on every host the reverse proxies forward, whatever the Host
    header says."""
    url = url or config.unsubscribe.url
    paths = [route_path(config, url, key)]
    if config.paths.regions.is_file():
        for region in load_regions(config.paths.regions).values():
            rewritten = route_path(config, region.rewrite(url), key)
            if rewritten not in paths:
                paths.append(rewritten)
    return paths


def preferences_paths(config: Config) -> list[str]:
    """Every path of the preferences page, as ``route_paths`` for the unsubscribe URL."""
    paths = route_paths(config, config.preferences_url, "preferences.url")
    taken = set(route_paths(config))
    if taken & set(paths):
        message = "'preferences.url' must not have the path of 'unsubscribe.url'"
        raise ConfigError([Problem(config.path, config.line("preferences"), message)])
    return paths


Origin = tuple[str, str, int]  # scheme, host (IDNA), port


def origin_of(url: str) -> Origin | None:
    """The origin of an http(s) URL, as a browser serializes it in ``Origin``."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
        host = (parts.hostname or "").encode("idna").decode("ascii")
    except (ValueError, UnicodeError):
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not host:
        return None
    return scheme, host, port or DEFAULT_PORTS[scheme]


def public_origins(config: Config) -> frozenset[Origin]:
    """The origins readers open the pages under: those of ``unsubscribe.url`` and the
    preferences URL, and of each region's rewrite of them (a mirror, an onion address).
    serve sits behind reverse proxies, so these, not the Host header it sees, are where a
    genuine form comes from."""
    pages = (config.unsubscribe.url, config.preferences_url)
    urls = list(pages)
    if config.paths.regions.is_file():
        regions = load_regions(config.paths.regions).values()
        urls += [region.rewrite(url) for region in regions for url in pages]
    return frozenset(origin for origin in map(origin_of, urls) if origin is not None)


def cross_site(headers: Mapping[str, str], origins: frozenset[Origin]) -> str | None:
    """Why a POST did not come from a page under ``origins`` (for the log), or None when
    it did: its ``Origin`` is one of them or, when a browser sent no ``Origin``,
    ``Sec-Fetch-Site`` says the page itself (``same-origin``) or the reader (``none``)."""
    origin = headers.get("origin")
    if origin is not None:
        bare = not urlsplit(origin.strip()).path  # an Origin is scheme://host[:port]
        if bare and origin_of(origin) in origins:
            return None
        return f"from origin {origin[:200]!r}"
    fetch = headers.get("sec-fetch-site")
    if fetch is not None and fetch.strip().lower() in SAME_SITE_FETCHES:
        return None
    return f"Sec-Fetch-Site {fetch[:50]!r}" if fetch else "with neither Origin nor Sec-Fetch-Site"
