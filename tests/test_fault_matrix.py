"""Fault matrix rows not covered elsewhere (docs/guarantees.md maps every row to a test).

Injected disk faults on the real file store, a keyring that locks mid-refresh, a hung lock
holder, PostgreSQL cutting connections mid-transaction, an authorization server restart
and clock skew against the real server.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import psycopg
import pytest

from grantkeeper import (
    AuthenticationRequired,
    ClientRegistrationInvalid,
    CredentialKey,
    FileStore,
    Keeper,
    KeyringStore,
    LockTimeout,
    PostgresStore,
    Store,
)
from grantkeeper._oauth.auth_server_metadata import parse_metadata
from grantkeeper._oauth.code_flow import run_code_flow
from grantkeeper._platform import posix as posix_platform
from grantkeeper._status import AuthState, status_of
from grantkeeper._stores import _fs
from grantkeeper._stores import file as _file_store
from grantkeeper.testing import MemoryKeyring, sample_record
from harness.authserver import AuthServer
from harness.fake_provider import FakeProvider
from harness.postgres import PostgresCluster
from tests.helpers import KEY, StepClock, World


@pytest.fixture
def http(provider: FakeProvider) -> Iterator[httpx.Client]:
    with httpx.Client(transport=provider.transport()) as client:
        yield client


def seeded(store: Store, provider: FakeProvider, clock: StepClock) -> None:
    access, refresh = provider.issue()
    store.write(KEY, sample_record(access, refresh, now=clock()), expected_version=None)


def keeper_for(store: Store, http: httpx.Client, clock: StepClock, **kwargs: Any) -> Keeper:
    return Keeper(store, KEY, http_client=http, clock=clock, **kwargs)


def arm_at(stage: str, arm: Callable[[], None]) -> Callable[[str], None]:
    """A checkpoint that calls ``arm`` the first time the transaction reaches ``stage``."""
    fired: list[str] = []

    def checkpoint(name: str) -> None:
        if name == stage and not fired:
            fired.append(name)
            arm()

    return checkpoint


def assert_b_served_a_never_replayed(
    keeper: Keeper,
    store: Store,
    provider: FakeProvider,
    http: httpx.Client,
    clock: StepClock,
    heal: Callable[[], None],
) -> None:
    """The common promise when the answer cannot be stored: serve B, spend nothing else,
    share B with a peer in this process, heal once the store works."""
    b = keeper.credential()
    assert keeper.persistence_pending
    assert provider.is_active(b.access_token) and provider.refresh_calls == 1
    # A peer in this process shares the live holder's unstored B rather than spend A
    # (a peer process fails closed: tests/test_decide.py, tests/test_fleet_hosts.py).
    assert keeper_for(store, http, clock).credential().access_token == b.access_token
    assert provider.refresh_calls == 1
    heal()
    clock.advance(3600)  # B goes stale: the next transaction first stores B, then refreshes
    c = keeper.credential()
    assert not keeper.persistence_pending
    assert provider.refresh_calls == 2 and provider.replays == 0
    stored = store.read(KEY)
    assert stored is not None and stored.record == c


# -- the file store: ENOSPC, EIO, read-only -----------------------------------------------


class FaultyOS(SimpleNamespace):
    """The ``os`` module as the file store sees it, with one call failing while armed."""

    def __init__(self, call: str, code: int) -> None:
        super().__init__()
        self.armed = False
        self.fired = 0
        self._call, self._code = call, code

    def __getattr__(self, name: str) -> Any:
        real = getattr(os, name)
        if name != self._call:
            return real

        def failing(*args: Any, **kwargs: Any) -> Any:
            # Only a new file fails to open (a write's temp file, O_EXCL): the lock files,
            # opened through the same layer, already exist and still open.
            creating = name != "open" or (len(args) > 1 and args[1] & os.O_EXCL)
            if self.armed and creating:
                self.fired += 1
                raise OSError(self._code, os.strerror(self._code))
            return real(*args, **kwargs)

        return failing


@pytest.mark.parametrize(
    ("call", "code"),
    [
        ("write", errno.ENOSPC),
        ("fsync", errno.EIO),
        ("open", errno.EROFS),
        ("replace", errno.EACCES),
    ],
    ids=["disk-full", "eio", "read-only", "permission"],
)
def test_file_store_write_faults_serve_b_and_heal(
    tmp_path: Path,
    provider: FakeProvider,
    http: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
    call: str,
    code: int,
) -> None:
    faulty = FaultyOS(call, code)
    monkeypatch.setattr(_file_store, "os", faulty)
    monkeypatch.setattr(_fs, "os", faulty)  # the file system layer under it
    monkeypatch.setattr(posix_platform, "os", faulty)  # and its directory handle's calls
    store, clock = FileStore(tmp_path), StepClock()
    seeded(store, provider, clock)
    clock.advance(3600)

    def arm() -> None:
        faulty.armed = True

    keeper = keeper_for(store, http, clock, checkpoint=arm_at("after_provider", arm))

    def heal() -> None:
        faulty.armed = False

    assert_b_served_a_never_replayed(keeper, store, provider, http, clock, heal)
    assert faulty.fired, f"the {call} fault never reached the file store"


# -- the keyring locks between the note and the answer ------------------------------------


def test_keyring_locked_mid_refresh_serves_b_and_heals(
    tmp_path: Path, provider: FakeProvider, http: httpx.Client
) -> None:
    backend = MemoryKeyring()
    store, clock = KeyringStore(tmp_path, service="faults", backend=backend), StepClock()
    seeded(store, provider, clock)
    clock.advance(3600)

    def lock() -> None:
        backend.locked = True

    def unlock() -> None:
        backend.locked = False

    keeper = keeper_for(store, http, clock, checkpoint=arm_at("after_provider", lock))
    b = keeper.credential()
    assert keeper.persistence_pending and provider.refresh_calls == 1
    unlock()
    # A peer in this process can read again: it stores the live holder's B, never A.
    peer = keeper_for(store, http, clock)
    assert peer.credential().access_token == b.access_token
    assert not peer.persistence_pending and not keeper.persistence_pending
    assert provider.refresh_calls == 1
    clock.advance(3600)
    c = keeper.credential()
    assert c.access_token != b.access_token
    assert provider.refresh_calls == 2 and provider.replays == 0


# -- a lock holder that hangs ---------------------------------------------------------------


@contextlib.contextmanager
def lock_held_by_a_peer(store: Store) -> Iterator[None]:
    """A peer (a thread) holds the credential's lock for the ``with`` body: hung, or frozen
    mid-refresh. It lets go on the way out."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.lock(KEY, timeout=5):
            holding.set()
            release.wait(120)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(60)
        yield
    finally:
        release.set()
        holder.join()


