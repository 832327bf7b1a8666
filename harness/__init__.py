"""Real and fake servers for grantkeeper's tests, benchmarks and demo (not shipped).

Every token a harness server issues is remembered here, so the suite can prove that none
of them ever reaches a log line.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_secrets: set[str] = set()


def remember_secret(value: str | None) -> None:
    """Record a token or client secret that must never be logged."""
    if value:
        with _lock:
            _secrets.add(value)


def secrets_seen() -> list[str]:
    """Every secret recorded so far in this process."""
    with _lock:
        return list(_secrets)
