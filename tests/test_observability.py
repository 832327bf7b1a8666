"""Operators read transactions from structured logs: each stage is an event with fields.

The two failures that matter most must be told apart from the logs alone: "the provider
answered, persistence failed" (B lives only in memory) and "the provider's outcome is
unknown" (A may or may not be spent).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from grantkeeper import FileStore, Keeper, RefreshOutcomeUnknown
from grantkeeper.testing import sample_record
from harness.fake_provider import FakeProvider
from tests.helpers import KEY, CountingStore, StepClock


def events(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.grantkeeper for r in caplog.records if hasattr(r, "grantkeeper")]


def named(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [e for e in events(caplog) if e["event"] == name]


@pytest.fixture
def setup(tmp_path: Path) -> tuple[FakeProvider, CountingStore, StepClock, httpx.Client]:
    provider = FakeProvider()
    clock = StepClock()
    store = CountingStore(FileStore(tmp_path))
    access, refresh = provider.issue()
    store.inner.write(KEY, sample_record(access, refresh, now=clock()), expected_version=None)
    return provider, store, clock, httpx.Client(transport=provider.transport())


def test_a_refresh_logs_every_stage_with_fields(
    setup: tuple[FakeProvider, CountingStore, StepClock, httpx.Client],
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider, store, clock, http = setup
    caplog.set_level(logging.DEBUG, logger="grantkeeper")
    with Keeper(store, KEY, clock=clock, http_client=http) as keeper:
        clock.advance(3600)
        keeper.credential()
    (locked,) = named(caplog, "transaction.locked")
    assert locked["waited_ms"] >= 0 and locked["key"] == str(KEY)
    (call,) = named(caplog, "refresh.provider_call")
    assert call["outcome"] == "ok" and call["duration_ms"] >= 0
    assert named(caplog, "refresh.persisted")
    assert not named(caplog, "refresh.persist_failed")


def test_a_peer_refresh_is_logged_as_adopted(
    setup: tuple[FakeProvider, CountingStore, StepClock, httpx.Client],
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider, store, clock, http = setup
    with (
        Keeper(store, KEY, clock=clock, http_client=http) as first,
        Keeper(store, KEY, clock=clock, http_client=http) as second,
    ):
        first.access_token()
        second.access_token()
        clock.advance(3600)
        first.credential()
        caplog.set_level(logging.DEBUG, logger="grantkeeper")
        caplog.clear()
        second.credential()
    (adopted,) = named(caplog, "transaction.adopted")
    assert adopted["changed"] is True
    assert not named(caplog, "refresh.provider_call")
    assert provider.refresh_calls == 1


def test_answered_but_not_persisted_reads_differently_from_outcome_unknown(
    setup: tuple[FakeProvider, CountingStore, StepClock, httpx.Client],
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider, store, clock, http = setup
    caplog.set_level(logging.INFO, logger="grantkeeper")
    with Keeper(store, KEY, clock=clock, http_client=http) as keeper:
        keeper.access_token()
        store.fail_writes = lambda record: record.intent is None
        clock.advance(3600)
        keeper.credential()
    (failed,) = named(caplog, "refresh.persist_failed")
    assert failed["provider_answered"] is True and failed["error"] == "StoreUnavailable"
    assert [c["outcome"] for c in named(caplog, "refresh.provider_call")] == ["ok"]

    caplog.clear()
    store.fail_writes = lambda record: False

    def timeout(form: dict[str, str]) -> httpx.Response:
        raise httpx.ReadTimeout("timed out")

    provider.faults.append(timeout)
    with Keeper(store, KEY, clock=clock, http_client=http) as other:
        clock.advance(3600 * 3)
        store.inner.delete(KEY)
        access, refresh = provider.issue()
        store.inner.write(KEY, sample_record(access, refresh, now=clock()), expected_version=None)
        clock.advance(3600)
        with pytest.raises(RefreshOutcomeUnknown):
            other.credential()
    (call,) = named(caplog, "refresh.provider_call")
    assert call["outcome"] == "error" and call["error"] == "RefreshOutcomeUnknown"
    assert not named(caplog, "refresh.persist_failed")
