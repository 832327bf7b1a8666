"""Auto mode: the OS keyring when it works, else the file store, decided once per credential.

Where a credential lives is recorded durably in a placements file (keys and store names,
no secrets) the first time it is stored, and every process follows that record, whatever
its own keyring can do. A process that cannot reach the recorded store fails with a typed
error instead of quietly starting a second copy elsewhere. The preference for credentials
not yet placed is pinned for the life of the object.

If a credential shows up in the store it was not placed in, that is drift: it is logged
(``store.drift``) and reported by ``grantkeeper doctor``, and never followed silently.
A delete (a logout) removes the credential from every backend, stray copies included, so
none of them is adopted by the next read.

The lock is the file store's lock and then the keyring store's, always in that order: it
excludes a peer on either store, and Auto processes of other homes on the same keyring.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from .._errors import StoreCorrupt, StoreUnavailable
from .._observe.log import event
from .._record import Credential, CredentialKey
from ._fs import SideFile
from .base import DEFAULT_LOCK_TIMEOUT, PROCESS_LOCK, ProcessLock, Store, Stored
from .file import FileStore
from .keyring import KeyringStore

Backend = Literal["keyring", "file"]
BACKENDS: tuple[Backend, ...] = ("keyring", "file")

PLACEMENTS_FORMAT = "grantkeeper-placements"


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one credential is recorded to live, and where it was actually found."""

    key: CredentialKey
    placed: Backend | None
    found_in: tuple[Backend, ...]

    @property
    def drift(self) -> bool:
        """Whether the credential is anywhere other than (or besides) where it was placed."""
        if self.placed is None:
            return len(self.found_in) > 1
        return any(where != self.placed for where in self.found_in)


