"""Property tests: the classifier reads whatever lands in a mailbox without raising, and
a report's verdict does not hang on details a mail system may change on the way."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedback_helpers import CORPUS, corpus_index
from statusmail.classify import Classified, ReturnPath, Verdict, classify

RETURN_PATH = ReturnPath.of("bounces@startmail.example")
_PLACEHOLDER = re.compile(rb"\{\{(VERP|MSGID|UNSUB|FORGED)[^}]*\}\}")
_STAND_INS = {b"VERP": b"a" * 48, b"MSGID": b"<u.0123@startmail.example>"}


def _stand_in(match: re.Match[bytes]) -> bytes:
    """Token-shaped stand-ins: the verdict never depends on a token being valid."""
    return _STAND_INS.get(match.group(1), b"A" * 40)


SAMPLES = {
    name: _PLACEHOLDER.sub(_stand_in, (CORPUS / name).read_bytes())
    for name in sorted(corpus_index())
}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4000))
def test_any_bytes_classify_without_raising(data: bytes) -> None:
    found = classify(data, RETURN_PATH)
    assert isinstance(found, Classified) and found.source


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(SAMPLES)),
    st.integers(min_value=0, max_value=20_000),
    st.integers(min_value=0, max_value=200),
    st.binary(max_size=40),
)
def test_a_damaged_report_still_classifies(name: str, at: int, cut: int, junk: bytes) -> None:
    """A corpus message with bytes cut out and junk put in (a broken MIME tree, a header
    split, a charset that lies) is still read without raising."""
    data = SAMPLES[name]
    at %= len(data)
    found = classify(data[:at] + junk + data[at + cut :], RETURN_PATH)
    assert found.verdict in set(Verdict)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(sorted(SAMPLES)), st.sampled_from([b"\n", b"\r\n"]))
def test_line_endings_do_not_change_the_verdict(name: str, ending: bytes) -> None:
    """Maildir files end lines in LF, IMAP hands out CRLF: the same verdict either way."""
    data = SAMPLES[name].replace(b"\r\n", b"\n").replace(b"\n", ending)
    expected = corpus_index()[name]["verdict"]
    assert classify(data, RETURN_PATH).verdict.value == expected
