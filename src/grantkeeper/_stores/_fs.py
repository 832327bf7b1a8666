"""The file-system layer of the local stores: private directories, locks, atomic files.

Everything the file store, the keyring store's index, Auto mode's placements and
``servers.json`` do on disk goes through here, so every file of grantkeeper gets the same
safety:

- **A private directory** (:class:`PrivateDir`): only its owner may use it (0700, owned by
  us, never a symlink). Every path in it is opened relative to a descriptor of it with
  ``O_NOFOLLOW``, so a symlink planted in place of a file is refused rather than followed.
  Files are created 0600; nothing is chmodded after the fact. (Windows has neither
  descriptors of directories nor mode bits: see ``_platform.windows``.)
- **Locks with a bounded wait** (:func:`locked_file`): ``flock`` locks (``LockFile`` on
  Windows) belong to the open file description, so they exclude other processes and other
  descriptors in this process alike, and the kernel drops them when the holder dies: no
  stale lock file ever needs cleaning. Lock files are never deleted, because deleting one
  while another process waits on it would let two holders in at once.
- **Atomic writes** (:meth:`PrivateDir.write_atomic`): temp file, fsync, rename, fsync of
  the directory, so a reader sees the old file or the new one, even after a crash. The
  temp file is named ``.<name>.<pid>.<thread>.tmp``. A writer killed mid-write leaves one
  behind (with a secret in it, for a credential file). Every writer of a file holds that
  file's write lock while its temp file exists, so whoever holds the lock can delete
  leftover temp files of that file: none of them belongs to a live writer.
  :meth:`PrivateDir.write_atomic` does so before each write, and :meth:`PrivateDir.sweep`
  lets a caller clean those of other files whose locks it can take without waiting.
- **Side documents** (:class:`SideFile`): small non-secret JSON documents beside the
  credential files (keyring index, placements, kept registrations), changed only under
  their own lock by a read-modify-write.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .._errors import LockTimeout, StoreCorrupt, StoreUnavailable, UnsafeStorePath
from .._platform import DirHandle, current
from .._record import CredentialKey

log = logging.getLogger("grantkeeper.lock")

POLL_START = 0.001
"""First pause between attempts: an uncontended handover completes within a millisecond."""

POLL_MAX = 0.05
"""Longest pause between attempts, as Codex polls: bounds the handover delay under load."""

UPDATE_LOCK_TIMEOUT = 10.0
"""A side document's lock is held for one small read-modify-write."""

Document = dict[str, Any]

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


# -- locks ---------------------------------------------------------------------------------

_held: dict[int, object] = {}
"""Descriptors of the lock files open in this process, each with a token of the
:func:`locked_file` that opened it. A forked child gets copies that share the parent's
lock (``flock`` belongs to the open file description): the child's own ``flock`` on the
same file would wait for itself, and its copy would keep the lock held if the parent
died. So a child closes its copies at once (:func:`_forget_after_fork`); and the parent
unlocks explicitly before closing, which releases the lock whatever copies exist."""


def _forget_after_fork() -> None:
    for fd in list(_held):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(after_in_child=_forget_after_fork)


@contextlib.contextmanager
def locked_file(dirh: DirHandle, name: str, *, timeout: float, what: str) -> Iterator[None]:
    """Hold the exclusive lock of ``name`` in ``dirh`` for the ``with`` body."""
    platform = current()
    try:
        fd = dirh.open(name, os.O_RDWR | os.O_CREAT)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeStorePath(f"lock file {name} is a symlink; refusing it") from None
        raise StoreUnavailable(f"cannot open lock file {name}: {exc.strerror}") from None
    token = object()
    _held[fd] = token
    locked = False
    try:
        started = time.monotonic()
        deadline = started + timeout
        pause = POLL_START
        while True:
            try:
                locked = platform.try_lock(fd)
            except OSError as exc:  # not "held": the file system cannot lock (NFS without locks)
                raise os_error("lock", name, exc) from None
            if locked:
                break
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
        # In a child forked meanwhile, the descriptor was closed already (and its number
        # may have been reused since): only the opener's own token says it is still ours.
        if _held.get(fd) is token:
            if locked:
                with contextlib.suppress(OSError):
                    platform.unlock(fd)
            del _held[fd]
            os.close(fd)


# -- the directory ---------------------------------------------------------------------


