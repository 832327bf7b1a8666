"""Store administration: diagnose a store's health, and move credentials between stores.

``grantkeeper doctor`` and ``grantkeeper store migrate`` are thin commands over
:func:`diagnose_store` and :func:`migrate_store`.

A migration moves each credential under its transaction lock on both sides (taken in one
order, so two migrations never wait on each other), copies before it deletes, and records
where the credential now lives in the placements of every local home involved, so Auto
mode follows it whichever way it moved.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Literal

from .._errors import GrantkeeperError, LockTimeout, StoreConfigError, StoreError
from .._platform import current, loose_mode
from .._platform.windows import is_link
from .._record import CredentialKey
from .auto import AutoStore, Backend
from .base import HeldLock, Store
from .file import FileStore
from .keyring import KeyringStore
from .postgresql import PostgresStore

DEFAULT_MIGRATE_LOCK_TIMEOUT = 30.0
"""Seconds a migration waits for each credential's lock: one refresh takes at most ~30 s."""


@dataclass
class StoreCheck:
    """One health check of :func:`diagnose_store`."""

    name: str
    ok: bool
    detail: str


@dataclass
class CredentialReport:
    """One credential as :func:`diagnose_store` found it (never its secrets)."""

    key: str
    server_url: str
    profile: str | None
    store: str | None
    """The store it is placed in (Auto mode), or the store's name."""
    found_in: list[str]
    drift: bool
    """Whether a copy is anywhere other than (or besides) where it is placed."""
    version: int | None
    lock: str
    problem: str | None = None


@dataclass
class StoreReport:
    """Everything :func:`diagnose_store` found."""

    store: str
    checks: list[StoreCheck] = field(default_factory=list)
    credentials: list[CredentialReport] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return all(c.ok for c in self.checks) and not any(
            c.drift or c.problem for c in self.credentials
        )


MigrationOutcome = Literal["moved", "already there", "gone", "conflict", "failed"]


@dataclass(frozen=True)
class MigrationResult:
    """What :func:`migrate_store` did with one credential."""

    key: CredentialKey
    outcome: MigrationOutcome
    detail: str | None = None
    """Why, for ``conflict`` and ``failed``."""

    @property
    def ok(self) -> bool:
        """Whether nothing is left to do for this credential."""
        return self.outcome in ("moved", "already there", "gone")

    def __str__(self) -> str:
        return f"{self.outcome}: {self.detail}" if self.detail else self.outcome


# -- diagnosis ----------------------------------------------------------------------------


def _session_locks_check(store: PostgresStore) -> StoreCheck:
    try:
        store.check_session_locks()
    except StoreError as exc:
        return StoreCheck("session locks", False, exc.message)
    return StoreCheck(
        "session locks",
        True,
        "held between statements; lock sessions fenced, idle_session_timeout 5 min, keepalives",
    )


def diagnose_store(store: Store) -> StoreReport:
    """Check ``store``: reachability, permissions, the keyring, and for every credential
    where it lives, drift, its version and whether its lock is free. Reads no secret out."""
    report = StoreReport(store=repr(store))
    if isinstance(store, AutoStore | FileStore | KeyringStore):
        files = store.file if isinstance(store, AutoStore) else FileStore(store.home)
        report.checks.extend(_permission_checks(files))
    if isinstance(store, AutoStore | KeyringStore):
        keyring = store.keyring if isinstance(store, AutoStore) else store
        report.checks.append(_keyring_check(keyring))
    if isinstance(store, PostgresStore):
        report.checks.append(
            StoreCheck(
                "encryption at rest", True, "on" if store.encrypted else "off (records in plain)"
            )
        )
        report.checks.append(_session_locks_check(store))
    try:
        if isinstance(store, AutoStore):
            entries: list[tuple[CredentialKey, str | None, list[str], bool]] = [
                (p.key, p.placed, list(p.found_in), p.drift) for p in store.placements()
            ]
        else:
            entries = [(k, store.name, [store.name], False) for k in store.keys()]
        report.checks.append(StoreCheck("store reachable", True, store.name))
    except StoreError as exc:
        report.checks.append(StoreCheck("store reachable", False, exc.message))
        return report
    for key, placed, found_in, drift in entries:
        entry = CredentialReport(
            str(key), key.server_url, key.profile, placed, found_in, drift, None, "unknown"
        )
        try:
            stored = store.read(key)
            entry.version = stored.version if stored else None
        except GrantkeeperError as exc:
            entry.problem = str(exc)
        entry.lock = _lock_state(store, key)
        report.credentials.append(entry)
    return report


