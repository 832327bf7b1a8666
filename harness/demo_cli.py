"""The demo's CLI walk-through: the commands a new user types, run for real.

A real authorization server and a real MCP server on loopback, a throwaway
``GRANTKEEPER_HOME``, and ``grantkeeper`` itself in a subprocess whose stdout is an
80-column terminal (a pseudo-terminal), so what is printed is what a user sees. The login's
browser is played by :mod:`harness.fake_browser` through ``$BROWSER``, as a user who clicks
"approve" would. The access token ``grantkeeper token`` prints is shown masked: it is a
secret, and the demo's output gets pasted into places.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.authserver import AuthServer
from harness.mcp_server import McpServer
from harness.terminal import run_on_terminal

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = 80

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


@dataclass(frozen=True)
class Step:
    """One command of the walk-through and what the terminal showed."""

    command: str
    """As the user would type it (server URL shortened to the saved name where it is one)."""
    output: str
    exit_code: int


def run_in_terminal(args: Sequence[str], env: dict[str, str]) -> tuple[str, int]:
    """Run ``args`` on an 80-column terminal; return what it printed (stdout and stderr,
    colour codes removed) and the exit code."""
    drawn, code = run_on_terminal(args, env, columns=COLUMNS, stderr=True, cwd=ROOT)
    text = _ANSI.sub("", drawn).replace("\r\n", "\n")
    return text.rstrip("\n"), code


def _fake_browser(directory: Path) -> Path:
    # $BROWSER must name one program: webbrowser appends the URL and splits nothing.
    path = directory / "browser"
    path.write_text(f'#!/bin/sh\nexec {sys.executable} -m harness.fake_browser "$@" >/dev/null\n')
    path.chmod(0o700)
    return path


def _mask(text: str, secret: str) -> str:
    return text.replace(secret, f"{secret[:4]}…(an access token, {len(secret)} characters)")


def walk_through() -> list[Step]:
    """log in, status, token, call: each run as a user runs it, against fresh servers."""
    with (
        tempfile.TemporaryDirectory(prefix="grantkeeper-demo-cli-") as scratch,
        AuthServer() as auth,
        McpServer(auth_server=auth) as server,
    ):
        home = Path(scratch) / "home"
        env = {
            **os.environ,
            "GRANTKEEPER_HOME": str(home),
            "GRANTKEEPER_STORE": "file",
            "BROWSER": str(_fake_browser(Path(scratch))),
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
            "NO_COLOR": "1",
        }
        for name in ("GRANTKEEPER_DEBUG", "FORCE_COLOR"):
            env.pop(name, None)
        commands = [
            ["login", server.url, "--name", "demo"],
            ["status"],
            ["token", "demo"],
            ["call", "demo", "echo", "--arg", "text=hello from the CLI"],
        ]
        steps = []
        token: str | None = None
        for command in commands:
            output, code = run_in_terminal([sys.executable, "-m", "grantkeeper", *command], env=env)
            if command[0] == "token" and code == 0:
                token = output.strip().splitlines()[-1]
            if token:
                output = _mask(output, token)
            typed = " ".join(_quote(part) for part in ["grantkeeper", *command])
            steps.append(Step(typed, output, code))
            if code != 0:
                break
        return steps


def _quote(part: str) -> str:
    return f"'{part}'" if any(c in part for c in " \"'$") else part


if __name__ == "__main__":
    for step in walk_through():
        print(f"$ {step.command}\n{step.output}\n[exit {step.exit_code}]\n")
