"""Headers built from what the config and the list may hold: a sender's name with a comma
or Cyrillic, a Reply-To on an IDN domain, a subscriber's name that reads like an
encoded word or runs to 200 characters beside a long address, an unsubscribe URL that
carries its token in a query. Each message is parsed back as a reader would."""

from __future__ import annotations

import base64
import email.policy
import re
from email import message_from_bytes
from email.message import EmailMessage
from pathlib import Path

import pytest

from editing import replace_in
from statusmail.content.message import MessageFactory
from statusmail.content.render import Renderer
from statusmail.domain import Recipient
from statusmail.feedback.clues import unsubscribe_tokens
from statusmail.project.config import load_config
from statusmail.project.entries import find_entry
from statusmail.project.regions import load_regions
from statusmail.project.tokens import Keyring, verify_unsubscribe_token

KEYS = Keyring(b"test-secret")


def factory(project: Path) -> MessageFactory:
    config = load_config(project)
    entry = find_entry(config.paths.updates, "update-2020-04-21")
    renderer = Renderer(config.paths.templates, load_regions(config.paths.regions), "StartMail")
    return MessageFactory(config, entry, renderer, KEYS)


def built(project: Path, name: str = "Anna", address: str = "anna@example.org") -> bytes:
    recipient = Recipient(address, address, address, name, "en", "NL")
    return factory(project).build(recipient).envelope.data


def parsed(data: bytes) -> EmailMessage:
    message = message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def head(data: bytes) -> list[bytes]:
    return data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


@pytest.mark.parametrize("sender", ["СтартМейл, Inc.", "StartMail, Inc."])
def test_list_id_keeps_its_id_in_the_open_whatever_the_sender_s_name(
    project: Path, sender: str
) -> None:
    """List-Id went through the unstructured folder: a Cyrillic name encoded the whole
    value, the <list-id> cut across two encoded words, where filters look for it."""
    replace_in(project, "sender: {name: StartMail,", f'sender: {{name: "{sender}",')
    data = built(project)
    (line,) = [line for line in head(data) if line.startswith(b"List-Id:")]
    assert line.endswith(b" <status.startmail.example>"), line
    shown = str(parsed(data)["List-Id"]).replace('"', "")  # (a phrase with a comma is quoted)
    assert shown == f"{sender} status <status.startmail.example>"


def test_a_reply_to_on_an_idn_domain_goes_as_an_address(project: Path) -> None:
    """Reply-To was encoded as text: an encoded word where an address must be, which
    readers parse as a local part with no domain, so replies had nowhere to go."""
    replace_in(project, "reply_to: support@startmail.example", "reply_to: support@стартмейл.рф")
    message = parsed(built(project))
    (address,) = message["Reply-To"].addresses
    ascii_domain = "стартмейл.рф".encode("idna").decode("ascii")
    assert (address.username, address.domain) == ("support", ascii_domain)
    assert not message["Reply-To"].defects


def test_a_name_that_reads_like_an_encoded_word_is_shown_as_written(project: Path) -> None:
    """Written raw, "=?utf-8?q?Admin?=" showed as "Admin" in the To: line while both
    parts greeted "=?utf-8?q?Admin?=": one more way for a name to pass for another."""
    name = "=?utf-8?q?Admin?="
    message = parsed(built(project, name))
    assert message["To"].addresses[0].display_name == name
    assert b"To: =?utf-8?q?Admin?=" not in built(project, name)


@pytest.mark.parametrize("name", ["日本" * 100, "Я" * 200, "A, B " * 40])
def test_a_long_name_beside_a_long_address_keeps_every_line_under_998(
    project: Path, name: str
) -> None:
    """A 200-character name's encoded word and a 249-character address on one line
    made a To: line of 1,068 octets (a relay may refuse it or re-wrap it, which breaks
    the signature)."""
    address = "a" * 64 + "@" + ".".join(["b" * 60, "c" * 60, "d" * 60]) + ".org"
    data = built(project, name, address)
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    (to,) = parsed(data)["To"].addresses
    assert (to.display_name, to.addr_spec) == (name, address)
    (short,) = [line for line in head(built(project, "Anna")) if line.startswith(b"To:")]
    assert short == b"To: Anna <anna@example.org>"  # one line, as before


