"""``statusmail.yaml``: loaded, validated, resolved against its folder, env applied.

Each section is a dataclass whose defaults are the only place a default is written, and
a small parser that reads that section, recording a ``file:line`` problem per bad key.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from statusmail.errors import ConfigError, InputError, Problem
from statusmail.project.fields import Fields
from statusmail.project.publishing import PublishSettings, parse_publish
from statusmail.project.tokens import MIN_SECRET_BYTES, Keyring
from statusmail.project.yamlfile import load_yaml

DEFAULT_CONFIG_NAME = "statusmail.yaml"
TRANSPORTS = ("maildir", "smtp")
SECURITIES = ("starttls", "tls", "none")
DEV_UNSUBSCRIBE_SECRET = "statusmail-DEVELOPMENT-secret-do-not-use-in-production"
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
class SmtpSettings:
    host: str = "localhost"
    port: int = 587
    security: str = "starttls"  # starttls | tls | none
    username: str | None = None
    password_env: str = "STATUSMAIL_SMTP_PASSWORD"
    timeout: float = 30.0
    # A CA bundle to trust instead of the system's (tests, private relays).
    ca_file: Path | None = None
    # The relay's per-session limit: a connection starts a new session after this many
    # messages. None: learnt from the relay's first "too many" reply.
    max_messages_per_connection: int | None = None

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"

    def password(self, environ: Mapping[str, str] | None = None) -> str | None:
        return read_secret(self.password_env, environ)


@dataclass(frozen=True)
class SendingSettings:
    rate: float = 20.0  # messages per second, all connections together; 0 = unlimited
    concurrency: int = 4
    max_attempts: int = 5
    max_per_hour: int | None = None
    stop_after_failures: float = 0.2
    # Backoff between attempts of one recipient (seconds); tests shorten it.
    retry_initial: float = 1.0
    retry_max: float = 60.0
    # A re-selection that would drop more than this share of the pending recipients
    # because they left the list is refused unless --accept-removals.
    max_removed_share: float = 0.1
    # How long a sender holds the recipients it took before another may take them
    # (seconds; renewed while it works): what a crashed sender delays, at most.
    lease: float = 15.0
    # Sender processes on this host sharing the run (None: the cores available).
    processes: int | None = None


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
class ImapSettings:
    """The IMAP mailbox ``statusmail feedback`` reads bounces from."""

    host: str = "localhost"
    port: int = 993  # 143 unless security is tls
    security: str = "tls"  # tls | starttls | none
    username: str = ""
    password_env: str = "STATUSMAIL_IMAP_PASSWORD"
    folder: str = "INBOX"
    timeout: float = 30.0
    ca_file: Path | None = None  # trust this CA bundle instead of the system's

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"

    def password(self, environ: Mapping[str, str] | None = None) -> str | None:
        return read_secret(self.password_env, environ)


def imap_password_problem(config: Config) -> Problem:
    """The one line an unset IMAP password gets, in check and feedback alike."""
    imap = config.bounces.imap
    assert imap is not None
    return Problem(
        config.path,
        config.line("bounces"),
        f"${imap.password_env} is not set: the IMAP mailbox {imap.server} needs its "
        f"password (in ${imap.password_env}, a file named by ${imap.password_env}_FILE, "
        "or a systemd credential of that name)",
        code="secret-missing",
    )


@dataclass(frozen=True)
class BounceSettings:
    """The VERP return path, the mailbox bounces come back to, and the bounce policy."""

    address: str | None = None  # bounces@startmail.example → bounces+<token>@startmail.example
    delimiter: str = "+"  # between the local part and the token (Postfix recipient_delimiter)
    maildir: Path | None = None
    imap: ImapSettings | None = None
    processed: str = "processed"  # the folder handled reports move to
    soft_limit: int = 3  # soft bounces (counted once a day) that suppress an address...
    soft_window_days: int = 14  # ...when they fall within this many days
    interval: float = 300.0  # seconds between the passes watch makes
    # Act on reports that prove nothing (no VERP token, no Message-ID of statusmail's),
    # by the addresses they name: only for a statusmail without a VERP return path.
    trust_unsigned: bool = False
    # The storm guard: when more than this share of one receiving domain's recipients of
    # an entry bounce for one cause (and at least storm_minimum addresses), nothing of
    # that domain and cause is applied until feedback --release-held DOMAIN.
    storm_share: float = 0.05
    storm_minimum: int = 20

    def return_path(self, token: str) -> str | None:
        if not self.address:
            return None
        local, _, domain = self.address.rpartition("@")
        return f"{local}{self.delimiter}{token}@{domain}"


@dataclass(frozen=True)
class SesWebhook:
    """Amazon SES through SNS: only notifications of these topics are taken."""

    topic_arns: tuple[str, ...]


@dataclass(frozen=True)
class PostmarkWebhook:
    """Postmark signs nothing: its webhook URL carries HTTP basic auth."""

    username: str
    password_env: str = "STATUSMAIL_POSTMARK_WEBHOOK_PASSWORD"


@dataclass(frozen=True)
class MailgunWebhook:
    signing_key_env: str = "STATUSMAIL_MAILGUN_SIGNING_KEY"
    max_age: float = 300.0  # seconds: an older signed timestamp is refused


@dataclass(frozen=True)
class SendgridWebhook:
    # The verification key SendGrid shows (base64 DER), from a secret or from the config.
    public_key_env: str = "STATUSMAIL_SENDGRID_PUBLIC_KEY"
    public_key: str | None = None


@dataclass(frozen=True)
class WebhookSettings:
    """The providers whose bounce webhooks ``serve`` answers; None: not served."""

    ses: SesWebhook | None = None
    postmark: PostmarkWebhook | None = None
    mailgun: MailgunWebhook | None = None
    sendgrid: SendgridWebhook | None = None

    @property
    def served(self) -> bool:
        """Whether any provider's webhook is configured."""
        return any((self.ses, self.postmark, self.mailgun, self.sendgrid))


