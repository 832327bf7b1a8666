"""Is the writer of an in-flight note still alive? Process liveness and host identity.

A pid means something only inside one pid namespace of one boot of one kernel: two
containers may share a hostname (and a volume, or a database) while each sees only its
own pids. So a host is named by the kernel's boot id plus the inode of the pid namespace,
never by ``socket.gethostname()``. A note written under another identity cannot be probed;
it is trusted for its lease instead (see :func:`lease_live`).
"""

from __future__ import annotations

import functools
import os
import socket
from datetime import datetime, timedelta

DEFAULT_LEASE = timedelta(seconds=60)
"""How long an in-flight note from another host counts as live without a renewal. The
holder renews it every third of that while its provider call runs (30 s at most), so a
live holder is never mistaken for a dead one; a dead one blocks the credential this long."""

_PF_EXITING = 0x4
"""Linux task flag set as a process starts to exit, before its files (and locks) close."""

_BOOT_ID = "/proc/sys/kernel/random/boot_id"
_PID_NAMESPACE = "/proc/self/ns/pid"


@functools.cache
def host_identity() -> str:
    """``boot-id/pidns-inode``: the scope in which this process's pid can be probed.

    Without procfs (macOS) the hostname is the best there is, as before.
    """
    try:
        with open(_BOOT_ID, encoding="ascii") as handle:
            boot = handle.read().strip()
        namespace = os.stat(_PID_NAMESPACE).st_ino
    except OSError:
        return f"host:{socket.gethostname()}"
    return f"{boot}/{namespace}"


def process_alive(pid: int) -> bool:
    """Whether ``pid`` (in this pid namespace) runs and is not on its way out."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not exiting(pid)


def exiting(pid: int) -> bool:
    """Whether ``pid`` is dying or dead but not reaped yet.

    Both still answer ``kill(pid, 0)``. A killed holder's lock is released while it exits,
    before it turns zombie, and a parent that never reaps would keep a zombie forever: either
    way it would look alive and block the credential.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rpartition(b")")[2].split()
    except OSError:
        return False  # no procfs (macOS): kill(pid, 0) is all we have
    if not fields or fields[0] in (b"Z", b"X"):
        return True
    try:
        return bool(int(fields[6]) & _PF_EXITING)
    except (IndexError, ValueError):
        return False


def lease_live(lease_until: datetime | None, now: datetime) -> bool:
    """Whether a note's lease still runs at ``now``. A note without one (written by an older
    grantkeeper) has none: its outcome is unknown, as it always was."""
    return lease_until is not None and now < lease_until
