"""Run a command with stdout on a pseudo-terminal of a given width, as a user's terminal.

The CLI draws a table only on a terminal (``sys.stdout.isatty()``), sized to it; a pipe gets
tab-separated lines. Tests and the demo that want to see what a person sees run it here.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
from collections.abc import Mapping, Sequence
from pathlib import Path

TIMEOUT = 120.0
"""Seconds a command may stay silent, and may take to exit once its output ended, before
it is killed: generous, for a loaded machine."""


def run_on_terminal(
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    columns: int = 80,
    stderr: bool = False,
    cwd: Path | None = None,
) -> tuple[str, int]:
    """Run ``args`` with stdout (and ``stderr`` if asked, else nothing) on a terminal
    ``columns`` wide; return what it drew, escape codes and ``\\r\\n`` as drawn, and its
    exit code. ``COLUMNS``/``LINES`` are dropped from ``env``: the terminal's size rules."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    environment = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")}
    try:
        process = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=follower,
            stderr=follower if stderr else subprocess.DEVNULL,
            env={"TERM": "xterm-256color", **environment},
            cwd=cwd,
        )
    finally:
        os.close(follower)
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], TIMEOUT)
            if not ready:
                process.kill()
                process.wait()
                raise RuntimeError(f"{' '.join(args)} printed nothing for {TIMEOUT:.0f}s")
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        code = process.wait(timeout=TIMEOUT)
    finally:
        os.close(leader)
    return b"".join(chunks).decode("utf-8", "replace"), code
