"""The embedded default store: one JSON file per credential under ``GRANTKEEPER_HOME``.

Every path is opened relative to a descriptor of the credentials directory with
``O_NOFOLLOW``, so a symlink planted in place of a file is refused rather than followed.
Files are created 0600 and the directory 0700; nothing is chmodded after the fact.
Writes are atomic (temp file, fsync, rename, fsync of the directory), so a reader sees the
old record or the new one and never half a file, even if the writer is killed mid-write.
The temp file such a killed writer leaves behind (a copy of a secret) is deleted by the
next write or delete that can take its write lock (see ``_fs``).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

from .._errors import StoreCorrupt, StoreUnavailable, UnsafeStorePath
from .._paths import grantkeeper_home
from .._platform import DirHandle, DirWatch, current, loose_mode
from .._record import Credential, CredentialKey, record_from_json, record_to_json
from ._fs import PrivateDir, key_slug, locked_file, os_error
from .base import (
    DEFAULT_LOCK_TIMEOUT,
    PROCESS_LOCK,
    ProcessLock,
    Stored,
    envelope,
    may_delete,
    next_version,
    open_envelope,
    written_past,
)

FILE_FORMAT = "grantkeeper-credential"
"""Marks our files, so a stray JSON file in the directory is never mistaken for one."""

CAS_LOCK_TIMEOUT = 10.0
"""A compare-and-swap holds its lock only for one read and one rename."""

WATCHES_KEPT = 4
"""Directory watches a store keeps for its next waits: one per transaction waiting at once
(one per Keeper of the process), beyond which a watch is closed after use."""

WATCH_POLL = (0.001, 0.01)
"""How often a waiter looks at a record's file for a write: every millisecond at first,
then less often up to every 10 ms (a ``stat`` each time). A waiter adopts within that of
the holder's rename, and a crowd of waiters leaves the holder its CPU."""


def _close_watches(watches: list[tuple[int, DirWatch]]) -> None:
    for _, watch in watches:
        watch.close()  # one inherited through a fork is the parent's still: ours is a copy


def _cas_lock(stem: str) -> str:
    """The short write lock of the record ``<stem>.json``, held by every writer of it."""
    return f".{stem}.cas"


