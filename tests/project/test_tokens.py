"""Link tokens on standard cryptography: AES-SIV, a key per purpose, rotation, the old
scheme still read, and secrets from files."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import http_request, invoke, outbox_messages, serving
from editing import replace_in
from statusmail.errors import ConfigError
from statusmail.project.config import load_config
from statusmail.project.secrets import read_secret
from statusmail.project.tokens import (
    Keyring,
    Purpose,
    entry_token,
    legacy_unsubscribe_token,
    message_id,
    return_path_token,
    row_token,
    unsubscribe_token,
    verify_entry_token,
    verify_unsubscribe_token,
)

OLD = b"the-secret-statusmail-used-before-the-rotation"
NEW = b"the-secret-statusmail-uses-after-the-rotation!"
ADDRESS = "anna.petrova@example.org"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_round_trip_is_stable_url_safe_and_short() -> None:
    keys = Keyring(NEW)
    token = unsubscribe_token(keys, ADDRESS)
    assert token == unsubscribe_token(Keyring(NEW), ADDRESS)  # the same link every time
    assert verify_unsubscribe_token(keys, token) == ADDRESS
    assert token.replace("-", "").replace("_", "").isalnum()
    assert ADDRESS.split("@")[0] not in token
    # version, key id, the 16-byte synthetic IV and the address: nothing more
    assert len(raw(token)) == 2 + 16 + len(ADDRESS)
    verp = entry_token(keys, Purpose.VERP, "update-2020-04-21", ADDRESS)
    assert verify_entry_token(keys, Purpose.VERP, verp) == ("update-2020-04-21", ADDRESS)


def test_every_flipped_byte_is_refused() -> None:
    keys = Keyring(NEW)
    data = raw(unsubscribe_token(keys, ADDRESS))
    for index in range(len(data)):
        for bit in (0x01, 0x80):
            tampered = data[:index] + bytes([data[index] ^ bit]) + data[index + 1 :]
            assert verify_unsubscribe_token(keys, b64(tampered)) is None, index


def test_a_wrong_key_or_purpose_is_refused() -> None:
    keys = Keyring(NEW)
    token = unsubscribe_token(keys, ADDRESS)
    assert verify_unsubscribe_token(Keyring(OLD), token) is None
    for purpose in (Purpose.PREFERENCES, Purpose.VERP, Purpose.MESSAGE_ID):
        assert keys.open(purpose, token) is None, purpose
    verp = entry_token(keys, Purpose.VERP, "e", ADDRESS)
    assert verify_unsubscribe_token(keys, verp) is None
    assert verify_entry_token(keys, Purpose.PREFERENCES, verp) is None
    # the Message-ID is keyed for its own purpose: no token key can make or check it
    mid = message_id(keys, "e", ADDRESS, "startmail.example")
    assert keys.current.mac(Purpose.UNSUBSCRIBE, f"e\x00{ADDRESS}".encode()).hex()[:32] not in mid
    assert keys.current.mac(Purpose.MESSAGE_ID, f"e\x00{ADDRESS}".encode()).hex()[:32] in mid


def test_rotation_verifies_retired_secrets_and_signs_with_the_current() -> None:
    before = unsubscribe_token(Keyring(OLD), ADDRESS)
    rotated = Keyring(NEW, previous=(OLD,))
    assert verify_unsubscribe_token(rotated, before) == ADDRESS
    after = unsubscribe_token(rotated, ADDRESS)
    assert after != before
    assert raw(after)[1] == rotated.current.id != raw(before)[1]
    assert verify_unsubscribe_token(Keyring(NEW), after) == ADDRESS  # no retired key needed
    assert verify_unsubscribe_token(Keyring(NEW), before) is None  # once OLD is dropped


def test_tokens_of_the_old_scheme_are_read_during_the_compatibility_period() -> None:
    legacy = legacy_unsubscribe_token(NEW, ADDRESS)
    until = dt.date(2027, 6, 30)
    keys = Keyring(NEW, legacy_until=until)
    assert verify_unsubscribe_token(keys, legacy, today=until) == ADDRESS
    assert verify_unsubscribe_token(keys, legacy, today=until + dt.timedelta(days=1)) is None
    assert verify_unsubscribe_token(Keyring(OLD), legacy) is None  # still authenticated
    # a retired secret's old-scheme tokens too
    old_legacy = legacy_unsubscribe_token(OLD, ADDRESS)
    assert verify_unsubscribe_token(Keyring(NEW, previous=(OLD,)), old_legacy) == ADDRESS


@pytest.mark.parametrize("zone", ["Etc/GMT-14", "Etc/GMT+12"])  # UTC+14, UTC-12
def test_the_old_scheme_ends_on_the_same_utc_day_on_every_host(
    zone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hosts in different time zones must agree on the last day: at any moment one of
    these zones is on another date than UTC."""
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        legacy = legacy_unsubscribe_token(NEW, ADDRESS)
        today = dt.datetime.now(dt.UTC).date()
        assert verify_unsubscribe_token(Keyring(NEW, legacy_until=today), legacy) == ADDRESS
        yesterday = Keyring(NEW, legacy_until=today - dt.timedelta(days=1))
        assert verify_unsubscribe_token(yesterday, legacy) is None
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_token_is_read_in_the_one_spelling_it_was_written_in() -> None:
    """The base64 decoder alone drops what is outside its alphabet, takes '+' for '-',
    ignores extra '=' and a last character's unused bits: one token, many strings, each
    of which unsubscribed (so no token could be revoked by its string)."""
    keys = Keyring(NEW)
    token = unsubscribe_token(keys, ADDRESS)
    assert verify_unsubscribe_token(keys, token) == ADDRESS
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = token[:-1] + last[last.index(token[-1]) ^ 1]  # the unused low bit flipped
    variants = [twin, token + "==", token[:4] + "...." + token[4:], token + "!!"]
    if "-" in token:
        variants.append(token.replace("-", "+"))
    for variant in variants:
        assert verify_unsubscribe_token(keys, variant) is None, variant


