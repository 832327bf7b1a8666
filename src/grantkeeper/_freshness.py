"""How fresh a credential is, as a pure function of the record, a margin and a clock."""

from __future__ import annotations

import enum
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from ._record import Credential

Clock = Callable[[], datetime]
"""Returns the current time as an aware UTC datetime. Injected so tests step time by hand."""

DEFAULT_SKEW = timedelta(seconds=60)
"""Refresh this long before expiry. Errs early, like google-auth's threshold: a refresh a
minute early costs one request; a token that expires in flight costs a failed call, and
client and server clocks commonly disagree by tens of seconds."""

MAX_MARGIN_FRACTION = 0.25
"""The margin never exceeds this share of the token's lifetime, so a token that lives only
a few seconds is still used for most of its life rather than refreshed at once."""


def utc_now() -> datetime:
    """The default clock."""
    return datetime.now(UTC)


class Freshness(enum.Enum):
    """Whether a credential can be sent as it is."""

    FRESH = "fresh"
    """Use it; no refresh is due."""
    STALE = "stale"
    """Still valid, but inside the refresh margin (or of unknown expiry): refresh now."""
    EXPIRED = "expired"
    """Past its expiry: it will be rejected."""


def refresh_margin(record: Credential, skew: timedelta = DEFAULT_SKEW) -> timedelta:
    """The margin before ``expires_at`` at which ``record`` becomes STALE."""
    if record.expires_at is not None and record.obtained_at is not None:
        lifetime = record.expires_at - record.obtained_at
        if lifetime > timedelta(0):
            return min(skew, lifetime * MAX_MARGIN_FRACTION)
    return skew


def freshness(record: Credential, now: datetime, skew: timedelta = DEFAULT_SKEW) -> Freshness:
    """Classify ``record`` at ``now``.

    A record of unknown expiry (a legacy record that kept only ``expires_in``) is STALE:
    it may still work, and the first refresh gives it an absolute expiry.
    """
    expires_at, turns_stale = record.expires_at, stale_at(record, skew)
    if expires_at is None or turns_stale is None:
        return Freshness.STALE
    if now >= expires_at:
        return Freshness.EXPIRED
    if now >= turns_stale:
        return Freshness.STALE
    return Freshness.FRESH


def stale_at(record: Credential, skew: timedelta = DEFAULT_SKEW) -> datetime | None:
    """When ``record`` turns STALE; ``None`` if its expiry is unknown (it is STALE now)."""
    if record.expires_at is None:
        return None
    return record.expires_at - refresh_margin(record, skew)
