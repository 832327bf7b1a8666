"""A resource server's check of DPoP proofs (RFC 9449 §4.3, §7.1), with joserfc.

The harness MCP server runs every ``Authorization: DPoP`` request through
:class:`ProofChecker` before its own auth sees the token: one proof, signed by the public
key it carries, for this method and URL, recent, never seen before, bound to the token
(``ath``), and with the server's current nonce when it asks for one. The key's thumbprint
is what the token must be bound to (``cnf.jkt``, from introspection).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import warnings
from dataclasses import dataclass, field

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey

ALGORITHMS = ("ES256", "EdDSA", "Ed25519")
IAT_WINDOW = 300.0
"""Seconds a proof's ``iat`` may be off the server's clock (oidc-provider's window)."""


class ProofRejected(Exception):
    """The proof fails a check; the message says which."""


@dataclass
class ProofChecker:
    """Checks proofs for one resource; ``nonce=True`` asks every proof for a server nonce."""

    nonce: bool = False
    accepted: int = 0
    rejected: list[str] = field(default_factory=list)
    nonce_challenges: int = 0
    _current_nonce: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    _jtis: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def current_nonce(self) -> str:
        return self._current_nonce

    def reset_counts(self) -> None:
        """Forget what was counted (the nonce and the seen ``jti``s stay)."""
        with self._lock:
            self.accepted, self.rejected, self.nonce_challenges = 0, [], 0

    def rotate_nonce(self) -> str:
        """A new nonce: proofs with the old one are challenged again."""
        self._current_nonce = secrets.token_urlsafe(16)
        return self._current_nonce

    def check(self, proofs: list[str], *, method: str, url: str, token: str) -> str:
        """The thumbprint of the key that signed the one proof in ``proofs``; raises
        :class:`ProofRejected`, or :class:`NonceNeeded` when the nonce is missing or old."""
        try:
            thumbprint = self._check(proofs, method=method, url=url, token=token)
        except ProofRejected as exc:
            with self._lock:
                self.rejected.append(str(exc))
            raise
        except NonceNeeded:
            with self._lock:
                self.nonce_challenges += 1
            raise
        with self._lock:
            self.accepted += 1
        return thumbprint

    def _check(self, proofs: list[str], *, method: str, url: str, token: str) -> str:
        if len(proofs) != 1:
            raise ProofRejected(f"{len(proofs)} DPoP headers, not one")
        proof = proofs[0]
        try:
            header = jws.extract_compact(proof.encode()).headers()
        except (JoseError, ValueError) as exc:
            raise ProofRejected(f"not a JWS: {type(exc).__name__}") from None
        if header.get("typ") != "dpop+jwt":
            raise ProofRejected("typ is not dpop+jwt")
        alg, jwk = header.get("alg"), header.get("jwk")
        if alg not in ALGORITHMS:
            raise ProofRejected(f"alg {alg!r} is not allowed")
        if not isinstance(jwk, dict) or "d" in jwk:
            raise ProofRejected("jwk is missing or private")
        try:
            key = (ECKey if jwk.get("kty") == "EC" else OKPKey).import_key(jwk)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # joserfc marks "EdDSA" deprecated (RFC 9864)
                verified = jws.deserialize_compact(proof, key, algorithms=[alg])
            claims = json.loads(verified.payload)
        except (JoseError, ValueError, TypeError) as exc:
            raise ProofRejected(f"bad signature or key: {type(exc).__name__}") from None
        if not isinstance(claims, dict):
            raise ProofRejected("claims are not an object")
        if claims.get("htm") != method:
            raise ProofRejected(f"htm {claims.get('htm')!r} is not {method}")
        if claims.get("htu") != url:
            raise ProofRejected(f"htu {claims.get('htu')!r} is not {url}")
        iat = claims.get("iat")
        if not isinstance(iat, int | float) or abs(time.time() - iat) > IAT_WINDOW:
            raise ProofRejected("iat is missing or not recent")
        expected_ath = (
            base64.urlsafe_b64encode(hashlib.sha256(token.encode()).digest()).rstrip(b"=").decode()
        )
        if claims.get("ath") != expected_ath:
            raise ProofRejected("ath does not match the access token")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise ProofRejected("jti is missing")
        if self.nonce and claims.get("nonce") != self._current_nonce:
            # Checked before the jti is spent: the client sends a new proof with the nonce.
            raise NonceNeeded(self._current_nonce)
        with self._lock:
            if jti in self._jtis:
                raise ProofRejected("jti replayed")
            self._jtis.add(jti)
        return str(key.thumbprint())


class NonceNeeded(Exception):
    """The proof lacks the server's current nonce (RFC 9449 §9): answer 401 with it."""

    def __init__(self, nonce: str) -> None:
        super().__init__("use_dpop_nonce")
        self.nonce = nonce
