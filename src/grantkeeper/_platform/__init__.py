"""What differs between Linux, macOS and Windows, behind one small interface.

Everything grantkeeper does that an operating system does differently goes through the
:class:`Platform` of this process, :func:`current`: opening files inside a private directory
without following symlinks, an exclusive lock with a non-blocking try, whether a process is
alive, which host a pid belongs to, whether owner and mode bits protect a file, where rescue
copies may go, which signals stop a command. Nothing else imports ``fcntl``, ``msvcrt`` or
``ctypes`` or asks ``sys.platform`` (but the store conformance suite, which checks the exit
code a killed holder gets: ``-SIGKILL``, or Windows' own).

Each platform's class takes the OS module it wraps (``msvcrt``, ``kernel32``) as an
argument, so the Windows and macOS branches run on Linux in the tests, with stand-ins for
what only Windows has; :func:`use` installs one for the duration of a test.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

__all__ = ["DirHandle", "DirWatch", "Platform", "current", "loose_mode", "ours_alone", "use"]


class DirHandle(Protocol):
    """An open directory: every file in it is reached through the handle, never through a
    symlink planted in its place (refused with ``ELOOP``)."""

    path: Path

    def open(self, name: str, flags: int, mode: int = 0o600) -> int:
        """``os.open`` of ``name`` in the directory; ``flags`` are the portable ones
        (``O_RDONLY``, ``O_WRONLY``, ``O_RDWR``, ``O_CREAT``, ``O_EXCL``, ``O_APPEND``)."""
        ...

    def listdir(self) -> list[str]: ...

    def unlink(self, name: str) -> None: ...

    def replace(self, source: str, target: str) -> None:
        """Rename ``source`` over ``target``, atomically for a reader."""
        ...

    def fsync(self) -> None:
        """Make the directory's entries (a rename, a deletion) durable, where possible."""
        ...

    def stat(self) -> os.stat_result: ...

    def close(self) -> None: ...


class Platform(Protocol):
    name: str
    """``linux``, ``darwin`` or ``win32``: the ``sys.platform`` this behaves as."""

    owner_modes: bool
    """Whether owner and mode bits (0600, 0700) protect a file. Not on Windows, where the
    user profile's ACL does (see docs/security.md)."""

    def open_dir(self, path: Path) -> DirHandle:
        """Open the directory ``path`` itself: ``FileNotFoundError`` if absent, ``ELOOP`` or
        ``ENOTDIR`` as an ``OSError`` if it is a symlink or not a directory."""
        ...

    def try_lock(self, fd: int) -> bool:
        """Take the exclusive lock of the open file ``fd`` if free. The lock belongs to this
        descriptor (another one, even in this process, is refused) and the OS drops it when
        the holder dies."""
        ...

    def unlock(self, fd: int) -> None: ...

    def process_alive(self, pid: int) -> bool:
        """Whether ``pid`` (on this host, see :meth:`host_identity`) runs. When it cannot
        tell, it says alive: a live holder taken for dead would spend a token twice."""
        ...

    def host_identity(self) -> str:
        """The scope in which this process's pids can be probed."""
        ...

    def uid(self) -> int | None:
        """This process's user id, ``None`` where there is none (Windows)."""
        ...

    def rescue_dirs(self) -> list[Path]:
        """Where rescue copies may go, best first: per user, private, local, and on Linux
        in memory."""
        ...

    def stop_signals(self) -> tuple[int, ...]:
        """The signals a host or supervisor stops a long-running command with, which the
        proxy's event loop handles (it ends the session as a closed stdin does)."""
        ...

    def watch_dir(self, path: Path) -> DirWatch | None:
        """A watch of the entries of directory ``path`` (a file renamed in, written or
        removed), where the OS offers one that wakes a waiter (Linux's inotify); ``None``
        elsewhere, where the caller polls."""
        ...


class DirWatch(Protocol):
    """An open watch of a directory's entries (see :meth:`Platform.watch_dir`)."""

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a change to an entry; return whether one
        came (all changes so far are consumed)."""
        ...

    def close(self) -> None: ...


def loose_mode(mode: int) -> bool:
    """Whether ``mode`` gives the group or others access, where mode bits mean anything (not
    on Windows: there the user profile's ACL protects grantkeeper's files)."""
    return bool(mode & 0o077) and current().owner_modes


def ours_alone(info: os.stat_result) -> bool:
    """Whether the file or directory ``info`` describes is this user's alone, as far as the
    platform can say: owned by us and without group or other access."""
    platform = current()
    if not platform.owner_modes:
        return True
    return info.st_uid == platform.uid() and not loose_mode(stat.S_IMODE(info.st_mode))


def _detect() -> Platform:
    if sys.platform == "win32":
        from .windows import Windows

        return Windows.native()
    else:  # an else, so that mypy --platform win32 skips it
        from .posix import Posix

        return Posix.native()


_current: Platform = _detect()


def current() -> Platform:
    """The platform this process runs on, or the one a test installed with :func:`use`."""
    return _current


@contextlib.contextmanager
def use(platform: Platform) -> Iterator[Platform]:
    """Behave as ``platform`` inside the ``with`` block (tests: Windows and macOS on Linux)."""
    global _current
    previous, _current = _current, platform
    try:
        yield platform
    finally:
        _current = previous