@given(st.text(max_size=200))
def test_any_string_is_refused_never_raises(token: str) -> None:
    assert verify_unsubscribe_token(Keyring(NEW), token) is None


def test_an_old_link_still_unsubscribes_through_serve(project: Path) -> None:
    """A link minted by statusmail 0.1, in a mailbox since before the upgrade."""
    secret = NEW.decode()
    with serving(project, secret) as port:
        token = legacy_unsubscribe_token(NEW, ADDRESS)
        status = http_request(
            port, "POST", f"/status/unsubscribe/{token}", b"List-Unsubscribe=One-Click", FORM
        ).status
        assert status == 200
    listed = invoke(project, "suppress", "list", "--json")
    assert [row["email"] for row in json.loads(listed.stdout)] == [ADDRESS]
    # after the compatibility period ends the same link is refused
    replace_in(
        project,
        "  secret_env: STATUSMAIL_UNSUBSCRIBE_SECRET",
        "  secret_env: STATUSMAIL_UNSUBSCRIBE_SECRET\n  legacy_tokens_until: 2020-01-01",
    )
    with serving(project, secret) as port:
        token = legacy_unsubscribe_token(NEW, "ivan.smirnov@example.com")
        status = http_request(
            port, "POST", f"/status/unsubscribe/{token}", b"List-Unsubscribe=One-Click", FORM
        ).status
        assert status == 400