class AutoStore:
    """Keyring or file per credential, recorded durably; see the module docstring."""

    name = "auto"

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        keyring: KeyringStore | None = None,
    ) -> None:
        self.file = FileStore(home)
        self.home = self.file.home
        self.keyring = keyring if keyring is not None else KeyringStore(self.home)
        self._placements = SideFile(self.file.directory, ".placements", PLACEMENTS_FORMAT)
        self._mutex = threading.Lock()
        self._preferred: Backend | None = None
        self._drift_reported: set[CredentialKey] = set()

    def __repr__(self) -> str:
        return f"AutoStore({str(self.home)!r}, preferred={self._preferred!r})"

    @property
    def plaintext_at_rest(self) -> bool:
        """Whether every record rests in plaintext files: only when the keyring package is
        missing, so none can be in the keyring. See :func:`~.base.plaintext_at_rest`."""
        return importlib.util.find_spec("keyring") is None

    # -- choosing -----------------------------------------------------------------------

    @property
    def preferred(self) -> Backend:
        """Where new credentials go: decided on first use, then fixed for this object."""
        with self._mutex:
            if self._preferred is None:
                self._preferred = "keyring" if self.keyring.available() else "file"
                event(logging.INFO, "store.auto_pinned", store=self._preferred)
            return self._preferred

    def backend(self, name: Backend) -> Store:
        return self.keyring if name == "keyring" else self.file

    def placement(self, key: CredentialKey) -> Backend | None:
        """The store ``key`` is recorded to live in, if any."""
        for entry in self._placements.load().get("placements", []):
            if _entry_key(entry) == key:
                store = entry.get("store")
                if store not in BACKENDS:
                    raise StoreCorrupt(f"{self._placements.path} names an unknown store")
                placed: Backend = store
                return placed
        return None

    def place(
        self, key: CredentialKey, where: Backend | None, *, replace: bool = False
    ) -> Backend | None:
        """Record that ``key`` lives in ``where`` (``None``: forget it) and return the record.

        Unless ``replace``, an existing placement wins: two processes that create one
        credential at once agree on the store whichever of them came first.
        """
        result: dict[str, Backend | None] = {"placed": where}

        def change(document: dict[str, Any]) -> dict[str, Any] | None:
            entries = list(document.get("placements", []))
            for n, entry in enumerate(entries):
                if _entry_key(entry) == key:
                    if not replace:
                        result["placed"] = entry.get("store")
                        return None
                    del entries[n]
                    break
            if where is not None:
                entries.append(
                    {"server_url": key.server_url, "profile": key.profile, "store": where}
                )
            entries.sort(key=lambda e: _entry_key(e))
            return {"placements": entries}

        self._placements.update(change)
        return result["placed"]

    def _other(self, where: Backend) -> Backend:
        return "file" if where == "keyring" else "keyring"

    def _peek(self, where: Backend, key: CredentialKey) -> bool:
        """Whether ``where`` holds ``key``; an unreachable keyring counts as no."""
        try:
            return self.backend(where).read(key) is not None
        except StoreUnavailable:
            return False
        except StoreCorrupt:
            return True

    def _may_hold(self, where: Backend, key: CredentialKey) -> bool:
        """Whether unreachable ``where`` may hold ``key``: only the keyring can be
        unreachable, and its index (a file) says what this home put there."""
        if where != "keyring":
            return True
        try:
            return self.keyring.indexed(key)
        except StoreCorrupt:
            return True  # an unreadable index proves nothing

    def _check_drift(self, key: CredentialKey, placed: Backend) -> None:
        if key in self._drift_reported:
            return
        self._drift_reported.add(key)
        other = self._other(placed)
        if self._peek(other, key):
            event(
                logging.WARNING,
                "store.drift",
                key=str(key),
                placed=placed,
                also_in=other,
                hint="grantkeeper keeps using the placed store; run grantkeeper doctor",
            )

    # -- the Store interface ------------------------------------------------------------

    def read(self, key: CredentialKey) -> Stored | None:
        placed = self.placement(key)
        if placed is not None:
            self._check_drift(key, placed)
            return self.backend(placed).read(key)
        # Never placed (stored before placements existed, or by hand): adopt where it is.
        preferred = self.preferred
        for where in (preferred, self._other(preferred)):
            try:
                stored = self.backend(where).read(key)
            except StoreUnavailable:
                if where == preferred:
                    raise
                continue  # nothing to adopt from a keyring this process cannot reach
            if stored is None:
                continue
            placed = self.place(key, where) or where
            if placed != where:
                return self.backend(placed).read(key)  # a peer placed it first
            event(logging.INFO, "store.placement_adopted", key=str(key), store=where)
            return stored
        return None

    def write(self, key: CredentialKey, record: Credential, *, expected_version: int | None) -> int:
        placed = self.placement(key)
        if placed is None:
            if expected_version is not None:
                # Updating a record read before it was placed: place it where it is.
                self.read(key)
                placed = self.placement(key) or self.preferred
            else:
                placed = self.place(key, self.preferred) or self.preferred
        return self.backend(placed).write(key, record, expected_version=expected_version)

    def delete(self, key: CredentialKey, *, expected_version: int | None = None) -> bool:
        """Remove ``key`` from its placed store (at ``expected_version``, if given), then any
        stray copy from the other backend, and forget the placement."""
        placed = self.placement(key)
        if placed is None:
            self.read(key)  # adopts an unplaced copy, so the version check applies to it
            placed = self.placement(key)
        existed = False
        if placed is not None:
            existed = self.backend(placed).delete(key, expected_version=expected_version)
        unchecked: list[Backend] = []
        for where in BACKENDS:
            if where == placed:
                continue
            try:
                existed = self.backend(where).delete(key) or existed
            except StoreUnavailable:
                if not self._may_hold(where, key):
                    continue  # this home never put it there
                unchecked.append(where)
        if unchecked:
            # A copy may sit in a backend we cannot reach. Keep the (now empty) placement,
            # so reads keep returning nothing instead of adopting that copy later.
            keep: Backend = placed or self._other(unchecked[0])
            self.place(key, keep, replace=True)
            event(
                logging.WARNING,
                "store.delete_unchecked",
                key=str(key),
                unchecked=",".join(unchecked),
                hint="a copy may remain there; run grantkeeper doctor once it is reachable",
            )
            return existed
        # A later login places the credential afresh, by the preference of that day.
        self.place(key, None, replace=True)
        return existed

    def keys(self) -> list[CredentialKey]:
        found = set(self.file.keys())
        try:
            found.update(self.keyring.keys())
        except StoreUnavailable:
            # Placed credentials we cannot see still exist: doctor reports them.
            pass
        return sorted(found)

    def wait_for_change(self, key: CredentialKey, version: int | None, timeout: float) -> bool:
        """Wait for a write to ``key`` past ``version`` in the store it is placed in (see
        :class:`~.base.Watchable`); one not placed yet is watched where it would go."""
        if (self.placement(key) or self.preferred) == "keyring":
            return self.keyring.wait_for_change(key, version, timeout)
        return self.file.wait_for_change(key, version, timeout)

    @contextlib.contextmanager
    def lock(
        self, key: CredentialKey, *, timeout: float = DEFAULT_LOCK_TIMEOUT
    ) -> Iterator[ProcessLock]:
        """Hold both backends' locks of ``key``: file first, then keyring (one order for every
        process, so no two wait on each other), within ``timeout`` overall. Both are
        ``flock``s: they cannot be lost while this process holds them."""
        deadline = time.monotonic() + timeout
        with self.file.lock(key, timeout=timeout):
            with self.keyring.lock(key, timeout=max(0.0, deadline - time.monotonic())):
                yield PROCESS_LOCK

    # -- diagnosis ----------------------------------------------------------------------

    def placements(self) -> list[Placement]:
        """Every credential known to either store or the placements file, for ``doctor``."""
        placed: dict[CredentialKey, Backend] = {}
        for entry in self._placements.load().get("placements", []):
            if entry.get("store") in BACKENDS:
                placed[_entry_key(entry)] = entry["store"]
        in_file = set(self.file.keys())
        try:
            in_keyring = set(self.keyring.keys())
        except StoreUnavailable:
            in_keyring = set()
        result = []
        for key in sorted(set(placed) | in_file | in_keyring):
            found = tuple(
                where for where, keys in (("keyring", in_keyring), ("file", in_file)) if key in keys
            )
            result.append(Placement(key, placed.get(key), found))  # type: ignore[arg-type]
        return result


def _entry_key(entry: dict[str, Any]) -> CredentialKey:
    try:
        return CredentialKey(entry["server_url"], entry.get("profile"))
    except (KeyError, TypeError):
        raise StoreCorrupt("the placements file has a malformed entry") from None