def _lock_state(store: Store, key: CredentialKey) -> str:
    try:
        with store.lock(key, timeout=0):
            return "free"
    except LockTimeout:
        return "held (a refresh or login may be running)"
    except StoreError as exc:
        return f"error: {exc.message}"


def _permission_checks(files: FileStore) -> list[StoreCheck]:
    checks = []
    for path in (files.home, files.directory):
        name = f"permissions {path}"
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            checks.append(StoreCheck(name, True, "not created yet"))
            continue
        mode = stat.S_IMODE(info.st_mode)
        if is_link(info):
            checks.append(StoreCheck(name, False, "is a symlink"))
        elif not current().owner_modes:
            checks.append(
                StoreCheck(name, True, "ACL not checked: private if inside your user profile")
            )
        elif info.st_uid != current().uid():
            checks.append(StoreCheck(name, False, "owned by another user"))
        elif loose_mode(mode):
            checks.append(StoreCheck(name, False, f"mode {mode:o}; run: chmod 700 {path}"))
        else:
            checks.append(StoreCheck(name, True, f"mode {mode:o}"))
    try:
        problems = files.problems()
    except StoreError as exc:
        problems = [exc.message]
    checks.append(
        StoreCheck(
            "credential files", not problems, "; ".join(problems) or "all readable and private"
        )
    )
    return checks


def _keyring_check(keyring: KeyringStore) -> StoreCheck:
    if keyring.available():
        return StoreCheck("keyring", True, f"available ({keyring.backend_name()})")
    if not installed("keyring"):
        # A plain install has no keyring package: say how to get one, not just "unavailable".
        return StoreCheck(
            "keyring",
            True,
            "not installed: Auto mode stores new credentials in files; for the OS keyring "
            "run: pip install 'grantkeeper[keyring]'",
        )
    return StoreCheck("keyring", True, "unavailable: Auto mode stores new credentials in files")


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (an optional dependency, an extra)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # set to None in sys.modules: treated as absent
        return False


# -- migration ----------------------------------------------------------------------------


def migrate_store(
    source: Store,
    target: Store,
    *,
    lock_timeout: float = DEFAULT_MIGRATE_LOCK_TIMEOUT,
) -> list[MigrationResult]:
    """Move every credential of ``source`` to ``target``, each under its lock(s).

    ``target`` must be a concrete store (file, keyring, PostgreSQL), not Auto mode. A
    credential that fails to move is reported as ``failed`` and stays where it was; a
    target that holds a different record is a ``conflict`` and both stay. Raises
    :class:`StoreError` only if ``source`` cannot list its credentials.
    """
    _check_pair(source, target)
    results = []
    for key in source.keys():
        try:
            results.append(migrate_credential(source, target, key, lock_timeout=lock_timeout))
        except GrantkeeperError as exc:
            results.append(MigrationResult(key, "failed", str(exc)))
    return results


def migrate_credential(
    source: Store,
    target: Store,
    key: CredentialKey,
    *,
    lock_timeout: float = DEFAULT_MIGRATE_LOCK_TIMEOUT,
) -> MigrationResult:
    """Move ``key`` from ``source`` to ``target``; see :func:`migrate_store`.

    Raises the :class:`GrantkeeperError` that stopped it (a :class:`LockTimeout` if a
    refresh held the lock for ``lock_timeout`` seconds); nothing is deleted then.
    """
    _check_pair(source, target)
    with _locked(source, target, key, lock_timeout):
        holder = _concrete(source, key)
        if _same_place(holder, target):
            _record_placement(source, target, key)
            return MigrationResult(key, "already there")
        stored = holder.read(key)
        if stored is None:
            return MigrationResult(key, "gone")
        existing = target.read(key)
        if existing is None:
            target.write(key, stored.record, expected_version=None)
        elif existing.record != stored.record:
            return MigrationResult(
                key, "conflict", "the target holds a different record; left both in place"
            )
        # Placement first: killed before the delete, Auto follows the new copy and reports
        # the old one as drift, instead of following the copy about to go.
        _record_placement(source, target, key)
        holder.delete(key, expected_version=stored.version)
        return MigrationResult(key, "moved")


