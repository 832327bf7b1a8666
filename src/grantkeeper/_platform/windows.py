"""Windows: paths instead of directory descriptors, ``msvcrt.locking``, ``OpenProcess``.

Unverified on Windows itself: these branches run on Linux in the tests, with stand-ins for
``msvcrt`` and ``kernel32`` (tests/test_platform.py); the public repository's CI runs the
portable tests on Windows.

- **Files.** Windows has no ``openat``: a file is opened by its path after checking that
  neither it nor the directory is a symlink or junction (any reparse point), a check a
  process able to write in the user's profile could race. Owner and mode bits mean nothing
  there; the user profile's ACL (``%LOCALAPPDATA%``, owner, SYSTEM and Administrators only)
  is what keeps other users out (docs/security.md).
- **Renames** are ``MoveFileExW`` with ``MOVEFILE_WRITE_THROUGH``: the rename is on disk
  when it returns (a directory cannot be fsynced there). It fails with a sharing violation
  while another process has the target open (a reader of the credential file, for one
  read), and so does a deletion: both are retried for a bounded time.
- **Locks.** ``msvcrt.locking`` (``LockFile``) on the first byte: a lock belongs to the file
  handle, so another descriptor is refused even in the same process, as with ``flock``;
  Windows releases it after the holder's process ends (not always at once, Microsoft says:
  the bounded wait covers it). Lock files are never deleted.
- **Liveness.** ``os.kill(pid, 0)`` would send ``CTRL_C_EVENT`` to a process group there.
  ``OpenProcess`` plus ``GetExitCodeProcess`` says instead; access denied means it exists.
  A process that exited with code 259 (``STILL_ACTIVE``) looks alive. Windows reuses pids
  quickly: a holder that died mid-refresh and whose pid another process took blocks the
  credential until that process ends (the note does not record its writer's start time;
  the notes of issue 38 say so).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import platformdirs

_FILE_ATTRIBUTE_REPARSE_POINT = 0x400

PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
STILL_ACTIVE = 259
ERROR_ACCESS_DENIED = 5
ERROR_INVALID_PARAMETER = 87
"""What ``OpenProcess`` reports for a pid that names no process."""

SHARING_PATIENCE = 2.0
"""How long a rename or a deletion waits for readers of its target to close it (they hold
it for one read of a few kilobytes)."""

MOVEFILE_REPLACE_EXISTING = 0x1
MOVEFILE_WRITE_THROUGH = 0x8


class Msvcrt(Protocol):
    """The part of the ``msvcrt`` module used here."""

    LK_NBLCK: int
    LK_UNLCK: int

    def locking(self, fd: int, mode: int, nbytes: int, /) -> None: ...


class Kernel32(Protocol):
    """The part of ``kernel32`` used here, with Win32's own conventions: a null handle
    (``0``) for failure, the reason in :meth:`last_error`."""

    def OpenProcess(self, access: int, inherit: bool, pid: int, /) -> int: ...  # noqa: N802

    def GetExitCodeProcess(self, handle: int, /) -> int | None: ...  # noqa: N802

    def CloseHandle(self, handle: int, /) -> None: ...  # noqa: N802

    def MoveFileExW(self, source: str, target: str, flags: int, /) -> None:  # noqa: N802
        """Raises ``OSError`` (``PermissionError`` for a sharing violation) on failure."""
        ...

    def last_error(self) -> int: ...


def _refuse_reparse_point(path: Path) -> os.stat_result | None:
    """``lstat`` of ``path`` (``None`` if absent); ``ELOOP`` if it is a symlink or junction."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if is_link(info):
        raise OSError(errno.ELOOP, "is a symlink or junction; refusing it", str(path))
    return info


def is_link(info: os.stat_result) -> bool:
    """Whether ``info`` (an ``lstat``) is a symlink or, on Windows, any reparse point (a
    junction is one, and ``S_ISLNK`` does not say so)."""
    attributes = getattr(info, "st_file_attributes", 0)
    return stat.S_ISLNK(info.st_mode) or bool(attributes & _FILE_ATTRIBUTE_REPARSE_POINT)


def _patiently(action: Callable[[], None]) -> None:
    """Run ``action``, again while it meets a sharing violation, for a bounded time."""
    deadline = time.monotonic() + SHARING_PATIENCE
    pause = 0.001
    while True:
        try:
            action()
            return
        except PermissionError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)


class PathDir:
    """A directory reached by its path (Windows has no descriptors of directories)."""

    def __init__(self, path: Path, kernel32: Kernel32) -> None:
        self.path = path
        self._kernel32 = kernel32

    def __repr__(self) -> str:
        return f"PathDir({str(self.path)!r})"

    def open(self, name: str, flags: int, mode: int = 0o600) -> int:
        target = self.path / name
        _refuse_reparse_point(target)
        # Binary, and not inherited by children (O_CLOEXEC's counterpart).
        extra = getattr(os, "O_BINARY", 0) | getattr(os, "O_NOINHERIT", 0)
        return os.open(target, flags | extra, mode)

    def listdir(self) -> list[str]:
        return os.listdir(self.path)

    def unlink(self, name: str) -> None:
        target = self.path / name
        _refuse_reparse_point(target)
        _patiently(lambda: os.unlink(target))

    def replace(self, source: str, target: str) -> None:
        flags = MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH
        move = self._kernel32.MoveFileExW
        _patiently(lambda: move(str(self.path / source), str(self.path / target), flags))

    def fsync(self) -> None:
        """Nothing to do: renames are written through (a directory cannot be fsynced)."""

    def stat(self) -> os.stat_result:
        return os.stat(self.path)

    def close(self) -> None:
        """Nothing is held open."""


