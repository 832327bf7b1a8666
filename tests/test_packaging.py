"""The package as a user gets it: compatible ranges, a wheel that works with only its declared
dependencies at their lowest versions, an sdist whose tests run, and Python 3.13."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import venv
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import grantkeeper
from grantkeeper import CredentialKey, FileStore
from grantkeeper.testing import sample_record
from tests.helpers import RESOURCE, ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PIP_TIMEOUT = 600


def requirements() -> list[Requirement]:
    project = PYPROJECT["project"]
    found = [Requirement(text) for text in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        found += [Requirement(text) for text in extra if not text.startswith("grantkeeper[")]
    return found


def pins(name: str) -> dict[str, Version]:
    pinned = {}
    for line in (ROOT / name).read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            package, _, version = text.partition("==")
            pinned[package.strip().lower().replace("_", "-")] = Version(version.strip())
    return pinned


def test_dependencies_are_compatible_ranges_that_the_exact_pins_satisfy() -> None:
    exact = pins("constraints.txt")
    lowest = pins("constraints-lowest.txt")
    for requirement in requirements():
        operators = {spec.operator: Version(spec.version) for spec in requirement.specifier}
        assert set(operators) == {">=", "<"}, f"{requirement} is not a range"
        low, high = operators[">="], operators["<"]
        name = requirement.name.lower()
        tested = exact[name]
        assert low <= tested < high, f"constraints.txt {name}=={tested} outside {requirement}"
        # The upper bound is the tested version's next major; a 0.x tool (ruff) may stop
        # at its next minor, its breaking step.
        allowed = {Version(str(tested.major + 1))}
        if tested.major == 0:
            allowed.add(Version(f"0.{tested.minor + 1}"))
        assert high in allowed, requirement
    base = [Requirement(text) for text in PYPROJECT["project"]["dependencies"]]
    for requirement in base:  # the lower bounds the wheel test installs
        [floor] = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
        assert lowest[requirement.name.lower()] == floor, requirement


def test_metadata_a_user_looks_for() -> None:
    project = PYPROJECT["project"]
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert project["license"] == "Apache-2.0" and "LICENSE" in project["license-files"]
    assert {"Homepage", "Source", "Issues", "Changelog"} <= set(project["urls"])
    versions = {c.rsplit(" ", 1)[-1] for c in project["classifiers"] if "Python :: 3." in c}
    assert {"3.11", "3.13"} <= versions
    assert "## Unreleased" in (ROOT / "CHANGELOG.md").read_text()
    # One release, named alike in the metadata and in what grantkeeper sends (clientInfo).
    assert project["version"] == grantkeeper.__version__
    readme = (ROOT / "README.md").read_text().splitlines()
    assert readme[3].startswith("scripts/demo") and readme[4].startswith("scripts/test")
    sections = [line for line in readme if line.startswith("## ")]
    assert sections[0] == "## Install", sections[:3]


def _venv(where: Path) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(where)
    return where / "bin" / "python"


def _run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env if env is not None else _clean_env(),
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT,
    )
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done.stdout


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without this suite's PYTHONPATH: the venv must import its own copy."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GRANTKEEPER_STORE")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(sdist, wheel): the sdist built from a copy of this tree, the wheel built from it."""
    work = tmp_path_factory.mktemp("build")
    source = work / "source"
    ignore = shutil.ignore_patterns(
        ".git", ".venv*", "node_modules", "__pycache__", "*.egg-info", "build", "dist",
        ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", ".coverage",
    )  # fmt: skip
    shutil.copytree(ROOT, source, ignore=ignore, symlinks=True)
    python = _venv(work / "venv")
    _run(python, "-m", "pip", "install", "-q", *PYPROJECT["build-system"]["requires"])
    out = work / "dist"
    build = (
        "import sys\nfrom setuptools import build_meta as b\n"
        "build = b.build_sdist if sys.argv[2] == 'sdist' else b.build_wheel\n"
        "print(build(sys.argv[1]))"
    )
    sdist = out / _run(python, "-c", build, out, "sdist", cwd=source).strip().splitlines()[-1]
    with tarfile.open(sdist) as archive:
        archive.extractall(work / "unpacked", filter="data")
    [unpacked] = (work / "unpacked").iterdir()
    wheel = out / _run(python, "-c", build, out, "wheel", cwd=unpacked).strip().splitlines()[-1]
    yield unpacked, wheel


