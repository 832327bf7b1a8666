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


FOREVER = datetime.max.replace(tzinfo=UTC)
"""When a token without a lifetime turns stale: never (a server's rejection ends it)."""


class Freshness(enum.Enum):
    """Whether a credential can be sent as it is."""

    FRESH = "fresh"
    """Use it; no refresh is due."""
    STALE = "stale"
    """Still valid, but inside the refresh margin (or of unknown expiry): serve it, and
    refresh ahead in the background."""
    EXPIRED = "expired"
    """Past its expiry: it will be rejected."""


def expiry(record: Credential, default_lifetime: timedelta | None = None) -> datetime | None:
    """When ``record`` expires: its own expiry, else ``default_lifetime`` after it was obtained."""
    if record.expires_at is not None:
        return record.expires_at
    if default_lifetime is not None and record.obtained_at is not None:
        return record.obtained_at + default_lifetime
    return None


def refresh_margin(
    record: Credential, skew: timedelta = DEFAULT_SKEW, default_lifetime: timedelta | None = None
) -> timedelta:
    """The margin before expiry at which ``record`` becomes STALE."""
    expires_at = expiry(record, default_lifetime)
    if expires_at is not None and record.obtained_at is not None:
        lifetime = expires_at - record.obtained_at
        if lifetime > timedelta(0):
            return min(skew, lifetime * MAX_MARGIN_FRACTION)
    return skew


def freshness(
    record: Credential,
    now: datetime,
    skew: timedelta = DEFAULT_SKEW,
    default_lifetime: timedelta | None = None,
) -> Freshness:
    """Classify ``record`` at ``now``.

    A token the provider gave no lifetime (no ``expires_in``; ``obtained_at`` known) is FRESH
    until a server rejects it, as Codex treats it: refreshing it proactively would spend a
    refresh token per request. ``default_lifetime`` assumes a lifetime for such tokens instead.
    A legacy record that kept only ``expires_in`` (neither expiry nor receipt time known) is
    STALE: it may still work, and the first refresh gives it an absolute expiry.
    """
    expires_at = expiry(record, default_lifetime)
    if expires_at is not None and now >= expires_at:
        return Freshness.EXPIRED
    until = fresh_until(record, skew, default_lifetime)
    return Freshness.FRESH if until is not None and now < until else Freshness.STALE


def stale_at(
    record: Credential, skew: timedelta = DEFAULT_SKEW, default_lifetime: timedelta | None = None
) -> datetime | None:
    """When ``record`` turns STALE; ``None`` if that is never known in advance."""
    expires_at = expiry(record, default_lifetime)
    if expires_at is None:
        return None
    return expires_at - refresh_margin(record, skew, default_lifetime)


def fresh_until(
    record: Credential, skew: timedelta = DEFAULT_SKEW, default_lifetime: timedelta | None = None
) -> datetime | None:
    """Until when ``record`` is FRESH (see :func:`freshness`): when it turns STALE; for a
    token without a lifetime (``obtained_at`` known), :data:`FOREVER`, since it is valid until
    a server rejects it; ``None`` for a legacy record, STALE from the start."""
    turns_stale = stale_at(record, skew, default_lifetime)
    if turns_stale is None and record.obtained_at is not None:
        return FOREVER
    return turns_stale
