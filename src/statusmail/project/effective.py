"""``statusmail config``: the configuration in force, each value with where it came from.

A value comes from the environment (the variables that override a key), from the file
(``statusmail.yaml:12``) or is the default. A secret is never shown: only whether it is
set, and where statusmail looks for it (``$NAME``, ``$NAME_FILE`` or a systemd
credential, see ``secrets.read_secret``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from statusmail.project.config import Config, is_url
from statusmail.project.secrets import read_secret
from statusmail.project.yamlfile import line_of, load_yaml

# The variables that override a key of the file (each read where its section is parsed).
ENV_OVERRIDES = {
    "paths.ledger": "STATUSMAIL_LEDGER",
    "smtp.host": "STATUSMAIL_SMTP_HOST",
    "smtp.port": "STATUSMAIL_SMTP_PORT",
    "smtp.security": "STATUSMAIL_SMTP_SECURITY",
    "transport": "STATUSMAIL_TRANSPORT",
}
# Config fields that are not keys of the file, and the ones the file spells otherwise.
_NOT_KEYS = {"path", "lines"}
_RENAMED = {"preferences_url_setting": "preferences.url"}


@dataclass(frozen=True)
class Setting:
    key: str  # dotted, as in the file: ``smtp.host``
    value: str  # as shown; for a secret "set" or "unset", never the secret
    origin: str  # "statusmail.yaml:12", "$STATUSMAIL_SMTP_HOST" or "default"


def effective(config: Config, environ: Mapping[str, str] | None = None) -> list[Setting]:
    """Every setting of ``config`` in the file's order of sections, secrets as set/unset."""
    env = os.environ if environ is None else environ
    data = load_yaml(config.path)
    return list(_walk(config, "", data, config.path, env))


def _walk(
    obj: Any, prefix: str, data: Any, path: Path, env: Mapping[str, str]
) -> Iterator[Setting]:
    for field in dataclasses.fields(obj):
        if field.name in _NOT_KEYS:
            continue
        key = _RENAMED.get(field.name, prefix + field.name)
        value = getattr(obj, field.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from _walk(value, key + ".", data, path, env)
        elif field.name.endswith("_env") and isinstance(value, str):
            yield Setting(key, f"${value}", _origin(data, key, path, env))
            secret = key.removesuffix("_env")
            found = read_secret(value, env) is not None
            yield Setting(secret, "set" if found else "unset", f"${value}" if found else "-")
        elif key == "paths.ledger" and is_url(str(value)):
            yield Setting(key, _without_password(str(value)), _origin(data, key, path, env))
        else:
            yield Setting(key, _shown(value), _origin(data, key, path, env))


def _lookup(data: Any, keys: list[str]) -> Any:
    for part in keys:
        if not isinstance(data, Mapping) or part not in data:
            return None
        data = data[part]
    return data


def _origin(data: Any, key: str, path: Path, env: Mapping[str, str]) -> str:
    variable = ENV_OVERRIDES.get(key)
    if variable and env.get(variable, "").strip():
        return f"${variable}"
    *parents, last = key.split(".")
    container = _lookup(data, parents) if parents else data
    if isinstance(container, Mapping) and last in container:
        line = line_of(container, last)
        return f"{path.name}:{line}" if line else path.name
    return "default"


_PASSWORD_PARAMETER = re.compile(r"(?i)([?&]password=)[^&]*")


def _without_password(url: str) -> str:
    """A ledger URL as ``config`` shows it: the user name kept, a password (in the URL's
    user part or its ``password=`` parameter) as ``***``."""
    scheme, sep, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    if "@" in authority:
        credentials, _, hosts = authority.rpartition("@")
        user, colon, _ = credentials.partition(":")
        authority = f"{user}{':***' if colon else ''}@{hosts}"
    tail = _PASSWORD_PARAMETER.sub(r"\1***", tail)
    return f"{scheme}{sep}{authority}{slash}{tail}"


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, frozenset | set):
        return ", ".join(sorted(map(str, value)))
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_shown(v)}" for k, v in value.items())
    if isinstance(value, tuple | list):
        return ", ".join(_shown(v) for v in value)
    return str(value)
