"""A comms person's conveniences (issue 24): ``init`` writes a project that passes
``check`` and previews at once, ``config`` shows each setting with its origin and never a
secret, the config is found in the nearest folder above, ``-v`` works anywhere on the
line, and bash completes the commands."""

from __future__ import annotations

import json
import logging
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SECRET_ENV, UPDATE, clean_environ, invoke, missing


def test_init_writes_a_project_that_checks_and_previews_at_once(tmp_path: Path) -> None:
    folder = tmp_path / "status"
    result = invoke(None, "init", str(folder))
    assert result.exit_code == 0, result.output
    assert {p.name for p in folder.iterdir()} >= {"statusmail.yaml", "updates", "templates"}
    assert not any(p.is_symlink() for p in folder.rglob("*"))  # copies, not links
    config = folder / "statusmail.yaml"
    checked = invoke(config, "check")
    assert checked.exit_code == 0, checked.output
    entry = max(p.stem for p in (folder / "updates").glob("*.yaml"))
    assert f"send {entry} --dry-run" in result.output  # the next step it names works:
    previews = folder / "previews"
    report = invoke(config, "send", entry, "--dry-run", "--json", "--preview-dir", str(previews))
    assert report.exit_code == 0, report.output
    assert json.loads(report.stdout)["variants"], report.stdout
    assert any(previews.rglob("*.eml"))


def test_init_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "statusmail.yaml").write_text("mine\n", encoding="utf-8")
    result = invoke(None, "init", str(tmp_path))
    assert result.exit_code == 1
    assert "already holds statusmail.yaml" in result.output
    assert (tmp_path / "statusmail.yaml").read_text(encoding="utf-8") == "mine\n"


def test_config_shows_every_setting_with_its_origin_and_no_secret(project: Path) -> None:
    secret = SECRET_ENV["STATUSMAIL_UNSUBSCRIBE_SECRET"]
    env = {
        **SECRET_ENV,
        "STATUSMAIL_SMTP_HOST": "relay.example",
        "STATUSMAIL_SMTP_PASSWORD": "pw-1",
    }
    result = invoke(project, "config", "--json", env=env)
    assert result.exit_code == 0, result.output
    assert secret not in result.output and "pw-1" not in result.output
    settings = {s["key"]: s for s in json.loads(result.stdout)["settings"]}
    assert settings["smtp.host"] == {
        "key": "smtp.host",
        "value": "relay.example",
        "origin": "$STATUSMAIL_SMTP_HOST",
    }
    assert settings["smtp.password"]["value"] == "set"
    assert settings["unsubscribe.secret"]["value"] == "set"
    assert settings["smtp.ca_file"]["origin"] == "default"  # only a comment in the file
    line = next(
        n
        for n, text in enumerate(project.read_text(encoding="utf-8").splitlines(), 1)
        if text.startswith("list_id:")
    )
    assert settings["list_id"]["origin"] == f"statusmail.yaml:{line}"
    unset = invoke(project, "config", "--json")
    assert {s["key"]: s["value"] for s in json.loads(unset.stdout)["settings"]}[
        "smtp.password"
    ] == "unset"


def test_every_setting_is_written_or_commented_in_the_sample_config(project: Path) -> None:
    """``init`` promises a config with every key: each key's last part is in the file."""
    result = invoke(project, "config", "--json")
    text = (REPO / "statusmail.yaml").read_text(encoding="utf-8")
    keys = [s["key"] for s in json.loads(result.stdout)["settings"]]
    assert len(keys) > 40
    named = {k for k in keys if not k.endswith("_env")} | {k for k in keys if k.endswith("_env")}
    # a secret's own key (smtp.password) is its *_env key in the file
    absent = [k for k in named if f"{k.rsplit('.', 1)[-1]}:" not in text]
    absent = [k for k in absent if f"{k.rsplit('.', 1)[-1]}_env:" not in text]
    assert not absent


def test_the_config_is_found_from_a_folder_below_it(project: Path) -> None:
    below = project.parent / "updates"
    result = invoke(None, "list", "--json", cwd=below)
    assert result.exit_code == 0, result.output
    assert "update-2020-04-21" in result.stdout


def test_verbose_works_before_and_after_the_command(project: Path) -> None:
    for args in (("-vv", "list"), ("list", "-vv"), ("list", "-v", "-v")):
        result = invoke(project, *args)
        assert result.exit_code == 0, result.output
    root = logging.getLogger("statusmail")
    level = []
    from click.testing import CliRunner

    from statusmail.cli import main

    original = root.level
    try:
        CliRunner().invoke(main, ["list", "--config", str(project), "-vv"])
        level.append(root.level)
    finally:
        root.setLevel(original)
    assert level == [logging.DEBUG]