def test_a_hung_lock_holder_gives_a_typed_timeout_and_nothing_is_spent_or_stolen(
    world: World,
) -> None:
    world.login()
    before = world.store.inner.read(KEY)  # its version too: nothing may be written
    world.clock.advance(3600)
    with lock_held_by_a_peer(world.store.inner):
        keeper = world.keeper(lock_timeout=0.2)
        with pytest.raises(LockTimeout) as info:
            keeper.credential()
        assert info.value.retryable
        assert world.provider.refresh_calls == 0 and world.store.inner.read(KEY) == before
    # The holder let go: the same keeper proceeds.
    assert world.provider.is_active(keeper.credential().access_token)


def test_a_closing_keeper_abandons_a_refresh_ahead_still_waiting_for_the_lock(
    world: World,
) -> None:
    store, provider = world.store.inner, world.provider
    world.login()
    before = store.read(KEY)
    assert before is not None
    world.clock.advance(3600 - 30)  # inside the refresh margin: served at once, refreshed ahead
    waiting, closed = threading.Event(), threading.Event()

    def note(stage: str) -> None:
        if stage == "lock_wait":
            waiting.set()

    with lock_held_by_a_peer(store):
        keeper = world.keeper(lock_timeout=600, checkpoint=note)
        assert keeper.credential() == before.record  # valid: never waits
        assert waiting.wait(60)  # its refresh ahead waits for the lock

        def close() -> None:
            keeper.close()
            closed.set()

        closer = threading.Thread(target=close)
        closer.start()
        # close() lets go while the peer still holds the lock (it may hold it for ever).
        assert closed.wait(60)
        closer.join()
    # The abandoned transaction gets the lock now, and gives it back untouched.
    assert keeper.settle(60)
    assert provider.refresh_calls == 0 and store.read(KEY) == before
    # The Keeper is still usable: its next refresh ahead runs.
    assert keeper.credential() == before.record
    assert keeper.settle(60)
    assert provider.refresh_calls == 1 and provider.replays == 0
    keeper.close()