def test_the_mailto_unsubscribe_carries_the_token_whatever_the_url_s_shape(
    project: Path,
) -> None:
    """The mailto's token was the URL's last path segment: for a URL with the token in
    its query that was "unsubscribe?token=…", which the feedback side cannot read, so
    every mailto unsubscribe was silently left unread."""
    replace_in(
        project,
        "url: https://www.startmail.example/status/unsubscribe/{token}",
        "url: https://www.startmail.example/status/unsubscribe?token={token}",
    )
    data = built(project)
    listed = str(parsed(data)["List-Unsubscribe"])
    url = re.search(r"<(https://[^>]+)>", listed)
    mailto = re.search(r"<mailto:[^?>]+\?subject=unsubscribe%20([^>]+)>", listed)
    assert url is not None and mailto is not None, listed
    token = url.group(1).rpartition("token=")[2]
    assert mailto.group(1) == token
    reply = parsed(f"Subject: unsubscribe {token}\r\n\r\n".encode())
    assert unsubscribe_tokens(reply) == (token,)
    assert verify_unsubscribe_token(KEYS, token) == "anna@example.org"


ENCODED_WORD = re.compile(rb"=\?[^?]+\?[bBqQ]\?[^?]*\?=")


def folded(data: bytes, name: bytes) -> list[bytes]:
    """The lines of header ``name``: its first and its continuations."""
    lines = head(data)
    (start,) = [i for i, line in enumerate(lines) if line.startswith(name + b":")]
    end = start + 1
    while end < len(lines) and lines[end][:1] in (b" ", b"\t"):
        end += 1
    return lines[start:end]


@pytest.mark.parametrize("words", [4, 9, 30])
def test_a_russian_subject_is_folded_into_encoded_words_of_at_most_75(
    project: Path, words: int
) -> None:
    """RFC 2047 keeps an encoded word to 75 characters; the folder's default line of 78
    let the sample's Russian subject (and any over about 33 letters) run to 76."""
    subject = " ".join((["Новости", "о", "блокировке", "в", "России:", "жалобы"] * 9)[:words])
    entry = project.parent / "updates" / "update-2020-04-21.yaml"
    replace_in(entry, "Update on the block in Russia: two appeals filed", subject)
    data = built(project)
    found = [word for line in folded(data, b"Subject") for word in ENCODED_WORD.findall(line)]
    assert found and max(len(word) for word in found) <= 75, [len(word) for word in found]
    assert parsed(data)["Subject"] == subject


def test_a_subject_with_a_word_longer_than_a_line_is_split_into_encoded_words(
    project: Path,
) -> None:
    """A word cannot be folded: a 1,040-letter link in the subject made a 1,124-octet
    Subject line, over SMTP's 998, so the relay refused every message ("500 Line too
    long") after check had passed."""
    subject = "Read https://status.example/appeal?ref=" + "a" * 1000
    entry = project.parent / "updates" / "update-2020-04-21.yaml"
    replace_in(entry, "Update on the block in Russia: two appeals filed", subject)
    data = built(project)
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    assert max(len(line) for line in folded(data, b"Subject")) <= 78
    assert parsed(data)["Subject"] == subject


def test_a_subject_that_reads_like_an_encoded_word_is_shown_as_written(project: Path) -> None:
    """An ASCII subject holding ``=?utf-8?b?…?=`` went out as it was: every mail client
    showed the decoded text, which ``check``, the previews' summary and the reviewer
    never saw."""
    hidden = base64.b64encode(b"Your account will be deleted").decode("ascii")
    subject = f"Update on the block in Russia =?utf-8?b?{hidden}?="
    entry = project.parent / "updates" / "update-2020-04-21.yaml"
    replace_in(entry, "Update on the block in Russia: two appeals filed", subject)
    assert parsed(built(project))["Subject"] == subject
