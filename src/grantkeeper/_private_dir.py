"""The file-system layer of the local stores: a private directory, atomic files, key names.

A :class:`PrivateDir` is a directory only its owner may use (0700, owned by us, never a
symlink). Every path in it is opened relative to a descriptor of it with ``O_NOFOLLOW``,
so a symlink planted in place of a file is refused rather than followed. Files are created
0600; nothing is chmodded after the fact.

Atomic writes go through a temp file named ``.<name>.<pid>.<thread>.tmp``. A writer killed
mid-write leaves one behind (with a secret in it, for a credential file). Every writer of
a file holds that file's write lock while its temp file exists, so whoever holds the lock
can delete leftover temp files of that file: none of them belongs to a live writer.
:meth:`PrivateDir.write_atomic` does so before each write, and :meth:`PrivateDir.sweep`
lets a caller clean those of other files whose locks it can take without waiting.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from ._errors import LockTimeout, StoreUnavailable, UnsafeStorePath
from ._file_lock import locked_file
from ._record import CredentialKey

TEMP_PATTERN = re.compile(r"\.(?P<name>.+)\.\d+\.\d+\.tmp")
"""Our temp files, and only ours: ``.<name>.<pid>.<thread id>.tmp``."""


def key_slug(key: CredentialKey) -> str:
    """A file name stem for ``key``: readable host part plus a hash that keeps keys distinct.

    Every local store names a key's files (record, locks) by this stem.
    """
    digest = hashlib.sha256(str(key).encode("utf-8")).hexdigest()[:20]
    host = key.server_url.split("://", 1)[-1].split("/", 1)[0]
    readable = re.sub(r"[^A-Za-z0-9.-]+", "_", host)[:40]
    return f"{readable}-{digest}"


def os_error(action: str, name: str, exc: OSError) -> StoreUnavailable | UnsafeStorePath:
    """The store error for an ``OSError`` while doing ``action`` to ``name``."""
    if exc.errno == errno.ELOOP:
        return UnsafeStorePath(f"{name} is a symlink; refusing to follow it")
    code = errno.errorcode.get(exc.errno or 0, "error")
    return StoreUnavailable(f"cannot {action} {name}: {exc.strerror} ({code})")


class PrivateDir:
    """A directory at ``path`` only its owner may use; see the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"PrivateDir({str(self.path)!r})"

    @contextlib.contextmanager
    def open(self, *, create: bool) -> Iterator[int | None]:
        """Yield a descriptor of the directory (``None`` if absent and not ``create``)."""
        if create:
            self._ensure()
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except FileNotFoundError:
            if create:
                raise StoreUnavailable(f"{self.path} vanished while in use") from None
            yield None
            return
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafeStorePath(
                    f"{self.path} is a symlink or not a directory; refusing it"
                ) from None
            raise os_error("open", str(self.path), exc) from None
        try:
            self._check(fd)
            yield fd
        finally:
            os.close(fd)

    def _ensure(self) -> None:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.mkdir(self.path, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise os_error("create", str(self.path), exc) from None

    def _check(self, fd: int) -> None:
        info = os.fstat(fd)
        if info.st_uid != os.getuid():
            raise UnsafeStorePath(f"{self.path} is owned by another user")
        if info.st_mode & 0o077:
            raise UnsafeStorePath(
                f"{self.path} is accessible by other users "
                f"(mode {stat.S_IMODE(info.st_mode):o}); run: chmod 700 {self.path}"
            )

    # -- atomic files -------------------------------------------------------------------

    def write_atomic(self, dir_fd: int, name: str, payload: bytes) -> None:
        """Replace ``name`` with ``payload`` atomically (temp file, fsync, rename, fsync).

        The caller must hold ``name``'s write lock: leftover temp files of ``name`` are
        deleted first, which is safe only because no live writer of ``name`` can exist.
        """
        self._remove_temps(dir_fd, name)
        # Unique per writer thread; the write lock already excludes other writers of name.
        temp = f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            fd = os.open(
                temp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dir_fd,
            )
        except OSError as exc:
            raise os_error("write", name, exc) from None
        try:
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.fsync(dir_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)
            raise os_error("write", name, exc) from None

    def remove_temps(self, dir_fd: int, name: str) -> None:
        """Delete leftover temp files of ``name``; the caller holds ``name``'s write lock."""
        self._remove_temps(dir_fd, name)

    def _remove_temps(self, dir_fd: int, name: str) -> None:
        for entry in _temps(dir_fd):
            if _target(entry) == name:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry, dir_fd=dir_fd)

    def sweep(self, dir_fd: int, lock_of: Callable[[str], str | None]) -> int:
        """Delete leftover temp files of other files whose write lock is free right now.

        ``lock_of`` maps a target file name to the name of its write lock file, or ``None``
        for files this sweep must leave alone (such as those whose lock the caller holds:
        ``flock`` would refuse the caller its own lock). A lock that is held means a live
        writer may own the temp file, so it is skipped. Returns how many were deleted.
        """
        removed = 0
        for entry in _temps(dir_fd):
            target = _target(entry)
            lock = lock_of(target) if target is not None else None
            if lock is None:
                continue
            try:
                with locked_file(dir_fd, lock, timeout=0, what=lock):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry, dir_fd=dir_fd)
                        removed += 1
            except LockTimeout:
                continue  # a live writer holds it: its temp file is in use
        return removed


def _temps(dir_fd: int) -> list[str]:
    try:
        return [entry for entry in os.listdir(dir_fd) if entry.endswith(".tmp")]
    except OSError:
        return []  # cleaning up is a courtesy; the write itself reports real failures


def _target(entry: str) -> str | None:
    match = TEMP_PATTERN.fullmatch(entry)
    return match.group("name") if match else None
