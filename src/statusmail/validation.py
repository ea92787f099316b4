"""Every rule about the project's files, in one place.

``check`` runs all of them over the whole project; a run (``send``, ``--dry-run``,
``watch``) runs those about its entry before anything is selected or sent. Both call
the same functions, so a rule is never written twice or checked differently.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from statusmail.content import markdown
from statusmail.content.catalog_gaps import catalog_problems
from statusmail.content.message import MessageFactory
from statusmail.content.render import (
    Renderer,
    VariantKey,
    probe_recipient,
)
from statusmail.delivery import corrections
from statusmail.domain import Content, Entry, SubscriberStatus
from statusmail.errors import (
    ConfigError,
    InputError,
    LedgerError,
    Problem,
    RenderError,
    StatusmailError,
)
from statusmail.ledger import Ledger
from statusmail.ledger import exists as ledger_exists
from statusmail.ledger.importing import import_lists
from statusmail.ledger.subscribers import ImportRefused, read_groups, read_problems
from statusmail.project.config import Config
from statusmail.project.editions import (
    Edition,
    edition_problems,
    news_urls,
    publish_problems,
    read_editions,
)
from statusmail.project.entries import (
    load_entries,
    missing_language_problems,
    source_hash,
    topics_problems,
)
from statusmail.project.language import dates, language_problem, spell_date
from statusmail.project.locales import FALLBACK_LOCALE, SUPPORTED_LOCALES, resolve_locale
from statusmail.project.regions import Region, read_regions, registrable_domain
from statusmail.project.secrets import imap_password_problem, secret_length_problem
from statusmail.project.selection import Group, Tally
from statusmail.project.subscribers import RowProblem, iter_subscribers
from statusmail.project.tokens import Keyring
from statusmail.web.pages import preferences_page_problems
from statusmail.web.publish import site_problems

_CYRILLIC = re.compile(r"[А-Яа-яЁё]")
_NUMBER = re.compile(r"\d+")
# Link targets, autolinks, bare URLs and addresses hold digits that are not facts.
_NOT_PROSE = re.compile(r"\]\([^)]*\)|<[^>\s]+>|https?://\S+|\S+@\S+")


# -- regions ---------------------------------------------------------------------


def region_problems(regions: Mapping[str, Region]) -> list[Problem]:
    """Every region is named in every language; one with an access block has it, and
    its heading, in every language; no link in its texts is one a mail client drops."""
    problems: list[Problem] = []
    for region in regions.values():
        path = region.path or "regions.yaml"

        def at(key: str, region: Region = region) -> int | None:
            return region.lines.get(key, region.line)

        for locale in SUPPORTED_LOCALES:
            if not region.names.get(locale):
                problems.append(
                    Problem(
                        path,
                        at("name"),
                        f"region {region.code} has no {locale!r} name",
                        code="region-name",
                    )
                )
            if not region.access:
                continue
            if not region.access.get(locale):
                problems.append(
                    Problem(
                        path,
                        at("access"),
                        f"region {region.code} has no {locale!r} access instructions",
                        code="region-access",
                    )
                )
            if not region.heading.get(locale):
                problems.append(
                    Problem(
                        path,
                        at("heading"),
                        f"region {region.code} has access instructions but no {locale!r} "
                        "heading (heading: {en: ..., ru: ...}, as a person would say it)",
                        code="region-heading",
                    )
                )
        for key, texts in (("name", region.names), ("heading", region.heading)):
            for locale, text in texts.items():
                found = language_problem(text, locale)
                if found is not None:
                    problems.append(
                        Problem(
                            path,
                            at(f"{key}.{locale}"),
                            f"{region.code}'s {locale} {key}: {found[1]}",
                            code="wrong-language",
                        )
                    )
        problems += _rewrite_problems(region)
        for locale, text in region.access.items():
            found = language_problem(text, locale)
            if found is not None:
                problems.append(
                    Problem(
                        path,
                        _line_in(path, at(f"access.{locale}"), text, found[0]),
                        f"{region.code}'s {locale} access text: {found[1]}",
                        code="wrong-language",
                    )
                )
            for target in markdown.refused_links(text):
                problems.append(
                    Problem(
                        path,
                        at("access"),
                        f"link {target!r} in {region.code}'s {locale} access text is not allowed",
                        code="unsafe-link",
                    )
                )
            for written, meant in markdown.unrendered_links(text):
                message = f"'{' '.join(written.split())}' in {region.code}'s {locale} access "
                message += f"text shows as brackets, not a link: write {' '.join(meant.split())}"
                problems.append(Problem(path, at("access"), message, code="unrendered-link"))
    return problems


def _rewrite_problems(region: Region) -> list[Problem]:
    """A rewrite target is reached over HTTPS (one-click unsubscribe needs it, and a
    censored network must not read the mirror's pages; an onion service is encrypted by
    Tor) and lies outside every registrable domain the region blocks."""
    problems: list[Problem] = []
    blocked = region.blocked_domains()
    for source, target in region.links:
        where = (region.path or "regions.yaml", region.lines.get(f"links.{source}"))
        host = urlsplit(target).hostname or ""
        domain = registrable_domain(host)
        if urlsplit(target).scheme != "https" and not host.endswith(".onion"):
            message = (
                f"{source!r} is rewritten to {target!r}: a rewrite target must be https "
                "(one-click unsubscribe needs it, and readers behind the block must not "
                "browse in clear text)"
            )
            problems.append(Problem(*where, message, code="bad-value"))
        elif domain in blocked:
            message = (
                f"{source!r} is rewritten to {target!r}, on {domain}, a domain {region.code} "
                "blocks: a mirror needs another registrable domain"
            )
            problems.append(Problem(*where, message, code="blocked-link"))
    return problems


def region_address_problems(config: Config, regions: Mapping[str, Region]) -> list[Problem]:
    """A warning for a region whose links are rewritten (its readers are behind a block)
    but whose readers' List-Unsubscribe mailto or Reply-To is on a domain it blocks: a
    reader's provider may never deliver there, and nobody hears of it."""
    problems: list[Problem] = []
    for region in regions.values():
        if not region.links:
            continue
        addresses = (
            ("mailto", "List-Unsubscribe mailto", region.mailto or config.unsubscribe.mailto),
            ("reply_to", "Reply-To", region.reply_to or config.reply_to or ""),
        )
        for key, what, address in addresses:
            if not address or not region.blocks_address(address):
                continue
            whose = "its" if getattr(region, key) else "the config's"
            problems.append(
                Problem(
                    region.path or "regions.yaml",
                    region.lines.get(key, region.line),
                    f"readers in {region.code} get {whose} {what} {address}, on "
                    f"{registrable_domain(address.rpartition('@')[2])}, a domain "
                    f"{region.code} blocks: give {region.code} a {key} on another domain",
                    code="blocked-address",
                    warning=True,
                )
            )
    return problems


