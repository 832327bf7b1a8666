"""A throwaway PostgreSQL cluster on loopback, for the PostgreSQL store's tests.

``initdb`` and ``postgres`` refuse to run as root, and CI runs as root: then the cluster
runs as Debian's ``postgres`` user (``runuser``), in a data directory it owns. Durability
settings are off, because the cluster dies with the test session anyway.

The postmaster is not our child (``pg_ctl`` detaches it), so nothing reaps it for us:
:meth:`PostgresCluster.start` stops what it started when it fails, and
:meth:`PostgresCluster.stop` kills what ``pg_ctl stop`` leaves running.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from harness.children import KILL_TIMEOUT, children_of, kill_process, process_start, wait_gone

START_TIMEOUT = 60
"""Seconds ``pg_ctl`` may wait for the server to accept connections."""

STOP_TIMEOUT = 30
"""Seconds ``pg_ctl stop -m immediate`` may take before the postmaster and its children are
killed: an immediate stop takes well under one, unless the server is hung."""


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

    def end_sessions_once(self, stage: str, which: str) -> Callable[[str], None]:
        """A Keeper ``checkpoint``: the first time a transaction reaches ``stage``, end the
        database sessions whose pids the query ``which`` selects (``pg_terminate_backend``,
        as a failover, an administrator or an idle timeout would)."""
        import psycopg  # the postgresql extra's: needed by the tests that use it, only

        pending = [True]

        def checkpoint(reached: str) -> None:
            if reached == stage and pending and pending.pop():
                with psycopg.connect(self.dsn, autocommit=True) as admin:
                    admin.execute(f"SELECT pg_terminate_backend(pid) FROM ({which}) AS chosen")

        return checkpoint

    def _run(self, *command: str, timeout: float = START_TIMEOUT + 10) -> None:
        result = subprocess.run(
            [*self._as, *command], capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {result.stdout}\n{result.stderr}")

    def start(self) -> PostgresCluster:
        try:
            self._start()
        except BaseException as failure:
            # pg_ctl may have started a postmaster before failing (its --wait ran out) or
            # before we were interrupted: it is not our child, so nothing else would stop it.
            try:
                self.stop()
            except Exception as cleanup:  # the start's own failure is what to report
                failure.add_note(f"stopping the half-started cluster failed too: {cleanup}")
            raise
        return self

    def _start(self) -> None:
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
        # Dynamic shared memory in files under the data directory, not in /dev/shm: a
        # postmaster killed by a test (or a killed run) leaves its segments behind, and
        # they go with the cluster's temporary directory instead of filling the machine.
        options = (
            f"-c listen_addresses={self.listen} -p {self.port} -k {self.directory} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c dynamic_shared_memory_type=mmap"
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

    def _serves_our_data(self, pid: int) -> bool:
        """Whether ``pid`` is a ``postgres`` started on our data directory (a unique
        temporary path): any other process, or one that reuses a dead server's pid, is not."""
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return os.path.basename(command[0]) == b"postgres" and os.fsencode(self.data) in command

    def postmaster(self) -> tuple[int, int] | None:
        """This cluster's running postmaster as (pid, start time), or ``None``.

        ``postmaster.pid`` names it; before the server wrote that file (a start that failed
        early), the process table does.
        """
        try:
            first = (self.data / "postmaster.pid").read_text(encoding="ascii").split("\n", 1)[0]
            candidates = [int(first)]
        except (OSError, ValueError):
            candidates = [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
        for pid in candidates:
            start = process_start(pid)
            if start is not None and self._serves_our_data(pid):
                return pid, start
        return None

    def stop(self) -> None:
        """Stop the server, by force if it must come to that, and remove its directory."""
        try:
            self._halt()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _halt(self) -> None:
        postmaster = self.postmaster()
        if postmaster is not None:
            # A stopped (SIGSTOP) postmaster leaves pg_ctl's SIGQUIT pending until it gives up.
            for pid in (postmaster[0], *children_of(postmaster[0])):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGCONT)
        stopped: Exception | None = None
        if (self.data / "PG_VERSION").exists():  # initdb got that far: pg_ctl knows it
            try:
                self._run(
                    find_bin("pg_ctl"),
                    "--pgdata",
                    str(self.data),
                    "-m",
                    "immediate",
                    f"--timeout={STOP_TIMEOUT}",
                    "stop",
                    timeout=STOP_TIMEOUT + 10,
                )
            except (RuntimeError, subprocess.TimeoutExpired) as failure:
                stopped = failure  # no server running, or one that did not stop: see below
        if postmaster is None or wait_gone(*postmaster, KILL_TIMEOUT if stopped is None else 0):
            return
        # Still alive: kill its children too (backends outlive a killed postmaster until
        # they notice), listed before it dies and they are handed to init.
        processes = [postmaster] + [
            (pid, start)
            for pid in children_of(postmaster[0])
            if (start := process_start(pid)) is not None
        ]
        for process in processes:
            kill_process(*process)
        survivors = [pid for pid, start in processes if not wait_gone(pid, start, KILL_TIMEOUT)]
        if survivors:
            raise RuntimeError(f"PostgreSQL processes {survivors} survived SIGKILL ({stopped})")

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
