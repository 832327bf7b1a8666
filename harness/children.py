"""Signal only the tests' own children, reap them for sure, and fill only a tiny tmpfs.

The suite runs as root on machines without swap, where ``/dev/shm`` is a tmpfs as large as
all memory: a signal sent to the wrong pid (a reused one, pytest's, its shell's) or a fill
loop pointed at the wrong directory takes the whole machine down. Every signal a test or a
harness sends to a child goes through :func:`signal_own_child`, which refuses any pid that is
not this process's own child leading its own session; :func:`reap` ends a child that may be
stopped or hung (SIGCONT, then SIGKILL, then a bounded wait); :func:`assert_small_tmpfs`
refuses any fill target that is not on a small tmpfs.

Children that are signalled are started in their own session: ``start_new_session=True``
for :class:`subprocess.Popen`; a multiprocessing target calls :func:`os.setsid` first.
"""

from __future__ import annotations

import contextlib
import multiprocessing.process
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

REAP_TIMEOUT = 30.0
"""Seconds to wait for a SIGKILLed child to be reaped: only an unkillable child runs it out."""

SMALL_TMPFS = 1 << 20
"""The largest file system a test may fill (bytes): a tmpfs it mounted for that, not RAM."""


class NotOurChild(RuntimeError):
    """The pid is not a child this process may signal."""


def parent_of(pid: int) -> int:
    """The parent pid of ``pid``: field 4 of ``/proc/<pid>/stat``."""
    fields = _stat_fields(pid)
    if fields is None:
        raise NotOurChild(f"pid {pid}: no such process")
    return int(fields[1])


def check_own_child(pid: int, *, parent: int | None = None) -> None:
    """Raise :class:`NotOurChild` unless ``pid`` is our child leading its own session.

    ``parent`` names the child of ours that forked ``pid`` (a multiprocessing forkserver):
    it must itself be our direct child.
    """
    me = os.getpid()
    if pid <= 1:
        raise NotOurChild(f"refusing to signal pid {pid}: init, a group or every process")
    if pid in (me, os.getppid()):
        raise NotOurChild(f"refusing to signal pid {pid}: this process or its parent")
    expected = me
    if parent is not None:
        if parent <= 1 or parent == pid or parent_of(parent) != me:
            raise NotOurChild(f"refusing to signal pid {pid}: {parent} is not our child")
        expected = parent
    actual = parent_of(pid)
    if actual != expected:
        raise NotOurChild(
            f"refusing to signal pid {pid}: its parent is {actual}, not {expected} "
            "(it is not our child, or its parent died and it was adopted)"
        )
    try:
        session = os.getsid(pid)
    except ProcessLookupError as exc:
        raise NotOurChild(f"pid {pid}: no such process") from exc
    if session != pid:
        raise NotOurChild(
            f"refusing to signal pid {pid}: it does not lead its own session (session "
            f"{session}); start it with start_new_session=True or call os.setsid() first"
        )


def signal_own_child(pid: int, sig: int, *, parent: int | None = None, group: bool = False) -> None:
    """Send ``sig`` to ``pid`` (its whole process group with ``group``), only if it is our
    child leading its own session (see :func:`check_own_child`)."""
    check_own_child(pid, parent=parent)
    pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
    try:
        # Checked again once the pidfd is open: a pid reused in between fails the check or
        # the pidfd's signal (ESRCH), and never reaches the newcomer.
        check_own_child(pid, parent=parent)
        if group:
            os.killpg(pid, sig)  # a session leader's group id is its pid
        elif pidfd is not None:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(pid, sig)
    finally:
        if pidfd is not None:
            os.close(pidfd)


Child = subprocess.Popen[Any] | multiprocessing.process.BaseProcess


def reap(child: Child, *, parent: int | None = None, timeout: float = REAP_TIMEOUT) -> None:
    """End ``child`` for sure: SIGCONT then SIGKILL to its group while it is still ours
    (not yet reaped), then wait for it at most ``timeout`` seconds.

    For a finally block: a stopped or hung child would otherwise hang the interpreter's exit.
    """
    if isinstance(child, subprocess.Popen):
        if child.poll() is None:
            _end(child.pid, parent)
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"child {child.pid} outlived SIGKILL by {timeout}s") from exc
        return
    if child.pid is None:
        return  # never started
    if child.exitcode is None:
        _end(child.pid, parent)
    child.join(timeout)
    if child.exitcode is None:
        raise RuntimeError(f"child {child.pid} outlived SIGKILL by {timeout}s")


def _end(pid: int, parent: int | None) -> None:
    """SIGCONT (a stopped child cannot die of anything but SIGKILL), then SIGKILL."""
    try:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            signal_own_child(pid, sig, parent=parent, group=True)
    except NotOurChild:
        if Path(f"/proc/{pid}").exists():
            raise
        # Gone between the poll and the signal (a forkserver reaps its children itself).


def _mount_type(mount: Path) -> str | None:
    """The file system type of the topmost mount at ``mount``, from /proc/self/mountinfo."""
    found = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        point = before.split()[4].replace("\\040", " ").replace("\\011", "\t")
        point = point.replace("\\012", "\n").replace("\\134", "\\")
        if point == str(mount):
            found = after.split()[0]  # later lines are mounted on top of earlier ones
    return found


def assert_small_tmpfs(
    mount: Path, target: Path | None = None, max_bytes: int = SMALL_TMPFS
) -> int:
    """Refuse unless ``mount`` is a tmpfs mount point of at most ``max_bytes`` and ``target``
    (a file to fill, which may not exist yet) lies on it; return its size. Only looks."""
    mount = Path(os.path.realpath(mount))
    if not os.path.ismount(mount):
        raise AssertionError(f"{mount} is not a mount point: refusing to fill it")
    kind = _mount_type(mount)
    if kind != "tmpfs":
        raise AssertionError(f"{mount} is {kind}, not tmpfs: refusing to fill it")
    stats = os.statvfs(mount)
    size = stats.f_blocks * stats.f_frsize
    if not 0 < size <= max_bytes:
        raise AssertionError(f"{mount} holds {size} bytes, over {max_bytes}: refusing to fill it")
    if target is not None:
        directory = Path(os.path.realpath(target.parent))
        if not directory.is_relative_to(mount):
            raise AssertionError(f"{target} is not under {mount}: refusing to fill it")
        if os.stat(directory).st_dev != os.stat(mount).st_dev:
            raise AssertionError(f"{target} is on another file system than {mount}")
    return size


KILL_TIMEOUT = 10.0
"""Seconds a killed process may take to be gone: SIGKILL takes effect at once, so past this
something is wrong and is reported instead of waited on."""


# -- processes, by pid and start time (a pid alone may name a newer process) ---------------


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` from field 3 (the state) on, or ``None`` when ``pid`` is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and ")"


def process_start(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or ``None`` once it is gone (a zombie
    is gone: it runs nothing and holds nothing but its pid)."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None and fields[0] not in ("Z", "X") and int(fields[1]) == pid:
                found.append(int(entry))
    return found


def wait_gone(pid: int, start: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the process ``pid`` started at ``start`` to be gone."""
    deadline = time.monotonic() + timeout
    while process_start(pid) == start:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def kill_process(pid: int, start: int) -> None:
    """SIGCONT then SIGKILL the process ``pid`` if it is still the one started at ``start``
    (a stopped process is resumed, so nothing waits on it to handle a signal)."""
    for signum in (signal.SIGCONT, signal.SIGKILL):
        if process_start(pid) != start:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
