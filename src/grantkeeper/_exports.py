"""Public classes report the public module they are imported from, as httpx's do.

Reprs, tracebacks and docs then show ``grantkeeper.FileStore`` or
``grantkeeper.testing.StepClock``, the names users import, not the private modules they
live in (which may move). Pickling still works: each class is reachable under that name.
"""

from __future__ import annotations

from collections.abc import Mapping


def claim(module: str, exported: Mapping[str, object]) -> None:
    """Make every class in ``exported`` that lives in a private grantkeeper module name
    ``module`` as its home."""
    for value in exported.values():
        if isinstance(value, type) and value.__module__.startswith("grantkeeper._"):
            value.__module__ = module
