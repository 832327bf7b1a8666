"""Real processes sharing one credential: one refresh per rotation, no replay, no loss."""

from __future__ import annotations

import functools
import multiprocessing
import os
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from grantkeeper import FileStore, Keeper, ReauthenticationRequired
from grantkeeper.testing import sample_record
from harness.fake_provider import FakeProvider
from harness.fleet import die_at, run_fleet
from tests.helpers import KEY, reap

pytestmark = pytest.mark.slow


def seed(home: Path, provider: FakeProvider) -> str:
    access, refresh = provider.issue()
    record = sample_record(access, refresh, now=datetime.now(UTC), token_endpoint=provider.url)
    FileStore(home).write(KEY, record, expected_version=None)
    return access


def test_fleet_spends_one_refresh_per_rotation(
    tmp_path: Path, served_provider: FakeProvider
) -> None:
    seed(tmp_path, served_provider)
    report = run_fleet(
        functools.partial(FileStore, tmp_path), KEY, processes=8, threads=4, rounds=6
    )
    assert report.errors == []
    assert report.requests == 8 * 4 * 6
    assert [len(tokens) for tokens in report.tokens_per_round] == [1] * 6
    assert report.distinct_tokens == 6
    assert served_provider.refresh_calls == served_provider.rotations == 6
    assert served_provider.replays == 0
    assert all(served_provider.is_active(t) for tokens in report.tokens_per_round for t in tokens)


def _crash(home: Path, stage: str) -> int:
    context = multiprocessing.get_context("spawn")
    # Daemonic, and reaped whatever happens: a hung or stopped child must not outlive the
    # test and hang the interpreter's exit, beyond pytest-timeout's reach.
    process = context.Process(target=_refresh_until, args=(home, stage), daemon=True)
    process.start()
    try:
        process.join(60)
        return process.exitcode if process.exitcode is not None else 0
    finally:
        reap(process)


def _refresh_until(home: Path, stage: str) -> None:
    os.setsid()  # its own session: reap() signals it, and nothing else
    far_future = datetime(2100, 1, 1, tzinfo=UTC)
    keeper = Keeper(
        FileStore(home),
        KEY,
        clock=lambda: far_future,
        checkpoint=functools.partial(die_at, stage),
    )
    keeper.credential()


def test_holder_killed_before_spending_frees_the_lock_and_the_next_process_refreshes(
    tmp_path: Path, served_provider: FakeProvider
) -> None:
    seed(tmp_path, served_provider)
    assert _crash(tmp_path, "after_read") == -9
    store = FileStore(tmp_path)
    with store.lock(KEY, timeout=0):  # released by the kernel when the holder died
        pass
    keeper = Keeper(store, KEY, clock=lambda: datetime(2100, 1, 1, tzinfo=UTC))
    fresh = keeper.credential()
    assert served_provider.refresh_calls == 1 and served_provider.replays == 0
    assert served_provider.is_active(fresh.access_token)


def test_holder_killed_after_the_provider_answered_is_reported_not_hidden(
    tmp_path: Path, served_provider: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    seed(tmp_path, served_provider)
    assert _crash(tmp_path, "after_provider") == -9
    assert served_provider.refresh_calls == 1  # the answer died with the process
    store = FileStore(tmp_path)
    stored = store.read(KEY)
    assert stored is not None and stored.record.intent is not None
    caplog.set_level("WARNING", logger="grantkeeper")
    keeper = Keeper(store, KEY, clock=lambda: datetime(2100, 1, 1, tzinfo=UTC))
    # Policy: one retry of the old token (grace-period providers accept it); this provider
    # has no grace period, so the grant is dead and the user is told to log in again.
    with pytest.raises(ReauthenticationRequired, match="outcome was lost"):
        keeper.credential()
    assert "refresh.outcome_unknown" in caplog.text
    after = store.read(KEY)
    assert after is not None and "outcome was lost" in (after.record.reauth_reason or "")
    calls = served_provider.refresh_calls
    with pytest.raises(ReauthenticationRequired):
        Keeper(store, KEY, clock=lambda: datetime(2100, 1, 1, tzinfo=UTC)).credential()
    assert served_provider.refresh_calls == calls


def test_grace_period_provider_recovers_after_a_lost_answer(
    tmp_path: Path, served_provider: FakeProvider
) -> None:
    seed(tmp_path, served_provider)
    assert _crash(tmp_path, "after_provider") == -9
    # Simulate a reuse grace period: the old refresh token is accepted once more.
    grant = served_provider.grants[0]
    old = next(token for token, g in served_provider.spent.items() if g is grant)
    grant.refresh_token = old
    keeper = Keeper(FileStore(tmp_path), KEY, clock=lambda: datetime(2100, 1, 1, tzinfo=UTC))
    fresh = keeper.credential()
    assert served_provider.is_active(fresh.access_token)
    assert httpx.URL(served_provider.url).host == "127.0.0.1"
