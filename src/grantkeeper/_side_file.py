"""Small non-secret JSON documents beside the credential files (keyring index, placements).

They live in the file store's directory, so they get its checks (owner, 0700, no
symlinks); they are replaced atomically and changed only under their own ``flock``, which
also makes it safe for each update to delete the temp file a killed updater left behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from ._errors import StoreCorrupt, UnsafeStorePath
from ._file_lock import locked_file
from ._file_store import FileStore
from ._private_dir import PrivateDir

UPDATE_LOCK_TIMEOUT = 10.0
"""A side file's lock is held for one small read-modify-write."""

Document = dict[str, Any]


class SideFile:
    """One JSON document named ``name`` in ``files``' directory, marked with ``format``."""

    def __init__(self, files: FileStore, name: str, format: str) -> None:
        self._dir = PrivateDir(files.directory)
        self.name = name
        self.format = format
        self.path = files.directory / name

    def _read(self, dir_fd: int) -> Document:
        try:
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(self.name, flags, dir_fd=dir_fd)
        except FileNotFoundError:
            return {"format": self.format}
        except OSError as exc:
            raise UnsafeStorePath(f"cannot open {self.path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read()
        try:
            document = json.loads(raw)
        except (ValueError, RecursionError):
            document = None
        if not isinstance(document, dict) or document.get("format") != self.format:
            raise StoreCorrupt(f"{self.path} is malformed; delete it and run grantkeeper doctor")
        return document

    def load(self) -> Document:
        """The current document (just ``{"format": ...}`` when there is none)."""
        with self._dir.open(create=False) as dir_fd:
            return self._read(dir_fd) if dir_fd is not None else {"format": self.format}

    def update(self, change: Callable[[Document], Document | None]) -> Document:
        """Apply ``change`` under the lock; it returns the new document, or ``None`` to keep it."""
        with self._dir.open(create=True) as dir_fd:
            assert dir_fd is not None
            with locked_file(
                dir_fd, self.name + ".lock", timeout=UPDATE_LOCK_TIMEOUT, what=str(self.path)
            ):
                current = self._read(dir_fd)
                changed = change(current)
                if changed is None:
                    return current
                changed["format"] = self.format
                payload = json.dumps(changed, indent=2, ensure_ascii=False).encode("utf-8")
                self._dir.write_atomic(dir_fd, self.name, payload)
                return changed