@dataclass(frozen=True)
class DkimSettings:
    domain: str
    selector: str
    key_file: Path  # RSA, PEM
    # An Ed25519 key (RFC 8463) signs each message a second time, under its own selector.
    ed25519_key_file: Path | None = None
    ed25519_selector: str | None = None


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
        """The token keys and whether they are the development stand-in.

        The stand-in is used only when no unsubscribe secret is set at all (no variable,
        file or credential, and no retired secrets either), and only for the maildir
        outbox; real delivery needs the secret (see ``read_secret``). A variable set but
        empty is an error, not "unset". With ``announce`` (once, where a command starts
        and its checks do not say it already), using the stand-in logs a warning
        (``dev_secret``).
        """
        env = os.environ if environ is None else environ
        settings = self.unsubscribe
        secret = read_secret(settings.secret_env, env)
        retired = read_secret(settings.previous_secrets_env, env) or ""
        previous = tuple(part.strip().encode() for part in retired.split(",") if part.strip())
        if secret:
            return Keyring(secret.encode(), previous, settings.legacy_tokens_until), False
        name = f"${settings.secret_env}"
        if settings.secret_env in env:
            reason = "is set but empty: give it the secret, or unset it"
        elif previous:
            reason = f"is not set but ${settings.previous_secrets_env} is: set the current secret"
        elif self.transport == "smtp":
            reason = "is not set; real delivery needs the unsubscribe secret from the environment"
        else:
            if announce:
                logging.getLogger("statusmail").warning(
                    "%s is not set: the published development unsubscribe secret signs "
                    "every link (for the maildir outbox only: anyone can forge its tokens)",
                    name,
                    extra={"event": "dev_secret"},
                )
            dev = Keyring(DEV_UNSUBSCRIBE_SECRET.encode(), (), settings.legacy_tokens_until)
            return dev, True
        line = self.line("unsubscribe")
        raise ConfigError([Problem(self.path, line, f"{name} {reason}", code="secret-missing")])

    def with_overrides(
        self, *, rate: float | None = None, concurrency: int | None = None
    ) -> Config:
        sending = self.sending
        if rate is not None:
            sending = replace(sending, rate=rate)
        if concurrency is not None:
            sending = replace(sending, concurrency=concurrency)
        return replace(self, sending=sending)


