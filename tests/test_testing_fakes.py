"""The fakes ``grantkeeper.testing`` ships behave as the real things do where it matters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from grantkeeper import (
    Credential,
    Freshness,
    Keeper,
    KeyringStore,
    ReauthenticationRequired,
    StoreUnavailable,
    freshness,
)
from grantkeeper.testing import KEY, FakeProvider, MemoryKeyring, StepClock, sample_record


def test_a_sample_record_is_obtained_when_told_and_lives_as_long_as_told() -> None:
    now = datetime(2026, 5, 1, 9, 30, tzinfo=UTC)
    record = sample_record("at-sample", "rt-sample", now=now, lifetime=90, scope=None)
    assert (record.access_token, record.refresh_token) == ("at-sample", "rt-sample")
    assert record.obtained_at == now and record.expires_at == now + timedelta(seconds=90)
    assert record.scope is None and record.subject == "alice"
    default = sample_record()
    assert default.obtained_at == datetime(2030, 1, 1, 11, 0, tzinfo=UTC)
    assert default.expires_at == datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    assert sample_record(refresh_token=None).refresh_token is None


def test_the_step_clock_moves_only_when_told() -> None:
    clock = StepClock(datetime(2030, 1, 1, tzinfo=UTC))
    assert clock() == clock() == datetime(2030, 1, 1, tzinfo=UTC)
    record = sample_record(expires_at=clock() + timedelta(hours=1), obtained_at=clock())
    assert freshness(record, clock()) is Freshness.FRESH
    clock.advance(3600)
    assert freshness(record, clock()) is Freshness.EXPIRED


def test_the_memory_keyring_backs_a_keyring_store_and_locks(tmp_path: Path) -> None:
    backend = MemoryKeyring()
    store = KeyringStore(tmp_path, service="gk-test", backend=backend)
    store.write(KEY, sample_record("kept-token"), expected_version=None)
    stored = store.read(KEY)
    assert stored is not None and stored.record.access_token == "kept-token"
    assert store.keys() == [KEY]
    backend.locked = True
    with pytest.raises(StoreUnavailable, match="locked"):
        store.read(KEY)
    assert not store.available()
    backend.locked = False
    assert store.delete(KEY) is True and backend.secrets == {}


def _seeded(provider: FakeProvider, clock: StepClock) -> Credential:
    access, refresh = provider.issue()
    return sample_record(
        access, refresh, now=clock(), lifetime=60, client_id="client", scope=None, subject=None
    )


def test_the_fake_provider_rotates_and_a_keeper_refreshes_once(tmp_path: Path) -> None:
    from grantkeeper import FileStore

    provider, clock = FakeProvider(), StepClock()
    store = FileStore(tmp_path)
    first = _seeded(provider, clock)
    store.write(KEY, first, expected_version=None)
    clock.advance(3600)
    with httpx.Client(transport=provider.transport()) as http:
        keeper = Keeper(store, KEY, http_client=http, clock=clock)
        token = keeper.access_token()
        assert token != first.access_token and provider.is_active(token)
        assert keeper.access_token() == token
    assert (provider.refresh_calls, provider.rotations, provider.replays) == (1, 1, 0)


def test_the_fake_provider_revokes_the_grant_on_reuse() -> None:
    provider = FakeProvider()
    _, spent = provider.issue()
    with httpx.Client(transport=provider.transport()) as http:
        url = "https://auth.example.test/token"
        answer = http.post(url, data={"grant_type": "refresh_token", "refresh_token": spent})
        fresh = answer.json()
        assert answer.status_code == 200 and fresh["refresh_token"] != spent
        replay = http.post(url, data={"grant_type": "refresh_token", "refresh_token": spent})
        assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
        # The whole grant is gone: the new tokens too, as oidc-provider does.
        assert not provider.is_active(fresh["access_token"])
        again = {"grant_type": "refresh_token", "refresh_token": fresh["refresh_token"]}
        assert http.post(url, data=again).status_code == 400
    assert provider.replays == 1


def test_a_keeper_on_a_revoked_grant_asks_for_login(tmp_path: Path) -> None:
    from grantkeeper import FileStore

    provider, clock = FakeProvider(), StepClock()
    store = FileStore(tmp_path)
    record = _seeded(provider, clock)
    store.write(KEY, record, expected_version=None)
    provider.grants[0].revoked = True
    clock.advance(3600)
    with httpx.Client(transport=provider.transport()) as http:
        with pytest.raises(ReauthenticationRequired):
            Keeper(store, KEY, http_client=http, clock=clock).access_token()