class Windows:
    """Windows, given its ``msvcrt`` and ``kernel32`` (stand-ins in the tests)."""

    name = "win32"
    owner_modes = False

    def __init__(self, msvcrt: Msvcrt, kernel32: Kernel32) -> None:
        self._msvcrt = msvcrt
        self._kernel32 = kernel32

    @classmethod
    def native(cls) -> Windows:
        if sys.platform == "win32":
            import msvcrt

            return cls(msvcrt, _native_kernel32())
        raise RuntimeError("Windows.native() runs on Windows only")

    def __repr__(self) -> str:
        return "Windows()"

    def open_dir(self, path: Path) -> PathDir:
        info = _refuse_reparse_point(path)
        if info is None:
            raise FileNotFoundError(errno.ENOENT, "no such directory", str(path))
        if not stat.S_ISDIR(info.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(path))
        return PathDir(path, self._kernel32)

    def try_lock(self, fd: int) -> bool:
        # msvcrt.locking locks from the current position: always the first byte (a lock
        # may lie beyond the end of the empty lock file).
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            self._msvcrt.locking(fd, self._msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EDEADLK):
                return False  # held by another handle
            raise
        return True

    def unlock(self, fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        self._msvcrt.locking(fd, self._msvcrt.LK_UNLCK, 1)

    def process_alive(self, pid: int) -> bool:
        if pid <= 0:
            return False
        handle = self._kernel32.OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
        if not handle:
            # Access denied: it exists (another user's, or protected). Invalid parameter:
            # no such process. Anything else: cannot tell, so alive.
            return self._kernel32.last_error() != ERROR_INVALID_PARAMETER
        try:
            code = self._kernel32.GetExitCodeProcess(handle)
        finally:
            self._kernel32.CloseHandle(handle)
        return code is None or code == STILL_ACTIVE

    def host_identity(self) -> str:
        return f"host:{socket.gethostname()}"

    def uid(self) -> int | None:
        return None

    def rescue_dirs(self) -> list[Path]:
        # In the user's profile (%LOCALAPPDATA%\grantkeeper\Cache), under its ACL. Not %TEMP%:
        # for a service it is C:\Windows\Temp, shared, where another user could make it first.
        return [platformdirs.user_cache_path("grantkeeper", appauthor=False) / "rescue"]

    def stop_signals(self) -> tuple[int, ...]:
        # The event loop cannot handle signals on Windows; Ctrl-C raises KeyboardInterrupt,
        # and hosts end a process with TerminateProcess, which nothing can catch.
        return ()

    def watch_dir(self, path: Path) -> None:
        # ReadDirectoryChangesW would do, but is not tested here: Windows polls.
        return None


def _native_kernel32() -> Kernel32:
    """``kernel32`` through ctypes, in :class:`Kernel32`'s shape."""
    if sys.platform != "win32":
        raise RuntimeError("kernel32 exists on Windows only")
    import ctypes
    from ctypes import wintypes

    library = ctypes.WinDLL("kernel32", use_last_error=True)
    open_process = library.OpenProcess
    open_process.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
    open_process.restype = wintypes.HANDLE
    exit_code = library.GetExitCodeProcess
    exit_code.argtypes = [wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD)]
    exit_code.restype = wintypes.BOOL
    close_handle = library.CloseHandle
    close_handle.argtypes = [wintypes.HANDLE]
    close_handle.restype = wintypes.BOOL
    move_file = library.MoveFileExW
    move_file.argtypes = [wintypes.LPCWSTR, wintypes.LPCWSTR, wintypes.DWORD]
    move_file.restype = wintypes.BOOL

    class Native:
        def OpenProcess(self, access: int, inherit: bool, pid: int, /) -> int:  # noqa: N802
            return int(open_process(access, inherit, pid) or 0)

        def GetExitCodeProcess(self, handle: int, /) -> int | None:  # noqa: N802
            code = wintypes.DWORD()
            return int(code.value) if exit_code(handle, ctypes.byref(code)) else None

        def CloseHandle(self, handle: int, /) -> None:  # noqa: N802
            close_handle(handle)

        def MoveFileExW(self, source: str, target: str, flags: int, /) -> None:  # noqa: N802
            if not move_file(source, target, flags):
                # Mapped from the Windows error: a sharing violation is a PermissionError.
                raise ctypes.WinError(ctypes.get_last_error())

        def last_error(self) -> int:
            return ctypes.get_last_error()

    return Native()
