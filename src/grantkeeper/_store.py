"""The store interface every backend implements: versioned records and a transaction lock."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ._record import Credential, CredentialKey

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
