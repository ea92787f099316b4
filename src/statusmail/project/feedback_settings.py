"""``statusmail.yaml``'s ``bounces`` and ``webhooks`` sections: the VERP return path, the
mailbox bounces come back to (IMAP or a Maildir), the bounce policy, and the providers
whose webhooks ``serve`` answers; each a dataclass and the parser of that section."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from statusmail.project.fields import Fields
from statusmail.project.sending import SECURITIES, LoginServer, on_this_host, share


@dataclass(frozen=True)
class ImapSettings(LoginServer):
    """The IMAP mailbox ``statusmail feedback`` reads bounces from."""

    host: str = "localhost"
    port: int = 993  # 143 unless security is tls
    security: str = "tls"  # tls | starttls | none
    username: str = ""
    password_env: str = "STATUSMAIL_IMAP_PASSWORD"
    folder: str = "INBOX"
    timeout: float = 30.0
    ca_file: Path | None = None  # trust this CA bundle instead of the system's


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


def parse_imap(f: Fields, root: Path) -> ImapSettings:
    d = ImapSettings()
    f.unknown_keys(set(d.__dataclass_fields__))
    security = f.choice("security", SECURITIES, d.security)
    ca_file = f.optional_text("ca_file")
    host = f.text("host", required=True)
    if security == "none" and host and not on_this_host(host):
        f.problem(
            f.line_of("security"),
            f"{f.name('security')!r} is none: the mailbox's password would cross the network"
            f" to {host} unencrypted; use tls or starttls (none is for a server on this host)",
        )
    return ImapSettings(
        host=host,
        port=f.integer("port", 993 if security == "tls" else 143, minimum=1, maximum=65535),
        security=security,
        username=f.text("username", required=True),
        password_env=f.variable("password_env", d.password_env),
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
        storm_share=share(f, "storm_share", d.storm_share),
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
            password_env=g.variable("password_env", PostmarkWebhook.password_env),
        )
    if f.has("mailgun"):
        g = f.sub("mailgun")
        g.unknown_keys(set(MailgunWebhook.__dataclass_fields__))
        mailgun = MailgunWebhook(
            signing_key_env=g.variable("signing_key_env", MailgunWebhook.signing_key_env),
            max_age=g.number("max_age", MailgunWebhook.max_age, minimum=1),
        )
    if f.has("sendgrid"):
        g = f.sub("sendgrid")
        g.unknown_keys(set(SendgridWebhook.__dataclass_fields__))
        sendgrid = SendgridWebhook(
            public_key_env=g.variable("public_key_env", SendgridWebhook.public_key_env),
            public_key=g.optional_text("public_key"),
        )
    return WebhookSettings(ses=ses, postmark=postmark, mailgun=mailgun, sendgrid=sendgrid)
