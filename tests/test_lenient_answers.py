"""A 200 that spent the refresh token is stored through the Keeper, whatever its optional
fields say, and its lifetime counts from when the request was sent."""

from __future__ import annotations

import logging
from datetime import timedelta

import httpx
import pytest

from tests.helpers import KEY, World

NEW_ACCESS = "at-issued-with-odd-fields-0123456789"


def test_a_200_with_bad_optional_fields_is_stored_and_the_spent_token_not_kept(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.login()
    k, store, clock, provider = world.keeper(), world.store, world.clock, world.provider
    spent = k.credential().refresh_token
    body = {
        "access_token": NEW_ACCESS,
        "token_type": "BEARER",
        "scope": ["mcp"],
        "expires_in": "soon",
        "refresh_token": 7,
    }
    provider.faults.append(lambda form: httpx.Response(200, json=body))
    clock.advance(3600)
    with caplog.at_level(logging.WARNING, logger="grantkeeper"):
        renewed = k.credential()
    assert renewed.access_token == NEW_ACCESS and renewed.token_type == "Bearer"
    assert renewed.refresh_token is None and spent is not None  # A is spent: never kept
    stored = store.read(KEY)
    assert stored is not None and stored.record == renewed
    dropped = [
        r.grantkeeper["field"]  # type: ignore[attr-defined]
        for r in caplog.records
        if getattr(r, "grantkeeper", {}).get("event") == "token_response.field_dropped"
    ]
    assert sorted(dropped) == ["expires_in", "refresh_token", "scope"]


def test_the_lifetime_counts_from_when_the_refresh_was_sent(
    world: World,
) -> None:
    world.login()
    k, clock, provider = world.keeper(), world.clock, world.provider
    k.credential()
    clock.advance(3600)
    sent = clock()

    def slow(form: dict[str, str]) -> None:
        clock.advance(20)  # the provider takes 20 s to answer
        return None  # then answers normally, expires_in 3600

    provider.faults.append(slow)
    renewed = k.credential()
    assert renewed.obtained_at == sent
    assert renewed.expires_at == sent + timedelta(seconds=3600)