def _check_pair(source: Store, target: Store) -> None:
    if isinstance(target, AutoStore):
        raise StoreConfigError("migrate needs a concrete target store: keyring, file or postgresql")
    if source is target:
        raise StoreConfigError("the source and target are the same store")


def _concrete(source: Store, key: CredentialKey) -> Store:
    """The store that really holds ``key`` (Auto mode resolves to keyring or file)."""
    if isinstance(source, AutoStore):
        source.read(key)  # places an unplaced credential where it is
        placed = source.placement(key)
        if placed is not None:
            return source.backend(placed)
    return source


def _same_place(a: Store, b: Store) -> bool:
    """Whether ``a`` and ``b`` keep their records in the same place."""
    if a is b:
        return True
    if isinstance(a, FileStore) and isinstance(b, FileStore):
        return a.directory == b.directory
    if isinstance(a, KeyringStore) and isinstance(b, KeyringStore):
        return a.service == b.service  # one namespace per user account, whatever the home
    return False


def _home_of(store: Store) -> os.PathLike[str] | None:
    """The local home whose placements decide where Auto mode looks for ``store``'s keys."""
    if isinstance(store, AutoStore | FileStore | KeyringStore):
        return store.home
    return None


def _record_placement(source: Store, target: Store, key: CredentialKey) -> None:
    """Point every involved home's placement of ``key`` at where it now lives.

    The target's home says file or keyring; a source home that is not the target's (a move
    to PostgreSQL, or to another home) forgets the key, since nothing of it is left there.
    """
    target_home = _home_of(target)
    where: Backend | None = None
    if isinstance(target, FileStore):
        where = "file"
    elif isinstance(target, KeyringStore):
        where = "keyring"
    if target_home is not None:
        _placements(source, target_home).place(key, where, replace=True)
    source_home = _home_of(source)
    if source_home is not None and source_home != target_home:
        _placements(source, source_home).place(key, None, replace=True)


def _placements(source: Store, home: os.PathLike[str]) -> AutoStore:
    """An Auto store of ``home`` to record placements with (``source`` itself if it is one:
    placing touches only the placements file, never the keyring)."""
    if isinstance(source, AutoStore) and source.home == home:
        return source
    return AutoStore(home)


_LockFactory = Callable[[CredentialKey, float], AbstractContextManager[HeldLock | None]]


def _lock_parts(store: Store) -> list[tuple[tuple[int, str], _LockFactory]]:
    """``store``'s locks as (identity, factory), identity ordering files < keyring < others.

    Auto mode's lock is its file lock and its keyring lock; stores that share a lock (one
    home's file store under Auto and alone) share an identity, so it is taken once.
    """
    if isinstance(store, AutoStore):
        return _lock_parts(store.file) + _lock_parts(store.keyring)
    if isinstance(store, FileStore):
        return [((0, str(store.directory)), lambda k, t: store.lock(k, timeout=t))]
    if isinstance(store, KeyringStore):
        return [((1, store.service), lambda k, t: store.lock(k, timeout=t))]
    return [((2, repr(store)), lambda k, t: store.lock(k, timeout=t))]


@contextlib.contextmanager
def _locked(source: Store, target: Store, key: CredentialKey, timeout: float) -> Iterator[None]:
    """Hold every lock of ``key`` that source and target have, in one global order."""
    parts = dict(_lock_parts(source) + _lock_parts(target))
    deadline = time.monotonic() + timeout
    with contextlib.ExitStack() as stack:
        for identity in sorted(parts):
            remaining = max(0.0, deadline - time.monotonic())
            stack.enter_context(parts[identity](key, remaining))
        yield
