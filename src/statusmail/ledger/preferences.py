"""What subscribers chose on the preferences page (their language, their topics), and
the lookup a selection reads them through. ``Preferences`` is this part of ``Ledger``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from statusmail.domain import Preference
from statusmail.ledger import queries
from statusmail.ledger.base import LedgerBase, guarded, now_iso
from statusmail.ledger.database import connect, driver_errors, one_line

# The preferences are read into memory for a selection up to this many; past it, each
# subscriber's is looked up in the ledger (an indexed read), so memory stays flat.
PREFERENCES_IN_MEMORY = 100_000


class Preferences(LedgerBase):
    """Saving and reading the stored preferences."""

    @guarded("save a preference")
    def set_preference(self, address: str, preference: Preference) -> None:
        """Store what was chosen; a field left None keeps what was stored before."""
        topics = None if preference.topics is None else ";".join(sorted(preference.topics))
        with self.transaction():
            self._q(
                "INSERT INTO preferences (address, locale, topics, updated_at)"
                " VALUES (:a, :locale, :topics, :now) ON CONFLICT (address) DO UPDATE SET"
                " locale = COALESCE(excluded.locale, preferences.locale),"
                " topics = COALESCE(excluded.topics, preferences.topics),"
                " updated_at = excluded.updated_at",
                a=address.lower(),
                locale=preference.locale,
                topics=topics,
                now=now_iso(),
            )
            self._q(queries.BUMP, name=queries.CHOICES)

    @guarded("read a preference")
    def preference(self, address: str) -> Preference | None:
        rows = self._q(
            "SELECT locale, topics FROM preferences WHERE address = :a", a=address.lower()
        )
        return _preference(rows[0][0], rows[0][1]) if rows else None

    @guarded("read the preferences")
    def preferences(self) -> list[tuple[str, Preference, str]]:
        """(address, preference, updated_at) of everyone who chose, by address."""
        return [
            (address, _preference(locale, topics), updated)
            for address, locale, topics, updated in self._q(
                "SELECT address, locale, topics, updated_at FROM preferences ORDER BY address"
            )
        ]

    @contextmanager
    def preference_lookup(self) -> Iterator[Callable[[str], Preference | None]]:
        """A lookup of the stored preferences for one selection: a dict read once when
        there are at most ``PREFERENCES_IN_MEMORY`` of them, else an indexed read per
        address on a read-only connection of its own (lists can hold a million rows)."""
        try:
            if self.schema_version() < 3:
                yield lambda _address: None
                return
            count = int(self._one("SELECT COUNT(*) FROM preferences") or 0)
            if count <= PREFERENCES_IN_MEMORY:
                stored = {
                    address: _preference(locale, topics)
                    for address, locale, topics in self._q(
                        "SELECT address, locale, topics FROM preferences"
                    )
                }
                yield stored.get
                return
            reader = connect(self.target, readonly=True)
        except driver_errors() as exc:
            raise self.error(f"cannot read the preferences: {one_line(exc)}") from exc

        def lookup(address: str) -> Preference | None:
            try:
                rows = reader.execute(
                    "SELECT locale, topics FROM preferences WHERE address = :a", {"a": address}
                )
            except driver_errors() as exc:
                raise self.error(f"cannot read the preferences: {one_line(exc)}") from exc
            return _preference(rows[0][0], rows[0][1]) if rows else None

        try:
            yield lookup
        finally:
            reader.close()


def _preference(locale: str | None, topics: str | None) -> Preference:
    return Preference(
        locale, None if topics is None else frozenset(t for t in topics.split(";") if t)
    )