def topic_name_problems(config: Config) -> list[Problem]:
    """The preferences page names each topic in the reader's language: in that language."""
    problems: list[Problem] = []
    for topic, names in sorted(config.topic_names.items()):
        for locale, text in sorted(names.items()):
            found = language_problem(text, locale)
            if found is not None:
                line = _line_in(config.path, config.line("topic_names"), f"{topic}:", 0)
                message = f"the {locale} name of topic {topic!r}: {found[1]}"
                problems.append(Problem(config.path, line, message, code="wrong-language"))
    return problems


# -- entries ---------------------------------------------------------------------


def entry_problems(
    entry: Entry, *, known_ids: Iterable[str], regions: Mapping[str, Region], config: Config
) -> list[Problem]:
    """What is wrong with one entry, given the other files (warnings included)."""
    problems: list[Problem] = []
    path = entry.where
    audience = entry.audience
    for code in sorted(audience.regions or ()):
        if code not in regions:
            problems.append(
                Problem(
                    path,
                    entry.line("audience"),
                    f"unknown region {code!r} (not in regions)",
                    code="unknown-region",
                )
            )
    if config.topics is not None:
        for topic in sorted((audience.topics or frozenset()) - config.topics):
            problems.append(
                Problem(
                    path,
                    entry.line("audience"),
                    f"topic {topic!r} is not one of the config's topics "
                    f"({', '.join(sorted(config.topics)) or 'none'})",
                    code="unknown-topic",
                )
            )
    if entry.thread and entry.thread not in set(known_ids):
        problems.append(
            Problem(
                path,
                entry.line("thread"),
                f"thread {entry.thread!r} names no entry",
                code="dangling-thread",
            )
        )
    problems += missing_language_problems(entry, audience.locales or set())
    problems += topics_problems(entry)
    for locale, content in entry.content.items():
        body_line = entry.line(f"content.{locale}.body") or entry.line(f"content.{locale}")
        for target in markdown.refused_links(content.body):
            problems.append(
                Problem(
                    path,
                    body_line,
                    f"link {target!r} in the {locale} body is not allowed",
                    code="unsafe-link",
                )
            )
        for written, meant in markdown.unrendered_links(content.body):
            start = max(content.body.find(written.split("\n")[0]), 0)
            line = _line_in(path, body_line, content.body, content.body[:start].count("\n"))
            message = f"'{' '.join(written.split())}' in the {locale} body shows as brackets"
            message += f", not a link: write {' '.join(meant.split())}"
            problems.append(Problem(path, line, message, code="unrendered-link"))
    problems += translation_problems(entry)
    return problems


