"""Freshness: a pure function of the record, the margin and the clock."""

from __future__ import annotations

from datetime import timedelta

import pytest

from grantkeeper import DEFAULT_SKEW, Freshness, freshness, refresh_margin
from grantkeeper._freshness import FOREVER, fresh_until
from grantkeeper.testing import sample_record
from tests.helpers import T0

pytestmark = pytest.mark.portable  # needs no Linux-only server


@pytest.mark.parametrize(
    ("elapsed", "expected"),
    [
        (0, Freshness.FRESH),
        (3539, Freshness.FRESH),
        (3540, Freshness.STALE),
        (3599, Freshness.STALE),
        (3600, Freshness.EXPIRED),
        (10**6, Freshness.EXPIRED),
    ],
)
def test_hour_long_token_goes_stale_one_skew_before_expiry(
    elapsed: int, expected: Freshness
) -> None:
    record = sample_record("a", "r", lifetime=3600, now=T0)
    assert freshness(record, T0 + timedelta(seconds=elapsed)) is expected


def test_margin_is_capped_at_a_quarter_of_a_short_lifetime() -> None:
    record = sample_record("a", "r", lifetime=4, now=T0)
    assert refresh_margin(record) == timedelta(seconds=1)
    assert freshness(record, T0 + timedelta(seconds=2.9)) is Freshness.FRESH
    assert freshness(record, T0 + timedelta(seconds=3)) is Freshness.STALE


def test_skew_is_configurable() -> None:
    record = sample_record("a", "r", lifetime=3600, now=T0)
    at = T0 + timedelta(seconds=3000)
    assert freshness(record, at, timedelta(minutes=5)) is Freshness.FRESH
    assert freshness(record, at, timedelta(minutes=15)) is Freshness.STALE
    assert DEFAULT_SKEW == timedelta(seconds=60)


def test_a_token_without_a_lifetime_is_fresh_until_rejected() -> None:
    # No expires_in from the provider (GitHub OAuth apps, Slack): never refreshed ahead.
    record = sample_record("a", "r", now=T0).replace(expires_at=None)
    assert record.obtained_at is not None
    assert freshness(record, T0 + timedelta(days=400)) is Freshness.FRESH


def test_default_lifetime_is_assumed_for_a_token_without_one() -> None:
    record = sample_record("a", "r", now=T0).replace(expires_at=None, obtained_at=T0)
    hour = timedelta(hours=1)
    assert freshness(record, T0 + timedelta(minutes=58), default_lifetime=hour) is Freshness.FRESH
    assert freshness(record, T0 + timedelta(seconds=3590), default_lifetime=hour) is Freshness.STALE
    assert freshness(record, T0 + hour, default_lifetime=hour) is Freshness.EXPIRED


def test_a_legacy_record_of_unknown_expiry_is_stale() -> None:
    record = sample_record("a", "r", now=T0).replace(expires_at=None, obtained_at=None)
    assert freshness(record, T0) is Freshness.STALE


def test_fresh_until_says_when_a_token_turns_stale_and_never_without_a_lifetime() -> None:
    record = sample_record("a", "r", lifetime=3600, now=T0)
    assert fresh_until(record) == T0 + timedelta(seconds=3540)
    no_lifetime = record.replace(expires_at=None)
    assert fresh_until(no_lifetime) == FOREVER
    hour = timedelta(hours=1)
    assert fresh_until(no_lifetime, default_lifetime=hour) == T0 + timedelta(seconds=3540)
    assert fresh_until(no_lifetime.replace(obtained_at=None)) is None  # legacy: stale at once