@pytest.mark.timeout(30)
def test_bash_completes_the_commands_and_their_options() -> None:
    bash = shutil.which("bash")
    if bash is None:
        missing("bash is not installed")
    script = subprocess.run(
        [str(Path(sys.executable).with_name("statusmail"))],
        env={**clean_environ(), "_STATUSMAIL_COMPLETE": "bash_source"},
        capture_output=True,
        text=True,
        timeout=20,
    ).stdout
    assert "complete -o nosort -F" in script, script
    # What bash does on TAB: set COMP_WORDS/COMP_CWORD and call the function the script
    # registered; the command itself must be found as `statusmail` on PATH.
    bin_dir = Path(sys.executable).parent
    probe = f"""
{script}
complete -p statusmail >/dev/null || exit 3
COMP_WORDS=(statusmail se); COMP_CWORD=1; _statusmail_completion statusmail
echo "${{COMPREPLY[@]}}"
COMP_WORDS=(statusmail send --dry); COMP_CWORD=2; _statusmail_completion statusmail
echo "${{COMPREPLY[@]}}"
"""
    done = subprocess.run(
        [bash, "--norc", "-c", probe],
        env={**clean_environ(), "PATH": f"{bin_dir}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()[-2:]
    assert set(first.split()) >= {"send", "serve"}, done.stdout
    assert "--dry-run" in second.split(), done.stdout


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://statusmail:SECRET-PG-1@127.0.0.1:1/statusmail",
        "postgresql://127.0.0.1:1/statusmail?password=SECRET-PG-1&connect_timeout=1",
        "postgresql://statusmail:SECRET-PG-1 and more@127.0.0.1:1/statusmail",
    ],
)
def test_no_command_shows_the_ledger_s_password(project: Path, url: str) -> None:
    """``config`` printed the ledger URL whole; a correction's note in ``check`` and its
    dry run named it whole too (CI, which cannot reach the ledger, printed it in its
    log); and libpq quoted a password holding a space back in its error."""
    entry = project.parent / "updates" / "fix-2020-04-22.yaml"
    entry.write_text(
        (project.parent / "updates" / "update-2020-04-21.yaml")
        .read_text(encoding="utf-8")
        .replace("id: update-2020-04-21", "id: fix-2020-04-22\ncorrects: update-2020-04-21"),
        encoding="utf-8",
    )
    env = {**SECRET_ENV, "STATUSMAIL_LEDGER": url}
    shown = invoke(project, "config", "--json", env=env)
    assert shown.exit_code == 0, shown.output
    settings = {s["key"]: s["value"] for s in json.loads(shown.stdout)["settings"]}
    assert (
        "SECRET-PG-1" not in shown.output and "127.0.0.1:1/statusmail" in settings["paths.ledger"]
    )
    said = [invoke(project, "check", env=env), invoke(project, "status", UPDATE, env=env)]
    said.append(
        invoke(
            project,
            "send",
            "fix-2020-04-22",
            "--dry-run",
            "--preview-dir",
            str(project.parent / "p"),
            env=env,
        )
    )
    for result in said:
        assert "SECRET-PG-1" not in result.output, result.output
        assert "Traceback" not in result.output


def test_a_secret_pasted_where_its_variable_s_name_belongs_is_not_quoted(project: Path) -> None:
    """``password_env: <the password>`` made check say "$<the password> is unset", in
    every format, into CI's log."""
    text = project.read_text(encoding="utf-8")
    assert "password_env: STATUSMAIL_SMTP_PASSWORD" in text
    project.write_text(
        text.replace("password_env: STATUSMAIL_SMTP_PASSWORD", "password_env: SECRET-pasted-k3j4"),
        encoding="utf-8",
    )
    for form in ("text", "github", "junit", "json"):
        result = invoke(project, "check", "--format", form, env=SECRET_ENV)
        assert result.exit_code == 1, result.output
        assert "SECRET-pasted-k3j4" not in result.output, result.output
        assert "must name an environment variable" in result.output


def test_init_from_a_read_only_install_writes_a_project_one_can_edit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sample's files were copied with their modes: from a read-only install (a Nix
    store, an image layer) nobody could add an entry to the project ``init`` wrote."""
    from statusmail.project import starter

    package = tmp_path / "package"
    shutil.copytree(REPO / "src/statusmail/project/sample", package / "sample", symlinks=False)
    shipped = [package / "sample", *(package / "sample").rglob("*")]
    for path in shipped:
        path.chmod(0o555 if path.is_dir() else 0o444)
    monkeypatch.setattr(starter, "files", lambda _name: package)
    folder = tmp_path / "status"
    try:
        result = invoke(None, "init", str(folder))
    finally:  # (so that pytest can remove it, as whoever runs the suite)
        for path in shipped:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert result.exit_code == 0, result.output
    written = [folder, *folder.rglob("*")]
    assert len(written) > 10
    assert all(p.stat().st_mode & stat.S_IWUSR for p in written), [
        p for p in written if not p.stat().st_mode & stat.S_IWUSR
    ]
