"""Shared test helpers: a hand-stepped clock, a store wrapper that counts and fails, the
:class:`World` most Keeper tests run in, and the guards every signal to a child and every disk
fill goes through (:mod:`harness.children`). The fixtures that build them are in conftest.py."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from grantkeeper import Credential, CredentialKey, Keeper, Store, Stored, StoreUnavailable
from grantkeeper._stores.base import HeldLock, plaintext_at_rest
from grantkeeper.testing import KEY, sample_record
from grantkeeper.testing import StepClock as _StepClock
from harness.children import (
    NotOurChild,
    assert_small_tmpfs,
    check_own_child,
    reap,
    signal_own_child,
)
from harness.fake_provider import FakeProvider

__all__ = [
    "KEY",
    "RESOURCE",
    "ROOT",
    "T0",
    "CountingStore",
    "LogLines",
    "NotOurChild",
    "StepClock",
    "StoreWrapper",
    "World",
    "assert_small_tmpfs",
    "check_own_child",
    "reap",
    "signal_own_child",
]

ROOT = Path(__file__).resolve().parent.parent
"""The checkout."""
RESOURCE = KEY.server_url
T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


class StepClock(_StepClock):
    """The shipped stepping clock, starting at :data:`T0`."""

    def __init__(self, start: datetime = T0) -> None:
        super().__init__(start)


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


class LogLines(logging.Handler):
    """Keeps each record it is handed as a line: level, message and grantkeeper's fields."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "grantkeeper", None)
        self.lines.append(f"{record.levelname} {record.getMessage()} {fields!r}")


class World:
    """One credential's world: a :class:`FakeProvider` that rotates refresh tokens and
    detects reuse, a :class:`CountingStore` around ``store`` (it counts calls and refuses the
    writes ``fail_writes`` names), a :class:`StepClock` and an HTTP client routed to the
    provider. :meth:`close` closes every Keeper it made, then the client."""

    def __init__(self, provider: FakeProvider, store: Store) -> None:
        self.provider = provider
        self.store = CountingStore(store)
        self.clock = StepClock()
        self.http = httpx.Client(transport=provider.transport())
        self.keepers: list[Keeper] = []

    def login(self, *, subject: str | None = "alice", **changes: Any) -> Credential:
        """A fresh grant, written to the store (over whatever it held) as a login would."""
        access, refresh = self.provider.issue()
        record = sample_record(access, refresh, now=self.clock(), subject=subject, **changes)
        current = self.store.inner.read(KEY)
        self.store.inner.write(KEY, record, expected_version=current.version if current else None)
        return record

    def keeper(self, store: Store | None = None, **options: object) -> Keeper:
        """A Keeper of :data:`KEY` on this world's store (or ``store``), client and clock."""
        keeper = Keeper(
            store or self.store,
            KEY,
            http_client=self.http,
            clock=self.clock,
            **options,  # type: ignore[arg-type]
        )
        self.keepers.append(keeper)
        return keeper

    def refuse_b(self) -> tuple[Keeper, Credential]:
        """A new Keeper serves the stored A, then refreshes it to B while the store refuses B
        (the intent note is still written): B is pending in the Keeper returned with it. The
        store refuses until ``store.fail_writes`` is reset."""
        keeper = self.keeper()
        keeper.access_token()
        self.store.fail_writes = lambda record: record.intent is None
        self.clock.advance(3600)
        return keeper, keeper.credential()

    def stored(self) -> Credential:
        """The record the store holds now."""
        found = self.store.inner.read(KEY)
        assert found is not None
        return found.record

    def close(self) -> None:
        for keeper in self.keepers:
            keeper.close()
        self.http.close()
