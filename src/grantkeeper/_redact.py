"""Show secrets only as a short suffix, and fingerprint them for comparison."""

from __future__ import annotations

import hashlib

SUFFIX_CHARS = 4
"""Characters of a secret that may be shown: enough to tell two tokens apart in a log."""

MIN_LENGTH_FOR_SUFFIX = 16
"""Shorter secrets show no suffix at all, so a suffix never reveals most of a secret."""


def redact(secret: str | None) -> str:
    """Return a printable stand-in for ``secret``: ``'…abcd'``, ``'…'`` or ``'<none>'``."""
    if secret is None:
        return "<none>"
    if len(secret) < MIN_LENGTH_FOR_SUFFIX:
        return "…"
    return "…" + secret[-SUFFIX_CHARS:]


def fingerprint(secret: str) -> str:
    """Return a stable, non-reversible identifier for ``secret`` (16 hex digits of SHA-256)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()[:16]
