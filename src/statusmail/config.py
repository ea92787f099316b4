"""``statusmail.yaml``: loaded, validated, resolved against its folder, env applied."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from statusmail.errors import ConfigError, InputError, Problem
from statusmail.fields import Fields
from statusmail.yamlfile import load_yaml

DEFAULT_CONFIG_NAME = "statusmail.yaml"
TRANSPORTS = ("maildir", "smtp")
SECURITIES = ("starttls", "tls", "none")
DEV_UNSUBSCRIBE_SECRET = "statusmail-DEVELOPMENT-secret-do-not-use-in-production"


@dataclass(frozen=True)
class Sender:
    name: str
    address: str


@dataclass(frozen=True)
class Paths:
    updates: Path
    subscribers: Path
    templates: Path
    regions: Path
    ledger: Path
    outbox: Path


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

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"

    def password(self, environ: Mapping[str, str] | None = None) -> str | None:
        return (os.environ if environ is None else environ).get(self.password_env)


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


@dataclass(frozen=True)
class UnsubscribeSettings:
    url: str
    mailto: str
    secret_env: str = "STATUSMAIL_UNSUBSCRIBE_SECRET"


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8080


@dataclass(frozen=True)
class DkimSettings:
    domain: str
    selector: str
    key_file: Path


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
    serve: ServeSettings = field(default_factory=ServeSettings)
    dkim: DkimSettings | None = None
    default_locale_by_region: Mapping[str, str] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.path.parent

    def unsubscribe_secret(self, environ: Mapping[str, str] | None = None) -> tuple[bytes, bool]:
        """The HMAC secret and whether it is the development stand-in.

        The stand-in is allowed only for the maildir outbox; real delivery needs the
        secret from the environment.
        """
        env = os.environ if environ is None else environ
        secret = env.get(self.unsubscribe.secret_env)
        if secret:
            return secret.encode(), False
        if self.transport == "smtp":
            raise ConfigError(
                [
                    Problem(
                        self.path,
                        None,
                        f"${self.unsubscribe.secret_env} is not set; "
                        "real delivery needs the unsubscribe secret from the environment",
                    )
                ]
            )
        return DEV_UNSUBSCRIBE_SECRET.encode(), True

    def with_overrides(
        self, *, rate: float | None = None, concurrency: int | None = None
    ) -> Config:
        sending = self.sending
        if rate is not None:
            sending = replace(sending, rate=rate)
        if concurrency is not None:
            sending = replace(sending, concurrency=concurrency)
        return replace(self, sending=sending)


def find_config(option: str | Path | None, environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if option:
        return Path(option)
    if env.get("STATUSMAIL_CONFIG"):
        return Path(env["STATUSMAIL_CONFIG"])
    return Path(DEFAULT_CONFIG_NAME)


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Load and validate the config; raise ``ConfigError`` listing every problem."""
    env = os.environ if environ is None else environ
    path = path.absolute()
    if not path.is_file():
        raise ConfigError([Problem(path, None, "config file not found")])
    try:
        data = load_yaml(path)
    except InputError as exc:
        raise ConfigError(exc.problems) from exc
    problems: list[Problem] = []
    top = Fields(path, data, problems, "")
    top.unknown_keys(
        {
            "sender",
            "reply_to",
            "list_id",
            "paths",
            "transport",
            "smtp",
            "sending",
            "unsubscribe",
            "serve",
            "dkim",
            "default_locale_by_region",
        }
    )
    root = path.parent

    sender_f = top.sub("sender")
    sender = Sender(
        name=sender_f.line_text("name", required=True),
        address=sender_f.line_text("address", required=True),
    )
    if sender.address and "@" not in sender.address:
        sender_f.problem(sender_f.line_of("address"), "'sender.address' is not an email address")

    paths_f = top.sub("paths")
    paths_f.unknown_keys({"updates", "subscribers", "templates", "regions", "ledger", "outbox"})

    def p(key: str, default: str) -> Path:
        return root / paths_f.text(key, default)

    paths = Paths(
        updates=p("updates", "updates"),
        subscribers=p("subscribers", "subscribers"),
        templates=p("templates", "templates"),
        regions=p("regions", "regions.yaml"),
        ledger=p("ledger", "statusmail.db"),
        outbox=p("outbox", "outbox"),
    )

    smtp_f = top.sub("smtp")
    smtp_f.unknown_keys(
        {"host", "port", "security", "username", "password_env", "timeout", "ca_file"}
    )
    ca_file = smtp_f.optional_text("ca_file")
    smtp = SmtpSettings(
        host=env.get("STATUSMAIL_SMTP_HOST") or smtp_f.text("host", "localhost"),
        port=smtp_f.integer("port", 587, minimum=1, maximum=65535),
        security=smtp_f.choice("security", SECURITIES, "starttls"),
        username=smtp_f.optional_text("username"),
        password_env=smtp_f.text("password_env", "STATUSMAIL_SMTP_PASSWORD"),
        timeout=smtp_f.number("timeout", 30.0, minimum=0.001),
        ca_file=root / ca_file if ca_file else None,
    )
    if env.get("STATUSMAIL_SMTP_PORT"):
        raw_port = env["STATUSMAIL_SMTP_PORT"].strip()
        if raw_port.isdigit() and 1 <= int(raw_port) <= 65535:
            smtp = replace(smtp, port=int(raw_port))
        else:
            problems.append(
                Problem("$STATUSMAIL_SMTP_PORT", None, f"{raw_port!r} is not a port (1-65535)")
            )
    if env.get("STATUSMAIL_SMTP_SECURITY"):
        if env["STATUSMAIL_SMTP_SECURITY"] not in SECURITIES:
            problems.append(
                Problem("$STATUSMAIL_SMTP_SECURITY", None, f"must be one of {SECURITIES}")
            )
        else:
            smtp = replace(smtp, security=env["STATUSMAIL_SMTP_SECURITY"])

    sending_f = top.sub("sending")
    sending_f.unknown_keys(
        {
            "rate",
            "concurrency",
            "max_attempts",
            "max_per_hour",
            "stop_after_failures",
            "retry_initial",
            "retry_max",
        }
    )
    stop_after = sending_f.number("stop_after_failures", 0.2)
    if stop_after > 1:
        sending_f.problem(sending_f.line_of("stop_after_failures"), "must be a share from 0 to 1")
    sending = SendingSettings(
        rate=sending_f.number("rate", 20.0),
        concurrency=sending_f.integer("concurrency", 4, minimum=1),
        max_attempts=sending_f.integer("max_attempts", 5, minimum=1),
        max_per_hour=sending_f.optional_integer("max_per_hour"),
        stop_after_failures=stop_after,
        retry_initial=sending_f.number("retry_initial", 1.0),
        retry_max=sending_f.number("retry_max", 60.0),
    )

    unsub_f = top.sub("unsubscribe")
    unsubscribe = UnsubscribeSettings(
        url=unsub_f.line_text("url", required=True),
        mailto=unsub_f.line_text("mailto", required=True),
        secret_env=unsub_f.text("secret_env", "STATUSMAIL_UNSUBSCRIBE_SECRET"),
    )
    if unsubscribe.url and (
        not unsubscribe.url.startswith("https://") or "{token}" not in unsubscribe.url
    ):
        unsub_f.problem(
            unsub_f.line_of("url"), "'unsubscribe.url' must be an https URL containing {token}"
        )

    serve_f = top.sub("serve")
    serve = ServeSettings(
        host=serve_f.text("host", "127.0.0.1"), port=serve_f.integer("port", 8080, minimum=1)
    )

    dkim = None
    if top.has("dkim"):
        dkim_f = top.sub("dkim")
        dkim = DkimSettings(
            domain=dkim_f.text("domain", required=True),
            selector=dkim_f.text("selector", required=True),
            key_file=root / dkim_f.text("key_file", required=True),
        )

    locales_f = top.sub("default_locale_by_region")
    default_locales = {
        str(region).upper(): str(locale) for region, locale in locales_f.data.items()
    }

    list_id = top.line_text("list_id", required=True)
    reply_to = top.line_text("reply_to") or None
    if reply_to and "@" not in reply_to:
        top.problem(top.line_of("reply_to"), "'reply_to' is not an email address")
    transport = top.text("transport", "maildir")
    if transport not in TRANSPORTS:
        top.problem(
            top.line_of("transport"),
            f"transport is {transport!r}; expected one of {', '.join(TRANSPORTS)}",
        )
    if env.get("STATUSMAIL_TRANSPORT"):
        transport = env["STATUSMAIL_TRANSPORT"].strip()
        if transport not in TRANSPORTS:
            problems.append(
                Problem(
                    "$STATUSMAIL_TRANSPORT",
                    None,
                    f"{transport!r} is not a transport; expected one of {', '.join(TRANSPORTS)}",
                )
            )
    if problems:
        raise ConfigError(problems)
    return Config(
        path=path,
        sender=sender,
        reply_to=reply_to,
        list_id=list_id,
        paths=paths,
        transport=transport,
        smtp=smtp,
        sending=sending,
        unsubscribe=unsubscribe,
        serve=serve,
        dkim=dkim,
        default_locale_by_region=default_locales,
    )
