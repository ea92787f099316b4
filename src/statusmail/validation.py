"""Every rule about the project's files, reached from one place.

``check`` runs all of them over the whole project (``check_project``); a run (``send``,
``--dry-run``, ``watch``) runs those about its entry before anything is selected or
sent. Both call the same functions, so a rule is never written twice or checked
differently. Here: the regions' rules and an entry's; the others stand beside what they
check: the languages of translations and topic names in ``project.language_checks``,
what the lists say of each audience in ``project.audience_checks``, the secrets in
``project.secrets``, the built messages in ``content.render_checks``, the catalogs in
``content.catalog_gaps``, the pages in ``web.pages`` and ``web.publish``, corrections in
``delivery.corrections``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import urlsplit

from statusmail.content import markdown
from statusmail.content.catalog_gaps import catalog_problems
from statusmail.content.message import MessageFactory
from statusmail.content.render import Renderer
from statusmail.content.render_checks import render_problems
from statusmail.delivery import corrections
from statusmail.domain import Entry
from statusmail.errors import ConfigError, InputError, LedgerError, Problem, StatusmailError
from statusmail.ledger import Ledger
from statusmail.ledger import exists as ledger_exists
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
    topics_problems,
)
from statusmail.project.language import language_problem
from statusmail.project.language_checks import line_in, topic_name_problems, translation_problems
from statusmail.project.locales import SUPPORTED_LOCALES
from statusmail.project.regions import Region, read_regions, registrable_domain
from statusmail.project.secrets import secret_problems
from statusmail.project.selection import Group, Tally
from statusmail.project.sending import ca_file_problems
from statusmail.project.subscriber_rows import RowProblem
from statusmail.project.subscribers import iter_subscribers
from statusmail.project.tokens import Keyring

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
                        line_in(path, at(f"access.{locale}"), text, found[0]),
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


# -- entries ---------------------------------------------------------------------


class _BodyRule(NamedTuple):
    """What a body's links may not be: how to find them, the code, the message."""

    find: Callable[[str], list[str]]
    code: str
    says: str


_BODY_LINKS = (
    _BodyRule(
        markdown.refused_links, code="unsafe-link", says="link {t!r} in {body} is not allowed"
    ),
    _BodyRule(
        markdown.images,
        code="image",
        says="an image ({t!r}) in {body}: messages carry no images (nothing is loaded from "
        "elsewhere), so it shows as '!' and a link; write a link, [its text](address), "
        "instead",
    ),
    _BodyRule(
        markdown.relative_links,
        code="relative-link",
        says="link {t!r} in {body} has no scheme, so it does not open from a message: write "
        "it whole, as https://…",
    ),
)


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
    elif entry.thread == entry.id:
        problems.append(
            Problem(
                path,
                entry.line("thread"),
                f"thread {entry.thread!r} is this entry: each message would reply to itself",
                code="dangling-thread",
            )
        )
    problems += missing_language_problems(entry, audience.locales or set())
    problems += topics_problems(entry)
    for locale, content in entry.content.items():
        body_line = entry.line(f"content.{locale}.body") or entry.line(f"content.{locale}")
        for find, code, says in _BODY_LINKS:
            problems += [
                Problem(
                    path, body_line, says.format(t=target, body=f"the {locale} body"), code=code
                )
                for target in find(content.body)
            ]
        for written, meant in markdown.unrendered_links(content.body):
            start = max(content.body.find(written.split("\n")[0]), 0)
            line = line_in(path, body_line, content.body, content.body[:start].count("\n"))
            message = f"'{' '.join(written.split())}' in the {locale} body shows as brackets"
            message += f", not a link: write {' '.join(meant.split())}"
            problems.append(Problem(path, line, message, code="unrendered-link"))
    problems += translation_problems(entry)
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


def check_project(config: Config) -> CheckReport:
    # Only check reaches the audiences and the pages: a run (send, watch) imports neither.
    from statusmail.project.audience_checks import reach
    from statusmail.web.pages import preferences_page_problems
    from statusmail.web.publish import site_problems

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
    report.add(ca_file_problems(config))
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
    found_lists = reach(config, list(entries.values()), set(regions), *_read_lists(config))
    report.subscribers += found_lists.subscribers
    report.notes += found_lists.notes
    report.add(found_lists.problems)
    return report


def _read_lists(config: Config) -> tuple[list[Group], list[RowProblem]]:
    """The lists as groups (``selection.Tally``) and row problems: from the ledger's
    import when there is a ledger (imported first if the files changed; nothing read if
    not), else, or when a file is broken, read here."""
    from statusmail.delivery.waiting import import_shown, log_terminal

    target, folder = config.paths.ledger, config.paths.subscribers
    if ledger_exists(target):
        try:
            with Ledger(target) as ledger:
                # A changed million-row list takes half a minute: shown while it lasts
                # (check's report is on stdout, so the line goes where the log goes).
                imported = import_shown(ledger, folder, console=log_terminal())
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
