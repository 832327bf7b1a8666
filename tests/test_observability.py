"""Operators read transactions from structured logs: each stage is an event with fields.

The two failures that matter most must be told apart from the logs alone: "the provider
answered, persistence failed" (B lives only in memory) and "the provider's outcome is
unknown" (A may or may not be spent).
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from grantkeeper import RefreshOutcomeUnknown
from grantkeeper._redact import fingerprint
from tests.helpers import KEY, World


def events(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.grantkeeper for r in caplog.records if hasattr(r, "grantkeeper")]


def named(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [e for e in events(caplog) if e["event"] == name]


def test_a_refresh_logs_every_stage_with_fields(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.login()
    caplog.set_level(logging.DEBUG, logger="grantkeeper")
    with world.keeper() as keeper:
        world.clock.advance(3600)
        keeper.credential()
    (locked,) = named(caplog, "transaction.locked")
    assert locked["waited_ms"] >= 0 and locked["key"] == str(KEY)
    (call,) = named(caplog, "refresh.provider_call")
    assert call["outcome"] == "ok" and call["duration_ms"] >= 0
    assert named(caplog, "refresh.persisted")
    assert not named(caplog, "refresh.persist_failed")


def test_a_peer_refresh_is_logged_as_adopted(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.login()
    with world.keeper() as first, world.keeper() as second:
        first.access_token()
        second.access_token()
        world.clock.advance(3600)
        first.credential()
        caplog.set_level(logging.DEBUG, logger="grantkeeper")
        caplog.clear()
        second.credential()
    (adopted,) = named(caplog, "transaction.adopted")
    assert adopted["changed"] is True
    assert not named(caplog, "refresh.provider_call")
    assert world.provider.refresh_calls == 1


def test_answered_but_not_persisted_reads_differently_from_outcome_unknown(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.login()
    caplog.set_level(logging.INFO, logger="grantkeeper")
    keeper, b = world.refuse_b()
    keeper.close()
    (failed,) = named(caplog, "refresh.persist_failed")
    assert failed["provider_answered"] is True and failed["error"] == "StoreUnavailable"
    assert [c["outcome"] for c in named(caplog, "refresh.provider_call")] == ["ok"]
    # The token it serves is named by its fingerprint only: not even a suffix.
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith(failed["event"])]
    assert said and all(f"serving={fingerprint(b.access_token)}" in line for line in said)
    assert not any(f"…{b.access_token[-4:]}" in line for line in said)

    caplog.clear()
    world.store.fail_writes = lambda record: False

    def timeout(form: dict[str, str]) -> httpx.Response:
        raise httpx.ReadTimeout("timed out")

    world.provider.faults.append(timeout)
    with world.keeper() as other:
        world.clock.advance(3600 * 3)
        world.store.inner.delete(KEY)
        world.login()
        world.clock.advance(3600)
        with pytest.raises(RefreshOutcomeUnknown):
            other.credential()
    (call,) = named(caplog, "refresh.provider_call")
    assert call["outcome"] == "error" and call["error"] == "RefreshOutcomeUnknown"
    assert not named(caplog, "refresh.persist_failed")
