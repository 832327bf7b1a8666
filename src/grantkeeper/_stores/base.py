"""What every store shares: the interface, the compare-and-swap rule and the record envelope.

The :class:`Store` protocol is the contract (versioned records and a transaction lock).
The rule that decides whether a write or delete at an expected version may go ahead is
written once here (:func:`next_version`, :func:`may_delete`, :func:`conflict`); the
PostgreSQL store states the same rule in SQL, so the database applies it atomically, and
reports a refusal with :func:`conflict`. The local stores keep each record in one JSON
envelope (:func:`envelope`, :func:`open_envelope`): a format mark, the key it belongs to,
its version and when it was written.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from .._errors import StoreCorrupt, VersionConflict
from .._record import Credential, CredentialKey

DEFAULT_LOCK_TIMEOUT = 60.0
"""Seconds to wait for a credential's lock. A holder keeps it at most for one provider call
(30 s) plus two writes, so a minute means the holder is stuck, not slow."""


class HeldLock(Protocol):
    """What ``with store.lock(key) as held`` gives: proof of holding, checked before spending.

    A lock held over the network (PostgreSQL's advisory lock) can be lost while its holder
    runs on: the session ended (a cut connection, a failover, ``pg_terminate_backend``).
    Such a lock carries a ``fence``, a number that grows with each acquisition; the store
    refuses writes that carry an older one than the record's. A lock on the local file
    system (``flock``) cannot be lost while its process lives, so it has no fence.
    """

    @property
    def fence(self) -> int | None:
        """This acquisition's fencing token, or ``None`` where the lock cannot be lost."""
        ...

    def ensure_held(self) -> None:
        """Raise :class:`LockLost` unless the lock is still ours: call it right before an
        irreversible step (spending a refresh token)."""
        ...


@dataclass(frozen=True, slots=True)
class ProcessLock:
    """The :class:`HeldLock` of a ``flock``: the kernel holds it for the holder's lifetime
    and releases it only when the holder's file descriptor closes, so it cannot be lost."""

    fence: None = None

    def ensure_held(self) -> None:
        """Nothing to check: the lock lives exactly as long as this process holds it."""


PROCESS_LOCK = ProcessLock()


@dataclass(frozen=True, slots=True)
class Stored:
    """A record as read from a store, with the version to compare-and-swap against."""

    record: Credential
    version: int


@runtime_checkable
class Store(Protocol):
    """Where credentials live. Every method may raise :class:`StoreError` subclasses.

    Versions start at 1 and grow by one with each write. ``write`` with
    ``expected_version=None`` creates and fails if the key exists; otherwise it replaces
    only that version. A lost race raises :class:`VersionConflict`.

    A store may also say ``plaintext_at_rest = True``: it keeps records unencrypted where
    they rest (see :func:`plaintext_at_rest`). One that does not say counts as sealing them.
    """

    @property
    def name(self) -> str:
        """Short backend name for status output: ``"file"``, ``"keyring"``, ``"postgresql"``."""
        ...

    def read(self, key: CredentialKey) -> Stored | None:
        """Return the record and its version, or ``None`` if nothing is stored."""
        ...

    def write(self, key: CredentialKey, record: Credential, *, expected_version: int | None) -> int:
        """Store ``record`` if the current version is ``expected_version``; return the new one."""
        ...

    def delete(self, key: CredentialKey, *, expected_version: int | None = None) -> bool:
        """Remove the record (only at ``expected_version`` if given); return whether it existed."""
        ...

    def keys(self) -> list[CredentialKey]:
        """Every key that has a record, sorted."""
        ...

    def lock(
        self, key: CredentialKey, *, timeout: float = DEFAULT_LOCK_TIMEOUT
    ) -> AbstractContextManager[HeldLock | None]:
        """Hold ``key``'s transaction lock, exclusive across processes (and hosts, where the
        backend is shared). Released when the holder exits or dies. Raises
        :class:`LockTimeout` after ``timeout`` seconds without stealing it.

        Yields a :class:`HeldLock`; ``None`` (stores written before it existed) means the
        same as :data:`PROCESS_LOCK`, a lock that cannot be lost while its holder lives."""
        ...


@runtime_checkable
class Watchable(Protocol):
    """A store whose writes a waiter can hear of: optional, beside :class:`Store`.

    A transaction that finds the lock held waits here instead of queueing for it: the
    holder's commit wakes it, and it adopts the new record without taking the lock in turn
    (``Keeper``). A store without it makes the waiter queue for the lock as before.
    """

    def wait_for_change(self, key: CredentialKey, version: int | None, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``key``'s record to be written past
        ``version`` (the version the caller read, ``None`` for none) by a write a waiter
        may adopt. Return ``True`` as soon as it has been (a write committed before the
        call counts), ``False`` at the timeout. A write of a record that only notes a
        refresh in flight (``intent`` set) need not wake anyone: nobody can adopt it, and
        its holder writes again when it is done. It may miss a delete, or return ``False``
        early: the caller then tries the lock, so nothing is lost but time."""
        ...


def written_past(stored: Stored | None, version: int | None) -> bool:
    """Whether ``stored`` is a record written after the one at ``version`` that a waiter
    may adopt (not a note of a refresh in flight)."""
    return (
        stored is not None
        and (version is None or stored.version > version)
        and stored.record.intent is None
    )


def plaintext_at_rest(store: Store) -> bool:
    """Whether ``store`` keeps its records unencrypted where they rest (the file store, an
    unsealed PostgreSQL store), so a copy kept elsewhere may be plaintext too.

    An optional attribute, not part of the :class:`Store` protocol: a store that does not
    declare it counts as sealing its records (the OS keyring, a sealed PostgreSQL store),
    the careful answer for a store we know nothing about.
    """
    return getattr(store, "plaintext_at_rest", False) is True


# -- the compare-and-swap rule --------------------------------------------------------------


def conflict(key: CredentialKey, current: int | None, expected: int | None) -> VersionConflict:
    """The error for a write or delete at ``expected`` that found the record at ``current``."""
    return VersionConflict(f"record is at version {current}, expected {expected}", key=str(key))


def next_version(key: CredentialKey, current: int | None, expected: int | None) -> int:
    """The version a write at ``expected`` creates over a record at ``current`` (``None``:
    absent); raise :class:`VersionConflict` unless the two agree.

    Versions start at 1 and grow by one with each write, so a reader's version names
    exactly the record it read.
    """
    if current != expected:
        raise conflict(key, current, expected)
    return (current or 0) + 1


def may_delete(key: CredentialKey, current: int | None, expected: int | None) -> bool:
    """Whether a delete at ``expected`` (``None``: any version) removes a record at
    ``current``: ``False`` when it is absent; :class:`VersionConflict` when it is at
    another version."""
    if current is None:
        return False
    if expected is not None and current != expected:
        raise conflict(key, current, expected)
    return True


# -- the record envelope --------------------------------------------------------------------


def envelope(format: str, key: CredentialKey, version: int) -> dict[str, Any]:
    """The header a local store writes around a record: ``format`` marks it as ours."""
    return {
        "format": format,
        "key": {"server_url": key.server_url, "profile": key.profile},
        "version": version,
        "updated_at": datetime.now(UTC).isoformat(),
    }


def open_envelope(
    document: Any, format: str, *, what: str, key: CredentialKey | None = None
) -> tuple[CredentialKey, int]:
    """The key and version in an :func:`envelope` read back; ``what`` names it in errors.

    Raises :class:`StoreCorrupt` for anything else (a foreign document, a malformed header,
    or the record of another key than ``key``).
    """
    where = str(key) if key else what
    if not isinstance(document, dict) or document.get("format") != format:
        raise StoreCorrupt(f"{what} is not a grantkeeper record", key=where)
    stored_key = document.get("key")
    version = document.get("version")
    if (
        not isinstance(stored_key, dict)
        or not isinstance(stored_key.get("server_url"), str)
        or not isinstance(version, int)
        or isinstance(version, bool)
        or version < 1
    ):
        raise StoreCorrupt(f"{what} has a malformed header", key=where)
    profile = stored_key.get("profile")
    found = CredentialKey(stored_key["server_url"], profile if isinstance(profile, str) else None)
    if key is not None and found != key:
        raise StoreCorrupt(f"{what} belongs to {found}, not {key}", key=where)
    return found, version