class FileStore:
    """Credentials as files in ``<home>/credentials``; see the module docstring."""

    name = "file"
    plaintext_at_rest = True
    """Records are JSON files, guarded by their modes: see :func:`~.base.plaintext_at_rest`."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home = Path(home) if home is not None else grantkeeper_home()
        self.directory = self.home / "credentials"
        self._dir = PrivateDir(self.directory)
        # Directory watches kept between waits, with the pid that made each (see
        # _take_watch); closed when the store is collected.
        self._watches: list[tuple[int, DirWatch]] = []
        weakref.finalize(self, _close_watches, self._watches)

    def __repr__(self) -> str:
        return f"FileStore({str(self.directory)!r})"

    # -- reading ------------------------------------------------------------------------

    def _load(
        self, dirh: DirHandle, name: str, key: CredentialKey | None
    ) -> tuple[CredentialKey, Stored] | None:
        found = self._dir.read_file(dirh, name)
        if found is None:
            return None
        raw, mode = found
        if loose_mode(mode):
            raise UnsafeStorePath(
                f"{name} is readable by other users; run: chmod 600 {self.directory / name}"
            )
        return self._parse(raw, name, key)

    def _parse(
        self, raw: bytes, name: str, key: CredentialKey | None
    ) -> tuple[CredentialKey, Stored]:
        what = str(self.directory / name)
        try:
            document = json.loads(raw)
        except (ValueError, RecursionError):
            raise StoreCorrupt(f"{what} is not valid JSON", key=str(key) if key else name) from None
        found, version = open_envelope(document, FILE_FORMAT, what=what, key=key)
        record = record_from_json(document.get("record"), key=str(key) if key else name)
        return found, Stored(record, version)

    def read(self, key: CredentialKey) -> Stored | None:
        """Return the stored record for ``key`` with its version, or ``None``."""
        with self._dir.open(create=False) as dirh:
            if dirh is None:
                return None
            loaded = self._load(dirh, key_slug(key) + ".json", key)
            return loaded[1] if loaded else None

    def keys(self) -> list[CredentialKey]:
        """Every key with a readable record. Unreadable files are reported by :meth:`problems`."""
        return sorted(k for k, _ in self._scan()[0])

    def problems(self) -> list[str]:
        """Describe files that are not readable records (corrupt, unsafe), for ``doctor``."""
        return self._scan()[1]

    def _scan(self) -> tuple[list[tuple[CredentialKey, Stored]], list[str]]:
        found: list[tuple[CredentialKey, Stored]] = []
        problems: list[str] = []
        with self._dir.open(create=False) as dirh:
            if dirh is None:
                return found, problems
            for name in sorted(dirh.listdir()):
                # Dot files are side files (.placements, .registrations), never credentials.
                if not name.endswith(".json") or name.startswith("."):
                    continue
                try:
                    loaded = self._load(dirh, name, None)
                except (StoreCorrupt, UnsafeStorePath, StoreUnavailable) as exc:
                    problems.append(str(exc))
                    continue
                if loaded:
                    found.append(loaded)
        return found, problems

    # -- writing ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _cas(
        self, key: CredentialKey, *, parse: bool = True
    ) -> Iterator[tuple[DirHandle, str, Stored | None]]:
        """Hold the short write lock of ``key``; yield the directory, name and current record.

        With ``parse=False`` the current record is not read, so even a corrupt file can be
        deleted (how a user recovers from one).
        """
        name = key_slug(key)
        with self._dir.open(create=True) as dirh:
            assert dirh is not None
            what = f"write {key}"
            with locked_file(dirh, _cas_lock(name), timeout=CAS_LOCK_TIMEOUT, what=what):
                loaded = self._load(dirh, name + ".json", key) if parse else None
                yield dirh, name + ".json", loaded[1] if loaded else None

    def write(self, key: CredentialKey, record: Credential, *, expected_version: int | None) -> int:
        """Replace ``key``'s record if it is at ``expected_version`` (``None``: absent)."""
        with self._cas(key) as (dirh, name, current):
            version = next_version(key, current.version if current else None, expected_version)
            document = {**envelope(FILE_FORMAT, key, version), "record": record_to_json(record)}
            payload = json.dumps(document, indent=2, ensure_ascii=False).encode("utf-8")
            self._dir.write_atomic(dirh, name, payload)
            self._sweep(dirh, name)
            return version

    def delete(self, key: CredentialKey, *, expected_version: int | None = None) -> bool:
        """Remove ``key``'s record (only at ``expected_version``, if given).

        Without ``expected_version`` the file goes even if it is corrupt.
        """
        with self._cas(key, parse=expected_version is not None) as (dirh, name, current):
            # A temp file left by a writer killed mid-write holds a copy of the record.
            self._dir.remove_temps(dirh, name)
            self._sweep(dirh, name)
            if expected_version is not None and not may_delete(
                key, current.version if current else None, expected_version
            ):
                return False
            try:
                dirh.unlink(name)
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise os_error("delete", name, exc) from None
            try:
                dirh.fsync()
            except OSError as exc:
                raise os_error("delete", name, exc) from None
            return True

    def _sweep(self, dirh: DirHandle, held: str) -> None:
        """Delete other records' leftover temp files whose write lock is free; ``held`` is
        the record whose write lock we hold (its temp files are already gone)."""

        def lock_of(target: str) -> str | None:
            if target == held or not target.endswith(".json"):
                return None  # side files clean their own temp files when next written
            return _cas_lock(target.removesuffix(".json"))

        self._dir.sweep(dirh, lock_of)

    # -- watching -----------------------------------------------------------------------

    def wait_for_change(self, key: CredentialKey, version: int | None, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``key``'s record to be written past
        ``version`` (see :class:`~.base.Watchable`).

        Every write replaces the file by a rename, so its inode changes: the file's status
        is looked at (a ``stat``, microseconds) whenever the directory's entries change
        (inotify, on Linux) or every :data:`WATCH_POLL` (elsewhere), and the record read only
        when it changed, and once at the start (a write may have landed since the caller
        read). The status is taken by path, only as a hint: the record is read
        the safe way.
        """
        path = self.directory / (key_slug(key) + ".json")
        deadline = time.monotonic() + timeout
        # Where the OS can wake us (Linux's inotify), it does; elsewhere the status is
        # polled. Either way the file's status says whether the record itself changed.
        watch = self._take_watch()
        try:
            last: tuple[int, int, int] | None = None
            pause = WATCH_POLL[0]
            while True:
                try:
                    info = os.stat(path, follow_symlinks=False)
                    status = (info.st_ino, info.st_mtime_ns, info.st_size)
                except OSError:
                    status = (0, 0, 0)  # absent for now: nothing written past anything
                if status != last:
                    last = status
                    if status != (0, 0, 0) and written_past(self.read(key), version):
                        return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if watch is not None:
                    watch.wait(left)
                else:
                    time.sleep(min(pause, left))
                    pause = min(pause * 2, WATCH_POLL[1])
        finally:
            if watch is not None:
                self._give_back(watch)

    def _take_watch(self) -> DirWatch | None:
        """A watch of the directory: one kept from an earlier wait of this process (its
        old events drained: at worst one needless look at the file), or a new one. Making
        an inotify watch costs milliseconds, and closing one more (the kernel waits for a
        grace period), so a waiter must not pay either on its way to adopting."""
        while self._watches:
            try:
                pid, watch = self._watches.pop()
            except IndexError:  # another thread took the last one
                break
            if pid == os.getpid():
                watch.wait(0)
                return watch
            watch.close()  # inherited through a fork: the parent's, to the parent
        return current().watch_dir(self.directory)

    def _give_back(self, watch: DirWatch) -> None:
        if len(self._watches) < WATCHES_KEPT:
            self._watches.append((os.getpid(), watch))
        else:
            watch.close()

    # -- locking ------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(
        self, key: CredentialKey, *, timeout: float = DEFAULT_LOCK_TIMEOUT
    ) -> Iterator[ProcessLock]:
        """Hold ``key``'s transaction lock (an ``flock`` on a sibling lock file): the kernel
        keeps it until this process closes the file, so it cannot be lost while held."""
        with self._dir.open(create=True) as dirh:
            assert dirh is not None
            with locked_file(
                dirh, f".{key_slug(key)}.lock", timeout=timeout, what=f"the lock of {key}"
            ):
                yield PROCESS_LOCK
