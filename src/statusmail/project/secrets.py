"""Secrets: read by the name of their variable (``$NAME``, ``$NAME_FILE`` or a systemd
credential), the unsubscribe token keys made from them, and the problems of a secret
missing or too short."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from statusmail.errors import ConfigError, Problem
from statusmail.project.tokens import MIN_SECRET_BYTES, Keyring

if TYPE_CHECKING:
    from statusmail.project.config import Config

DEV_UNSUBSCRIBE_SECRET = "statusmail-DEVELOPMENT-secret-do-not-use-in-production"


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
    # (lexists: a credential whose link dangles is an error naming it, not "unset")
    if credentials and os.path.lexists(Path(credentials) / name):
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


def keyring(
    config: Config, environ: Mapping[str, str] | None = None, *, announce: bool = False
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
    settings = config.unsubscribe
    secret = read_secret(settings.secret_env, env)
    retired = read_secret(settings.previous_secrets_env, env) or ""
    previous = retired_secrets(retired)
    if secret:
        return Keyring(secret.encode(), previous, settings.legacy_tokens_until), False
    name = f"${settings.secret_env}"
    if settings.secret_env in env:
        reason = "is set but empty: give it the secret, or unset it"
    elif previous:
        reason = f"is not set but ${settings.previous_secrets_env} is: set the current secret"
    elif config.transport == "smtp":
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
    line = config.line("unsubscribe")
    raise ConfigError([Problem(config.path, line, f"{name} {reason}", code="secret-missing")])


def retired_secrets(retired: str) -> tuple[bytes, ...]:
    """The secrets ``$…_PREVIOUS_SECRETS`` lists: separated by commas or line breaks (a
    file may hold one a line), each without surrounding whitespace. The whole value as
    it was read counts too when it is one secret, so that a current secret with a
    trailing line break (an environment variable written from a file, say) still
    verifies its links once it is moved here as it was."""
    parts = [part.strip() for part in retired.replace("\r", "\n").replace(",", "\n").split("\n")]
    found = [part for part in parts if part]
    if len(found) == 1 and retired != found[0]:
        found.append(retired)
    return tuple(dict.fromkeys(part.encode() for part in found))


def secret_length_problem(config: Config, keys: Keyring, is_dev: bool) -> Problem | None:
    """A secret someone could guess makes every link forgeable: at least 32 bytes, and
    not the published development one. A retired secret still verifies tokens, so the
    same holds for each of them (review: a retired secret of 3 bytes, or the
    development one, let anyone unsubscribe anyone)."""
    if is_dev:
        return None
    settings = config.unsubscribe
    named = [(f"${settings.secret_env}", keys.secret)]
    named += [(f"${settings.previous_secrets_env}", secret) for secret in keys.previous]
    for name, secret in named:
        if secret == DEV_UNSUBSCRIBE_SECRET.encode():
            reason = "the published development secret: anyone can forge its tokens"
        elif len(secret) < MIN_SECRET_BYTES:
            reason = f"{len(secret)} bytes; it must be at least {MIN_SECRET_BYTES}"
        else:
            continue
        which = "is" if secret is keys.secret else "holds a secret that is"
        return Problem(
            config.path,
            config.line("unsubscribe"),
            f"{name} {which} {reason} (a new one: python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(32))')",
            code="secret-short",
        )
    return None


def secret_shape_problem(config: Config, keys: Keyring, is_dev: bool) -> Problem | None:
    """A current secret that could not be retired as it is: one holding a comma or a line
    break, or whitespace around it, is read otherwise once listed among the previous
    secrets, and the links it made would stop working at the rotation."""
    text = keys.secret.decode("utf-8", "replace")
    if is_dev or not (text != text.strip() or any(c in text.strip() for c in ",\r\n")):
        return None
    return Problem(
        config.path,
        config.line("unsubscribe"),
        f"${config.unsubscribe.secret_env} holds a comma, a line break or whitespace around "
        f"it: listed in ${config.unsubscribe.previous_secrets_env} beside another secret "
        "at the next rotation, it would be read otherwise and its links would stop working; "
        "choose one without them at that rotation",
        warning=True,
        code="secret-shape",
    )


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
        shape = secret_shape_problem(config, keys, is_dev)
        if shape is not None:
            problems.append(shape)
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


def secret_variables(settings: object) -> set[str]:
    """Every environment variable ``settings`` (a config, or a part of one) reads a
    secret from (its ``*_env`` values), with the ``_FILE`` each may name instead."""
    found: set[str] = set()
    if not dataclasses.is_dataclass(settings) or isinstance(settings, type):
        return found
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if field.name.endswith("_env") and isinstance(value, str) and value:
            found |= {value, f"{value}_FILE"}
        elif isinstance(value, Mapping):
            for item in value.values():
                found |= secret_variables(item)
        else:
            found |= secret_variables(value)
    return found
