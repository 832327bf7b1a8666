"""Linux and macOS: ``*at`` calls on a directory descriptor, ``flock``, ``kill(pid, 0)``.

Linux adds procfs: a process that is exiting or a zombie is dead (``kill(pid, 0)`` still
answers for both), and a host is its boot id plus its pid namespace. macOS has no procfs:
there ``kill(pid, 0)`` is all there is, so a holder killed but not yet reaped by its parent
counts as alive until it is reaped (its lock, which the kernel drops, is what frees the
credential then), and a host is its name, which two containers or clones may share.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path

# Never imported on Windows (see ``_platform._detect``); this tells mypy as much.
assert sys.platform != "win32"

_PF_EXITING = 0x4
"""Linux task flag set as a process starts to exit, before its files (and locks) close."""

_BOOT_ID = "sys/kernel/random/boot_id"
_PID_NAMESPACE = "self/ns/pid"


class FdDir:
    """A directory open as a descriptor: files are opened relative to it with
    ``O_NOFOLLOW``, so a path swapped for a symlink after the check cannot redirect us."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    def __repr__(self) -> str:
        return f"FdDir({str(self.path)!r})"

    def open(self, name: str, flags: int, mode: int = 0o600) -> int:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=self.fd)

    def listdir(self) -> list[str]:
        return os.listdir(self.fd)

    def unlink(self, name: str) -> None:
        os.unlink(name, dir_fd=self.fd)

    def replace(self, source: str, target: str) -> None:
        os.replace(source, target, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def fsync(self) -> None:
        os.fsync(self.fd)

    def stat(self) -> os.stat_result:
        return os.fstat(self.fd)

    def close(self) -> None:
        os.close(self.fd)


_IN_CLOEXEC = 0o2000000
_IN_NONBLOCK = 0o4000
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_ENTRIES = _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE
"""What a store's write or removal does to a directory's entries: a temp file created and
written, then renamed over the record; or the record removed."""


class Inotify:
    """One inotify instance watching one directory's entries (Linux)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def of(cls, path: Path) -> Inotify | None:
        """A watch of ``path``, or ``None`` where inotify cannot be had (no such call in the
        C library, the per-user limit on instances or watches reached)."""
        import ctypes

        try:
            # The C library this process already has (no search for it, which would run
            # ldconfig in a subprocess).
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        except (OSError, AttributeError):
            return None
        if fd < 0:
            return None
        if libc.inotify_add_watch(fd, os.fsencode(path), _IN_ENTRIES) < 0:
            os.close(fd)
            return None
        return cls(fd)

    def wait(self, timeout: float) -> bool:
        import select

        # poll, not select: select refuses a descriptor numbered 1024 or more, which a
        # process with many connections open hands out.
        waiting = select.poll()
        waiting.register(self._fd, select.POLLIN)
        if not waiting.poll(max(0, math.ceil(timeout * 1000))):
            return False
        with contextlib.suppress(BlockingIOError):
            while os.read(self._fd, 65536):  # consume every event: only "something came" counts
                pass
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Posix:
    """Linux (``procfs=True``) or macOS (``procfs=False``, named ``darwin``)."""

    owner_modes = True

    def __init__(self, name: str, *, procfs: bool, proc: Path = Path("/proc")) -> None:
        self.name = name
        self.procfs = procfs
        self._proc = proc
        self._host: str | None = None

    @classmethod
    def native(cls) -> Posix:
        linux = sys.platform.startswith("linux")
        return cls("linux" if linux else sys.platform, procfs=linux)

    def __repr__(self) -> str:
        return f"Posix({self.name!r}, procfs={self.procfs})"

    def watch_dir(self, path: Path) -> Inotify | None:
        # inotify is Linux's; macOS's kqueue wakes on a directory's changes too, but is not
        # tested here, so macOS polls.
        return Inotify.of(path) if self.name == "linux" else None

    def open_dir(self, path: Path) -> FdDir:
        return FdDir(path, os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW))

    def try_lock(self, fd: int) -> bool:
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def unlock(self, fd: int) -> None:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)

    def process_alive(self, pid: int) -> bool:
        if pid <= 0:
            return False  # 0 and negatives name process groups, never one process
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's process: it exists
        return not self.exiting(pid)

    def exiting(self, pid: int) -> bool:
        """Whether ``pid`` is dying or dead but not reaped yet (Linux; macOS cannot tell).

        Both still answer ``kill(pid, 0)``. A killed holder's lock is released while it
        exits, before it turns zombie, and a parent that never reaps would keep a zombie
        forever: either way it would look alive and block the credential.
        """
        if not self.procfs:
            return False
        try:
            with open(self._proc / str(pid) / "stat", "rb") as handle:
                fields = handle.read().rpartition(b")")[2].split()
        except OSError:
            return False
        if not fields or fields[0] in (b"Z", b"X"):
            return True
        try:
            return bool(int(fields[6]) & _PF_EXITING)
        except (IndexError, ValueError):
            return False

    def host_identity(self) -> str:
        """``boot-id/pidns-inode`` with procfs; else the host's name, the best there is."""
        if self._host is None:
            self._host = self._read_host_identity()
        return self._host

    def _read_host_identity(self) -> str:
        if self.procfs:
            try:
                with open(self._proc / _BOOT_ID, encoding="ascii") as handle:
                    boot = handle.read().strip()
                namespace = os.stat(self._proc / _PID_NAMESPACE).st_ino
            except OSError:
                pass
            else:
                return f"{boot}/{namespace}"
        return f"host:{socket.gethostname()}"

    def uid(self) -> int | None:
        return os.getuid()

    def rescue_dirs(self) -> list[Path]:
        uid = os.getuid()
        dirs = []
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        if runtime:
            dirs.append(Path(runtime) / "grantkeeper")
        if self.name == "linux":
            # In memory, per user: logind's runtime directory, then the shared tmpfs.
            dirs += [Path(f"/run/user/{uid}/grantkeeper"), Path(f"/dev/shm/grantkeeper-{uid}")]
        # macOS: $TMPDIR is per user (/var/folders/..., 0700), so this is private there too.
        dirs.append(Path(tempfile.gettempdir()) / f"grantkeeper-rescue-{uid}")
        return dirs

    def stop_signals(self) -> tuple[int, ...]:
        return (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
