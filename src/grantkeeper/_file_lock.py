"""Exclusive OS advisory locks on files, with a bounded wait.

``flock`` locks belong to the open file description, so they exclude other processes and
other descriptors in this process alike, and the kernel drops them when the holder dies:
no stale lock file ever needs cleaning. Lock files are never deleted, because deleting one
while another process waits on it would let two holders in at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Iterator

from ._errors import LockTimeout, StoreUnavailable, UnsafeStorePath

log = logging.getLogger("grantkeeper.lock")

POLL_START = 0.001
"""First pause between attempts: an uncontended handover completes within a millisecond."""

POLL_MAX = 0.05
"""Longest pause between attempts, as Codex polls: bounds the handover delay under load."""


@contextlib.contextmanager
def locked_file(dir_fd: int, name: str, *, timeout: float, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``name`` in ``dir_fd`` for the ``with`` body."""
    try:
        fd = os.open(
            name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd
        )
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeStorePath(f"lock file {name} is a symlink; refusing it") from None
        raise StoreUnavailable(f"cannot open lock file {name}: {exc.strerror}") from None
    try:
        started = time.monotonic()
        deadline = started + timeout
        pause = POLL_START
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if now >= deadline:
                    raise LockTimeout(
                        f"{what} was not released within {timeout:g} s; another process holds it",
                    ) from None
                time.sleep(min(pause, deadline - now))
                pause = min(pause * 2, POLL_MAX)
        waited = time.monotonic() - started
        if waited > 0.001:
            log.debug("lock.acquired what=%s waited_ms=%.1f", what, waited * 1000)
        yield
    finally:
        # Closing the descriptor releases the lock.
        os.close(fd)