def read_secret(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """A secret by the name of its variable: ``$NAME``, else the file ``$NAME_FILE`` names,
    else ``$CREDENTIALS_DIRECTORY/NAME`` (systemd's ``LoadCredential=``); None if none is
    set (an empty variable counts as unset). ``$NAME`` and ``$NAME_FILE`` both set is an
    error, as is an empty file. A file's trailing line break is not part of the secret."""
    env = os.environ if environ is None else environ
    value, file = env.get(name), env.get(f"{name}_FILE")
    if value and file:
        raise ConfigError(
            [
                Problem(
                    f"${name}",
                    None,
                    f"both it and ${name}_FILE are set: unset one of them",
                    code="bad-value",
                )
            ]
        )
    if value:
        return value
    if file:
        return _secret_file(Path(file), f"${name}_FILE")
    credentials = env.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / name).exists():
        return _secret_file(Path(credentials) / name, "$CREDENTIALS_DIRECTORY")
    return None


def _secret_file(path: Path, source: str) -> str:
    try:
        secret = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(
            [
                Problem(
                    path,
                    None,
                    f"cannot read the secret {source} names: {reason}",
                    code="unreadable-file",
                )
            ]
        ) from exc
    if not secret.strip():
        raise ConfigError(
            [Problem(path, None, f"the secret file {source} names is empty", code="secret-missing")]
        )
    return secret


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


def _address(f: Fields, key: str, value: str) -> None:
    if value and "@" not in value:
        f.problem(f.line_of(key), f"{f.name(key)!r} is not an email address")


def parse_test_recipients(f: Fields) -> frozenset[str]:
    addresses = f.text_list("test_recipients") or []
    for address in addresses:
        if "@" not in address:
            f.problem(
                f.line_of("test_recipients"), f"test_recipients: {address!r} is not an address"
            )
    return frozenset(address.lower() for address in addresses)


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


def parse_smtp(
    f: Fields, root: Path, env: Mapping[str, str], problems: list[Problem]
) -> SmtpSettings:
    d = SmtpSettings()
    f.unknown_keys(set(d.__dataclass_fields__))
    ca_file = f.optional_text("ca_file")
    smtp = SmtpSettings(
        host=env.get("STATUSMAIL_SMTP_HOST") or f.text("host", d.host),
        port=f.integer("port", d.port, minimum=1, maximum=65535),
        security=f.choice("security", SECURITIES, d.security),
        username=f.optional_text("username"),
        password_env=f.text("password_env", d.password_env),
        timeout=f.number("timeout", d.timeout, minimum=0.001),
        ca_file=root / ca_file if ca_file else None,
        max_messages_per_connection=f.optional_integer("max_messages_per_connection"),
    )
    raw_port = env.get("STATUSMAIL_SMTP_PORT", "").strip()
    if raw_port:
        if raw_port.isdigit() and 1 <= int(raw_port) <= 65535:
            smtp = replace(smtp, port=int(raw_port))
        else:
            problems.append(
                Problem(
                    "$STATUSMAIL_SMTP_PORT",
                    None,
                    f"{raw_port!r} is not a port (1-65535)",
                    code="bad-value",
                )
            )
    security = env.get("STATUSMAIL_SMTP_SECURITY", "")
    if security:
        if security not in SECURITIES:
            problems.append(
                Problem(
                    "$STATUSMAIL_SMTP_SECURITY",
                    None,
                    f"must be one of {SECURITIES}",
                    code="bad-value",
                )
            )
        else:
            smtp = replace(smtp, security=security)
    return smtp


def _share(f: Fields, key: str, default: float) -> float:
    value = f.number(key, default)
    if value > 1:
        f.problem(f.line_of(key), f"{f.name(key)!r} must be a share from 0 to 1")
        return default
    return value


