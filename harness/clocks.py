"""A clock for tests that need a token to expire without waiting for it."""

from __future__ import annotations

from datetime import datetime, timedelta

from grantkeeper._freshness import utc_now


class ShiftClock:
    """The real clock, moved forward on demand: expiry without waiting for it."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return utc_now() + self.offset