def test_the_sdist_ships_what_its_tests_need_and_they_run(built: tuple[Path, Path]) -> None:
    unpacked, _ = built
    for shipped in (
        "LICENSE", "CHANGELOG.md", "constraints.txt", "constraints-lowest.txt",
        "harness/mcp_server.py", "harness/authserver.py", "harness/oidc/package-lock.json",
        "tests/conftest.py", "tests/helpers.py", "scripts/bootstrap",
        "examples/pydantic_ai_toolset.py", "constraints-agents-mcp1.txt",
    ):  # fmt: skip
        assert (unpacked / shipped).is_file(), shipped
    assert not (unpacked / "harness/oidc/node_modules").exists()
    env = _clean_env(PYTHONPATH=f"{unpacked / 'src'}:{unpacked}")
    out = _run(
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
        "tests/test_cli_daily.py", "-k", "public_server or unknown_server or profile_with",
        cwd=unpacked, env=env,
    )  # fmt: skip
    assert re.search(r"\b3 passed", out), out


def test_the_wheel_works_with_only_its_declared_dependencies_at_their_lowest(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    _, wheel = built
    python = _venv(tmp_path / "venv")
    _run(python, "-m", "pip", "install", "-q", "-c", ROOT / "constraints-lowest.txt", wheel)
    frozen = _run(python, "-m", "pip", "freeze")
    for name in ("mcp", "httpx2", "keyring", "psycopg"):  # no extra came along
        assert f"\n{name}==" not in f"\n{frozen}", name
    assert "\nrich==13.7.1" in f"\n{frozen}" and "\nclick==8.1.7" in f"\n{frozen}"
    home = tmp_path / "home"
    FileStore(home).write(
        CredentialKey.for_server(RESOURCE),
        sample_record("wheel-access-tok", "wheel-refresh-tok", now=datetime.now(UTC)),
        expected_version=None,
    )
    env = _clean_env(GRANTKEEPER_HOME=str(home))
    cli = tmp_path / "venv" / "bin" / "grantkeeper"
    assert _run(cli, "--version", env=env).strip().endswith(PYPROJECT["project"]["version"])
    [entry] = json.loads(_run(cli, "status", "--json", env=env))
    assert entry["state"] == "oauth" and entry["store"] == "file"  # no keyring: files
    assert _run(cli, "token", RESOURCE, env=env) == "wheel-access-tok\n"
    doctor = _run(cli, "doctor", env=env)
    assert "pip install 'grantkeeper[keyring]'" in doctor
    for args, extra in (
        (["tools", RESOURCE], "mcp"),
        (["proxy", RESOURCE], "mcp"),
        (["status", "--store", "keyring"], "keyring"),
        (["status", "--store", "postgresql://gk@127.0.0.1:9/gk"], "postgresql"),
    ):
        done = subprocess.run([cli, *args], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode in (1, 2) and "Traceback" not in done.stderr, done.stderr
        assert f"pip install 'grantkeeper[{extra}]'" in done.stderr, done.stderr


def test_python_313_runs_the_basic_tests_and_the_cli() -> None:
    python = ROOT / ".venv-py313" / "bin" / "python"
    assert python.exists(), "scripts/bootstrap creates .venv-py313 (Python 3.13)"
    version = _run(python, "-c", "import sys; print(sys.version_info[:2])")
    assert version.strip() == "(3, 13)"
    env = _clean_env(PYTHONPATH=f"{ROOT / 'src'}:{ROOT}")
    out = _run(
        python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
        "tests/test_record.py", "tests/test_servers.py", "tests/test_cli.py",
        "tests/test_cli_daily.py",
        cwd=ROOT, env=env,
    )  # fmt: skip
    assert " passed" in out and "failed" not in out, out