def parse_sending(f: Fields) -> SendingSettings:
    d = SendingSettings()
    f.unknown_keys(set(d.__dataclass_fields__))
    return SendingSettings(
        rate=f.number("rate", d.rate),
        concurrency=f.integer("concurrency", d.concurrency, minimum=1),
        max_attempts=f.integer("max_attempts", d.max_attempts, minimum=1),
        max_per_hour=f.optional_integer("max_per_hour"),
        stop_after_failures=_share(f, "stop_after_failures", d.stop_after_failures),
        retry_initial=f.number("retry_initial", d.retry_initial),
        retry_max=f.number("retry_max", d.retry_max),
        max_removed_share=_share(f, "max_removed_share", d.max_removed_share),
        lease=f.number("lease", d.lease, minimum=1),
        processes=f.optional_integer("processes"),
    )


def parse_unsubscribe(f: Fields) -> UnsubscribeSettings:
    d = UnsubscribeSettings()
    f.unknown_keys(set(d.__dataclass_fields__))
    unsubscribe = UnsubscribeSettings(
        url=f.line_text("url", required=True),
        mailto=f.line_text("mailto", required=True),
        secret_env=f.text("secret_env", d.secret_env),
        previous_secrets_env=f.text("previous_secrets_env", d.previous_secrets_env),
        legacy_tokens_until=f.date("legacy_tokens_until"),
    )
    url = unsubscribe.url
    if url and (not url.startswith("https://") or "{token}" not in url):
        f.problem(f.line_of("url"), "'unsubscribe.url' must be an https URL containing {token}")
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


def parse_imap(f: Fields, root: Path) -> ImapSettings:
    d = ImapSettings()
    f.unknown_keys(set(d.__dataclass_fields__))
    security = f.choice("security", SECURITIES, d.security)
    ca_file = f.optional_text("ca_file")
    return ImapSettings(
        host=f.text("host", required=True),
        port=f.integer("port", 993 if security == "tls" else 143, minimum=1, maximum=65535),
        security=security,
        username=f.text("username", required=True),
        password_env=f.text("password_env", d.password_env),
        folder=f.text("folder", d.folder),
        timeout=f.number("timeout", d.timeout, minimum=0.001),
        ca_file=root / ca_file if ca_file else None,
    )


def parse_bounces(f: Fields, root: Path) -> BounceSettings:
    d = BounceSettings()
    f.unknown_keys(set(d.__dataclass_fields__))
    address = f.line_text("address") or None
    delimiter = f.text("delimiter", d.delimiter)
    if address is not None:
        local, at, domain = address.rpartition("@")
        if not at or not local or not domain or not address.isascii() or " " in address:
            f.problem(f.line_of("address"), "'bounces.address' is not an ASCII email address")
        elif delimiter in local:
            f.problem(
                f.line_of("address"),
                f"'bounces.address' must not hold the delimiter {delimiter!r} in its local part",
            )
    if len(delimiter) != 1 or delimiter.isalnum() or delimiter in '@"<>()[],;: \t':
        f.problem(f.line_of("delimiter"), "'bounces.delimiter' must be one character like + or -")
    maildir = f.optional_text("maildir")
    processed = f.text("processed", d.processed)
    if not processed or any(ch in processed for ch in "/.\\"):
        f.problem(f.line_of("processed"), "'bounces.processed' must be a plain folder name")
    return BounceSettings(
        address=address,
        delimiter=delimiter,
        maildir=root / maildir if maildir else None,
        imap=parse_imap(f.sub("imap"), root) if f.has("imap") else None,
        processed=processed,
        soft_limit=f.integer("soft_limit", d.soft_limit, minimum=1),
        soft_window_days=f.integer("soft_window_days", d.soft_window_days, minimum=1),
        interval=f.number("interval", d.interval, minimum=1),
        trust_unsigned=f.boolean("trust_unsigned", d.trust_unsigned),
        storm_share=_share(f, "storm_share", d.storm_share),
        storm_minimum=f.integer("storm_minimum", d.storm_minimum, minimum=1),
    )


