"""The refresh transaction against the real oidc-provider: rotation and reuse detection on.

Every guarantee the fake provider proves fast is shown here once against the real thing.
The server revokes the whole grant on a replayed refresh token and counts each replay, so
``replays == 0`` and ``refresh_success == rotations`` are what "one refresh per rotation
across processes" means in figures.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from grantkeeper import (
    Credential,
    CredentialKey,
    FileStore,
    Keeper,
    ReauthenticationRequired,
    Store,
)
from grantkeeper._status import AuthState, status_of
from harness.authserver import AuthServer
from harness.fleet import die_at, run_fleet
from harness.real_login import log_in
from tests.helpers import CountingStore, reap

pytestmark = pytest.mark.slow

RESOURCE = "http://127.0.0.1:9/mcp"
FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)


AUTH_SERVER = {"resources": [RESOURCE]}


@pytest.fixture
def key() -> CredentialKey:
    # A profile per test keeps records apart; the server's counters are reset per test.
    return CredentialKey.for_server(RESOURCE, f"t{uuid.uuid4().hex[:8]}")


@pytest.fixture(autouse=True)
def fresh_counters(auth_server: AuthServer) -> None:
    auth_server.reset_stats()


def far_future() -> datetime:
    return FAR_FUTURE


def refresh(store: Store, key: CredentialKey) -> Credential:
    """One process's view a century on: the stored token is long expired."""
    with Keeper(store, key, clock=far_future) as keeper:
        return keeper.credential()


def test_fleet_of_processes_spends_one_refresh_per_rotation(
    auth_server: AuthServer, tmp_path: Path, key: CredentialKey
) -> None:
    log_in(auth_server, FileStore(tmp_path), key, resource=RESOURCE)
    rounds = 6
    report = run_fleet(
        functools.partial(FileStore, tmp_path), key, processes=8, threads=4, rounds=rounds
    )
    stats = auth_server.stats()
    assert report.errors == []
    assert report.requests == 8 * 4 * rounds
    assert [len(tokens) for tokens in report.tokens_per_round] == [1] * rounds
    assert stats["refresh_success"] == rounds  # provider refreshes == rotations
    assert stats["replays"] == 0
    assert stats["refresh_errors"] == []
    assert stats["grant_revoked"] == 0
    # Every caller ended every round holding a token the server accepts.
    for tokens in report.tokens_per_round:
        (token,) = tokens
        assert auth_server.is_active(token)


def _crash(home: Path, key: CredentialKey, stage: str) -> int | None:
    context = multiprocessing.get_context("spawn")
    # Daemonic, and reaped whatever happens: a hung or stopped child must not outlive the
    # test and hang the interpreter's exit, beyond pytest-timeout's reach.
    process = context.Process(target=_refresh_until, args=(home, key, stage), daemon=True)
    process.start()
    try:
        process.join(60)
        return process.exitcode
    finally:
        reap(process)


def _refresh_until(home: Path, key: CredentialKey, stage: str) -> None:
    os.setsid()  # its own session: reap() signals it, and nothing else
    keeper = Keeper(
        FileStore(home), key, clock=far_future, checkpoint=functools.partial(die_at, stage)
    )
    keeper.credential()  # never returns: the checkpoint kills the process


def test_holder_killed_before_spending_frees_the_lock_and_the_next_process_refreshes(
    auth_server: AuthServer, tmp_path: Path, key: CredentialKey
) -> None:
    log_in(auth_server, FileStore(tmp_path), key, resource=RESOURCE)
    assert _crash(tmp_path, key, "before_provider") == -9
    store = FileStore(tmp_path)
    with store.lock(key, timeout=0):  # the kernel released it with the process
        pass
    fresh = refresh(store, key)
    stats = auth_server.stats()
    assert stats["refresh_success"] == 1 and stats["replays"] == 0
    assert auth_server.is_active(fresh.access_token)


