"""Is the writer of an in-flight note still alive? Process liveness and host identity.

A pid means something only inside one pid namespace of one boot of one kernel: two
containers may share a hostname (and a volume, or a database) while each sees only its
own pids. So a host is named by the kernel's boot id plus the inode of the pid namespace,
never by ``socket.gethostname()``. A note written under another identity cannot be probed;
it is trusted for its lease instead (see :func:`lease_live`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ._platform import current

DEFAULT_LEASE = timedelta(seconds=60)
"""How long an in-flight note from another host counts as live without a renewal. The
holder renews it every third of that while its provider call runs (30 s at most), so a
live holder is never mistaken for a dead one; a dead one blocks the credential this long."""


def host_identity() -> str:
    """``boot-id/pidns-inode``: the scope in which this process's pid can be probed.

    Without procfs (macOS, Windows) the host's name is the best there is.
    """
    return current().host_identity()


def process_alive(pid: int) -> bool:
    """Whether ``pid`` (in this pid namespace) runs and is not on its way out (on Linux;
    elsewhere, see ``_platform``: what each platform can and cannot tell)."""
    return current().process_alive(pid)


def lease_live(lease_until: datetime | None, now: datetime) -> bool:
    """Whether a note's lease still runs at ``now``. A note without one (written by an older
    grantkeeper) has none: its outcome is unknown, as it always was."""
    return lease_until is not None and now < lease_until