def _numbers(*texts: str) -> Counter[str]:
    found: Counter[str] = Counter()
    for text in texts:
        found.update(n.lstrip("0") or "0" for n in _NUMBER.findall(_NOT_PROSE.sub(" ", text)))
    return found


def _line_in(path: Path | str, line: int | None, text: str, offset: int) -> int | None:
    """The file line holding line ``offset`` of ``text``, a value whose key is on
    ``line``: the first line from there that holds its start (YAML indents a value, and
    may fold it); ``line`` when none does."""
    wanted = text.split("\n")[offset].strip()[:40]
    if line is None or not wanted:
        return line
    try:
        lines = Path(path).read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError):
        return line
    return next((n for n in range(line, len(lines) + 1) if wanted in lines[n - 1]), line)


def translation_problems(entry: Entry) -> list[Problem]:
    """Each text is in its language, paragraph by paragraph; each translation is made
    from the current English and states the same numbers and dates."""
    problems: list[Problem] = []
    english = entry.content.get(FALLBACK_LOCALE)
    for locale, content in entry.content.items():

        def at(key: str, locale: str = locale) -> int | None:
            return entry.line(f"content.{locale}.{key}") or entry.line(f"content.{locale}")

        for key in ("subject", "summary", "body"):
            text = getattr(content, key)
            if locale == "ru" and not _CYRILLIC.search(text):
                problems.append(
                    Problem(
                        entry.where,
                        at(key),
                        f"the ru {key} has no Cyrillic letter: is it still in English?",
                        code="not-cyrillic",
                    )
                )
                continue
            found = language_problem(text, locale)
            if found is not None:
                problems.append(
                    Problem(
                        entry.where,
                        _line_in(entry.where, at(key), text, found[0]),
                        f"the {locale} {key}: {found[1]}",
                        code="wrong-language",
                    )
                )
        if english is None or locale == FALLBACK_LOCALE:
            continue
        current = source_hash(english)
        if content.source is None:
            problems.append(
                Problem(
                    entry.where,
                    entry.line(f"content.{locale}"),
                    f"the {locale} block has no 'source:'; once it matches the English, "
                    f"add source: {current}",
                    warning=True,
                    code="missing-source",
                )
            )
        elif content.source != current:
            problems.append(
                Problem(
                    entry.where,
                    at("source"),
                    f"the English changed since this {locale} translation was made "
                    f"(source: {content.source}, English now {current}); update the "
                    f"translation, then set source: {current}",
                    # A draft is work in progress: said, but it still previews and checks.
                    warning=not entry.ready,
                    code="stale-translation",
                )
            )
        ours = _numbers(english.subject, english.summary, english.body)
        theirs = _numbers(content.subject, content.summary, content.body)
        if set(ours) != set(theirs):
            only_en = sorted(set(ours) - set(theirs), key=int)
            only_other = sorted(set(theirs) - set(ours), key=int)
            said = []
            if only_en:
                said.append(f"only in en: {', '.join(only_en)}")
            if only_other:
                said.append(f"only in {locale}: {', '.join(only_other)}")
            problems.append(
                Problem(
                    entry.where,
                    entry.line(f"content.{locale}"),
                    f"the numbers in en and {locale} differ ({'; '.join(said)})",
                    code="numbers-differ",
                )
            )
        else:  # the same digits: a month changed in one language only is caught here
            problems += _date_problems(entry, english, content, locale)
    return problems