class PrivateDir:
    """A directory at ``path`` only its owner may use; see the module docstring.

    With ``owner_only=False`` (``GRANTKEEPER_HOME`` itself, which a user may point at a
    directory of their choosing) the directory's owner and mode are not checked; the files
    in it are still opened without following symlinks, and created 0600.
    """

    def __init__(self, path: Path, *, owner_only: bool = True) -> None:
        self.path = path
        self.owner_only = owner_only

    def __repr__(self) -> str:
        return f"PrivateDir({str(self.path)!r})"

    @contextlib.contextmanager
    def open(self, *, create: bool) -> Iterator[DirHandle | None]:
        """Yield the open directory (``None`` if absent and not ``create``)."""
        if create:
            self._ensure()
        try:
            dirh = current().open_dir(self.path)
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
            self._check(dirh)
            yield dirh
        finally:
            dirh.close()

    def _ensure(self) -> None:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.mkdir(self.path, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise os_error("create", str(self.path), exc) from None

    def _check(self, dirh: DirHandle) -> None:
        platform = current()
        if not self.owner_only or not platform.owner_modes:
            return  # Windows: the user profile's ACL protects it (docs/security.md)
        info = dirh.stat()
        if info.st_uid != platform.uid():
            raise UnsafeStorePath(f"{self.path} is owned by another user")
        if info.st_mode & 0o077:
            raise UnsafeStorePath(
                f"{self.path} is accessible by other users "
                f"(mode {stat.S_IMODE(info.st_mode):o}); run: chmod 700 {self.path}"
            )

    # -- files --------------------------------------------------------------------------

    def read_file(self, dirh: DirHandle, name: str) -> tuple[bytes, int] | None:
        """The bytes and permission bits of ``name`` (never through a symlink), or ``None``."""
        try:
            fd = dirh.open(name, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise os_error("read", str(self.path / name), exc) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise UnsafeStorePath(f"{self.path / name} is not a regular file")
            with os.fdopen(os.dup(fd), "rb") as handle:
                return handle.read(), stat.S_IMODE(info.st_mode)
        except OSError as exc:
            raise os_error("read", str(self.path / name), exc) from None
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def updating(
        self, name: str, *, lock: str | None = None, timeout: float | None = None
    ) -> Iterator[DirHandle]:
        """Hold ``name``'s write lock (``lock``, default ``<name>.lock``) in the directory,
        created if need be; yield the open directory for reads and
        :meth:`write_atomic`. Waits at most ``timeout`` (default
        :data:`UPDATE_LOCK_TIMEOUT`), then raises :class:`LockTimeout`."""
        if timeout is None:
            timeout = UPDATE_LOCK_TIMEOUT
        with self.open(create=True) as dirh:
            assert dirh is not None
            lock_name = lock if lock is not None else name + ".lock"
            with locked_file(dirh, lock_name, timeout=timeout, what=str(self.path / name)):
                yield dirh

    def write_atomic(self, dirh: DirHandle, name: str, payload: bytes) -> None:
        """Replace ``name`` with ``payload`` atomically (temp file, fsync, rename, fsync).

        The caller must hold ``name``'s write lock: leftover temp files of ``name`` are
        deleted first, which is safe only because no live writer of ``name`` can exist.
        """
        self._remove_temps(dirh, name)
        # Unique per writer thread; the write lock already excludes other writers of name.
        temp = f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            fd = dirh.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
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
            dirh.replace(temp, name)
            dirh.fsync()
        except OSError as exc:
            with contextlib.suppress(OSError):
                dirh.unlink(temp)
            raise os_error("write", name, exc) from None

    def remove_temps(self, dirh: DirHandle, name: str) -> None:
        """Delete leftover temp files of ``name``; the caller holds ``name``'s write lock."""
        self._remove_temps(dirh, name)

    def _remove_temps(self, dirh: DirHandle, name: str) -> None:
        for entry in _temps(dirh):
            if _target(entry) == name:
                # A courtesy: a temp file another program holds open (a virus scanner, on
                # Windows) stays for the next write, and never fails this one.
                with contextlib.suppress(OSError):
                    dirh.unlink(entry)

    def sweep(self, dirh: DirHandle, lock_of: Callable[[str], str | None]) -> int:
        """Delete leftover temp files of other files whose write lock is free right now.

        ``lock_of`` maps a target file name to the name of its write lock file, or ``None``
        for files this sweep must leave alone (such as those whose lock the caller holds:
        ``flock`` would refuse the caller its own lock). A lock that is held means a live
        writer may own the temp file, so it is skipped. Returns how many were deleted.
        """
        removed = 0
        for entry in _temps(dirh):
            target = _target(entry)
            lock = lock_of(target) if target is not None else None
            if lock is None:
                continue
            try:
                with locked_file(dirh, lock, timeout=0, what=lock):
                    with contextlib.suppress(OSError):
                        dirh.unlink(entry)
                        removed += 1
            except (LockTimeout, StoreUnavailable):
                continue  # a live writer holds it (its temp file is in use), or no lock here
        return removed


def _temps(dirh: DirHandle) -> list[str]:
    try:
        return [entry for entry in dirh.listdir() if entry.endswith(".tmp")]
    except OSError:
        return []  # cleaning up is a courtesy; the write itself reports real failures


def _target(entry: str) -> str | None:
    match = TEMP_PATTERN.fullmatch(entry)
    return match.group("name") if match else None


# -- side documents ----------------------------------------------------------------------


class SideFile:
    """One JSON document named ``name`` in the private directory ``directory``, marked
    with ``format``: small and non-secret, changed only under its own lock."""

    def __init__(self, directory: Path, name: str, format: str) -> None:
        self._dir = PrivateDir(directory)
        self.name = name
        self.format = format
        self.path = directory / name

    def _read(self, dirh: DirHandle) -> Document:
        found = self._dir.read_file(dirh, self.name)
        if found is None:
            return {"format": self.format}
        try:
            document = json.loads(found[0])
        except (ValueError, RecursionError):
            document = None
        if not isinstance(document, dict) or document.get("format") != self.format:
            raise StoreCorrupt(f"{self.path} is malformed; delete it and run grantkeeper doctor")
        return document

    def load(self) -> Document:
        """The current document (just ``{"format": ...}`` when there is none)."""
        with self._dir.open(create=False) as dirh:
            return self._read(dirh) if dirh is not None else {"format": self.format}

    def update(self, change: Callable[[Document], Document | None]) -> Document:
        """Apply ``change`` under the lock; it returns the new document, or ``None`` to keep it."""
        with self._dir.updating(self.name) as dirh:
            document = self._read(dirh)
            changed = change(document)
            if changed is None:
                return document
            changed["format"] = self.format
            payload = json.dumps(changed, indent=2, ensure_ascii=False).encode("utf-8")
            self._dir.write_atomic(dirh, self.name, payload)
            return changed
