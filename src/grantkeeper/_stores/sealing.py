"""Encryption of records at rest (AES-256-GCM), for stores on shared infrastructure.

The key comes from ``GRANTKEEPER_STORE_KEY``: 32 random bytes, base64-encoded. Each sealed
record is bound to its credential key as associated data, so a row copied onto another
credential's row fails to open instead of serving the wrong account's token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

from .._errors import StoreConfigError, StoreCorrupt

KEY_ENV = "GRANTKEEPER_STORE_KEY"
"""Environment variable holding the base64 encryption key; unset means records are plain."""

MAGIC = b"GK1"
"""Prefix of a sealed record: format version 1 (AES-256-GCM, 96-bit random nonce)."""

NONCE_BYTES = 12


class Sealer:
    """Seal and open records with one AES-256-GCM key. ``repr`` shows only its fingerprint."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise StoreConfigError(f"{KEY_ENV} must decode to 32 bytes, not {len(key)}")
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:
            raise StoreConfigError(
                "encryption at rest needs the cryptography package: "
                "pip install 'grantkeeper[encryption]'"
            ) from None
        self._aead = AESGCM(key)
        #: Names the key without revealing it, so a store can tell which key sealed a row.
        self.fingerprint = hashlib.sha256(b"grantkeeper-sealing\0" + key).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"Sealer(fingerprint={self.fingerprint!r})"

    @classmethod
    def from_text(cls, text: str) -> Sealer:
        """Build from the base64 form kept in the environment."""
        try:
            padded = text.strip() + "=" * (-len(text.strip()) % 4)
            key = base64.b64decode(padded, altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise StoreConfigError(
                f"{KEY_ENV} is not base64; generate one with: "
                "python -c 'import os,base64; print(base64.b64encode(os.urandom(32)).decode())'"
            ) from None
        return cls(key)

    @classmethod
    def from_environment(cls) -> Sealer | None:
        """The sealer ``GRANTKEEPER_STORE_KEY`` configures, or ``None`` when it is unset."""
        text = os.environ.get(KEY_ENV, "")
        return cls.from_text(text) if text.strip() else None

    def seal(self, plaintext: bytes, *, bound_to: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return MAGIC + nonce + self._aead.encrypt(nonce, plaintext, bound_to.encode("utf-8"))

    def open(self, sealed: bytes, *, bound_to: str) -> bytes:
        from cryptography.exceptions import InvalidTag

        if not sealed.startswith(MAGIC) or len(sealed) < len(MAGIC) + NONCE_BYTES + 16:
            raise StoreCorrupt("sealed record has an unknown format", key=bound_to)
        nonce = sealed[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
        try:
            return self._aead.decrypt(
                nonce, sealed[len(MAGIC) + NONCE_BYTES :], bound_to.encode("utf-8")
            )
        except InvalidTag:
            raise StoreCorrupt(
                "sealed record fails authentication: it was altered or moved from another "
                "credential",
                key=bound_to,
            ) from None