def parse_webhooks(f: Fields) -> WebhookSettings:
    f.unknown_keys(set(WebhookSettings.__dataclass_fields__))
    ses = postmark = mailgun = sendgrid = None
    if f.has("ses"):
        g = f.sub("ses")
        g.unknown_keys({"topic_arns"})
        arns = tuple(g.text_list("topic_arns") or ())
        if not arns:
            g.problem(g.line_of("topic_arns"), f"missing {g.name('topic_arns')!r}", "missing-field")
        for arn in arns:
            if not arn.startswith(("arn:aws:sns:", "arn:aws-cn:sns:", "arn:aws-us-gov:sns:")):
                g.problem(g.line_of("topic_arns"), f"{arn!r} is not the ARN of an SNS topic")
        ses = SesWebhook(topic_arns=arns)
    if f.has("postmark"):
        g = f.sub("postmark")
        g.unknown_keys(set(PostmarkWebhook.__dataclass_fields__))
        postmark = PostmarkWebhook(
            username=g.line_text("username", required=True),
            password_env=g.text("password_env", PostmarkWebhook.password_env),
        )
    if f.has("mailgun"):
        g = f.sub("mailgun")
        g.unknown_keys(set(MailgunWebhook.__dataclass_fields__))
        mailgun = MailgunWebhook(
            signing_key_env=g.text("signing_key_env", MailgunWebhook.signing_key_env),
            max_age=g.number("max_age", MailgunWebhook.max_age, minimum=1),
        )
    if f.has("sendgrid"):
        g = f.sub("sendgrid")
        g.unknown_keys(set(SendgridWebhook.__dataclass_fields__))
        sendgrid = SendgridWebhook(
            public_key_env=g.text("public_key_env", SendgridWebhook.public_key_env),
            public_key=g.optional_text("public_key"),
        )
    return WebhookSettings(ses=ses, postmark=postmark, mailgun=mailgun, sendgrid=sendgrid)


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


def parse_dkim(f: Fields, root: Path) -> DkimSettings:
    f.unknown_keys({"domain", "selector", "key_file", "ed25519_key_file", "ed25519_selector"})
    selector = f.text("selector", required=True)
    ed25519_file = f.optional_text("ed25519_key_file")
    ed25519_selector = f.optional_text("ed25519_selector")
    if (ed25519_file is None) != (ed25519_selector is None):
        given, missing = ("ed25519_key_file", "ed25519_selector")[:: 1 if ed25519_file else -1]
        f.problem(f.line_of(given), f"{f.name(given)!r} needs {f.name(missing)!r} too")
    elif ed25519_selector is not None and ed25519_selector == selector:
        f.problem(
            f.line_of("ed25519_selector"),
            f"{f.name('ed25519_selector')!r} must differ from {f.name('selector')!r} "
            "(each key has a DNS record of its own)",
        )
    return DkimSettings(
        domain=f.text("domain", required=True),
        selector=selector,
        key_file=root / f.text("key_file", required=True),
        ed25519_key_file=root / ed25519_file if ed25519_file else None,
        ed25519_selector=ed25519_selector,
    )


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
        list_id=top.line_text("list_id", required=True),
        paths=parse_paths(top.sub("paths"), root, env),
        unsubscribe=unsubscribe,
        reply_to=reply_to,
        transport=parse_transport(top, env, problems),
        smtp=parse_smtp(top.sub("smtp"), root, env, problems),
        sending=parse_sending(top.sub("sending")),
        ledger=parse_ledger(ledger),
        serve=parse_serve(top.sub("serve")),
        dkim=parse_dkim(top.sub("dkim"), root) if top.has("dkim") else None,
        default_locale_by_region={
            str(region).upper(): str(locale)
            for region, locale in top.sub("default_locale_by_region").data.items()
        },
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


def secret_length_problem(config: Config, keys: Keyring, is_dev: bool) -> Problem | None:
    """A secret someone could guess makes every link forgeable: at least 32 bytes."""
    if is_dev or len(keys.secret) >= MIN_SECRET_BYTES:
        return None
    return Problem(
        config.path,
        config.line("unsubscribe"),
        f"${config.unsubscribe.secret_env} is {len(keys.secret)} bytes; it must be at least "
        f"{MIN_SECRET_BYTES} (e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))')",
        code="secret-short",
    )
