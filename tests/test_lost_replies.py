"""A store write whose reply is lost: it landed, but the writer was told it failed.

While the provider call runs, the lease renewer rewrites the in-flight note. If that write
lands and its reply is lost (a PostgreSQL connection cut after the commit, the file store's
directory ``fsync`` failing after the rename), the store holds a newer version of our own
note than the one we know. B must still be written over it, and our own note must never be
taken for a dead holder's: that would discard B and spend A again, which the provider
answers by revoking the whole grant.

The faults are real: the file store's own ``fsync`` fails (through its ``os`` layer), and
PostgreSQL really commits the statement whose answer a relay swallows before it resets the
connection (:mod:`harness.pg_reply_cut`).
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import stat
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from grantkeeper import (
    Credential,
    CredentialKey,
    FileStore,
    Keeper,
    PostgresStore,
    ProviderUnavailable,
    ReauthenticationRequired,
    Stored,
    StoreUnavailable,
)
from grantkeeper._platform import posix as posix_platform
from grantkeeper._stores import _fs
from grantkeeper.testing import sample_record
from harness.authserver import AuthServer
from harness.fake_provider import FakeProvider
from harness.hosts import GatedProxy
from harness.pg_reply_cut import ReplyCut
from harness.postgres import PostgresCluster
from harness.real_login import age, log_in, reroute
from tests.helpers import KEY, T0, StepClock, StoreWrapper

LEASE = timedelta(seconds=0.3)
"""Renewed every 0.1 s while the provider call runs."""

WAIT = 60.0
"""Generous bound on any one wait of these tests (a loaded CI machine)."""


class DirectoryFsyncFails(SimpleNamespace):
    """The ``os`` module as the file store sees it; while armed, the next ``fsync`` of a
    directory (the one after a write's rename: the write has landed) fails with EIO."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.done = threading.Event()

    def __getattr__(self, name: str) -> Any:
        real = getattr(os, name)
        if name != "fsync":
            return real

        def fsync(fd: int) -> None:
            if self.armed and stat.S_ISDIR(os.fstat(fd).st_mode):
                self.armed = False
                self.done.set()
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            real(fd)

        return fsync


class Blinkable(StoreWrapper):
    """A store whose reads fail while ``blind`` is set (the store cannot say, for a moment).
    Counts the tries to write a record with no note (the answer's)."""

    def __init__(self, inner: FileStore | PostgresStore) -> None:
        super().__init__(inner)
        self.blind = False
        self.b_attempts = 0

    def read(self, key: CredentialKey) -> Stored | None:
        if self.blind:
            raise StoreUnavailable("injected: the store cannot be read right now")
        return self.inner.read(key)

    def write(self, key: CredentialKey, record: Credential, *, expected_version: int | None) -> int:
        if record.intent is None:
            self.b_attempts += 1
        return self.inner.write(key, record, expected_version=expected_version)


@dataclass
class Fault:
    """A store, and how to make its next note renewal land with its reply lost."""

    store: Blinkable
    arm: Callable[[], None]
    done: threading.Event


@pytest.fixture(params=["file-directory-fsync", "postgresql-reply-cut"])
def fault(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Fault]:
    if request.param == "file-directory-fsync":
        faulty = DirectoryFsyncFails()
        monkeypatch.setattr(_fs, "os", faulty)
        monkeypatch.setattr(posix_platform, "os", faulty)  # the directory's fsync is there

        def arm() -> None:
            faulty.armed = True

        yield Fault(Blinkable(FileStore(tmp_path)), arm, faulty.done)
        return
    with PostgresCluster() as cluster, ReplyCut(("127.0.0.1", cluster.port)) as cut:
        store = PostgresStore(cut.dsn(cluster.dsn), schema=f"lost_{uuid.uuid4().hex[:10]}")
        try:
            # While the provider call runs, only the note's renewals use the data connection.
            yield Fault(Blinkable(store), cut.arm, cut.done)
        finally:
            store.close()


def _keeper(fault: Fault, provider: FakeProvider, clock: StepClock) -> Keeper:
    access, refresh = provider.issue()
    fault.store.write(KEY, sample_record(access, refresh, now=T0), expected_version=None)
    fault.store.b_attempts = 0
    clock.advance(3600)  # A is expired: a refresh must be sent
    http = httpx.Client(transport=provider.transport())
    return Keeper(fault.store, KEY, http_client=http, clock=clock, lease=LEASE)


def _lose_a_renewal_reply(
    fault: Fault,
    clock: StepClock,
    *,
    blind: bool = False,
    answer: httpx.Response | None = None,
) -> Any:
    """A provider fault: while the call runs, a renewal lands and its reply is lost (and,
    with ``blind``, the store cannot be read from then on). Then the provider
    answers ``answer``, or B."""

    def during_the_call(form: dict[str, str]) -> httpx.Response | None:
        clock.advance(1)  # so the renewal really moves the lease on
        fault.store.blind = blind
        fault.arm()
        assert fault.done.wait(WAIT), "no renewal of the note was written"
        return answer

    return during_the_call


def test_a_renewal_whose_reply_was_lost_still_has_b_stored_at_once(fault: Fault) -> None:
    provider, clock = FakeProvider(), StepClock()
    keeper = _keeper(fault, provider, clock)
    provider.faults.append(_lose_a_renewal_reply(fault, clock))
    b = keeper.credential()
    # The renewer re-read the note its lost reply left; B was written over it, at once.
    assert not keeper.persistence_pending
    stored = fault.store.read(KEY)
    assert stored is not None and stored.record == b and stored.record.intent is None
    clock.advance(3600)
    c = keeper.credential()
    assert provider.refresh_calls == 2 and provider.replays == 0
    assert provider.is_active(c.access_token)


def test_b_pending_over_our_own_renewed_note_is_stored_never_discarded(fault: Fault) -> None:
    # Worse luck: the store cannot be read when the answer arrives either, so B's write
    # meets the renewed note it does not know of and stays pending. The next transaction
    # finds our own note, renewed: B follows it, and A is never spent again.
    provider, clock = FakeProvider(), StepClock()
    keeper = _keeper(fault, provider, clock)
    provider.faults.append(_lose_a_renewal_reply(fault, clock, blind=True))
    b = keeper.credential()
    fault.store.blind = False
    assert keeper.persistence_pending and fault.store.b_attempts == 1
    stored = fault.store.read(KEY)
    assert stored is not None and stored.record.intent is not None  # our renewed note
    assert stored.record.access_token != b.access_token

    clock.advance(3600)  # B expired: the next transaction stores B first, then refreshes it
    c = keeper.credential()
    assert not keeper.persistence_pending
    assert provider.refresh_calls == 2 and provider.replays == 0
    stored = fault.store.read(KEY)
    assert stored is not None and stored.record == c
    assert provider.is_active(c.access_token)


def test_a_refusal_after_a_lost_renewal_reply_marks_our_note_and_sends_nothing_more(
    fault: Fault,
) -> None:
    # invalid_grant: the guarded re-read finds our own renewed note, not a replacement, so the
    # grant is marked dead at once; A is not sent a second time.
    provider, clock = FakeProvider(), StepClock()
    keeper = _keeper(fault, provider, clock)
    refused = httpx.Response(400, json={"error": "invalid_grant"})
    provider.faults.append(_lose_a_renewal_reply(fault, clock, answer=refused))
    with pytest.raises(ReauthenticationRequired):
        keeper.credential()
    assert provider.refresh_calls == 0  # only the scripted refusal was ever asked
    stored = fault.store.read(KEY)
    assert stored is not None and stored.record.reauth_reason and stored.record.intent is None


def test_a_busy_provider_after_a_lost_renewal_reply_still_gets_its_backoff_noted(
    fault: Fault,
) -> None:
    # 503 with Retry-After: nothing was spent; the note says so and when to try again, over
    # our renewed note, so no process takes the call for one of unknown outcome.
    provider, clock = FakeProvider(), StepClock()
    keeper = _keeper(fault, provider, clock)
    busy = httpx.Response(
        503, headers={"Retry-After": "30"}, json={"error": "temporarily_unavailable"}
    )
    provider.faults.append(_lose_a_renewal_reply(fault, clock, answer=busy))
    with pytest.raises(ProviderUnavailable):
        keeper.credential()
    stored = fault.store.read(KEY)
    assert stored is not None and stored.record.intent is not None
    assert stored.record.intent.state == "unavailable"
    assert stored.record.intent.retry_at is not None
    clock.advance(31)
    keeper.credential()  # the backoff is over: A is spent, once
    assert provider.refresh_calls == 1 and provider.replays == 0


def test_the_real_provider_keeps_the_grant_when_a_renewal_reply_is_lost(tmp_path: Path) -> None:
    """Against oidc-provider (rotation and reuse detection) and PostgreSQL."""
    resource = "http://127.0.0.1:9/mcp"
    key = CredentialKey.for_server(resource, "lost-reply")
    with (
        AuthServer(resources=[resource], access_ttl=600) as server,
        PostgresCluster() as cluster,
        ReplyCut(("127.0.0.1", cluster.port)) as cut,
    ):
        gate = GatedProxy("127.0.0.1", server.issuer)
        store = PostgresStore(cut.dsn(cluster.dsn), schema=f"real_{uuid.uuid4().hex[:10]}")
        try:
            log_in(server, store, key, resource=resource)
            reroute(store, key, server.issuer, to=gate.url)
            age(store, key, expires_in=-timedelta(seconds=5))  # A is expired
            server.reset_stats()
            keeper = Keeper(store, key, lease=LEASE)
            gate.hold()
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                asked = pool.submit(keeper.credential)
                assert gate.arrived.wait(WAIT)  # the refresh of A is at the provider
                cut.arm()
                assert cut.done.wait(WAIT)  # a renewal committed; its reply was lost
                gate.release()
                b = asked.result(timeout=WAIT * 2)
            assert not keeper.persistence_pending
            now = store.read(key)
            assert now is not None and now.record == b

            age(store, key, expires_in=-timedelta(seconds=5))
            fresh = Keeper(store, key)  # another Keeper: what the store holds is all it has
            c = fresh.credential()
            stats = server.stats()
            assert stats["refresh_success"] == 2 and stats["replays"] == 0, stats
            assert stats["refresh_errors"] == [], stats
            assert server.is_active(c.access_token)
            keeper.close()
            fresh.close()
        finally:
            gate.close()
            store.close()
