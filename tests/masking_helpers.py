"""Helpers for the tests of masking (``domain.mask_addresses``, which the CI summary, the
log and the reports' diagnostics share): text holding addresses written every way they
are, and the three rules those outputs each had before, as the reference the shared
rule must mask at least as much as."""

from __future__ import annotations

import re
import unicodedata

from hypothesis import strategies as st

from statusmail.domain import mask_address

# The rules as they were (ci/summary.py, cli/output.py, feedback/proof.py), each applied
# as ``rule.sub(lambda m: mask(m[0]), text)``.
_ATEXT = r"[\w.!#$%&'*+/=?^`{|}~-]"
BEFORE = {
    "summary": re.compile(r"[^\s@'\"<>()\[\],;:]+@[^\s@'\"<>()\[\],;:]+"),
    "output": re.compile(rf"(?<!{_ATEXT}){_ATEXT}+@[\w-]+(?:\.[\w-]+)+"),
    "proof": re.compile(r"[^\s<>(),;:\"']+@[^\s<>(),;:\"']+"),
}

HIDDEN, FIRST = "\ue000", "\ue001"  # private use: never in the generated text


def marking(address: str) -> str:
    """``mask_address``'s cut, at the same length: what it hides becomes ``HIDDEN``, the
    one letter it keeps ``FIRST``; so the positions of a text it hid can be compared."""
    local, at, domain = address.rpartition("@")
    if not at:
        return HIDDEN * len(address)
    return FIRST * len(local[:1]) + HIDDEN * (len(local) - 1) + "@" + domain


def positions(marked: str, mark: str) -> set[int]:
    return {i for i, c in enumerate(marked) if c == mark}


def _masks(address: str) -> bool:
    """Whether the rules before changed ``address`` in masking it, and it was not a mask
    already (``***@x``, which they masked again: to ``****@x``)."""
    return mask_address(address) != address and bool(address.rpartition("@")[0].strip("*"))


def hidden_before(text: str) -> set[int]:
    """Every position of ``text`` that one of the rules before hid."""
    return set().union(
        *(
            positions(rule.sub(lambda m: marking(m[0]) if _masks(m[0]) else m[0], text), HIDDEN)
            for rule in BEFORE.values()
        )
    )


def masked_before(text: str) -> set[str]:
    """What the rules before took for addresses and masked."""
    return {m[0] for rule in BEFORE.values() for m in rule.finditer(text) if _masks(m[0])}


def shown_unmasked(text: str, shown: str) -> list[str]:
    """What a rule before masked in ``text`` that ``shown`` (its masked output) shows."""
    return [address for address in masked_before(text) if address in shown]


# Pieces an address is found among: brackets, quotes and punctuation (Latin and
# Russian), a URL's query, an SMTP reply, combining marks, emoji, a zero-width space.
CONTEXT = [
    *(" ", "\n", "\t", "\xa0", "<", ">", "(", ")", ",", ";", ":", '"', "'", "[", "]"),
    *("«", "»", "“", "”", "‘", "—", ".", "/", "\\", "?", "&", "=", "%", "+", "-", "@"),
    *("%40", "mailto:", "https://status.example.org/u?email=", "&cc=", "Адрес:"),
    *("Нет такого пользователя ", "550 5.1.1 ", "Message-ID: ", "\u0306", "\u200b", "😀"),
]
_LOCAL = "abcxyzABC0149!#$%&'+-/=?^_`{|}~." + "пользователйжёЁ" + "\u0306\u200b😀"
_DOMAINS = [
    "example.org",
    "mail.ru",
    "пример.рф",
    "xn--e1afmkfd.xn--p1ai",
    "localhost",
    "[192.0.2.1]",
    unicodedata.normalize("NFD", "почтай.рф"),
]


@st.composite
def _written(draw: st.DrawFn) -> str:
    """An address as one is found in text: plain, quoted, with an @ written %40."""
    if draw(st.booleans()):
        local = draw(st.text(_LOCAL, min_size=1, max_size=10))
    else:
        quoted = st.text(_LOCAL + " @,:;<>()", min_size=1, max_size=10)
        local = f'"{draw(quoted)}"'
    at = draw(st.sampled_from(["@", "@", "%40"]))
    return local + at + draw(st.sampled_from(_DOMAINS))


ADDRESSES = st.one_of(st.emails(), _written())
TEXTS = st.lists(
    st.one_of(ADDRESSES, st.sampled_from(CONTEXT), st.text(_LOCAL, max_size=3)), max_size=8
).map("".join)
# With stars, as masked text holds them (a local part that is only stars is a mask
# already, which the rules before masked again: ``***@x`` to ``****@x``).
STARRED = st.lists(st.one_of(TEXTS, st.sampled_from(["*", "***", "a***@x.org"])), max_size=4).map(
    "".join
)
