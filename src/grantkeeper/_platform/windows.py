"""Windows: paths instead of directory descriptors, ``msvcrt.locking``, ``OpenProcess``.

Unverified on Windows itself: these branches run on Linux in the tests, with stand-ins for
``msvcrt`` and ``kernel32`` (tests/test_platform.py); the public repository's CI runs the
portable tests on Windows.

- **Files.** Windows has no ``openat``: a file is opened by its path after checking that
  neither it nor the directory is a symlink or junction (any reparse point), a check a
  process able to write in the user's profile could race. Owner and mode bits mean nothing
  there; the user profile's ACL (``%LOCALAPPDATA%``, owner, SYSTEM and Administrators only)
  is what keeps other users out (docs/security.md). A directory cannot be fsynced: NTFS
  journals the rename itself.
- **Renames.** ``os.replace`` fails with a sharing violation while another process has the
  target open (a reader of the credential file, for a moment): it is retried for a bounded
  time.
- **Locks.** ``msvcrt.locking`` (``LockFile``) on the first byte: a lock belongs to the file
  handle, so another descriptor is refused even in the same process, as with ``flock``; the
  OS releases it when the holder's process ends. Lock files are never deleted.
- **Liveness.** ``os.kill(pid, 0)`` would send ``CTRL_C_EVENT`` to a process group there.
  ``OpenProcess`` plus ``GetExitCodeProcess`` says instead; access denied means it exists.
  A process that exited with code 259 (``STILL_ACTIVE``) looks alive, and a pid is reused
  quickly: both err towards alive, which makes a peer wait for a lease, never spend twice.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Protocol

_FILE_ATTRIBUTE_REPARSE_POINT = 0x400

PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
STILL_ACTIVE = 259
ERROR_ACCESS_DENIED = 5
ERROR_INVALID_PARAMETER = 87
"""What ``OpenProcess`` reports for a pid that names no process."""

REPLACE_PATIENCE = 2.0
"""How long a rename waits for readers of its target to close it (they hold it for one
read of a few kilobytes)."""


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

    def last_error(self) -> int: ...


def _refuse_reparse_point(path: Path) -> os.stat_result | None:
    """``lstat`` of ``path`` (``None`` if absent); ``ELOOP`` if it is a symlink or junction."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    attributes = getattr(info, "st_file_attributes", 0)
    if stat.S_ISLNK(info.st_mode) or attributes & _FILE_ATTRIBUTE_REPARSE_POINT:
        raise OSError(errno.ELOOP, "is a symlink or junction; refusing it", str(path))
    return info


class PathDir:
    """A directory reached by its path (Windows has no descriptors of directories)."""

    def __init__(self, path: Path) -> None:
        self.path = path

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
        _refuse_reparse_point(self.path / name)
        os.unlink(self.path / name)

    def replace(self, source: str, target: str) -> None:
        deadline = time.monotonic() + REPLACE_PATIENCE
        pause = 0.001
        while True:
            try:
                os.replace(self.path / source, self.path / target)
                return
            except PermissionError:
                # A reader has the target open (Windows refuses to rename over it): wait.
                if time.monotonic() >= deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.05)

    def fsync(self) -> None:
        """Nothing: a directory cannot be opened for ``FlushFileBuffers`` through ``os``."""

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
        return PathDir(path)

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
        # %TEMP% is %LOCALAPPDATA%\Temp: per user, inside the profile's ACL.
        return [Path(tempfile.gettempdir()) / "grantkeeper-rescue"]

    def stop_signals(self) -> tuple[int, ...]:
        # The event loop cannot handle signals on Windows; Ctrl-C raises KeyboardInterrupt,
        # and hosts end a process with TerminateProcess, which nothing can catch.
        return ()


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

    class Native:
        def OpenProcess(self, access: int, inherit: bool, pid: int, /) -> int:  # noqa: N802
            return int(open_process(access, inherit, pid) or 0)

        def GetExitCodeProcess(self, handle: int, /) -> int | None:  # noqa: N802
            code = wintypes.DWORD()
            return int(code.value) if exit_code(handle, ctypes.byref(code)) else None

        def CloseHandle(self, handle: int, /) -> None:  # noqa: N802
            close_handle(handle)

        def last_error(self) -> int:
            return ctypes.get_last_error()

    return Native()
