"""``statusmail.yaml``: loading, path resolution, where it is found, env overrides, errors."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import SECRET_ENV, invoke, statusmail
from editing import replace_in
from feedback_helpers import set_bounces
from postgres_helpers import query
from statusmail.errors import ConfigError, LedgerError
from statusmail.ledger.database import describe
from statusmail.project.config import find_config, load_config
from statusmail.project.secrets import DEV_UNSUBSCRIBE_SECRET


def problems(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ if environ is not None else {})
    return [str(p) for p in info.value.problems]


def test_sample_config_loads(project: Path) -> None:
    config = load_config(project, {})
    root = project.parent
    assert config.path == project
    assert config.root == root
    assert (config.sender.name, config.sender.address) == ("StartMail", "status@startmail.example")
    assert config.reply_to == "support@startmail.example"
    assert config.list_id == "status.startmail.example"
    assert config.transport == "maildir"
    assert config.paths.updates == root / "updates"
    assert config.paths.subscribers == root / "subscribers"
    assert config.paths.templates == root / "templates"
    assert config.paths.regions == root / "regions.yaml"
    assert config.paths.ledger == root / "statusmail.db"
    assert config.paths.outbox == root / "outbox"
    smtp = config.smtp
    assert (smtp.host, smtp.port, smtp.security) == ("localhost", 587, "starttls")
    assert smtp.username == "status@startmail.example"
    assert smtp.password_env == "STATUSMAIL_SMTP_PASSWORD"
    assert smtp.timeout == 30.0
    sending = config.sending
    assert (sending.rate, sending.concurrency, sending.max_attempts) == (20.0, 4, 5)
    assert sending.max_per_hour is None
    assert sending.stop_after_failures == 0.2
    assert config.unsubscribe.url == "https://www.startmail.example/status/unsubscribe/{token}"
    assert config.unsubscribe.mailto == "unsubscribe@startmail.example"
    assert config.unsubscribe.secret_env == "STATUSMAIL_UNSUBSCRIBE_SECRET"
    assert (config.serve.host, config.serve.port) == ("127.0.0.1", 8080)
    assert config.dkim is None
    assert dict(config.default_locale_by_region) == {"RU": "ru", "BY": "ru", "KZ": "ru"}


def test_paths_resolve_against_the_config_folder(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    relative = Path(os.path.relpath(project, elsewhere))  # ../project/statusmail.yaml
    assert not relative.is_absolute()
    config = load_config(relative, {})
    assert config.path.is_absolute()
    assert config.path.resolve() == project.resolve()
    assert config.paths.updates.resolve() == (project.parent / "updates").resolve()
    assert config.paths.updates.is_dir()
    assert config.paths.regions.is_file()
    assert config.paths.subscribers.is_dir()
    assert config.paths.outbox.resolve() == (project.parent / "outbox").resolve()
    assert not (elsewhere / "updates").exists()


def test_paths_resolve_from_parent_folder(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project.parent.parent)
    config = load_config(Path(project.parent.name) / project.name, {})
    assert config.path == project
    assert config.paths.templates == project.parent / "templates"
    assert config.paths.ledger == project.parent / "statusmail.db"


def test_relative_paths_in_the_file(project: Path) -> None:
    replace_in(project, "updates: updates,", "updates: ../shared/news,")
    config = load_config(project, {})
    assert config.paths.updates == project.parent / "../shared/news"


def test_find_config_order(tmp_path: Path) -> None:
    env = {"STATUSMAIL_CONFIG": str(tmp_path / "from-env.yaml")}
    assert find_config(tmp_path / "option.yaml", env) == tmp_path / "option.yaml"
    assert find_config("option.yaml", env) == Path("option.yaml")
    assert find_config(None, env) == tmp_path / "from-env.yaml"
    nowhere = tmp_path / "no" / "config" / "above"  # no statusmail.yaml up to /
    nowhere.mkdir(parents=True)
    assert find_config(None, {}, nowhere) == Path("statusmail.yaml")
    assert find_config(None, {"STATUSMAIL_CONFIG": ""}, nowhere) == Path("statusmail.yaml")


def test_the_config_is_found_in_the_nearest_folder_above_as_git_finds_git(
    tmp_path: Path,
) -> None:
    (tmp_path / "statusmail.yaml").write_text("list_id: outer\n", encoding="utf-8")
    inner = tmp_path / "project"
    (inner / "updates" / "drafts").mkdir(parents=True)
    (inner / "statusmail.yaml").write_text("list_id: inner\n", encoding="utf-8")
    assert find_config(None, {}, inner / "updates" / "drafts") == inner / "statusmail.yaml"
    assert find_config(None, {}, inner) == inner / "statusmail.yaml"
    assert find_config(None, {}, tmp_path) == tmp_path / "statusmail.yaml"


def test_find_config_uses_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATUSMAIL_CONFIG", str(tmp_path / "x.yaml"))
    assert find_config(None) == tmp_path / "x.yaml"


def test_cli_finds_config_option_then_env_then_cwd(project: Path, tmp_path: Path) -> None:
    root = project.parent
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "statusmail.yaml").write_text("transport: pigeon\n")
    # --config wins over $STATUSMAIL_CONFIG and ./statusmail.yaml
    result = invoke(
        project, "check", cwd=broken, env={"STATUSMAIL_CONFIG": str(broken / "statusmail.yaml")}
    )
    assert result.exit_code == 0, result.stderr
    # --config also works before the command name
    result = invoke(None, "--config", str(project), "check", cwd=broken)
    assert result.exit_code == 0, result.stderr
    # $STATUSMAIL_CONFIG wins over ./statusmail.yaml
    result = invoke(None, "check", cwd=broken, env={"STATUSMAIL_CONFIG": str(project)})
    assert result.exit_code == 0, result.stderr
    # ./statusmail.yaml
    result = invoke(None, "check", cwd=root)
    assert result.exit_code == 0, result.stderr
    result = invoke(None, "check", cwd=broken)
    assert result.exit_code == 1
    assert f"{broken / 'statusmail.yaml'}:1: transport is 'pigeon'" in result.stderr


def test_cli_missing_config(tmp_path: Path) -> None:
    """In a real process, as a user meets it: a fatal error is one line, exit 1."""
    result = statusmail(None, "check", cwd=tmp_path)
    assert result.returncode == 1
    assert f"{tmp_path / 'statusmail.yaml'}: config file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_env_overrides(project: Path) -> None:
    env = {
        "STATUSMAIL_TRANSPORT": "smtp",
        "STATUSMAIL_SMTP_HOST": "relay.example",
        "STATUSMAIL_SMTP_PORT": "2525",
        "STATUSMAIL_SMTP_SECURITY": "tls",
    }
    config = load_config(project, env)
    assert config.transport == "smtp"
    assert (config.smtp.host, config.smtp.port, config.smtp.security) == (
        "relay.example",
        2525,
        "tls",
    )
    assert config.smtp.server == "relay.example:2525"
    # untouched settings stay as in the file
    assert config.smtp.username == "status@startmail.example"


def test_env_overrides_from_process_environment(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATUSMAIL_SMTP_SECURITY", "none")
    monkeypatch.setenv("STATUSMAIL_SMTP_PORT", "25")
    config = load_config(project)
    assert (config.smtp.port, config.smtp.security) == (25, "none")
    assert config.transport == "maildir"


def test_bad_env_overrides_are_named(project: Path) -> None:
    got = problems(project, {"STATUSMAIL_SMTP_PORT": "smtp", "STATUSMAIL_SMTP_SECURITY": "ssl"})
    assert "$STATUSMAIL_SMTP_PORT: 'smtp' is not a port (1-65535)" in got
    assert any(p.startswith("$STATUSMAIL_SMTP_SECURITY: must be one of") for p in got)


@pytest.mark.parametrize("port", ["0", "-1", "70000"])
def test_env_port_out_of_range(project: Path, port: str) -> None:
    got = problems(project, {"STATUSMAIL_SMTP_PORT": port})
    assert any(p.startswith("$STATUSMAIL_SMTP_PORT") for p in got)


def test_bad_env_transport_names_the_variable(project: Path) -> None:
    got = problems(project, {"STATUSMAIL_TRANSPORT": "pigeon"})
    assert len(got) == 1
    assert got[0].startswith("$STATUSMAIL_TRANSPORT")


def test_bad_transport(project: Path) -> None:
    line = replace_in(project, "transport: maildir", "transport: pigeon")
    assert problems(project) == [
        f"{project}:{line}: transport is 'pigeon'; expected one of maildir, smtp"
    ]


def test_bad_security(project: Path) -> None:
    line = replace_in(project, "security: starttls ", "security: ssl ")
    assert problems(project) == [
        f"{project}:{line}: 'smtp.security' is 'ssl'; expected one of starttls, tls, none"
    ]


def test_negative_rate(project: Path) -> None:
    line = replace_in(project, "rate: 20 ", "rate: -5 ")
    assert problems(project) == [f"{project}:{line}: 'sending.rate' must be a number ≥ 0"]


def test_rate_zero_means_unlimited(project: Path) -> None:
    replace_in(project, "rate: 20 ", "rate: 0 ")
    assert load_config(project, {}).sending.rate == 0


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("concurrency: 4 ", "concurrency: 0 ", "'sending.concurrency' must be a whole number ≥ 1"),
        (
            "max_attempts: 5 ",
            "max_attempts: 2.5 ",
            "'sending.max_attempts' must be a whole number ≥ 1",
        ),
        ("port: 587", 'port: "587"', "'smtp.port' must be a whole number from 1 to 65535"),
        (
            "stop_after_failures: 0.2",
            "stop_after_failures: 1.5",
            "'sending.stop_after_failures' must be a share from 0 to 1",
        ),
        (
            "url: https://www.startmail.example/status/unsubscribe/{token}",
            "url: http://www.startmail.example/status/unsubscribe/{token}",
            "'unsubscribe.url' must be an https URL containing {token}",
        ),
        (
            "url: https://www.startmail.example/status/unsubscribe/{token}",
            "url: https://www.startmail.example/status/unsubscribe/",
            "'unsubscribe.url' must be an https URL containing {token}",
        ),
        (
            "address: status@startmail.example}",
            "address: status}",
            "'sender.address' is not an email address",
        ),
        # values that go into headers: check said ok, send wrote them as they were
        (
            "address: status@startmail.example}",
            "address: status@}",
            "'sender.address' is not an email address",
        ),
        (
            "reply_to: support@startmail.example",
            'reply_to: "@"',
            "'reply_to' is not an email address",
        ),
        (
            "mailto: unsubscribe@startmail.example",
            'mailto: "not an address"',
            "'unsubscribe.mailto' is not an email address",
        ),
        (
            "list_id: status.startmail.example",
            'list_id: "my list <x>"',
            "'list_id' is 'my list <x>'; it must be a dotted name like status.example.org "
            "(RFC 2919: no spaces or angle brackets)",
        ),
        (
            "url: https://www.startmail.example/status/unsubscribe/{token}",
            "url: https://www.startmail.example/status/un subscribe>/{token}",
            "'unsubscribe.url' holds a space or one of <>\"{}|\\^` (percent-encode it)",
        ),
        # a typo gave English to those it named, silently; NO became the region FALSE
        (
            "default_locale_by_region: {RU: ru,",
            "default_locale_by_region: {RU: rus,",
            "'default_locale_by_region.RU' is 'rus'; expected one of en, ru",
        ),
        (
            "default_locale_by_region: {RU: ru,",
            "default_locale_by_region: {NO: en, RU: ru,",
            "'default_locale_by_region': YAML reads NO as false: write \"NO\"",
        ),
        # .nan passed every comparison: check said ok, send stopped with a traceback
        ("rate: 20 ", "rate: .nan ", "'sending.rate' must be a number ≥ 0"),
        (
            "stop_after_failures: 0.2",
            "stop_after_failures: .nan",
            "'sending.stop_after_failures' must be a number ≥ 0",
        ),
        ("lease: 15 ", "lease: .nan ", "'sending.lease' must be a number ≥ 1"),
        ("lease: 15 ", "lease: .inf ", "'sending.lease' must be a number ≥ 1"),
        ("timeout: 30", "timeout: .nan", "'smtp.timeout' must be a number ≥ 0.001"),
        ("name: StartMail,", 'name: "Start\\nMail",', "'sender.name' must be one line of text"),
        (
            "list_id: status.startmail.example",
            'list_id: "status.startmail.example\\r\\nBcc: x@example.org"',
            "'list_id' must be one line of text",
        ),
    ],
)
def test_invalid_values_name_file_and_line(project: Path, old: str, new: str, message: str) -> None:
    line = replace_in(project, old, new)
    assert problems(project) == [f"{project}:{line}: {message}"]


def test_unknown_key_top_level(project: Path) -> None:
    text = project.read_text(encoding="utf-8")
    project.write_text(text + "colour: blue\n", encoding="utf-8")
    line = len(text.splitlines()) + 1
    assert problems(project) == [f"{project}:{line}: unknown key 'colour'"]


def test_unknown_key_nested(project: Path) -> None:
    line = replace_in(project, "  timeout: 30\n", "  timeout: 30\n  tiemout: 5\n") + 1
    assert problems(project) == [f"{project}:{line}: unknown key 'smtp.tiemout'"]


def test_several_problems_reported_together(project: Path) -> None:
    t_line = replace_in(project, "transport: maildir", "transport: pigeon")
    r_line = replace_in(project, "rate: 20 ", "rate: -1 ")
    got = problems(project)
    assert f"{project}:{t_line}: transport is 'pigeon'; expected one of maildir, smtp" in got
    assert f"{project}:{r_line}: 'sending.rate' must be a number ≥ 0" in got
    assert len(got) == 2


def test_broken_yaml(project: Path) -> None:
    error_line = replace_in(
        project, "serve: {host: 127.0.0.1, port: 8080}", "serve: {host: 127.0.0.1, port: 8080"
    )
    # The flow mapping is left open across the comment lines; YAML finds the error at
    # the next key, but the line to fix is the one that opened it.
    got = problems(project)
    assert len(got) == 1
    assert got[0].startswith(f"{project}:{error_line}: invalid YAML")
    assert "the { … } opened on this line is not closed" in got[0]


def test_broken_yaml_bad_indentation(project: Path) -> None:
    line = replace_in(project, "  port: 587", "   port: 587")
    got = problems(project)
    assert len(got) == 1
    assert got[0].startswith(f"{project}:{line}: invalid YAML")


def test_missing_required_keys(tmp_path: Path) -> None:
    path = tmp_path / "statusmail.yaml"
    path.write_text("transport: maildir\n")
    got = problems(path)
    for key in (
        "sender.name",
        "sender.address",
        "unsubscribe.url",
        "unsubscribe.mailto",
        "list_id",
    ):
        assert any(f"missing {key!r}" in p for p in got), (key, got)
    assert all(p.startswith(f"{path}:") for p in got)


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "statusmail.yaml"
    path.write_text("- just\n- a list\n")
    got = problems(path)
    assert f"{path}:1: the file must be a mapping" in got


def test_section_not_a_mapping_has_a_line(tmp_path: Path) -> None:
    path = tmp_path / "statusmail.yaml"
    path.write_text("list_id: x\nsender: StartMail\n")
    got = problems(path)
    assert f"{path}:2: sender must be a mapping" in got


def test_missing_file(tmp_path: Path) -> None:
    assert problems(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: config file not found"]


def test_config_is_a_folder(tmp_path: Path) -> None:
    assert problems(tmp_path) == [f"{tmp_path}: config file not found"]


def test_multi_line_reply_to_refused(project: Path) -> None:
    line = replace_in(
        project,
        "reply_to: support@startmail.example",
        'reply_to: "support@startmail.example\\nBcc: evil@example.org"',
    )
    got = problems(project)
    assert len(got) == 1
    assert got[0].startswith(f"{project}:{line}: ")


def test_with_overrides(project: Path) -> None:
    config = load_config(project, {})
    changed = config.with_overrides(rate=2.5, concurrency=1)
    assert (changed.sending.rate, changed.sending.concurrency) == (2.5, 1)
    assert changed.sending.max_attempts == 5
    assert config.sending.rate == 20.0  # the original is unchanged
    assert config.with_overrides().sending == config.sending


# -- the unsubscribe secret ----------------------------------------------------------


def test_secret_from_environment(project: Path) -> None:
    config = load_config(project, {})
    env = {"STATUSMAIL_UNSUBSCRIBE_SECRET": "s3cret"}
    assert (config.keyring(env)[0].secret, config.keyring(env)[1]) == (b"s3cret", False)
    smtp = load_config(project, {"STATUSMAIL_TRANSPORT": "smtp"})
    assert (smtp.keyring(env)[0].secret, smtp.keyring(env)[1]) == (b"s3cret", False)


def test_secret_missing_with_smtp_raises(project: Path) -> None:
    config = load_config(project, {"STATUSMAIL_TRANSPORT": "smtp"})
    with pytest.raises(ConfigError) as info:
        config.keyring({})
    assert "$STATUSMAIL_UNSUBSCRIBE_SECRET" in str(info.value)
    assert info.value.problems[0].path == project
    # an empty value is not a secret either
    with pytest.raises(ConfigError):
        config.keyring({"STATUSMAIL_UNSUBSCRIBE_SECRET": ""})


def test_secret_missing_with_smtp_uses_process_environment(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(project, {"STATUSMAIL_TRANSPORT": "smtp"})
    with pytest.raises(ConfigError, match=r"\$STATUSMAIL_UNSUBSCRIBE_SECRET"):
        config.keyring()
    monkeypatch.setenv("STATUSMAIL_UNSUBSCRIBE_SECRET", "from-env")
    assert (config.keyring()[0].secret, config.keyring()[1]) == (b"from-env", False)


def test_secret_env_name_is_configurable(project: Path) -> None:
    replace_in(project, "secret_env: STATUSMAIL_UNSUBSCRIBE_SECRET", "secret_env: MY_UNSUB_SECRET")
    config = load_config(project, {"STATUSMAIL_TRANSPORT": "smtp"})
    with pytest.raises(ConfigError, match=r"\$MY_UNSUB_SECRET"):
        config.keyring({"STATUSMAIL_UNSUBSCRIBE_SECRET": "wrong variable"})
    keys, is_dev = config.keyring({"MY_UNSUB_SECRET": "x"})
    assert (keys.secret, is_dev) == (b"x", False)


def test_dev_secret_with_maildir(project: Path) -> None:
    config = load_config(project, {})
    keys, is_dev = config.keyring({})
    secret = keys.secret
    assert is_dev is True
    assert secret == DEV_UNSUBSCRIBE_SECRET.encode()
    assert b"DEVELOPMENT" in secret


# -- the ledger URL ----------------------------------------------------------------------

# Two halves no message of statusmail's holds, so a leak of either is a leak.
HALVES = ("Kq7zX", "Wm2vR")


@pytest.mark.parametrize(
    ("url", "names"),
    [
        ("postgresql://statusmail:Kq7zX%Wm2vR@db.example/ledger", "%"),
        ("postgresql://statusmail:Kq7zX@Wm2vR@db.example/ledger", "'@'"),
        ("postgresql://statusmail:Kq7zX/Wm2vR@db.example/ledger", "'/'"),
        ("postgresql://statusmail:Kq7zXWm2vR@db.example:54x2/ledger", "port '54x2'"),
        ("postgresql://statusmail:Kq7zXWm2vR@db.example:65536/ledger", "port '65536'"),
        ("postgresql://statusmail:Kq7zXWm2vR@[::1/ledger", "IPv6 address [::1"),
        ("postgresql://statusmail:Kq7zXWm2vR@[::g]:5432/ledger", "[::g] is not an IPv6"),
        ("postgresql://statusmail:Kq7zXWm2vR@::1:5432/ledger", "in brackets"),
    ],
)
def test_a_bad_ledger_url_is_one_line_without_the_password(
    project: Path, url: str, names: str
) -> None:
    result = invoke(project, "list", env={"STATUSMAIL_LEDGER": url})
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("error: the ledger URL postgresql://") and names in line, line
    assert not any(half in line for half in HALVES), line


@given(password=st.text(alphabet="0123456789abcxyz@/:%?#[],.!$&*+;=~-_", min_size=6))
def test_no_password_shows_whatever_it_holds(password: str) -> None:
    url = f"postgresql://statusmail:{password}@db.example:5432/ledger"
    try:
        shown = describe(url)
    except LedgerError as exc:
        shown = str(exc)
    assert password not in shown
    encoded = f"postgresql://statusmail:{quote(password, safe='')}@db.example:5432/ledger"
    assert describe(encoded) == "postgresql://db.example:5432/ledger"


def test_a_ledger_is_named_with_its_schema() -> None:
    """Two deployments in schemas of one database were told apart by nothing (review)."""
    base = "postgresql://statusmail:-csearch_path=secret@db.example:5432/ledger"
    assert describe(base) == "postgresql://db.example:5432/ledger"
    for options in ("-csearch_path%3Dstaging", "-c%20search_path%3Dstaging,public"):
        named = describe(f"{base}?sslmode=require&options={options}")
        assert named == "postgresql://db.example:5432/ledger (schema staging)"


def test_a_percent_encoded_password_reaches_the_server(project: Path, postgres: str) -> None:
    user = query(postgres, "SELECT current_user")[0][0]
    password = "p@ss/w%rd:" + HALVES[0]
    scheme, _, rest = postgres.partition("://")
    url = f"{scheme}://{user}:{quote(password, safe='')}@{rest.rpartition('@')[2]}"
    result = invoke(project, "ledger", "migrate", env={"STATUSMAIL_LEDGER": url})
    assert result.exit_code == 0, result.output
    assert "schema version" in result.output and HALVES[0] not in result.output


@pytest.mark.parametrize("value", ["nan", "inf", "-nan"])
def test_a_rate_on_the_command_line_must_be_a_finite_number(project: Path, value: str) -> None:
    result = invoke(project, "send", "update-2020-04-21", "--yes", "--rate", value)
    assert result.exit_code == 2, result.output
    assert "is not a finite number" in result.stderr
    assert "Traceback" not in result.output
    assert not list((project.parent / "outbox" / "new").glob("*"))


@pytest.mark.timeout(20)
def test_a_yaml_alias_bomb_in_default_locale_by_region_is_refused_unexpanded(
    project: Path,
) -> None:
    """Nine levels of aliases nine wide: str() of the value took 16 s and 1.3 GB, then
    a MemoryError traceback."""
    bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10)
    )
    text = project.read_text(encoding="utf-8")
    text = bomb + text.replace(
        "default_locale_by_region: {RU: ru,", "default_locale_by_region: {RU: *a9,"
    )
    project.write_text(text, encoding="utf-8")
    found = problems(project)
    assert any("'default_locale_by_region.RU' is not a word" in p for p in found), found


@pytest.mark.parametrize(
    ("host", "by_env", "refused"),
    [
        ("relay.example", False, True),
        ("relay.example", True, True),
        ("127.0.0.1", True, False),
        ("localhost", False, False),
        ("::1", False, False),
    ],
)
def test_a_password_never_crosses_the_network_unencrypted(
    project: Path, host: str, by_env: bool, refused: bool
) -> None:
    """``smtp.username`` with ``security: none`` sent AUTH PLAIN, the password in it,
    in the clear to any relay, and check said nothing; one variable could do that."""
    text = project.read_text(encoding="utf-8")
    if not by_env:
        text = text.replace("security: starttls", "security: none")
    project.write_text(text, encoding="utf-8")
    env = {**SECRET_ENV, "STATUSMAIL_SMTP_HOST": host}
    if by_env:
        env["STATUSMAIL_SMTP_SECURITY"] = "none"
    result = invoke(project, "check", env=env)
    said = "the password would cross the network"
    assert (said in result.output) == refused, result.output
    if refused:
        assert result.exit_code == 1
        assert ("$STATUSMAIL_SMTP_SECURITY" if by_env else f"{project}:") in result.output


@pytest.mark.parametrize(("host", "refused"), [("imap.example.net", True), ("127.0.0.1", False)])
def test_a_bounce_mailbox_password_never_crosses_the_network_unencrypted(
    project: Path, host: str, refused: bool
) -> None:
    """IMAP's LOGIN with ``security: none`` sent the mailbox's password in the clear."""
    imap = {"host": host, "security": "none", "username": "b", "password_env": "BOX_PASSWORD"}
    set_bounces(project, imap=imap)
    result = invoke(project, "check", env={**SECRET_ENV, "BOX_PASSWORD": "x"})
    said = "the mailbox's password would cross the network"
    assert (said in result.output) == refused, result.output
    assert (result.exit_code == 1) if refused else said not in result.output
