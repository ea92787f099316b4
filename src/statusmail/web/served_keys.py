"""The keys ``serve`` opens tokens with, read again when the secrets may have changed:
on SIGHUP, and when a token none of them opens (at most once a second), so that a
secret file replaced in place (a Kubernetes secret volume, a credential) is taken
without a restart. Links mailed with a secret ``watch`` read a moment ago opened with
400 until ``serve`` was restarted (review)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from statusmail.errors import ConfigError
from statusmail.project.tokens import Keyring

log = logging.getLogger("statusmail.serve")

REREAD_EVERY = 1.0  # seconds between two readings caused by tokens no key opened


class ServedKeys:
    """The current keyring (``keys``), and ``load`` to read it again."""

    def __init__(self, keys: Keyring, load: Callable[[], Keyring] | None = None) -> None:
        self.keys = keys
        self._load = load
        self._lock = threading.Lock()
        self._read_at = time.monotonic()

    def reload(self) -> bool:
        """Read the secrets again; True when they changed. Secrets that cannot be read,
        or too weak ones, leave the keys in use as they are, saying why."""
        if self._load is None or not self._lock.acquire(blocking=False):
            return False  # (none to read, or a reading is under way: it takes the files)
        try:
            self._read_at = time.monotonic()
            try:
                keys = self._load()
            except ConfigError as exc:
                log.error(
                    "cannot read the unsubscribe secrets again; still using the ones read "
                    "before: %s",
                    exc,
                    extra={"event": "secrets_unreadable"},
                )
                return False
            if (keys.secret, keys.previous) == (self.keys.secret, self.keys.previous):
                return False
            self.keys = keys
        finally:
            self._lock.release()
        log.info("the unsubscribe secrets changed: using them", extra={"event": "secrets_read"})
        return True

    def after_refusal(self) -> Keyring | None:
        """After a token no key opened: the keys, if reading them again changed them
        (once a second at most, whoever sends bad tokens); else None."""
        if self._load is None or time.monotonic() - self._read_at < REREAD_EVERY:
            return None
        return self.keys if self.reload() else None
