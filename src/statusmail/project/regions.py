"""``regions.yaml``: per-region names, alternative-access instructions and link rewrites."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from urllib.parse import unquote, urlsplit

from email_validator import EmailNotValidError, validate_email
from publicsuffixlist import PSLFILE, PublicSuffixList

from statusmail.errors import InputError, Problem
from statusmail.project.fields import Fields
from statusmail.project.yamlfile import load_yaml

REGION_CODE = re.compile(r"^[A-Z]{2}$")
# The host of every link in a rendered part or a header: http(s), scheme-relative
# (//host, which webmail opens on the host), or a bare www.host that mail clients turn
# into a link themselves.
# A link's whole authority (user and password, host, port), then the rest of the URL;
# and, in what is left, a bare www. name, which mail clients make a link of.
_URL = re.compile(r"(?:\bhttps?:|(?<![\w:/]))//([^/\s\"'<>?#\\]+)[^\s\"'<>]*", re.IGNORECASE)
_BARE_WWW = re.compile(r"(?<![\w./@:-])(www\.[^/\s\"'<>?#:]+)", re.IGNORECASE)
_DOTS = str.maketrans("\u3002\uff0e\uff61", "...")  # the dots IDNA reads as "."


@cache
def _public_suffix_rules() -> tuple[str, ...]:
    # The list the package ships; never fetched at run time.
    with open(PSLFILE, encoding="utf-8") as handle:
        return tuple(r for r in map(str.strip, handle) if r and not r.startswith("//"))


@cache
def _public_suffixes(tld: str) -> PublicSuffixList:
    """The list's rules for one top-level label (every rule ends in its own), so that a
    run parses a few lines, not the whole list (0.13 s)."""
    return PublicSuffixList(
        source=[rule for rule in _public_suffix_rules() if rule.rsplit(".", 1)[-1] == tld]
    )


def registrable_domain(host: str) -> str:
    """``host``'s registrable domain (eTLD+1: ``mirror.startmail.example`` →
    ``startmail.example``), or the host itself when it has none (an IP address, a public
    suffix)."""
    host = host.lower().rstrip(".")
    tld = host.rsplit(".", 1)[-1]
    if tld.isdigit():  # an IPv4 address
        return host
    with contextlib.suppress(UnicodeError):  # not a valid IDN label: no rule names it
        tld = tld.encode("ascii").decode("idna") if tld.startswith("xn--") else tld
    return _public_suffixes(tld).privatesuffix(host) or host


def link_hosts(text: str) -> set[str]:
    """The hosts of the links in ``text``, lowercased, as a browser reads them: after a
    user and password, without the port, percent-decoded (review: ``a:b@`` and ``%2E``
    took a blocked link past ``check``). URLs are read whole first, so a query or a
    fragment naming a host (a registry's lookup of the blocked domain) is no link to it."""
    found: set[str] = set()

    def take(match: re.Match[str]) -> str:
        found.add(_host_of(match[1]))
        return " " * len(match[0])

    rest = _URL.sub(take, text)
    return found | {_host_of(match[1]) for match in _BARE_WWW.finditer(rest)}


def _host_of(authority: str) -> str:
    host = unquote(authority.rpartition("@")[2])
    host = host.partition("]")[0] + "]" if host.startswith("[") else host.partition(":")[0]
    return host.translate(_DOTS).lower().rstrip(".")


@dataclass(frozen=True)
class Region:
    code: str
    names: dict[str, str]
    blocked_since: dt.date | None = None
    heading: dict[str, str] = field(default_factory=dict)  # locale -> the access block's heading
    access: dict[str, str] = field(default_factory=dict)  # locale -> Markdown
    # URL prefix -> the prefix that works in this region (a mirror of a blocked site),
    # longest first, so the most specific rewrite wins.
    links: tuple[tuple[str, str], ...] = ()
    # The List-Unsubscribe mailto address and the Reply-To its readers get, when the
    # config's are on a domain the region blocks; None: the config's.
    mailto: str | None = None
    reply_to: str | None = None
    path: Path | None = None
    line: int | None = None
    lines: dict[str, int] = field(default_factory=dict)

    def name(self, locale: str) -> str:
        return self.names.get(locale) or self.names.get("en") or self.code

    def rewrite(self, url: str) -> str:
        """``url`` as a reader in this region must get it."""
        for prefix, replacement in self.links:
            if url.startswith(prefix):
                return replacement + url[len(prefix) :]
        return url

    def rewrite_text(self, text: str) -> str:
        """Every occurrence of a rewritten prefix in ``text`` (a rendered part), in one
        pass, so that a replacement is never rewritten again."""
        if not self.links:
            return text
        return self._links_pattern.sub(lambda match: self._links_map[match[0]], text)

    @cached_property
    def _links_map(self) -> dict[str, str]:
        """Each prefix as written and as a rendered link spells it (markdown-it puts an
        IDN host in punycode and percent-encodes the path): https://стартмейл.рф/ is
        https://xn--80akmicxfic.xn--p1ai/ in the HTML and the text alike."""
        from markdown_it.common.normalize_url import normalizeLink

        spelled: dict[str, str] = {}
        for prefix, replacement in self.links:  # (in their order: the first that fits)
            spelled.setdefault(prefix, replacement)
            spelled.setdefault(normalizeLink(prefix), replacement)
        return spelled

    @cached_property
    def _links_pattern(self) -> re.Pattern[str]:
        return re.compile("|".join(re.escape(prefix) for prefix in self._links_map))

    def blocked_domains(self) -> set[str]:
        """The registrable domains this region's links rewrite away from: no host under
        them opens there."""
        hosts = (urlsplit(prefix).hostname or "" for prefix, _ in self.links)
        return {registrable_domain(host) for host in hosts if host}

    def blocked_hosts_in(self, text: str) -> list[str]:
        """The hosts of links in ``text`` that land on a domain this region blocks."""
        if not self.links:
            return []
        blocked = self.blocked_domains()
        return sorted(host for host in link_hosts(text) if registrable_domain(host) in blocked)

    def blocks_address(self, address: str) -> bool:
        """Whether mail to ``address`` goes to a domain this region blocks."""
        domain = address.rpartition("@")[2]
        return bool(domain) and registrable_domain(domain) in self.blocked_domains()


def _url_prefix(f: Fields, key: str, value: object) -> str | None:
    text = str(value).strip() if isinstance(value, str) else ""
    parts = urlsplit(text)
    unsafe = any(ch.isspace() or ch in "\"'<>`\\" for ch in text)
    if (
        parts.scheme not in ("https", "http")
        or not parts.hostname
        or not text.endswith("/")
        or unsafe
    ):
        f.problem(
            f.line_of(key),
            f"{f.name(str(key))!r}: {text or value!r} must be an http(s) URL prefix ending in '/'",
        )
        return None
    return text


def _mail_address(f: Fields, key: str) -> str | None:
    if not f.has(key):
        return None
    text = f.line_text(key)  # it goes into a header: one line
    if not text:  # not a string: said already
        return None
    try:
        validate_email(text, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        f.problem(f.line_of(key), f"{f.name(key)!r}: {text!r} is not an email address ({exc})")
        return None
    return text


def load_regions(path: Path) -> dict[str, Region]:
    """Every region in ``path``; InputError with every problem if there is any."""
    regions, problems = read_regions(path)
    if problems:
        raise InputError(problems)
    return regions


def read_regions(path: Path) -> tuple[dict[str, Region], list[Problem]]:
    """The regions ``path`` holds, less what is wrong in them, and the problems; so that
    ``check`` says a rejected link once, not again for every entry naming its region.
    InputError if the file cannot be read as YAML."""
    data = load_yaml(path)
    problems: list[Problem] = []
    top = Fields(path, data, problems)
    regions: dict[str, Region] = {}
    for code in top.data:
        if code == "editions":  # the status site's editions: project.editions
            continue
        line = top.line_of(code)
        if not isinstance(code, str) or not REGION_CODE.match(code):
            problems.append(
                Problem(
                    path,
                    line,
                    f"region code {code!r} is not ISO 3166-1 alpha-2 (like RU)",
                    code="bad-value",
                )
            )
            continue
        f = top.sub(code)
        f.unknown_keys(
            {"name", "blocked_since", "heading", "access", "links", "mailto", "reply_to"}
        )
        names_f, heading_f, access_f = f.sub("name"), f.sub("heading"), f.sub("access")
        links_f = f.sub("links")
        links: list[tuple[str, str]] = []
        for prefix in links_f.data:
            source = _url_prefix(links_f, prefix, prefix)
            target = _url_prefix(links_f, prefix, links_f.data[prefix])
            if source and target:  # where a target may lead: validation.region_problems
                links.append((source, target))
        regions[code] = Region(
            code=code,
            names={str(k): names_f.line_text(str(k)) for k in names_f.data},
            blocked_since=f.date("blocked_since"),
            heading={str(k): heading_f.line_text(str(k)) for k in heading_f.data},
            access={str(k): access_f.text(str(k)) for k in access_f.data},
            links=tuple(sorted(links, key=lambda pair: -len(pair[0]))),
            mailto=_mail_address(f, "mailto"),
            reply_to=_mail_address(f, "reply_to"),
            path=path,
            line=line,
            lines={key: f.line_of(key) for key in f.data}
            | {
                f"{key}.{locale}": sub.line_of(locale)
                for key, sub in (
                    ("name", names_f),
                    ("heading", heading_f),
                    ("access", access_f),
                    ("links", links_f),
                )
                for locale in sub.data
            },
        )
    return regions, problems
