"""``statusmail check``: every problem in the project's files, each as ``file:line: message``."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from statusmail.config import Config
from statusmail.entries import Entry, cross_check, load_entries
from statusmail.errors import InputError, Problem, RenderError, StatusmailError
from statusmail.locales import SUPPORTED_LOCALES, resolve_locale
from statusmail.message import MessageFactory
from statusmail.preview import variants
from statusmail.regions import Region, load_regions
from statusmail.render import Renderer, catalog_problems
from statusmail.sending import unsafe_link_problems
from statusmail.subscribers import ReadStats, RowProblem, iter_subscribers

# Stands in for "any entry" when checking the regions' own texts.
_NO_ENTRY = Entry(id="-", date=dt.date(2000, 1, 1), status="draft", content={})


@dataclass
class CheckReport:
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    entries: int = 0
    subscribers: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def check_project(config: Config) -> CheckReport:
    report = CheckReport()
    problems = report.problems

    regions: dict[str, Region] = {}
    try:
        regions = load_regions(config.paths.regions)
    except InputError as exc:
        problems += exc.problems
    for region in regions.values():
        if region.access:
            for locale in SUPPORTED_LOCALES:
                if not region.access.get(locale):
                    problems.append(
                        Problem(
                            region.path or config.paths.regions,
                            region.line,
                            f"region {region.code} has no {locale!r} access instructions",
                        )
                    )

    entries, entry_problems = load_entries(config.paths.updates)
    problems += entry_problems
    report.entries = len(entries) + len({p.path for p in entry_problems})
    for entry in entries.values():
        problems += cross_check(entry, entries, regions)
        problems += unsafe_link_problems(entry, {})
    problems += unsafe_link_problems(_NO_ENTRY, regions)

    problems += catalog_problems(config.paths.templates)

    secret, is_dev = b"", False
    try:
        secret, is_dev = config.unsubscribe_secret()
    except InputError as exc:
        problems += exc.problems
    if is_dev:
        report.warnings.append(
            Problem(
                config.path,
                None,
                f"${config.unsubscribe.secret_env} is not set; the "
                "development unsubscribe secret is used (fine for the maildir outbox only)",
                warning=True,
            )
        )

    if not problems:
        problems += _render_all(config, entries.values(), regions, secret)
    problems += _check_subscribers(config, entries.values(), report)
    return report


def _render_all(
    config: Config, entries: object, regions: dict[str, Region], secret: bytes
) -> list[Problem]:
    """Render every variant of every entry, so template errors show up here, not mid-send."""
    from statusmail.ledger import Recipient

    problems: list[Problem] = []
    renderer = Renderer(config.paths.templates, regions, config.sender.name)
    for entry in entries:  # type: ignore[attr-defined]
        factory = MessageFactory(config, entry, renderer, secret or b"check")
        for key in variants(entry, regions):
            for name in ("", "Check"):
                try:
                    factory.build(
                        Recipient(
                            "check@example.invalid",
                            "check@example.invalid",
                            "check@example.invalid",
                            name,
                            key.locale,
                            key.access_region,
                        )
                    )
                except (RenderError, StatusmailError) as exc:
                    problems.append(Problem(entry.path or entry.id, None, str(exc)))
                    break
    return problems


def _check_subscribers(config: Config, entries: object, report: CheckReport) -> list[Problem]:
    problems: list[Problem] = []
    entry_list: list[Entry] = list(entries)  # type: ignore[call-overload]
    needed: dict[str, set[str]] = {entry.id: set() for entry in entry_list}
    stats = ReadStats()
    for item in iter_subscribers(config.paths.subscribers, stats):
        if isinstance(item, RowProblem):
            problems.append(Problem(item.path, item.line or None, item.message))
            continue
        report.subscribers += 1
        if item.status != "active":
            continue
        locale = resolve_locale(item.locale, item.region, config.default_locale_by_region)
        for entry in entry_list:
            if entry.audience.matches(item.region, item.topics, locale):
                needed[entry.id].add(locale)
    for entry in entry_list:
        for locale in sorted(needed[entry.id] - set(entry.content)):
            problems.append(
                Problem(
                    entry.path or entry.id,
                    entry.line("content"),
                    f"the audience includes {locale!r} readers but the entry has no "
                    f"{locale!r} content",
                )
            )
    return problems
