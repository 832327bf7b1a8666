"""Proof Key for Code Exchange (RFC 7636), S256 only."""

from __future__ import annotations

import hashlib
import secrets

from .jws import b64url

VERIFIER_BYTES = 48
"""64 characters once encoded: inside RFC 7636 §4.1's 43–128, with 384 bits of entropy."""


def new_verifier() -> str:
    """A fresh ``code_verifier`` (RFC 7636 §4.1)."""
    return secrets.token_urlsafe(VERIFIER_BYTES)


def s256_challenge(verifier: str) -> str:
    """The S256 ``code_challenge`` for ``verifier`` (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return b64url(digest)
