"""``statusmail feedback`` over IMAP, against a real Dovecot: STARTTLS and TLS checked
against a test CA, the password from a file, handled reports moved to ``processed``,
everything else left in the inbox unread, and MOVE's absence handled without expunging
anyone else's messages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import invoke
from feedback_helpers import CORPUS, SECRET, UPDATE, fill, ledger_dump, query, summary
from imap_server import USER, Dovecot, require_dovecot

HANDLED = ["postfix-user-unknown.eml", "arf-yahoo-abuse.eml", "mailto-unsubscribe-gmail.eml"]
LEFT = ["vacation-ru.eml", "unrelated-question.eml"]


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(CA, server certificate, key) for 127.0.0.1, from trustme."""
    require_dovecot()
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = (tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem")
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
    config: Path, server: Dovecot, ca_file: Path | None, *, security: str = "starttls"
) -> None:
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["bounces"] = {
        "address": "bounces@startmail.example",
        "imap": {
            "host": "127.0.0.1",
            "port": server.port if security != "tls" else server.tls_port,
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


def sent_and_delivered(project: Path, server: Dovecot) -> dict[str, bytes]:
    result = invoke(
        project,
        "send",
        UPDATE,
        "--yes",
        "--rate",
        "0",
        env={"STATUSMAIL_UNSUBSCRIBE_SECRET": SECRET},
    )
    assert result.exit_code == 0, result.stderr
    filled = {name: fill((CORPUS / name).read_bytes(), project) for name in HANDLED + LEFT}
    for data in filled.values():
        server.append(data.replace(b"\n", b"\r\n"))
    return filled


@pytest.mark.timeout(120)
def test_feedback_reads_an_imap_box_and_moves_only_what_it_handled(
    project: Path, imap: Dovecot, certificate: tuple[Path, Path, Path]
) -> None:
    sent_and_delivered(project, imap)
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

    dump = ledger_dump(project)
    again = invoke(project, "feedback", "--json", env=env(project, imap))
    assert again.exit_code == 0, again.stderr
    assert summary(again.stdout)["handled"] == 0
    assert ledger_dump(project) == dump and len(imap.folder("INBOX")) == 2


@pytest.mark.timeout(120)
def test_a_dry_run_over_imap_reads_and_leaves_everything(
    project: Path, imap: Dovecot, certificate: tuple[Path, Path, Path]
) -> None:
    sent_and_delivered(project, imap)
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
        sent_and_delivered(project, server)
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
        result = invoke(project, "feedback", "--json", env=env(project, server))
        assert result.exit_code == 0, result.stderr + server.log()
        assert summary(result.stdout)["handled"] == 3
        inbox = server.folder("INBOX")
        assert len(inbox) == 3  # the two left alone, and the other flagged one, not expunged
        assert any(b"keep me" in data for _flags, data in inbox.values())
        assert len(server.folder("processed")) == 3


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
