"""A 64 KiB tmpfs to fill, for the tests where the store's disk is full at the worst moment.

Only a tmpfs this module mounted, with its size asserted first, is ever filled (see
``harness.children.assert_small_tmpfs``): never ``/dev/shm``, ``/tmp`` or ``/``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from grantkeeper import CredentialKey
from grantkeeper._rescue_copies import RESCUE_DIR_ENV
from harness.children import assert_small_tmpfs

BALLAST = "ballast"


@contextlib.contextmanager
def mounted(tmp_path: Path) -> Iterator[Path]:
    """Mount a 64 KiB tmpfs under ``tmp_path``; skip where mounting needs a root we lack."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mount)], check=True
    )
    try:
        assert_small_tmpfs(mount)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Fill ``disk`` (the tiny tmpfs, nothing else) to the last byte; return the ballast file."""
    ballast = disk / BALLAST
    capacity = assert_small_tmpfs(disk, ballast)
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (4096, 1):
            with contextlib.suppress(OSError):
                # Bounded by count too: never more than the file system holds.
                for _ in range(capacity // size + 1):
                    if not os.write(fd, b"\0" * size):
                        break
    finally:
        os.close(fd)
    return ballast


def free(disk: Path) -> None:
    """Free the space :func:`fill` took."""
    (disk / BALLAST).unlink()


def environment(home: Path, rescue: Path) -> dict[str, str]:
    """A child's environment: the file store at ``home``, rescue copies kept in ``rescue``,
    and this interpreter's import path (the checkout's ``src`` and ``tests``)."""
    return {
        **os.environ,
        "GRANTKEEPER_HOME": str(home),
        "GRANTKEEPER_STORE": "file",
        RESCUE_DIR_ENV: str(rescue),
        "PYTHONPATH": os.pathsep.join(sys.path),
    }


def cli_command(key: CredentialKey, *args: str, run: list[str] | None = None) -> list[str]:
    """``grantkeeper ARGS SERVER [--profile P]`` as a command line: ``python -m grantkeeper``,
    or ``python RUN...`` where ``run`` names a script that starts the CLI its own way."""
    command = [sys.executable, *(run or ["-m", "grantkeeper"]), *args, key.server_url]
    if key.profile:
        command += ["--profile", key.profile]
    return command


def run_cli(
    home: Path, rescue: Path, key: CredentialKey, *args: str
) -> subprocess.CompletedProcess[str]:
    """``grantkeeper ARGS SERVER [--profile P]`` in a child, on the store at ``home``."""
    return subprocess.run(
        cli_command(key, *args),
        capture_output=True,
        text=True,
        env=environment(home, rescue),
        timeout=120,
    )


def start_cli(home: Path, rescue: Path, command: list[str], **popen: Any) -> subprocess.Popen[Any]:
    """Start ``command`` (see :func:`cli_command`) on the store at ``home``, in a session of
    its own, so that a test may signal it (and only it): ``popen`` goes to ``Popen``."""
    return subprocess.Popen(command, env=environment(home, rescue), start_new_session=True, **popen)
