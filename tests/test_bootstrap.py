"""scripts/bootstrap: ``--for demo`` installs only what the demo runs, ``--for test``
everything, and a long step reports progress instead of minutes of silence.

The real installs take minutes and the network, so here every installer is a stand-in on
``PATH`` (python3 and the venv's python, npm, apt-get, apt-cache, sudo) that records its
command line and makes what the script checks for. The real bootstrap runs at the start of
every ``scripts/test`` and ``scripts/demo``, from a fresh clone in CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WAIT = 120.0

# Every stand-in: log "name args", then act. The venv's python is a copy of python3's.
STAND_IN = r"""#!/bin/sh
echo "$(basename "$0") $*" >> "$BOOTSTRAP_LOG"
case "$(basename "$0") $*" in
  "python3 -c "*) exit 0 ;;
  "python3 -m venv "*|"python3.13 -m venv "*)
    mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && exit 0 ;;
  "python -m pip install --progress-bar off -c constraints.txt -e ."*)
    echo "Collecting stand-in-package"
    # Hold the step open until the test has seen a progress line (bounded).
    i=0
    while [ ! -e "$BOOTSTRAP_BARRIER" ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done
    exit 0 ;;
  "npm ci --prefix "*) mkdir -p "$3/node_modules" ; echo "added 1 package" ; exit 0 ;;
  "sudo "*) shift; exec "$@" ;;
esac
exit 0
"""


def _layout(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the files bootstrap reads, and a PATH directory of stand-ins."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "scripts" / "bootstrap", repo / "scripts" / "bootstrap")
    shutil.copy(ROOT / "scripts" / "debian-packages", repo / "scripts" / "debian-packages")
    for name in ROOT.glob("constraints*.txt"):
        shutil.copy(name, repo / name.name)
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    for lock in [*ROOT.glob("harness/*/package-lock.json"), ROOT / "conformance/package-lock.json"]:
        target = repo / lock.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(lock, target)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("python3", "npm", "node", "apt-get", "apt-cache", "sudo"):
        stand_in = bin_dir / tool
        stand_in.write_text(STAND_IN)
        stand_in.chmod(0o755)
    return repo, bin_dir


def _environment(tmp_path: Path, bin_dir: Path) -> dict[str, str]:
    system = [d for d in ("/usr/bin", "/bin") if Path(d).is_dir()]
    return {
        "PATH": os.pathsep.join([str(bin_dir), *system]),
        "HOME": str(tmp_path / "home"),  # no pyenv of the real user's
        "BOOTSTRAP_LOG": str(tmp_path / "commands.log"),
        "BOOTSTRAP_BARRIER": str(tmp_path / "barrier"),
        "GRANTKEEPER_BOOTSTRAP_TICK": "1",
    }


def _run(tmp_path: Path, purpose: str) -> tuple[list[str], str]:
    repo, bin_dir = _layout(tmp_path)
    env = _environment(tmp_path, bin_dir)
    process = subprocess.Popen(
        ["bash", str(repo / "scripts" / "bootstrap"), "--for", purpose],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if line.startswith("bootstrap:   ... "):
                Path(env["BOOTSTRAP_BARRIER"]).touch()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        process.wait(timeout=WAIT)
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(WAIT)
    assert process.stderr is not None
    process.stderr.close()
    assert process.returncode == 0, "".join(lines)
    return Path(env["BOOTSTRAP_LOG"]).read_text().splitlines(), "".join(lines)


@pytest.mark.skipif(sys.platform != "linux", reason="bootstrap targets Debian")
def test_bootstrap_for_the_demo_skips_the_test_only_environments(tmp_path: Path) -> None:
    commands, stderr = _run(tmp_path, "demo")
    joined = "\n".join(commands)
    # grantkeeper with the mcp extra: not the test tools (pytest, mypy, ruff, psycopg...).
    assert "-m pip install --progress-bar off -c constraints.txt -e .[mcp]" in joined
    assert ".[dev]" not in joined
    assert any("npm ci --prefix harness/oidc" in c for c in commands)
    test_only_parts = (".venv-mcp1", ".venv-agents-mcp1", ".venv-py313", "harness/mcp_remote")
    for test_only in (*test_only_parts, "conformance"):
        assert test_only not in joined, f"--for demo installed {test_only}"
    assert not (tmp_path / "repo" / ".venv-mcp1").exists()
    # A long step says how far it got, then that it is done.
    assert "bootstrap:   ... " in stderr and "Collecting stand-in-package" in stderr
    assert "bootstrap:   done in " in stderr


@pytest.mark.skipif(sys.platform != "linux", reason="bootstrap targets Debian")
def test_bootstrap_for_the_tests_installs_everything(tmp_path: Path) -> None:
    commands, _ = _run(tmp_path, "test")
    joined = "\n".join(commands)
    for needed in (
        "-c constraints.txt -e .[dev]",
        "python3 -m venv .venv-mcp1",
        "python3 -m venv .venv-mcp1-legacy",
        "-c constraints-mcp1.txt -e . mcp",
        "python3 -m venv .venv-agents-mcp1",
        "-c constraints-agents-mcp1.txt -e . mcp langchain-mcp-adapters openai-agents",
        "npm ci --prefix harness/oidc",
        "npm ci --prefix harness/mcp_remote",
        "npm ci --prefix conformance",
    ):
        assert needed in joined, f"--for test did not run {needed}"


@pytest.mark.skipif(sys.platform != "linux", reason="bootstrap targets Debian")
def test_the_test_set_serves_the_demo_but_not_the_other_way_round(tmp_path: Path) -> None:
    _run(tmp_path, "test")
    log = tmp_path / "commands.log"
    log.write_text("")
    _run(tmp_path, "demo")  # the same tree: .venv already holds the test set
    assert "pip install" not in log.read_text()
    stamp = tmp_path / "repo" / ".venv" / ".grantkeeper-installed"
    stamp.write_text(stamp.read_text().replace("test:", "demo:"))
    _run(tmp_path, "test")
    assert "-e .[dev]" in log.read_text()


@pytest.mark.parametrize("args", [["--for", "prod"], ["--for"]])
def test_bootstrap_refuses_an_unknown_purpose(tmp_path: Path, args: list[str]) -> None:
    repo, bin_dir = _layout(tmp_path)
    result = subprocess.run(
        ["bash", str(repo / "scripts" / "bootstrap"), *args],
        capture_output=True,
        text=True,
        env=_environment(tmp_path, bin_dir),
        timeout=WAIT,
    )
    assert result.returncode == 2
    assert "--for takes test or demo" in result.stderr
    assert not (tmp_path / "commands.log").exists()  # nothing was installed