def _date_problems(entry: Entry, english: Content, content: Content, locale: str) -> list[Problem]:
    """Each text of a translation states the English's dates, compared as dates."""
    problems: list[Problem] = []
    for key in ("subject", "summary", "body"):
        en_dates = dates(getattr(english, key), FALLBACK_LOCALE)
        their_dates = dates(getattr(content, key), locale)
        if en_dates == their_dates:
            continue
        differ = ((FALLBACK_LOCALE, en_dates - their_dates), (locale, their_dates - en_dates))
        told = [
            f"only in {where}: {', '.join(spell_date(*d) for d in sorted(only))}"
            for where, only in differ
            if only
        ]
        problems.append(
            Problem(
                entry.where,
                entry.line(f"content.{locale}.{key}") or entry.line(f"content.{locale}"),
                f"the dates in the en and {locale} {key} differ ({'; '.join(told)})",
                code="dates-differ",
            )
        )
    return problems


def readiness_problems(entry: Entry, *, now: dt.datetime, send_now: bool) -> list[Problem]:
    """A draft is never sent; an entry is not sent before its ``send_at`` unless asked."""
    if not entry.ready:
        return [
            Problem(
                entry.where,
                entry.line("status"),
                "the entry is a draft; drafts are never sent (set status: ready)",
                code="draft",
            )
        ]
    if entry.send_at and entry.send_at > now and not send_now:
        return [
            Problem(
                entry.where,
                entry.line("send_at"),
                f"send_at is {entry.send_at.isoformat()}, still to come; "
                "send it then, or now with --now",
                code="not-due",
            )
        ]
    return []


# -- secrets and settings ----------------------------------------------------------


def secret_problems(config: Config, environ: Mapping[str, str] | None = None) -> list[Problem]:
    """Secrets the configured transport needs, each naming its variable (warnings too)."""
    problems: list[Problem] = []
    try:
        keys, is_dev = config.keyring(environ)
    except ConfigError as exc:
        problems += exc.problems
    else:
        if is_dev:
            problems.append(
                Problem(
                    config.path,
                    config.line("unsubscribe"),
                    f"${config.unsubscribe.secret_env} is not set; the development "
                    "unsubscribe secret is used (fine for the maildir outbox only)",
                    warning=True,
                    code="secret-missing",
                )
            )
        short = secret_length_problem(config, keys, is_dev)
        if short is not None and config.transport == "smtp":
            problems.append(short)
        elif short is not None:  # fine for the outbox, not for serve or a relay
            problems.append(replace(short, warning=True))
    bounces = config.bounces
    if bounces.imap is not None and not bounces.imap.password(environ):
        problems.append(imap_password_problem(config))
    if bounces.trust_unsigned:
        problems.append(
            Problem(
                config.path,
                config.line("bounces"),
                "bounces.trust_unsigned is on: a report that proves nothing (no VERP token, "
                "no Message-ID of statusmail's) suppresses the addresses it names, so anyone "
                "who can send mail can cut a subscriber off; configure bounces.address "
                "(VERP) and turn it off",
                warning=True,
                code="trust-unsigned",
            )
        )
    smtp = config.smtp
    if config.transport == "smtp" and smtp.username and not smtp.password(environ):
        problems.append(
            Problem(
                config.path,
                config.line("smtp"),
                f"smtp.username is set but ${smtp.password_env} is unset or empty: "
                "put the relay's password there",
                code="secret-missing",
            )
        )
    return problems


# -- rendering ---------------------------------------------------------------------


