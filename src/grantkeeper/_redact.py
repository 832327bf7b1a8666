"""Show secrets only as a short suffix, fingerprint them, and scrub them from text."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

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


FRAGMENT_CHARS = 8
"""A word sharing this many characters with a secret is hidden whole. Servers truncate what
they echo (``auth Basic WGJLVkQ4``), and eight base64 characters are 48 bits of a secret."""

# What a token, a base64 credential or a percent-encoded form value is made of: the unit
# that is hidden whole when part of it matches a secret. Spaces and ':' split it, so the
# client id beside a Basic pair, and ordinary words, stay readable.
_WORD = re.compile(r"[A-Za-z0-9\-._~+/=%]+")


def scrub(text: str, secrets: Iterable[str], limit: int) -> str:
    """Return at most ``limit`` characters of untrusted ``text`` with every secret hidden.

    Each secret is replaced by its :func:`redact` stand-in, longest first. Then any word
    that shares :data:`FRAGMENT_CHARS` consecutive characters with a secret, such as a
    truncated echo, is replaced by ``…``. The exact pass sees the whole text, so cutting it
    to ``limit`` can never expose half of a secret.
    """
    ordered = sorted({secret for secret in secrets if secret}, key=len, reverse=True)
    for secret in ordered:
        text = text.replace(secret, redact(secret))
    text = text[:limit]
    grams = {
        secret[i : i + FRAGMENT_CHARS]
        for secret in ordered
        for i in range(len(secret) - FRAGMENT_CHARS + 1)
    }
    if not grams:
        return text

    def hide(match: re.Match[str]) -> str:
        word = match.group()
        for i in range(len(word) - FRAGMENT_CHARS + 1):
            if word[i : i + FRAGMENT_CHARS] in grams:
                return "…"
        return word

    return _WORD.sub(hide, text)
