"""``statusmail.yaml``: loaded, validated, resolved against its folder, env applied.

Each section is a dataclass whose defaults are the only place a default is written, and
a small parser that reads that section, recording a ``file:line`` problem per bad key.
Here: the config itself and its small sections; sending's (``smtp``, ``sending``,
``dkim``) are in ``sending``, the bounces' and webhooks' in ``feedback_settings``,
``publish`` in ``publishing``, and the secrets read from the environment in ``secrets``.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from statusmail.errors import ConfigError, InputError, Problem
from statusmail.project import secrets
from statusmail.project.feedback_settings import (
    BounceSettings,
    WebhookSettings,
    parse_bounces,
    parse_webhooks,
)
from statusmail.project.fields import Fields
from statusmail.project.publishing import PublishSettings, parse_publish
from statusmail.project.sending import (
    DkimSettings,
    SendingSettings,
    SmtpSettings,
    parse_dkim,
    parse_sending,
    parse_smtp,
)
from statusmail.project.tokens import Keyring
from statusmail.project.yamlfile import load_yaml

DEFAULT_CONFIG_NAME = "statusmail.yaml"
TRANSPORTS = ("maildir", "smtp")
# How a name written "Last, First" (as CRMs export it) is greeted: as written, or with
# the given name first («Петрова, Анна» → «Анна Петрова»).
NAME_ORDERS = ("as_written", "given_first")


def is_url(target: str | Path) -> bool:
    """Whether a ledger target is a PostgreSQL server rather than a SQLite file."""
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


@dataclass(frozen=True)
class Sender:
    name: str = ""
    address: str = ""


@dataclass(frozen=True)
class Paths:
    updates: Path = Path("updates")
    subscribers: Path = Path("subscribers")
    templates: Path = Path("templates")
    regions: Path = Path("regions.yaml")
    # A file (the embedded SQLite ledger) or a postgresql:// URL.
    ledger: Path | str = Path("statusmail.db")
    outbox: Path = Path("outbox")


@dataclass(frozen=True)
class UnsubscribeSettings:
    url: str = ""
    mailto: str = ""
    secret_env: str = "STATUSMAIL_UNSUBSCRIBE_SECRET"
    # Retired secrets, comma-separated, that still verify tokens but never sign.
    previous_secrets_env: str = "STATUSMAIL_UNSUBSCRIBE_PREVIOUS_SECRETS"
    # Links minted by statusmail before its token scheme changed work through this date.
    legacy_tokens_until: dt.date | None = None


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8080


DURABILITIES = ("normal", "full")


@dataclass(frozen=True)
class LedgerSettings:
    """How a SQLite ledger commits (README: Delivery guarantees). normal: the write-ahead
    log is synced at each checkpoint only, so a power loss can take back the commits made
    since the last one (a killed process loses nothing); full: it is synced at every
    commit. A PostgreSQL ledger is as durable as its server makes it (synchronous_commit)."""

    durability: str = "normal"


# The durability each SQLite ledger file is written with, as its loaded config says.
# Every connection that writes a ledger (a run's, its selection's, serve's, feedback's,
# the commands') is opened by ``ledger.database.connect`` from the file alone, so the
# config leaves its choice here for its file; a file no config named gets the default.
_DURABILITY: dict[Path, str] = {}


def sqlite_durability(path: Path) -> str:
    """``ledger.durability`` of the config that named the SQLite file ``path``."""
    return _DURABILITY.get(Path(os.path.abspath(path)), LedgerSettings.durability)


@dataclass(frozen=True)
class Config:
    path: Path
    sender: Sender
    list_id: str
    paths: Paths
    unsubscribe: UnsubscribeSettings
    reply_to: str | None = None
    transport: str = "maildir"
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    sending: SendingSettings = field(default_factory=SendingSettings)
    ledger: LedgerSettings = field(default_factory=LedgerSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)
    dkim: DkimSettings | None = None
    default_locale_by_region: Mapping[str, str] = field(default_factory=dict)
    # The topics subscribers can have; None when the config does not declare them.
    topics: frozenset[str] | None = None
    # What the preferences page calls each topic, per language.
    topic_names: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    bounces: BounceSettings = field(default_factory=BounceSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    # The preferences page (language, topics); "" derives it from unsubscribe.url.
    preferences_url_setting: str = ""
    name_order: str = "as_written"  # one of NAME_ORDERS
    publish: PublishSettings = field(default_factory=PublishSettings)
    # Who `send ID --test-to` may mail without --force (lower-cased).
    test_recipients: frozenset[str] = frozenset()
    lines: Mapping[str, int] = field(default_factory=dict)  # top-level keys

    @property
    def preferences_url(self) -> str:
        """``preferences.url``, else ``unsubscribe.url`` with ``/unsubscribe/`` made
        ``/preferences/`` (or ``{token}`` made ``preferences/{token}``)."""
        if self.preferences_url_setting:
            return self.preferences_url_setting
        url = self.unsubscribe.url
        if "/unsubscribe/" in url:
            head, _, tail = url.rpartition("/unsubscribe/")
            return f"{head}/preferences/{tail}"
        return url.replace("{token}", "preferences/{token}", 1)

    @property
    def root(self) -> Path:
        return self.path.parent

    def line(self, key: str) -> int | None:
        return self.lines.get(key)

    def keyring(
        self, environ: Mapping[str, str] | None = None, *, announce: bool = False
    ) -> tuple[Keyring, bool]:
        """The token keys and whether they are the development stand-in
        (``secrets.keyring``)."""
        return secrets.keyring(self, environ, announce=announce)

    def with_overrides(
        self, *, rate: float | None = None, concurrency: int | None = None
    ) -> Config:
        sending = self.sending
        if rate is not None:
            sending = replace(sending, rate=rate)
        if concurrency is not None:
            sending = replace(sending, concurrency=concurrency)
        return replace(self, sending=sending)


def find_config(
    option: str | Path | None,
    environ: Mapping[str, str] | None = None,
    start: Path | None = None,
) -> Path:
    """``--config``, else ``$STATUSMAIL_CONFIG``, else the ``statusmail.yaml`` of the
    current folder or of the nearest folder above it that holds one (as git finds
    ``.git``); when none does, ``./statusmail.yaml``, which loading reports missing."""
    env = os.environ if environ is None else environ
    if option:
        return Path(option)
    if env.get("STATUSMAIL_CONFIG"):
        return Path(env["STATUSMAIL_CONFIG"])
    here = (start or Path.cwd()).absolute()
    for folder in (here, *here.parents):
        if (folder / DEFAULT_CONFIG_NAME).is_file():
            return folder / DEFAULT_CONFIG_NAME
    return Path(DEFAULT_CONFIG_NAME)


# -- one parser per section ------------------------------------------------------


def _is_address(value: str) -> bool:
    from email_validator import EmailNotValidError, validate_email

    try:
        validate_email(value, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError:
        return False
    return True


def _address(f: Fields, key: str, value: str) -> None:
    """An address that goes into a header ("status@" and "@" went out as From: and
    Reply-To:, a mailto of "not an address" into List-Unsubscribe)."""
    if value and not f.said(key) and not _is_address(value):
        f.problem(f.line_of(key), f"{f.name(key)!r} is not an email address")


# A List-Id's id (RFC 2919): a dot-atom, between angle brackets in the header.
_LIST_ID = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)+")
# What a URL in a header or a mail body cannot hold unencoded (RFC 3986).
_NOT_IN_URL = re.compile(r"[\s<>\"{}|\\^`]")


def parse_test_recipients(f: Fields) -> frozenset[str]:
    addresses = f.text_list("test_recipients") or []
    for address in addresses:
        if not _is_address(address):
            f.problem(
                f.line_of("test_recipients"), f"test_recipients: {address!r} is not an address"
            )
    return frozenset(address.lower() for address in addresses)


def parse_default_locales(f: Fields) -> dict[str, str]:
    """Region code -> locale: a typo there ('rus') silently gave English, and NO
    (Norway, read by YAML as false) became the region 'FALSE'."""
    from statusmail.project.locales import SUPPORTED_LOCALES, normalize_locale
    from statusmail.project.regions import REGION_CODE

    found: dict[str, str] = {}
    for region, locale in f.data.items():
        line = f.line_of(region)
        if region is False:
            f.problem(line, f"'{f.what}': YAML reads NO as false: write \"NO\"")
            continue
        upper = region.upper() if isinstance(region, str) else ""
        if not REGION_CODE.match(upper):
            f.problem(line, f"'{f.what}': {region!r} is not a two-letter region code")
            continue
        # kept normalized, as mail, the site and the pages all compare it: "ru-RU" is "ru"
        language = normalize_locale(locale) if isinstance(locale, str) else None
        if language is None:
            shown = repr(locale) if isinstance(locale, str | int | float) else "not a word"
            f.problem(
                line,
                f"'{f.what}.{upper}' is {shown}; expected one of "
                + ", ".join(sorted(SUPPORTED_LOCALES)),
            )
            continue
        found[upper] = language
    return found


def parse_list_id(f: Fields) -> str:
    list_id = f.line_text("list_id", required=True)
    if list_id and not f.said("list_id") and not _LIST_ID.fullmatch(list_id):
        f.problem(
            f.line_of("list_id"),
            f"'list_id' is {list_id!r}; it must be a dotted name like status.example.org "
            "(RFC 2919: no spaces or angle brackets)",
        )
    return list_id


def parse_sender(f: Fields) -> Sender:
    sender = Sender(
        name=f.line_text("name", required=True), address=f.line_text("address", required=True)
    )
    _address(f, "address", sender.address)
    return sender


def parse_paths(f: Fields, root: Path, env: Mapping[str, str]) -> Paths:
    defaults = Paths()
    keys = defaults.__dataclass_fields__
    f.unknown_keys(set(keys))
    paths = {
        key: root / f.text(key, str(getattr(defaults, key))) for key in keys if key != "ledger"
    }
    ledger = env.get("STATUSMAIL_LEDGER") or f.text("ledger", str(defaults.ledger))
    return Paths(**paths, ledger=ledger if is_url(ledger) else root / ledger)


def parse_unsubscribe(f: Fields) -> UnsubscribeSettings:
    d = UnsubscribeSettings()
    f.unknown_keys(set(d.__dataclass_fields__))
    unsubscribe = UnsubscribeSettings(
        url=f.line_text("url", required=True),
        mailto=f.line_text("mailto", required=True),
        secret_env=f.variable("secret_env", d.secret_env),
        previous_secrets_env=f.variable("previous_secrets_env", d.previous_secrets_env),
        legacy_tokens_until=f.date("legacy_tokens_until"),
    )
    url = unsubscribe.url
    if url and (not url.startswith("https://") or "{token}" not in url):
        f.problem(f.line_of("url"), "'unsubscribe.url' must be an https URL containing {token}")
    elif _NOT_IN_URL.search(url.replace("{token}", "")):
        f.problem(
            f.line_of("url"),
            "'unsubscribe.url' holds a space or one of <>\"{}|\\^` (percent-encode it)",
        )
    _address(f, "mailto", unsubscribe.mailto)
    return unsubscribe


def parse_serve(f: Fields) -> ServeSettings:
    d = ServeSettings()
    f.unknown_keys(set(d.__dataclass_fields__))
    return ServeSettings(
        host=f.text("host", d.host), port=f.integer("port", d.port, minimum=1, maximum=65535)
    )


def parse_ledger(f: Fields) -> LedgerSettings:
    d = LedgerSettings()
    f.unknown_keys(set(d.__dataclass_fields__))
    return LedgerSettings(durability=f.choice("durability", DURABILITIES, d.durability))


def hold_durability(config: Config, f: Fields) -> None:
    """Leave the config's ``ledger.durability`` for its SQLite file's connections once the
    config is known good; refuse the key for a PostgreSQL ledger, where it would promise
    what only the server decides."""
    target = config.paths.ledger
    if is_url(target):
        if f.has("durability"):
            f.problem(
                f.line_of("durability"),
                "'ledger.durability' applies to a SQLite ledger only: a PostgreSQL ledger "
                "(paths.ledger or $STATUSMAIL_LEDGER) is as durable as the server's "
                "synchronous_commit makes it; remove the key",
            )
    elif not f.problems:
        _DURABILITY[Path(os.path.abspath(target))] = config.ledger.durability


def adopt_durability(config: Config) -> None:
    """The same, in a process that was handed ``config`` (a run's other sender process)."""
    if not is_url(config.paths.ledger):
        _DURABILITY[Path(os.path.abspath(config.paths.ledger))] = config.ledger.durability


def parse_preferences(f: Fields, unsubscribe_url: str) -> str:
    f.unknown_keys({"url"})
    url = f.line_text("url")
    if url and (not url.startswith("https://") or "{token}" not in url):
        f.problem(f.line_of("url"), "'preferences.url' must be an https URL containing {token}")
    elif url and url == unsubscribe_url:
        f.problem(f.line_of("url"), "'preferences.url' must differ from 'unsubscribe.url'")
    return url


def parse_topic_names(f: Fields, topics: frozenset[str] | None) -> dict[str, dict[str, str]]:
    names: dict[str, dict[str, str]] = {}
    for topic in f.data:
        if topics is not None and str(topic) not in topics:
            f.problem(f.line_of(topic), f"'topic_names': {topic!r} is not one of 'topics'")
            continue
        per_language = f.sub(str(topic))
        names[str(topic)] = {
            str(lang): per_language.line_text(str(lang)) for lang in per_language.data
        }
    return names


def parse_transport(f: Fields, env: Mapping[str, str], problems: list[Problem]) -> str:
    transport = f.text("transport", Config.transport)
    if transport not in TRANSPORTS:
        f.problem(
            f.line_of("transport"),
            f"transport is {transport!r}; expected one of {', '.join(TRANSPORTS)}",
        )
    override = env.get("STATUSMAIL_TRANSPORT", "").strip()
    if override and override not in TRANSPORTS:
        problems.append(
            Problem(
                "$STATUSMAIL_TRANSPORT",
                None,
                f"{override!r} is not a transport; expected one of {', '.join(TRANSPORTS)}",
                code="bad-value",
            )
        )
    return override if override in TRANSPORTS else transport


TOP_KEYS = {
    "sender",
    "reply_to",
    "list_id",
    "paths",
    "transport",
    "smtp",
    "sending",
    "ledger",
    "unsubscribe",
    "serve",
    "dkim",
    "default_locale_by_region",
    "topics",
    "topic_names",
    "bounces",
    "preferences",
    "webhooks",
    "name_order",
    "publish",
    "test_recipients",
}


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Load and validate the config; raise ``ConfigError`` listing every problem."""
    env = os.environ if environ is None else environ
    path = path.absolute()
    if not path.is_file():
        raise ConfigError([Problem(path, None, "config file not found", code="missing-file")])
    try:
        data = load_yaml(path)
    except InputError as exc:
        raise ConfigError(exc.problems) from exc
    problems: list[Problem] = []
    top = Fields(path, data, problems, "")
    top.unknown_keys(TOP_KEYS)
    root = path.parent
    reply_to = top.line_text("reply_to") or None
    _address(top, "reply_to", reply_to or "")
    topics = top.text_list("topics")
    declared = frozenset(topics) if topics is not None else None
    unsubscribe = parse_unsubscribe(top.sub("unsubscribe"))
    ledger = top.sub("ledger")
    config = Config(
        path=path,
        sender=parse_sender(top.sub("sender")),
        list_id=parse_list_id(top),
        paths=parse_paths(top.sub("paths"), root, env),
        unsubscribe=unsubscribe,
        reply_to=reply_to,
        transport=parse_transport(top, env, problems),
        smtp=parse_smtp(top.sub("smtp"), root, env, problems),
        sending=parse_sending(top.sub("sending")),
        ledger=parse_ledger(ledger),
        serve=parse_serve(top.sub("serve")),
        dkim=parse_dkim(top.sub("dkim"), root) if top.has("dkim") else None,
        default_locale_by_region=parse_default_locales(top.sub("default_locale_by_region")),
        topics=declared,
        topic_names=parse_topic_names(top.sub("topic_names"), declared),
        bounces=parse_bounces(top.sub("bounces"), root),
        webhooks=parse_webhooks(top.sub("webhooks")),
        preferences_url_setting=parse_preferences(top.sub("preferences"), unsubscribe.url),
        name_order=top.choice("name_order", NAME_ORDERS, Config.name_order),
        publish=parse_publish(top.sub("publish"), root),
        test_recipients=parse_test_recipients(top),
        lines={str(key): top.line_of(str(key)) for key in top.data},
    )
    hold_durability(config, ledger)
    if problems:
        raise ConfigError(problems)
    return config
