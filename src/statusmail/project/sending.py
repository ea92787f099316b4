"""``statusmail.yaml``'s sections about sending: the SMTP relay (``smtp``), the pace and
limits of a run (``sending``) and the DKIM keys (``dkim``), each a dataclass whose
defaults are the only place a default is written, and the parser of that section."""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from statusmail.errors import Problem
from statusmail.project.fields import Fields
from statusmail.project.secrets import read_secret

if TYPE_CHECKING:
    from statusmail.project.config import Config

SECURITIES = ("starttls", "tls", "none")


class LoginServer:
    """What the SMTP relay's and the IMAP mailbox's settings share: ``host:port`` as logs
    and errors name it, and the password read from the variable (or file) they name."""

    host: str
    port: int
    password_env: str

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"

    def password(self, environ: Mapping[str, str] | None = None) -> str | None:
        return read_secret(self.password_env, environ)


@dataclass(frozen=True)
class SmtpSettings(LoginServer):
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
    # MAIL, RCPT and DATA in one write when the relay offers PIPELINING (RFC 2920);
    # False: one command at a time, for a relay (or a proxy before it) that offers it
    # and gets it wrong.
    pipelining: bool = True


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
class DkimSettings:
    domain: str
    selector: str
    key_file: Path  # RSA, PEM
    # An Ed25519 key (RFC 8463) signs each message a second time, under its own selector.
    ed25519_key_file: Path | None = None
    ed25519_selector: str | None = None


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
        password_env=f.variable("password_env", d.password_env),
        timeout=f.number("timeout", d.timeout, minimum=0.001),
        ca_file=root / ca_file if ca_file else None,
        max_messages_per_connection=f.optional_integer("max_messages_per_connection"),
        pipelining=f.boolean("pipelining", d.pipelining),
    )
    raw_port = env.get("STATUSMAIL_SMTP_PORT", "").strip()
    if raw_port:
        if raw_port.isascii() and raw_port.isdigit() and 1 <= int(raw_port) <= 65535:
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
    if smtp.username is not None and smtp.security == "none" and not on_this_host(smtp.host):
        problems.append(
            Problem(
                "$STATUSMAIL_SMTP_SECURITY" if security else f.path,
                None if security else f.line_of("security"),
                f"smtp.username is set and smtp.security is none: the password would cross"
                f" the network to {smtp.host} unencrypted; use starttls or tls (none is for"
                " a relay on this host)",
                code="bad-value",
            )
        )
    return smtp


def on_this_host(host: str) -> bool:
    """Whether ``host`` names this machine (a loopback address or localhost)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def share(f: Fields, key: str, default: float) -> float:
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
        stop_after_failures=share(f, "stop_after_failures", d.stop_after_failures),
        retry_initial=f.number("retry_initial", d.retry_initial),
        retry_max=f.number("retry_max", d.retry_max),
        max_removed_share=share(f, "max_removed_share", d.max_removed_share),
        lease=f.number("lease", d.lease, minimum=1),
        processes=f.optional_integer("processes"),
    )


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


def ca_file_problems(config: Config) -> list[Problem]:
    """The CA bundles the relay and the bounce mailbox are to trust, loaded as their
    connections will load them: a missing or broken one is said by ``check`` and before
    a run starts, at the config's line, not when the first connection is made."""
    wanted = []
    if config.transport == "smtp" and config.smtp.security != "none":
        wanted.append(("smtp", config.smtp.ca_file))
    imap = config.bounces.imap
    if imap is not None and imap.security != "none":
        wanted.append(("bounces", imap.ca_file))
    problems: list[Problem] = []
    for section, path in wanted:
        if path is None:
            continue
        try:
            ssl.create_default_context(cafile=str(path))
        except OSError as exc:  # (ssl.SSLError is one too)
            said = exc.strerror or str(exc)
            problems.append(
                Problem(
                    config.path,
                    config.line(section),
                    f"{section} ca_file: cannot load the CA file {path}: {said}",
                    code="missing-file" if isinstance(exc, FileNotFoundError) else "bad-value",
                )
            )
    return problems
