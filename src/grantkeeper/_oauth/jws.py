"""The JWS pieces grantkeeper signs with (RFC 7515 compact form): base64url, and a signer
for each kind of private key. Client assertions (``client_assertion``) and DPoP proofs
(``dpop``) lay out their JWTs over these; the keys and signatures are ``cryptography``'s.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

from .._errors import ServerConfigError

Sign = Callable[[bytes], bytes]

_URLSAFE = bytes.maketrans(b"+/", b"-_")


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 §2)."""
    # base64.urlsafe_b64encode's own steps, without its two layers of calls: every DPoP
    # proof encodes twice (P8 in scripts/bench).
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    """The bytes of unpadded base64url ``text``; raises ``ValueError`` if it is not."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signer(key: Any, algorithm: str | None = None, *, purpose: str) -> tuple[str, Sign]:
    """The JWS ``alg`` and a function signing bytes with the private ``key``.

    EC keys sign ES256 or ES384 by their curve, RSA keys RS256 (or PS256 if ``algorithm``
    says so), Ed25519 keys EdDSA. ``algorithm``, when given, must be what the key signs.
    Errors name ``purpose`` (what the key is for), never the key.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    chosen: tuple[str, Sign]
    if isinstance(key, ec.EllipticCurvePrivateKey):
        curves = {"secp256r1": ("ES256", hashes.SHA256()), "secp384r1": ("ES384", hashes.SHA384())}
        if key.curve.name not in curves:
            raise ServerConfigError(f"unsupported EC curve {key.curve.name} for {purpose}")
        alg, digest = curves[key.curve.name]
        size = (key.curve.key_size + 7) // 8
        ecdsa = ec.ECDSA(digest)

        def sign_ec(data: bytes) -> bytes:
            r, s = decode_dss_signature(key.sign(data, ecdsa))
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")  # JWS wants r || s

        chosen = alg, sign_ec
    elif isinstance(key, rsa.RSAPrivateKey):
        alg = algorithm if algorithm in ("RS256", "PS256") else "RS256"
        pad = (
            padding.PKCS1v15()
            if alg == "RS256"
            else padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        )
        chosen = alg, lambda data: key.sign(data, pad, hashes.SHA256())
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        chosen = "EdDSA", key.sign
    else:
        raise ServerConfigError(f"unsupported private key type for {purpose}")
    if algorithm is not None and algorithm != chosen[0]:
        raise ServerConfigError(f"the {purpose} key signs {chosen[0]}, not {algorithm}")
    return chosen