def test_holder_killed_after_the_answer_is_reported_then_needs_a_new_login(
    auth_server: AuthServer, tmp_path: Path, key: CredentialKey, caplog: pytest.LogCaptureFixture
) -> None:
    store = FileStore(tmp_path)
    log_in(auth_server, store, key, resource=RESOURCE)
    assert _crash(tmp_path, key, "after_provider") == -9
    assert auth_server.stats()["refresh_success"] == 1  # the server rotated; the answer died
    stored = store.read(key)
    assert stored is not None and stored.record.intent is not None
    # Status says so before anything else runs.
    status = status_of(key, stored.record, now=datetime.now(UTC))
    assert status.state is AuthState.OAUTH and "has not finished" in status.detail

    caplog.set_level("WARNING", logger="grantkeeper")
    # The documented policy: retry the old refresh token once (a provider with a reuse grace
    # period accepts it). oidc-provider has none, so it refuses and the user is told.
    with pytest.raises(ReauthenticationRequired, match="outcome was lost"):
        refresh(store, key)
    assert "refresh.outcome_unknown" in caplog.text
    stats = auth_server.stats()
    assert stats["refresh_success"] == 1
    assert [e["error"] for e in stats["refresh_errors"]] == ["invalid_grant"]
    after = store.read(key)
    assert after is not None
    assert status_of(key, after.record, now=datetime.now(UTC)).state is (
        AuthState.REAUTHENTICATION_REQUIRED
    )
    # Never loop: the next process fails closed without calling the server.
    with pytest.raises(ReauthenticationRequired):
        refresh(store, key)
    assert len(auth_server.stats()["refresh_errors"]) == 1
    # A new login replaces the dead record and works.
    relogin = log_in(auth_server, store, key, resource=RESOURCE)
    with Keeper(store, key) as keeper:
        assert keeper.access_token() == relogin.access_token
    assert auth_server.is_active(relogin.access_token)


def test_revoked_grant_marks_the_record_dead_for_every_process(
    auth_server: AuthServer, tmp_path: Path, key: CredentialKey
) -> None:
    store = FileStore(tmp_path)
    log_in(auth_server, store, key, resource=RESOURCE)
    auth_server.revoke_all()
    with pytest.raises(ReauthenticationRequired):
        refresh(store, key)
    stored = store.read(key)
    assert stored is not None and stored.record.reauth_reason
    with pytest.raises(ReauthenticationRequired):
        refresh(FileStore(tmp_path), key)
    stats = auth_server.stats()
    assert len(stats["refresh_errors"]) == 1  # the dead token was tried once, not per process
    assert stats["replays"] == 0


def test_failed_write_keeps_b_serving_never_replays_a_and_heals(
    auth_server: AuthServer, tmp_path: Path, key: CredentialKey, request: pytest.FixtureRequest
) -> None:
    store = CountingStore(FileStore(tmp_path))
    a = log_in(auth_server, store.inner, key, resource=RESOURCE)
    now = [datetime.now(UTC)]
    keeper = Keeper(store, key, clock=lambda: now[0])
    request.addfinalizer(keeper.close)
    assert keeper.access_token() == a.access_token
    # The intent note is written, the provider's answer cannot be (disk full meanwhile).
    store.fail_writes = lambda record: record.intent is None
    now[0] = FAR_FUTURE
    b = keeper.credential()
    assert b.access_token != a.access_token and keeper.persistence_pending
    assert auth_server.is_active(b.access_token)
    # B is served from memory while the store is broken, and a sibling in this process
    # shares B rather than spend A.
    assert keeper.access_token() == b.access_token
    with Keeper(store, key, clock=lambda: now[0]) as sibling:
        assert sibling.credential().access_token == b.access_token
    assert auth_server.stats()["refresh_success"] == 1
    # Healed: B is written under compare-and-swap before anything else is spent.
    store.fail_writes = lambda record: False
    now[0] = datetime(2101, 1, 1, tzinfo=UTC)
    c = keeper.credential()
    stats = auth_server.stats()
    assert stats["refresh_success"] == 2 and stats["replays"] == 0
    assert auth_server.is_active(c.access_token)
    stored = store.inner.read(key)
    assert stored is not None and stored.record.access_token == c.access_token