def render_problems(factory: MessageFactory, keys: Iterable[VariantKey]) -> list[Problem]:
    """Build every variant (with and without a name), so a template, catalog or key
    error shows here and not mid-send; and no reader gets a link their region blocks."""
    entry = factory.entry
    problems: list[Problem] = []
    for key in keys:
        for named in (True, False):
            probe = probe_recipient(VariantKey(key.locale, key.region, key.access, named))
            try:
                built = factory.build(probe)
                rendered = built.rendered
            except RenderError as exc:
                fallback = Problem(entry.where, None, str(exc), code="render-error")
                problems.append(exc.problem or fallback)
                break
            except StatusmailError as exc:
                problems.append(Problem(entry.where, None, str(exc), code="render-error"))
                break
            region = factory.renderer.region(key)
            if region is None or not region.links:
                continue
            headers = built.envelope.data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
            for part, text in (
                ("its text part", rendered.text),
                ("its HTML part", rendered.html),
                ("its headers", headers),
            ):
                for host in region.blocked_hosts_in(text):
                    problems.append(_leak(entry, key, region, host, part))
            break  # the name does not change links
    return problems


def _leak(entry: Entry, key: VariantKey, region: Region, host: str, where: str) -> Problem:
    return Problem(
        entry.where,
        entry.line(f"content.{key.locale}") or entry.line("content"),
        f"readers in {region.code} still get a link to {host} in {where} ({key.title}): "
        f"write it as {region.links[0][0]}… so that regions.yaml's links rewrite it",
        code="blocked-link",
    )


# -- check: the whole project ------------------------------------------------------


@dataclass
class CheckReport:
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    entries: int = 0
    subscribers: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, found: Iterable[Problem]) -> None:
        for problem in found:
            kept = self.warnings if problem.warning else self.problems
            if problem not in kept:  # a template's error shows once, not once per entry
                kept.append(problem)


@dataclass
class _Coverage:
    """What the active subscribers have, to tell an audience that selects nobody."""

    topics: set[str] = field(default_factory=set)
    regions: set[str] = field(default_factory=set)
    locales: set[str] = field(default_factory=set)
    fallbacks: Counter[tuple[str, str]] = field(default_factory=Counter)
    last_first: int = 0  # names written "Last, First"


def check_project(config: Config) -> CheckReport:
    report = CheckReport()
    regions: dict[str, Region] = {}
    editions: dict[str, Edition] = {}
    regions_read = True
    try:
        regions, found = read_regions(config.paths.regions)
        report.add(found)
        editions, found = read_editions(config.paths.regions, regions)
        report.add(found + edition_problems(editions) + publish_problems(config, editions))
    except InputError as exc:
        report.add(exc.problems)
        regions_read = False
    report.add(region_problems(regions))
    report.add(region_address_problems(config, regions))
    entries, entry_load_problems = load_entries(config.paths.updates)
    report.add(entry_load_problems)
    report.entries = len(entries) + len({p.path for p in entry_load_problems})
    for entry in entries.values():
        found = entry_problems(entry, known_ids=entries, regions=regions, config=config)
        # A regions.yaml that cannot be read is said once, not again for every region named.
        report.add(p for p in found if regions_read or p.code != "unknown-region")
    found, notes = corrections.check(config, entries)
    report.add(found)
    report.notes += notes
    report.add(catalog_problems(config.paths.templates))
    report.add(topic_name_problems(config))
    if report.ok:  # a broken catalog is said once, above
        report.add(preferences_page_problems(config))
        report.add(site_problems(config))
    report.add(secret_problems(config))
    if report.ok:
        try:
            keys, _ = config.keyring()
        except ConfigError:  # reported above; the messages can still be checked
            keys = Keyring(b"check")
        renderer = Renderer(
            config.paths.templates,
            regions,
            config.sender.name,
            news=news_urls(editions),
            topic_names=config.topic_names,
        )
        for entry in entries.values():
            try:
                factory = MessageFactory(config, entry, renderer, keys)
            except InputError as exc:  # the config's own problem (a DKIM key): its line
                report.add(exc.problems)
                break
            except StatusmailError as exc:
                report.add([Problem(entry.where, None, str(exc), code="render-error")])
                break
            report.add(render_problems(factory, renderer.variant_keys(entry)))
    report.add(_subscriber_problems(config, list(entries.values()), set(regions), report))
    return report