def test_a_rotated_secret_keeps_links_and_threads(project: Path) -> None:
    """Sent under OLD, the January notice's links keep working under NEW, and the April
    update still threads to the Message-ID the January message really had."""
    old, new = OLD.decode(), NEW.decode()
    env = {"STATUSMAIL_UNSUBSCRIBE_SECRET": old}
    assert (
        invoke(project, "send", "block-2020-01-23", "--yes", "--rate", "0", env=env).exit_code == 0
    )
    january = {str(m["To"].addresses[0].addr_spec).lower(): m for m in outbox_messages(project)}
    env = {"STATUSMAIL_UNSUBSCRIBE_SECRET": new, "STATUSMAIL_UNSUBSCRIBE_PREVIOUS_SECRETS": old}
    result = invoke(project, "send", "update-2020-04-21", "--yes", "--rate", "0", env=env)
    assert result.exit_code == 0, result.stderr
    april = [
        m
        for m in outbox_messages(project)
        if str(m["Message-ID"]).startswith("<update-2020-04-21.")
    ]
    assert april
    for message in april:
        address = str(message["To"].addresses[0].addr_spec).lower()
        assert message["In-Reply-To"] == january[address]["Message-ID"]
    link = str(january[ADDRESS]["List-Unsubscribe"]).split("<", 1)[1].split(">", 1)[0]
    token = link.rsplit("/", 1)[1]
    assert verify_unsubscribe_token(Keyring(NEW, previous=(OLD,)), token) == ADDRESS
    assert verify_unsubscribe_token(Keyring(NEW), token) is None


def test_secrets_come_from_files_too(tmp_path: Path) -> None:
    secret_file = tmp_path / "unsubscribe.secret"
    secret_file.write_text("from-a-file-and-long-enough-for-a-key\n", encoding="utf-8")
    name = "STATUSMAIL_UNSUBSCRIBE_SECRET"
    assert read_secret(name, {f"{name}_FILE": str(secret_file)}) == (
        "from-a-file-and-long-enough-for-a-key"
    )
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / name).write_text("from-systemd-load-credential", encoding="utf-8")
    assert read_secret(name, {"CREDENTIALS_DIRECTORY": str(credentials)}) == (
        "from-systemd-load-credential"
    )
    assert read_secret(name, {name: "from-env", "CREDENTIALS_DIRECTORY": str(credentials)}) == (
        "from-env"
    )
    assert read_secret(name, {"CREDENTIALS_DIRECTORY": str(tmp_path / "none")}) is None
    with pytest.raises(ConfigError) as info:
        read_secret(name, {f"{name}_FILE": str(tmp_path / "missing")})
    assert str(tmp_path / "missing") in str(info.value)


def test_a_short_secret_is_an_error_for_smtp_and_serve(project: Path) -> None:
    short = {"STATUSMAIL_UNSUBSCRIBE_SECRET": "too-short", "STATUSMAIL_TRANSPORT": "smtp"}
    check = invoke(project, "check", env=short)
    assert check.exit_code == 1
    assert "$STATUSMAIL_UNSUBSCRIBE_SECRET is 9 bytes; it must be at least 32" in check.output
    serve = invoke(project, "serve", "--port", "0", env={"STATUSMAIL_UNSUBSCRIBE_SECRET": "x"})
    assert serve.exit_code == 1
    assert "is 1 bytes; it must be at least 32" in serve.stderr
    config = load_config(project, {})
    assert config.keyring({"STATUSMAIL_UNSUBSCRIBE_SECRET": "x" * 32})[0].secret == b"x" * 32


@given(
    entry=st.text(min_size=1, max_size=40),
    address=st.text(min_size=1, max_size=80),
    local=st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=30),
    row=st.integers(min_value=1, max_value=2**40),
)
def test_the_return_path_takes_the_entry_token_exactly_when_it_fits(
    entry: str, address: str, local: str, row: int
) -> None:
    """The choice is made from the token's length, known without sealing: it is the
    one a sealed entry token would have made."""
    keys = Keyring(NEW)
    sealed = entry_token(keys, Purpose.VERP, entry, address)
    fits = len(local) + 1 + len(sealed) <= 64
    token = return_path_token(keys, entry, address, local, row)
    if fits:
        assert token == sealed  # AES-SIV is deterministic: the same plain, the same token
    else:
        assert token == row_token(keys, row, entry, address)
