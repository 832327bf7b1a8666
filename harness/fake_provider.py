"""The in-process token endpoint of :mod:`grantkeeper.testing`, wired to the harness.

Every token it mints is recorded with :func:`harness.remember_secret`, so the suite's
secret scanner knows what must never appear in logs.
"""

from __future__ import annotations

from typing import Any

from grantkeeper.testing import FakeProvider as _FakeProvider
from grantkeeper.testing import Fault, Grant
from harness import remember_secret

__all__ = ["FakeProvider", "Fault", "Grant"]


class FakeProvider(_FakeProvider):
    """:class:`grantkeeper.testing.FakeProvider` recording its tokens as secrets."""

    def __init__(self, **options: Any) -> None:
        options.setdefault("on_token", remember_secret)
        super().__init__(**options)