def _read_lists(config: Config) -> tuple[list[Group], list[RowProblem]]:
    """The lists as groups (``selection.Tally``) and row problems: from the ledger's
    import when there is a ledger (imported first if the files changed; nothing read if
    not), else, or when a file is broken, read here."""
    target, folder = config.paths.ledger, config.paths.subscribers
    if ledger_exists(target):
        try:
            with Ledger(target) as ledger:
                imported = import_lists(ledger, folder)
                return read_groups(ledger, imported.id), read_problems(ledger, imported.id)
        except (ImportRefused, LedgerError):
            pass  # read here: every problem of the files, with their lines
    tally, problems = Tally(), []
    for item in iter_subscribers(folder):
        if isinstance(item, RowProblem):
            problems.append(item)
        else:
            tally.add(item)
    return tally.groups(), problems


def _subscriber_problems(
    config: Config, entries: list[Entry], regions: set[str], report: CheckReport
) -> list[Problem]:
    problems: list[Problem] = []
    locales: dict[str, set[str]] = {entry.id: set() for entry in entries}
    selected: Counter[str] = Counter()
    coverage = _Coverage()
    groups, row_problems = _read_lists(config)
    for item in row_problems:
        code = "subscriber-file" if item.fatal else "subscriber-row"
        problems.append(Problem(item.path, item.line or None, item.message, code=code))
    for group in groups:
        report.subscribers += group.members
        if group.status != SubscriberStatus.ACTIVE:
            continue
        locale, fallback = resolve_locale(
            group.locale, group.region, config.default_locale_by_region
        )
        if fallback:
            coverage.fallbacks[(fallback, locale)] += group.members
        coverage.topics |= group.topics
        coverage.locales.add(locale)
        coverage.last_first += group.last_first
        if group.region:
            coverage.regions.add(group.region)
        for entry in entries:
            if entry.audience.matches(group.region, group.topics, locale):
                locales[entry.id].add(locale)
                selected[entry.id] += group.members
    report.notes += [
        f"{n} subscriber{'s' if n != 1 else ''} with {reason} get{'' if n != 1 else 's'} {locale}"
        for (reason, locale), n in coverage.fallbacks.most_common()
    ]
    report.notes += _name_order_notes(config, coverage.last_first)
    for entry in entries:
        if entry.corrects:  # its audience is who got what it corrects: corrections.check
            continue
        problems += missing_language_problems(entry, locales[entry.id])
        if entry.ready:
            problems += _audience_problems(entry, selected[entry.id], coverage, regions)
    return problems


def _name_order_notes(config: Config, last_first: int) -> list[str]:
    """How many greetings ``name_order`` turns round (never whose: check's output goes
    into CI logs)."""
    if not last_first:
        return []
    names = f"{last_first} subscriber name{'s' if last_first != 1 else ''}"
    if config.name_order == "given_first":
        return [f'{names} written "Last, First" greeted given name first (name_order)']
    return [
        f'{names} written "Last, First" greeted as written '
        "(name_order: given_first greets given name first)"
    ]


def _audience_problems(
    entry: Entry, selected: int, coverage: _Coverage, regions: set[str]
) -> list[Problem]:
    problems: list[Problem] = []
    audience, line = entry.audience, entry.line("audience")
    known_regions = (audience.regions or frozenset()) & regions  # unknown ones said already
    for what, wanted, present in (
        ("topic", audience.topics, coverage.topics),
        ("region", known_regions, coverage.regions),
        ("locale", audience.locales, coverage.locales),
    ):
        for value in sorted((wanted or frozenset()) - present):
            problems.append(
                Problem(
                    entry.where,
                    line,
                    f"no active subscriber has the audience's {what} {value!r}",
                    code="audience-unmatched",
                )
            )
    if not selected:
        problems.append(
            Problem(
                entry.where,
                line or entry.line("status"),
                "the entry is ready but its audience selects no active subscriber",
                code="audience-empty",
            )
        )
    return problems