# -- PostgreSQL cuts every connection mid-transaction ---------------------------------------


@pytest.mark.slow
def test_postgresql_connections_cut_after_the_answer_serve_b_and_heal(
    provider: FakeProvider, http: httpx.Client
) -> None:
    with PostgresCluster() as cluster:
        store = PostgresStore(cluster.dsn, schema=f"f{uuid.uuid4().hex[:10]}")
        clock = StepClock()
        seeded(store, provider, clock)
        clock.advance(3600)

        def cut() -> None:
            with psycopg.connect(cluster.dsn, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'grantkeeper'"
                )

        keeper = keeper_for(store, http, clock, checkpoint=arm_at("before_write", cut))
        b = keeper.credential()
        assert keeper.persistence_pending  # the write met the dead connection
        assert provider.is_active(b.access_token) and provider.refresh_calls == 1
        clock.advance(3600)
        c = keeper.credential()  # a new connection: B stored, then refreshed normally
        assert not keeper.persistence_pending
        assert provider.refresh_calls == 2 and provider.replays == 0
        stored = store.read(KEY)
        assert stored is not None and stored.record == c
        store.close()


# -- the real authorization server: restart, clock skew -------------------------------------

RESOURCE = "http://127.0.0.1:9/mcp"
REDIRECT_URI = "http://127.0.0.1:9/callback"
REAL_KEY = CredentialKey.for_server(RESOURCE)


def real_login(server: AuthServer, store: Store, http: httpx.Client) -> None:
    body = http.get(f"{server.issuer}/.well-known/openid-configuration").content
    run_code_flow(
        store,
        REAL_KEY,
        metadata=parse_metadata(body, expected_issuer=server.issuer),
        resource=RESOURCE,
        redirect_uri=REDIRECT_URI,
        authorize=lambda url: server.approve(url, REDIRECT_URI),
        http=http,
        scope="mcp",
    )


@pytest.mark.slow
@pytest.mark.realserver
def test_authorization_server_restart_requires_a_new_login_and_says_why(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    with httpx.Client(timeout=10, trust_env=False) as http:
        first = AuthServer(access_ttl=3600).start()
        try:
            real_login(first, store, http)
            port = first.port
        finally:
            first.stop()
        # Same address, all state gone: every grant and every registered client.
        with AuthServer(access_ttl=3600, port=port) as second:
            with Keeper(store, REAL_KEY) as keeper:
                current = keeper.credential()
                with pytest.raises(ClientRegistrationInvalid) as info:
                    keeper.credential(rejected=current.access_token)
            assert info.value.requires_login or info.value.requires_reauthentication
            stored = store.read(REAL_KEY)
            assert stored is not None and stored.record.reauth_reason
            status = status_of(REAL_KEY, stored.record, now=datetime.now(UTC))
            assert status.state is AuthState.REAUTHENTICATION_REQUIRED
            # No retry loop: the next caller fails closed without calling the server.
            with Keeper(store, REAL_KEY) as peer, pytest.raises(AuthenticationRequired):
                peer.credential(rejected=current.access_token)
            assert second.stats()["refresh_success"] == 0
            real_login(second, store, http)  # a new login (and registration) recovers
            with Keeper(store, REAL_KEY) as fresh:
                assert fresh.credential().access_token


@pytest.mark.slow
@pytest.mark.realserver
@pytest.mark.parametrize("skew_minutes", [-5, 5])
def test_clock_skew_of_five_minutes_costs_nothing(tmp_path: Path, skew_minutes: int) -> None:
    # Expiry is computed from the client's own clock at receipt (now + expires_in), so a
    # constant offset from the server cancels out; a 401 the server sends early still
    # costs exactly one refresh, and no refresh loop follows.
    store = FileStore(tmp_path)
    offset = timedelta(minutes=skew_minutes)

    def skewed() -> datetime:
        return datetime.now(UTC) + offset

    with AuthServer(access_ttl=3600) as server, httpx.Client(timeout=10, trust_env=False) as http:
        real_login(server, store, http)
        server.reset_stats()
        with Keeper(store, REAL_KEY, clock=skewed) as keeper:
            first = keeper.credential()
            second = keeper.credential(rejected=first.access_token)
            assert second.access_token != first.access_token
            for _ in range(3):
                assert keeper.credential().access_token == second.access_token
        stats = server.stats()
        assert stats["refresh_success"] == 1 and stats["replays"] == 0
