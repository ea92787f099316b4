"""``statusmail feedback`` over IMAP, against a real Dovecot: STARTTLS and TLS checked
against a test CA, the password from a file, handled reports moved to ``processed`` in
one command for all of them (what Dovecot read is counted from its raw log), everything
else left in the inbox unread, MOVE's and UIDPLUS's absence handled without expunging
anyone else's messages, and a connection that dies during the move costing nothing: the
rerun moves the rest and records nothing twice. The Maildir box takes a list of moves too."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from imapclient import IMAPClient

from conftest import copy_sample, invoke
from feedback_helpers import (
    CORPUS,
    SECRET,
    UPDATE,
    deliver,
    fill,
    ledger_dump,
    new_files,
    processed_files,
    query,
    summary,
)
from imap_server import USER, Dovecot, Relay, require_dovecot
from statusmail.feedback.bouncebox import ImapBox, MaildirBox, uid_sets
from statusmail.project.config import load_config

HANDLED = ["postfix-user-unknown.eml", "arf-yahoo-abuse.eml", "mailto-unsubscribe-gmail.eml"]
LEFT = ["vacation-ru.eml", "unrelated-question.eml"]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(CA, server certificate, key) for 127.0.0.1, from trustme."""
    require_dovecot()
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    folder = tmp_path_factory.mktemp("certificate")
    files = (folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    ca.cert_pem.write_to_path(str(files[0]))
    cert.cert_chain_pems[0].write_to_path(str(files[1]))
    cert.private_key_pem.write_to_path(str(files[2]))
    for file in files:
        file.chmod(0o644)
    return files


@pytest.fixture
def imap(certificate: tuple[Path, Path, Path]) -> Iterator[Dovecot]:
    with Dovecot(certificate[1], certificate[2]) as server:
        yield server


def point_at_imap(
    config: Path,
    server: Dovecot,
    ca_file: Path | None,
    *,
    security: str = "starttls",
    port: int | None = None,
) -> None:
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["bounces"] = {
        "address": "bounces@startmail.example",
        "imap": {
            "host": "127.0.0.1",
            "port": port or (server.port if security != "tls" else server.tls_port),
            "security": security,
            "username": USER,
            "password_env": "BOUNCE_BOX_PASSWORD",
            "folder": "INBOX",
            "timeout": 10,
        },
    }
    if ca_file is not None:
        data["bounces"]["imap"]["ca_file"] = str(ca_file)
    config.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


def env(config: Path, server: Dovecot) -> dict[str, str]:
    """The password from a file, as systemd credentials and secret stores hand it over."""
    secret = config.parent / "imap-password"
    secret.write_text(server.password + "\n", encoding="utf-8")
    return {"STATUSMAIL_UNSUBSCRIBE_SECRET": SECRET, "BOUNCE_BOX_PASSWORD_FILE": str(secret)}


@pytest.fixture(scope="module")
def sent_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample project after its send of the update: sent once for the module."""
    config = copy_sample(tmp_path_factory.mktemp("sent") / "project")
    result = invoke(
        config,
        "send",
        UPDATE,
        "--yes",
        "--rate",
        "0",
        env={"STATUSMAIL_UNSUBSCRIBE_SECRET": SECRET},
    )
    assert result.exit_code == 0, result.stderr
    return config


@pytest.fixture
def project(sent_once: Path, tmp_path: Path) -> Path:
    """A copy of the sent project (its ledger and outbox) for one test; its config path."""
    shutil.copytree(sent_once.parent, tmp_path / "project")
    return tmp_path / "project" / sent_once.name


def delivered(project: Path, server: Dovecot) -> dict[str, bytes]:
    """The corpus's reports about the update, as they come back, in the server's inbox."""
    filled = {name: fill((CORPUS / name).read_bytes(), project) for name in HANDLED + LEFT}
    server.append_many(data.replace(b"\n", b"\r\n") for data in filled.values())
    return filled


@pytest.mark.timeout(120)
def test_feedback_reads_an_imap_box_and_moves_only_what_it_handled(
    project: Path, imap: Dovecot, certificate: tuple[Path, Path, Path]
) -> None:
    delivered(project, imap)
    point_at_imap(project, imap, certificate[0])
    inbox = imap.folder("INBOX")
    assert len(inbox) == 5

    result = invoke(project, "feedback", "--json", env=env(project, imap))
    assert result.exit_code == 0, result.stderr + imap.log()
    payload = summary(result.stdout)
    assert payload["mailboxes"] == [f"imap 127.0.0.1:{imap.port}/INBOX"]
    assert (payload["read"], payload["handled"]) == (5, 3)
    assert (payload["hard"], payload["complaints"], payload["unsubscribes"]) == (1, 1, 1)
    assert payload["auto_replies"] == 1 and payload["untouched"] == 2
    reasons = dict(query(project, "SELECT address, reason FROM suppressions"))
    assert reasons == {
        "ivan.smirnov@example.com": "bounced",
        "alexander.kozlov@example.com": "complained",
        "hanna.sidarenka@example.net": "unsubscribed",
    }

    left = imap.folder("INBOX")
    assert sorted(data for _flags, data in left.values()) == sorted(
        data for uid, (_flags, data) in inbox.items() if uid in left
    )
    assert len(left) == 2
    assert all(b"\\Seen" not in flags for flags, _data in left.values())  # still unread
    assert len(imap.folder("processed")) == 3
    [move] = moves(imap)  # one command for the three
    verb, uid_set, folder = move.rsplit(" ", 2)
    assert (verb, folder) == ("UID MOVE", '"processed"')
    assert uids_of(uid_set) == set(inbox) - set(left)

    dump = ledger_dump(project)
    again = invoke(project, "feedback", "--json", env=env(project, imap))
    assert again.exit_code == 0, again.stderr
    assert summary(again.stdout)["handled"] == 0
    assert ledger_dump(project) == dump and len(imap.folder("INBOX")) == 2


@pytest.mark.timeout(120)
def test_a_dry_run_over_imap_reads_and_leaves_everything(
    project: Path, imap: Dovecot, certificate: tuple[Path, Path, Path]
) -> None:
    delivered(project, imap)
    point_at_imap(project, imap, certificate[0], security="tls")
    before = imap.folder("INBOX")
    result = invoke(project, "feedback", "--dry-run", "--json", env=env(project, imap))
    assert result.exit_code == 0, result.stderr + imap.log()
    assert summary(result.stdout)["handled"] == 3
    assert imap.folder("INBOX") == before  # nothing moved, nothing flagged \Seen
    assert not imap.folder("processed")  # not even created
    assert query(project, "SELECT * FROM suppressions") == []


@pytest.mark.timeout(120)
def test_without_move_it_copies_and_expunges_only_its_own(
    project: Path, certificate: tuple[Path, Path, Path]
) -> None:
    # advertised after login: no MOVE, but UIDPLUS (UID EXPUNGE of just these messages)
    capabilities = "IMAP4rev1 LITERAL+ SASL-IR LOGIN-REFERRALS ID ENABLE IDLE UIDPLUS"
    with Dovecot(certificate[1], certificate[2], capabilities=capabilities) as server:
        delivered(project, server)
        # someone flagged a message \Deleted in the inbox without expunging it
        client = server.client()
        try:
            client.select_folder("INBOX")
            client.append("INBOX", b"Subject: flagged by someone\r\n\r\nkeep me\r\n")
            [mine] = client.search(["SUBJECT", "flagged by someone"])
            client.add_flags([mine], [b"\\Deleted"])
        finally:
            client.logout()
        point_at_imap(project, server, certificate[0])
        start = time.time()
        result = invoke(project, "feedback", "--json", env=env(project, server))
        assert result.exit_code == 0, result.stderr + server.log()
        assert summary(result.stdout)["handled"] == 3
        inbox = server.folder("INBOX")
        assert len(inbox) == 3  # the two left alone, and the other flagged one, not expunged
        assert any(b"keep me" in data for _flags, data in inbox.values())
        assert len(server.folder("processed")) == 3
        # one of each for the three handled; no plain EXPUNGE
        verbs = [" ".join(command.split()[:2]) for command in moves(server, start)]
        assert verbs == ["UID COPY", "UID STORE", "UID EXPUNGE"]


@pytest.mark.timeout(120)
def test_two_readers_of_one_box_both_make_the_folder_and_move_what_they_read(
    project: Path,
    imap: Dovecot,
    certificate: tuple[Path, Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two hosts' passes over one mailbox: the second to create the processed folder
    failed ("[ALREADYEXISTS]"), and one whose messages the other had moved meanwhile
    failed the whole move ("[EXPUNGEISSUED]", exit 4) (review)."""
    delivered(project, imap)
    point_at_imap(project, imap, certificate[0])
    settings = load_config(project).bounces.imap
    assert settings is not None
    ImapBox(settings, "processed", imap.password, readonly=False).close()  # the other's
    # this reader looked before the other made the folder (a timing no server gives
    # on demand): its first look says there is none
    looks: list[str] = []
    real = IMAPClient.folder_exists

    def stale_once(client: IMAPClient, name: str) -> bool:
        looks.append(name)
        return False if len(looks) == 1 else bool(real(client, name))

    monkeypatch.setattr(IMAPClient, "folder_exists", stale_once)
    first = ImapBox(settings, "processed", imap.password, readonly=False)
    monkeypatch.undo()
    assert len(looks) == 2  # it looked again after the server said it exists
    second = ImapBox(settings, "processed", imap.password, readonly=False)
    try:
        read = [key for key, _data in first.messages()]
        taken = [key for key, _data in second.messages()][:2]
        second.move_to_processed(taken)
        first.move_to_processed(read)
    finally:
        first.close()
        second.close()
    assert imap.folder("INBOX") == {}
    assert len(imap.folder("processed")) == len(read)


@pytest.mark.timeout(120)
def test_without_uidplus_a_plain_expunge_only_when_nothing_else_is_flagged(
    project: Path, certificate: tuple[Path, Path, Path]
) -> None:
    capabilities = "IMAP4rev1 LITERAL+ SASL-IR LOGIN-REFERRALS ID ENABLE IDLE"  # neither
    with Dovecot(certificate[1], certificate[2], capabilities=capabilities) as server:
        filled = delivered(project, server)
        point_at_imap(project, server, certificate[0])
        result = invoke(project, "feedback", "--json", env=env(project, server))
        assert result.exit_code == 0, result.stderr + server.log()
        assert summary(result.stdout)["handled"] == 3
        verbs = [command.split()[0:2] for command in moves(server)]
        assert verbs == [["UID", "COPY"], ["UID", "STORE"], ["EXPUNGE"]]
        assert len(server.folder("INBOX")) == 2 and len(server.folder("processed")) == 3

        # the same reports again, and someone flagged a message without expunging it
        server.append_many(filled[name].replace(b"\n", b"\r\n") for name in HANDLED)
        client = server.client()
        try:
            client.select_folder("INBOX")
            client.append("INBOX", b"Subject: flagged by someone\r\n\r\nkeep me\r\n")
            [mine] = client.search(["SUBJECT", "flagged by someone"])
            client.add_flags([mine], [b"\\Deleted"])
        finally:
            client.logout()
        start = time.time()
        again = invoke(project, "feedback", "--json", env=env(project, server))
        assert again.exit_code == 0, again.stderr + server.log()
        assert summary(again.stdout)["already_recorded"] == 3
        assert [command.split()[:2] for command in moves(server, start)] == [
            ["UID", "COPY"],
            ["UID", "STORE"],
        ]
        inbox = server.folder("INBOX")
        assert any(b"keep me" in data for _flags, data in inbox.values())
        # the three copied stay, flagged \Deleted, and a pass reads them no more
        assert sum(b"\\Deleted" in flags for flags, _data in inbox.values()) == 4
        assert len(server.folder("processed")) == 6
        third = invoke(project, "feedback", "--json", env=env(project, server))
        assert (summary(third.stdout)["read"], summary(third.stdout)["handled"]) == (2, 0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("server_did_it", [False, True], ids=["before-the-move", "after-it"])
def test_a_connection_cut_during_the_move_costs_nothing(
    project: Path, imap: Dovecot, certificate: tuple[Path, Path, Path], server_did_it: bool
) -> None:
    """Cut before the server moved anything, or after it moved all and before its answer
    came back: either way the pass ends on one line naming the server, the reports are
    recorded already, and a rerun moves whatever is left and records nothing twice."""
    delivered(project, imap)
    inbox = imap.folder("INBOX")
    with Relay(imap.port, b"UID MOVE", server_did_it=server_did_it) as relay:
        point_at_imap(project, imap, None, security="none", port=relay.port)
        cut = invoke(project, "feedback", env=env(project, imap))
        assert relay.cut.is_set()
        assert cut.exit_code == 4  # stopped early: what was read is recorded
        lines = cut.stderr.splitlines()  # the events' log lines, why it ended, what to do
        assert "Stopped early. Run again to continue." in lines
        [line] = [x for x in lines if x.startswith("error: ")]
        assert line.startswith(f"error: 127.0.0.1:{relay.port}: cannot move to processed: ")
        assert "connection was lost" in line and "run again" in line
        recorded = ledger_dump(project)
        assert len(recorded["feedback_events"]) == 3  # recorded before the move

        rerun = invoke(project, "feedback", "--json", env=env(project, imap))
        assert rerun.exit_code == 0, rerun.stderr + imap.log()
    assert ledger_dump(project) == recorded  # nothing recorded twice
    payload = summary(rerun.stdout)
    assert payload["already_recorded"] == (0 if server_did_it else 3)
    assert payload["read"] == (2 if server_did_it else 5)
    left = imap.folder("INBOX")
    assert len(left) == 2
    processed = sorted(data for _flags, data in imap.folder("processed").values())
    assert processed == sorted(data for uid, (_flags, data) in inbox.items() if uid not in left)


@pytest.mark.timeout(60)
def test_a_connection_cut_while_reading_records_nothing(project: Path, imap: Dovecot) -> None:
    delivered(project, imap)
    inbox = imap.folder("INBOX")
    with Relay(imap.port, b"UID FETCH", server_did_it=False) as relay:
        point_at_imap(project, imap, None, security="none", port=relay.port)
        cut = invoke(project, "feedback", env=env(project, imap))
    assert relay.cut.is_set() and cut.exit_code == 1  # nothing read: nothing started
    [line] = cut.stderr.splitlines()
    assert line.startswith(f"error: 127.0.0.1:{relay.port}: cannot read INBOX: ")
    assert "connection was lost" in line and line.endswith("run again to go on")
    assert query(project, "SELECT * FROM feedback_events") == []
    after = imap.folder("INBOX")  # every message still there, unread
    assert {uid: data for uid, (_flags, data) in after.items()} == {
        uid: data for uid, (_flags, data) in inbox.items()
    }
    assert all(b"\\Seen" not in flags for flags, _data in after.values())


def test_a_maildir_moves_a_list_and_skips_one_gone(tmp_path: Path) -> None:
    """The Maildir box takes a list too: one message a mail client moved meanwhile is
    skipped, and the others still move."""
    keys = [f"new/{name}" for name in ("1.a.host", "2.b.host", "3.c.host")]
    for key in keys:
        deliver(tmp_path / "bounces", f"Subject: {key}\n\n".encode(), key.split("/")[1])
    box = MaildirBox(tmp_path / "bounces", "processed", readonly=False)
    (tmp_path / "bounces" / keys[1]).unlink()
    box.move_to_processed(keys)
    assert sorted(processed_files(tmp_path / "bounces")) == ["1.a.host:2,S", "3.c.host:2,S"]
    assert new_files(tmp_path / "bounces") == {}


def test_uid_sets_are_ranges_cut_to_the_line() -> None:
    assert uid_sets([502, *range(1, 501)], 100) == ["1:500,502"]
    assert uid_sets([7, 3, 3, 4, 5, 9], 100) == ["3:5,7,9"]
    odd = list(range(1, 20_000, 2))  # nothing to join: 10,000 single UIDs
    sets = uid_sets(odd, 8000)
    assert all(len(one) <= 8000 for one in sets) and len(sets) == 7
    assert [int(uid) for one in sets for uid in one.split(",")] == odd
    runs = [*range(1, 1000), *range(1001, 3000, 3), *range(5000, 9000)]
    assert set().union(*map(uids_of, uid_sets(runs, 50))) == set(runs)
    assert uid_sets([], 100) == []


def uids_of(uid_set: str) -> set[int]:
    """The UIDs an IMAP sequence set such as ``1:3,7`` names."""
    found: set[int] = set()
    for part in uid_set.split(","):
        first, _, last = part.partition(":")
        found.update(range(int(first), int(last or first) + 1))
    return found


def moves(server: Dovecot, since: float = 0.0) -> list[str]:
    """The commands that moved, copied, flagged or expunged messages, as Dovecot read
    them from ``since`` on; the tests' own view (``Dovecot.folder``) only fetches."""
    verbs = ("UID MOVE", "UID COPY", "UID STORE", "UID EXPUNGE", "MOVE", "COPY", "EXPUNGE")
    return [c for c in server.commands(since) if c.upper().startswith(verbs)]


@pytest.mark.timeout(60)
def test_a_wrong_password_is_one_clear_line(
    project: Path, imap: Dovecot, certificate: tuple[Path, Path, Path]
) -> None:
    point_at_imap(project, imap, certificate[0])
    environ = env(project, imap)
    Path(environ["BOUNCE_BOX_PASSWORD_FILE"]).write_text("wrong-password", encoding="utf-8")
    result = invoke(project, "feedback", env=environ)
    assert result.exit_code == 1
    assert f"error: 127.0.0.1:{imap.port}: login refused" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(60)
def test_a_server_certificate_nobody_vouches_for_is_refused(project: Path, imap: Dovecot) -> None:
    point_at_imap(project, imap, None, security="tls")  # the system's CAs never signed it
    result = invoke(project, "feedback", env=env(project, imap))
    assert result.exit_code == 1
    assert f"127.0.0.1:{imap.tls_port}: " in result.stderr and "certificate" in result.stderr
