"""What the pipelines install works on its own (issue 24): pyproject.toml builds an sdist
and a wheel holding the whole package, and the wheel, installed into a fresh virtual
environment by the pipelines' own install line, runs ``statusmail --help``, ``--version``
and the sample's dry run.

Kept to a few seconds: the build calls the PEP 517 hooks of the backend pyproject.toml
names, in this environment, with no isolated build environment (what ``pip wheel
--no-build-isolation`` does, less pip's start-up). As ``python -m build`` does, the sdist is
built first and the wheel from the unpacked sdist, so a file the sdist leaves out shows.
(``python -m build`` and ``twine check`` were run by hand on the same tree: both clean.)
The fresh venv has no pip and no dependencies of its own: a ``.pth`` file puts this
environment's site-packages on its path, after its own, so this environment's pip and the
installed dependencies serve it without a download (PIP_NO_INDEX keeps pip off every
index); statusmail itself comes only from the wheel.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

import pytest
import yaml

import statusmail
from conftest import REPO, clean_environ, copy_sample, missing

SOURCE = REPO / "src" / "statusmail"
PIPELINES = REPO / "contrib" / "ci"
UPDATE = "update-2020-04-21"
# Every module of the package, as the wheel must hold it.
MODULES = sorted(
    p.relative_to(SOURCE.parent).as_posix()
    for p in SOURCE.rglob("*.py")
    if "__pycache__" not in p.parts
)
# The sample project, packaged for ``statusmail init`` (project/sample/ links to it).
SAMPLE = sorted(
    f"statusmail/project/sample/{p.relative_to(REPO).as_posix()}"
    for part in ("statusmail.yaml", "regions.yaml", "updates", "subscribers", "templates")
    for p in ([REPO / part] if (REPO / part).is_file() else (REPO / part).rglob("*"))
    if p.is_file() and "__pycache__" not in p.parts
)

# What ``python -m build --no-isolation`` does, in one process: the backend that
# pyproject.toml names builds the sdist in the project's folder, then the wheel in the
# unpacked sdist; prints the two files.
BUILD = """
import importlib, os, sys, tarfile
backend = importlib.import_module(sys.argv[1])
project, out, unpacked = sys.argv[2:]
os.chdir(project)
sdist = os.path.join(out, backend.build_sdist(out))
with tarfile.open(sdist) as archive:
    archive.extractall(unpacked, filter="data")
