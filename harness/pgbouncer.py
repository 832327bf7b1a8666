"""A throwaway PgBouncer in front of a test cluster, to show what each pool mode does to locks.

Like the cluster it runs as Debian's ``postgres`` user when the tests run as root (PgBouncer
refuses root), on loopback, with trust authentication, in a temporary directory.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.postgres import PostgresCluster, _free_port

START_TIMEOUT = 120.0
"""Seconds PgBouncer may take to accept connections."""


def find_pgbouncer() -> str | None:
    """The pgbouncer program, or ``None`` (scripts/bootstrap installs it)."""
    return shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
    )


class PgBouncer:
    """PgBouncer in ``pool_mode`` (``session`` or ``transaction``) in front of ``cluster``."""

    def __init__(self, cluster: PostgresCluster, *, pool_mode: str) -> None:
        if pool_mode not in ("session", "transaction", "statement"):
            raise ValueError(f"unknown pool_mode {pool_mode!r}")
        self.cluster = cluster
        self.pool_mode = pool_mode
        self.port = _free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="grantkeeper-pgbouncer-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        """A libpq URL for the cluster's ``postgres`` database, through the pooler."""
        return f"postgresql://{self.cluster.user}@127.0.0.1:{self.port}/postgres"

    def start(self) -> PgBouncer:
        program = find_pgbouncer()
        if program is None:
            raise FileNotFoundError("pgbouncer not found: run scripts/bootstrap")
        (self.directory / "users.txt").write_text(f'"{self.cluster.user}" ""\n')
        ini = self.directory / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"postgres = host={self.cluster.listen} port={self.cluster.port} dbname=postgres\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.directory / 'users.txt'}\n"
            f"pool_mode = {self.pool_mode}\n"
            f"logfile = {self.directory / 'pgbouncer.log'}\n"
            "ignore_startup_parameters = extra_float_digits\n"
        )
        owner: dict[str, Any] = {}
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            for path in (self.directory, *self.directory.iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            # Exec'd as that user directly (no runuser in between), so killing this process
            # kills PgBouncer itself.
            owner = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        self._process = subprocess.Popen(
            [program, str(ini)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **owner
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    error = self._process.stderr.read() if self._process.stderr else b""
                    self.stop()
                    raise RuntimeError(f"pgbouncer did not start: {error.decode()}") from None
                time.sleep(0.05)  # waiting for a server to come up; nothing to synchronise on

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait()
            if process.stderr is not None:
                process.stderr.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
