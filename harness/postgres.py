"""A throwaway PostgreSQL cluster on loopback, for the PostgreSQL store's tests.

``initdb`` and ``postgres`` refuse to run as root, and CI runs as root: then the cluster
runs as Debian's ``postgres`` user (``runuser``), in a data directory it owns. Durability
settings are off, because the cluster dies with the test session anyway.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

START_TIMEOUT = 60
"""Seconds ``pg_ctl`` may wait for the server to accept connections."""


def find_bin(name: str) -> str:
    """Path of a PostgreSQL program: on PATH, else the newest Debian server's."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if not candidates:
        raise FileNotFoundError(f"{name} not found: run scripts/bootstrap (installs postgresql)")
    return candidates[-1]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PostgresCluster:
    """``initdb`` a cluster in a temporary directory and serve it on 127.0.0.1.

    ``listen`` serves it on another address instead (a bridge that test hosts in network
    namespaces reach, see ``harness/hosts.py``), and ``allow`` is the network (CIDR) whose
    clients it trusts beside loopback.
    """

    def __init__(
        self, user: str = "grantkeeper", *, listen: str = "127.0.0.1", allow: str | None = None
    ) -> None:
        self.user = user
        self.listen = listen
        self.allow = allow
        self.port = _free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="grantkeeper-pg-"))
        self.data = self.directory / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:
            # The server must not run as root; Debian's postgresql package creates this user.
            owner = "postgres" if _user_exists("postgres") else "nobody"
            self._as = ["runuser", "-u", owner, "--"]
            entry = pwd.getpwnam(owner)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)

    @property
    def dsn(self) -> str:
        """A libpq URL for the cluster's ``postgres`` database."""
        return f"postgresql://{self.user}@{self.listen}:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        result = subprocess.run(
            [*self._as, *command], capture_output=True, text=True, timeout=START_TIMEOUT
        )
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {result.stdout}\n{result.stderr}")

    def start(self) -> PostgresCluster:
        self._run(
            find_bin("initdb"),
            "--pgdata",
            str(self.data),
            "--username",
            self.user,
            "--auth",
            "trust",
            "--no-sync",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
        )
        if self.allow is not None:
            with open(self.data / "pg_hba.conf", "a", encoding="ascii") as hba:
                hba.write(f"host all all {self.allow} trust\n")
        options = (
            f"-c listen_addresses={self.listen} -p {self.port} -k {self.directory} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            find_bin("pg_ctl"),
            "--pgdata",
            str(self.data),
            "--log",
            str(self.directory / "server.log"),
            "--wait",
            f"--timeout={START_TIMEOUT}",
            "-o",
            options,
            "start",
        )
        return self

    def stop(self) -> None:
        try:
            self._run(find_bin("pg_ctl"), "--pgdata", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