(top,) = os.listdir(unpacked)
os.chdir(os.path.join(unpacked, top))
print(sdist, os.path.join(out, backend.build_wheel(out)), sep="\\n")
"""


def require_build_tools() -> None:
    try:
        setuptools = importlib.metadata.version("setuptools")
        importlib.metadata.version("pip")
    except importlib.metadata.PackageNotFoundError as exc:
        missing(f"{exc.name} is not installed: the test extras bring it, to build and install")
    if int(setuptools.split(".")[0]) < 77:
        missing(f"setuptools {setuptools} is older than the test extras' 77")
    if shutil.which("bash") is None:
        missing("bash is not installed: the pipelines' install line runs in it")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the sdist, the wheel built from it)."""
    require_build_tools()
    tmp = tmp_path_factory.mktemp("build")
    project = tmp / "project"
    project.mkdir()
    # What setuptools would pick the sdist's files from (tests/ among them: it takes
    # tests/test*.py unless MANIFEST.in says otherwise), without the build's leftovers.
    for name in ("pyproject.toml", "README.md", "MANIFEST.in", "LICENSE"):
        shutil.copy(REPO / name, project / name)
    for name in ("src", "tests"):
        leftovers = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist")
        shutil.copytree(REPO / name, project / name, ignore=leftovers)
    backend = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))[
        "build-system"
    ]["build-backend"]
    (tmp / "dist").mkdir()
    result = subprocess.run(
        [sys.executable, "-c", BUILD, backend, project, tmp / "dist", tmp / "unpacked"],
        env=clean_environ(PYTHONDONTWRITEBYTECODE="1"),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    # A clean build: nothing the backend warns of as deprecated or soon to stop working.
    assert "deprecat" not in result.stderr.lower(), result.stderr
    sdist, wheel = map(Path, result.stdout.splitlines()[-2:])  # after its log
    return sdist, wheel


def install_script() -> str:
    """The pipelines' install step: the same lines in both."""
    github = yaml.safe_load((PIPELINES / "github-actions.yml").read_text(encoding="utf-8"))
    gitlab = yaml.safe_load((PIPELINES / "gitlab-ci.yml").read_text(encoding="utf-8"))
    steps: list[dict[str, Any]] = github["jobs"]["statusmail"]["steps"]
    (step,) = [s for s in steps if s.get("name") == "Install statusmail"]
    (before,) = gitlab[".statusmail"]["before_script"]
    assert step["run"] == before
    script = str(step["run"])
    assert "pip install statusmail" not in script
    return script


def run_install(venv: Path, source: str) -> subprocess.CompletedProcess[str]:
    """The install step as a CI runner runs it, ``python`` being the venv's."""
    return subprocess.run(
        ["bash", "-e", "-c", install_script()],
        env=clean_environ(
            PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            STATUSMAIL_SOURCE=source,
            PIP_NO_INDEX="1",
            PIP_NO_DEPS="1",
            PIP_CONFIG_FILE=os.devnull,
            PIP_DISABLE_PIP_VERSION_CHECK="1",
            PYTHONDONTWRITEBYTECODE="1",
        ),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def fresh_venv(path: Path) -> Path:
    """A venv with nothing in it but a ``.pth`` line naming this environment's packages."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=60
    )
    (site,) = path.glob("lib/python*/site-packages")
    here = sysconfig.get_paths()["purelib"]
    (site / "test-environment.pth").write_text(here + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def venv(built: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel, installed by the pipelines' install line."""
    venv = fresh_venv(tmp_path_factory.mktemp("venv") / "venv")
    result = run_install(venv, pinned_url(built[1]))
    assert result.returncode == 0, result.stdout + result.stderr
    return venv


def pinned_url(wheel: Path) -> str:
    """The wheel's URL pinned by its content, as pip checks it."""
    return f"{wheel.as_uri()}#sha256={hashlib.sha256(wheel.read_bytes()).hexdigest()}"


def run_installed(
    venv: Path, program: str, *args: str, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """One of the venv's programs, with no statusmail variable in its environment."""
    result = subprocess.run(
        [str(venv / "bin" / program), *args],
        cwd=cwd,
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_the_sdist_and_the_wheel_hold_the_whole_package(built: tuple[Path, Path]) -> None:
    sdist, wheel = built
    version = statusmail.__version__
    assert sdist.name == f"statusmail-{version}.tar.gz"
    assert wheel.name == f"statusmail-{version}-py3-none-any.whl"

    with tarfile.open(sdist) as archive:
        top = f"statusmail-{version}"
        files = {m.name.removeprefix(f"{top}/") for m in archive.getmembers() if m.isfile()}
    sdist_files = {"PKG-INFO", "README.md", "pyproject.toml", "MANIFEST.in", "setup.cfg", "LICENSE"}
    metadata_files = {f for f in files if f.startswith("src/statusmail.egg-info/")}
    package_files = {f"src/{m}" for m in [*MODULES, *SAMPLE]} | {"src/statusmail/py.typed"}
    assert files - metadata_files == sdist_files | package_files  # no tests, no leftovers

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = f"statusmail-{version}.dist-info"
        metadata = HeaderParser().parsestr(archive.read(f"{info}/METADATA").decode())
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    package = {n for n in names if not n.startswith(info)}
    # The modules, the type marker and the sample project init copies (statusmail reads
    # no other data of its own: a project's templates and catalogs are its own); no tests,
    # no compiled leftovers.
    assert package == {*MODULES, *SAMPLE, "statusmail/py.typed"}
    assert metadata["Name"] == "statusmail"
    assert metadata["Version"] == version  # the one version, statusmail.__version__
    assert metadata["License-Expression"] == "MIT"
    # MIT's notice goes with every copy: the text ships in the wheel's metadata
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert b"Permission is hereby granted" in archive_member(wheel, f"{info}/licenses/LICENSE")
    assert metadata["Requires-Python"] == ">=3.11"
    assert "statusmail = statusmail.__main__:run" in entry_points


def test_the_install_line_refuses_a_source_that_is_not_pinned(
    tmp_path: Path, built: tuple[Path, Path]
) -> None:
    venv = fresh_venv(tmp_path / "venv")
    unpinned = (
        "",
        "statusmail",
        built[1].as_uri(),  # a wheel's URL with no hash: the file behind it can change
        f"{built[1].as_uri()}#sha256=",
        "git+https://git.example.org/statusmail.git",
        # an @ before the path pins nothing: a user, a token
        "git+ssh://git@git.example.org/o/statusmail.git",
        "git+https://token@git.example.org/o/statusmail.git",
        "git+https://git.example.org/o/statusmail.git@",  # an @ and nothing after it
    )
    for source in unpinned:
        result = run_install(venv, source)
        assert result.returncode == 1, source
        assert "STATUSMAIL_SOURCE must be statusmail's repository at a tag or commit" in (
            result.stderr
        )
        assert "pip" not in result.stdout + result.stderr.split("\n", 1)[1]
    assert not list(venv.glob("lib/python*/site-packages/statusmail*"))
    # pinned, a tag with a slash in it, a user before the path: pip is asked (and finds
    # no such repository here)
    for source in (
        f"git+file://{tmp_path}/none/statusmail.git@release/1.0",
        "git+https://token@127.0.0.1:9/o/statusmail.git@0123abc",  # port 9: refused
    ):
        result = run_install(venv, source)
        assert "STATUSMAIL_SOURCE must be" not in result.stderr, source
        assert result.returncode != 0 and "statusmail.git" in result.stderr, result.stderr


def test_the_installed_wheel_runs_help_version_and_the_sample_dry_run(
    venv: Path, tmp_path: Path
) -> None:
    config = copy_sample(tmp_path / "project")
    where = run_installed(
        venv, "python", "-c", "import statusmail; print(statusmail.__file__)", cwd=tmp_path
    )
    assert Path(where.stdout.strip()).is_relative_to(venv)  # the wheel's, not this checkout's

    shown = run_installed(venv, "statusmail", "--help", cwd=tmp_path).stdout
    assert shown.startswith("Usage: statusmail [OPTIONS] COMMAND")
    assert {"check", "send", "status"} <= {line.split()[0] for line in commands(shown)}
    version = run_installed(venv, "statusmail", "--version", cwd=tmp_path).stdout
    assert version == f"statusmail, version {statusmail.__version__}\n"

    dry_run = run_installed(
        venv,
        "statusmail",
        "send",
        UPDATE,
        "--dry-run",
        "--preview-dir",
        "previews",
        cwd=config.parent,
    )
    report = dry_run.stdout + dry_run.stderr
    assert f"{UPDATE} (dry run, status ready): 14 recipients, 14 rendered" in report
    assert (config.parent / "previews" / UPDATE / "index.html").is_file()  # PREVIEW_DIR/ID/
    assert not (config.parent / "outbox").exists()  # a dry run delivers nothing

    # init writes the packaged sample, which checks at once (the config found from below)
    run_installed(venv, "statusmail", "init", "fresh", cwd=tmp_path)
    checked = run_installed(venv, "statusmail", "check", cwd=tmp_path / "fresh" / "updates")
    assert "ok" in checked.stdout + checked.stderr


def commands(help_text: str) -> list[str]:
    """The lines of ``--help``'s Commands section."""
    section = help_text.split("Commands:\n", 1)[1]
    return [line for line in section.splitlines() if line.startswith("  ")]


def archive_member(wheel: Path, name: str) -> bytes:
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(name)
