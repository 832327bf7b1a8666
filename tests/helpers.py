"""Shared test helpers: a hand-stepped clock, a store wrapper that counts and fails, and the
guards every signal to a child and every disk fill goes through (:mod:`harness.children`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from grantkeeper import Credential, CredentialKey, Store, Stored, StoreUnavailable
from grantkeeper._stores.base import HeldLock, plaintext_at_rest
from grantkeeper.testing import StepClock as _StepClock
from harness.children import (
    NotOurChild,
    assert_small_tmpfs,
    check_own_child,
    reap,
    signal_own_child,
)

__all__ = [
    "KEY",
    "RESOURCE",
    "T0",
    "CountingStore",
    "NotOurChild",
    "StepClock",
    "StoreWrapper",
    "assert_small_tmpfs",
    "check_own_child",
    "make_record",
    "reap",
    "signal_own_child",
]

RESOURCE = "https://mcp.example.test/mcp"
KEY = CredentialKey.for_server(RESOURCE)
T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


class StepClock(_StepClock):
    """The shipped stepping clock, starting at :data:`T0`."""

    def __init__(self, start: datetime = T0) -> None:
        super().__init__(start)


def make_record(
    access: str,
    refresh: str | None,
    *,
    now: datetime = T0,
    lifetime: float = 3600,
    token_endpoint: str = "http://127.0.0.1:9/token",
    subject: str | None = "alice",
) -> Credential:
    """A credential obtained at ``now`` that lives ``lifetime`` seconds."""
    return Credential(
        access_token=access,
        refresh_token=refresh,
        resource=RESOURCE,
        expires_at=now + timedelta(seconds=lifetime),
        obtained_at=now,
        issuer="http://127.0.0.1:9",
        token_endpoint=token_endpoint,
        client_id="client-1",
        subject=subject,
    )


class StoreWrapper:
    """A store that hands every call to ``inner``: subclass it and override the calls a
    test watches or breaks."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.name = inner.name
        self.plaintext_at_rest = plaintext_at_rest(inner)

    def read(self, key: CredentialKey) -> Stored | None:
        return self.inner.read(key)

    def write(self, key: CredentialKey, record: Credential, *, expected_version: int | None) -> int:
        return self.inner.write(key, record, expected_version=expected_version)

    def delete(self, key: CredentialKey, *, expected_version: int | None = None) -> bool:
        return self.inner.delete(key, expected_version=expected_version)

    def keys(self) -> list[CredentialKey]:
        return self.inner.keys()

    def lock(
        self, key: CredentialKey, *, timeout: float = 60.0
    ) -> AbstractContextManager[HeldLock | None]:
        return self.inner.lock(key, timeout=timeout)


@dataclass
class CountingStore:
    """Wraps a store, counts calls, and fails writes while ``fail_writes`` says so."""

    inner: Store
    calls: list[str] = field(default_factory=list)
    fail_writes: Callable[[Credential], bool] = lambda record: False

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def plaintext_at_rest(self) -> bool:
        return plaintext_at_rest(self.inner)

    def read(self, key: CredentialKey) -> Stored | None:
        self.calls.append("read")
        return self.inner.read(key)

    def write(self, key: CredentialKey, record: Credential, *, expected_version: int | None) -> int:
        self.calls.append("write")
        if self.fail_writes(record):
            raise StoreUnavailable("injected: disk full (ENOSPC)")
        return self.inner.write(key, record, expected_version=expected_version)

    def delete(self, key: CredentialKey, *, expected_version: int | None = None) -> bool:
        self.calls.append("delete")
        return self.inner.delete(key, expected_version=expected_version)

    def keys(self) -> list[CredentialKey]:
        self.calls.append("keys")
        return self.inner.keys()

    @contextlib.contextmanager
    def lock(self, key: CredentialKey, *, timeout: float = 60.0) -> Iterator[None]:
        self.calls.append("lock")
        with self.inner.lock(key, timeout=timeout):
            yield
