"""DPoP (RFC 9449): one key pair per credential, a fresh proof per request, and nonces.

The key pair is made at login and stored with the credential's record (sealed wherever the
store seals records), so every process and host sharing the credential signs with the same
key: a token refreshed by one is presented by all, and a refresh token the server bound to
the key (RFC 9449 §5) stays spendable by each of them. Keys and signatures are
``cryptography``'s; this module only lays out the JWS around them (RFC 7515 compact form).

Nonces (RFC 9449 §8, §9) are kept per origin, for every credential in the process: a
server hands out a nonce for whoever talks to it, and the next proof to that origin
carries it. A server that asks for one (``use_dpop_nonce``) is answered once, by the
caller, with a new proof.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .._errors import ProtocolError, ServerConfigError, StoreCorrupt
from .._redact import remember
from .jws import Sign, b64url, b64url_decode, signer
from .www_authenticate import parse_challenges

ALGORITHMS = ("EdDSA", "ES256")
"""The algorithms grantkeeper signs proofs with, in order of preference among those a server
takes. P8 in ``scripts/bench`` measures a request's auth flow with each: Ed25519's, about
the same bare signature as ES256's, makes the faster flow (ES256 also converts its DER
signature, and its per-signature random nonce comes at a cost EdDSA's deterministic one
does not). ES256 serves every server that takes no EdDSA (RFC 9449's example algorithm)."""

UNADVERTISED = "ES256"
"""What a login insisting on DPoP signs with where the server lists no algorithms: the one
RFC 9449 itself uses, which DPoP servers take."""

NONCE_HEADER = "DPoP-Nonce"
PROOF_HEADER = "DPoP"
USE_NONCE = "use_dpop_nonce"

MAX_NONCE_CHARS = 512
"""A nonce is an opaque server value sent back verbatim; a longer one is not taken."""

MAX_ORIGINS = 256
"""Origins whose nonce is kept; a process talks to few, and the rest start afresh."""


def _json(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    except ImportError:
        raise ServerConfigError(
            "DPoP needs the cryptography package: pip install 'grantkeeper[encryption]'"
        ) from None
    return ec, ed25519


@functools.cache
def available() -> bool:
    """Whether this installation can sign proofs (``cryptography`` is an optional extra)."""
    try:
        _crypto()
    except ServerConfigError:
        return False
    return True


class DPoPKey:
    """A credential's DPoP key pair: signs proofs; ``repr`` names only its thumbprint.

    :attr:`stored` is the private JWK as the record keeps it. It is a secret: remembered for
    scrubbing when the key is made or loaded, and never part of a ``repr``.
    """

    __slots__ = ("_header", "_sign", "alg", "stored", "thumbprint")

    def __init__(self, alg: str, sign: Sign, public: dict[str, str]) -> None:
        self.alg = alg
        self._sign = sign
        required: dict[str, str] = {k: public[k] for k in ("crv", "kty", "x", "y") if k in public}
        #: RFC 7638 thumbprint: what a server binds tokens to (``cnf.jkt``).
        self.thumbprint = b64url(hashlib.sha256(_json(required)).digest())
        header = {"typ": "dpop+jwt", "alg": alg, "jwk": public}
        # The same for every proof of this key: encoded once.
        self._header = b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
        self.stored = ""

    def __repr__(self) -> str:
        return f"DPoPKey(alg={self.alg!r}, thumbprint={self.thumbprint!r})"

    def sign(self, data: bytes) -> bytes:
        """The JWS signature of ``data`` (for ES256, ``r || s``)."""
        return self._sign(data)

    @classmethod
    def generate(cls, alg: str = UNADVERTISED) -> DPoPKey:
        """A new key pair for ``alg`` (one of :data:`ALGORITHMS`)."""
        ec, ed25519 = _crypto()
        if alg == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
            numbers = private.private_numbers()
            jwk = {
                "kty": "EC",
                "crv": "P-256",
                "x": b64url(numbers.public_numbers.x.to_bytes(32, "big")),
                "y": b64url(numbers.public_numbers.y.to_bytes(32, "big")),
                "d": b64url(numbers.private_value.to_bytes(32, "big")),
            }
        elif alg == "EdDSA":
            from cryptography.hazmat.primitives import serialization

            private = ed25519.Ed25519PrivateKey.generate()
            raw = serialization.Encoding.Raw
            jwk = {
                "kty": "OKP",
                "crv": "Ed25519",
                "x": b64url(private.public_key().public_bytes(raw, serialization.PublicFormat.Raw)),
                "d": b64url(
                    private.private_bytes(
                        raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
                    )
                ),
            }
        else:
            raise ServerConfigError(f"grantkeeper signs DPoP proofs with {', '.join(ALGORITHMS)}")
        return load_key(json.dumps({**jwk, "alg": alg}, separators=(",", ":")))

    def proof(
        self,
        method: str,
        url: str,
        *,
        nonce: str | None = None,
        access_token: str | None = None,
    ) -> str:
        """A fresh proof for one request (RFC 9449 §4.2): ``ath`` binds ``access_token``.

        ``iat`` is the wall clock's, always: a server checks it against its own.
        """
        # Laid out by hand: every request of a DPoP credential makes one, and json.dumps of
        # the whole object costs as much as the rest of the proof together (P8). Only the
        # values a server chose (the URL, the nonce) go through the JSON encoder.
        claims = (
            f'{{"jti":"{_JTI.next()}","htm":{_quoted(method)},'
            f'"htu":{_target(url)},"iat":{int(time.time())}'
        )
        if nonce is not None:
            claims += f',"nonce":{json.dumps(nonce)}'
        if access_token is not None:
            claims += f',"ath":"{_ath(access_token)}"'
        signing_input = self._header + b64url((claims + "}").encode())
        return signing_input + "." + b64url(self._sign(signing_input.encode("ascii")))


class _Jtis:
    """Proof ids: unique, never secret (RFC 9449 §4.2 asks only that no two proofs share
    one). A random prefix per process, drawn again in a forked child, and a counter: a
    proof makes no system call for randomness, which in P8 took about 2 µs off an EdDSA
    flow of some 60 µs (ES256's flow showed no difference within the noise)."""

    def __init__(self) -> None:
        self._draw()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._draw)

    def _draw(self) -> None:
        self._prefix = secrets.token_urlsafe(16) + "."
        self._count = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._count)}"


_JTI = _Jtis()


@functools.lru_cache(maxsize=16)
def _quoted(method: str) -> str:
    return json.dumps(method)


@functools.lru_cache(maxsize=256)
def _target(url: str) -> str:
    """``htu`` as JSON, per URL: a client sends many requests to few URLs."""
    return json.dumps(target_uri(url))


@functools.lru_cache(maxsize=8)
def _ath(access_token: str) -> str:
    """``ath`` (RFC 9449 §4.2): every request with one token proves the same hash."""
    return b64url(hashlib.sha256(access_token.encode("ascii")).digest())


@functools.lru_cache(maxsize=16)
def load_key(stored: str) -> DPoPKey:
    """The key a record keeps as ``stored`` (its private JWK); cached, since every request
    of a DPoP credential signs with it. Raises :class:`StoreCorrupt`, naming no value."""
    ec, ed25519 = _crypto()
    try:
        jwk = json.loads(stored)
        if not isinstance(jwk, dict):
            raise ValueError
        alg, d = jwk.get("alg"), b64url_decode(jwk["d"])
        remember(jwk["d"], stored)
        if alg == "ES256" and jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
            private = ec.derive_private_key(int.from_bytes(d, "big"), ec.SECP256R1())
            public = private.public_key().public_numbers()
            if (b64url(public.x.to_bytes(32, "big")), b64url(public.y.to_bytes(32, "big"))) != (
                jwk["x"],
                jwk["y"],
            ):
                raise ValueError
            _, sign = signer(private, "ES256", purpose="DPoP")
            shown = {"kty": "EC", "crv": "P-256", "x": jwk["x"], "y": jwk["y"]}
        elif alg == "EdDSA" and jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
            private = ed25519.Ed25519PrivateKey.from_private_bytes(d)
            _, sign = signer(private, "EdDSA", purpose="DPoP")
            shown = {"kty": "OKP", "crv": "Ed25519", "x": jwk["x"]}
        else:
            raise ValueError
    except (ValueError, TypeError, KeyError, AttributeError):
        raise StoreCorrupt("the stored DPoP key is malformed") from None
    key = DPoPKey(alg, sign, shown)
    key.stored = stored
    return key


def target_uri(url: str) -> str:
    """``htu``: the request's URI without query and fragment (RFC 9449 §4.2)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def choose_algorithm(offered: Iterable[str] | None, *, wanted: bool | None) -> str | None:
    """The algorithm a login signs with, or ``None`` for a bearer credential.

    ``wanted`` is the server's setting: ``None`` uses DPoP where the authorization server
    advertises ``dpop_signing_alg_values_supported``; ``True`` insists (an unadvertised
    server gets :data:`UNADVERTISED`); ``False`` never uses it.
    """
    if wanted is False or (wanted is None and offered is not None and not available()):
        # Unasked for and unsignable here: Bearer, as before DPoP (a login says why).
        return None
    if offered is None:
        return UNADVERTISED if wanted else None
    offered = set(offered)
    for alg in ALGORITHMS:
        if alg in offered:
            return alg
    if wanted:
        raise ServerConfigError(
            "the authorization server signs DPoP with none of "
            f"{', '.join(ALGORITHMS)}; turn DPoP off for this server"
        )
    return None


def _origin(url: str) -> tuple[str, str, int | None]:
    """``(scheme, host, port)``, case and default ports normalised, userinfo dropped."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    if (scheme, port) in (("http", 80), ("https", 443)):
        port = None
    return scheme, (parts.hostname or "").lower(), port


class Nonces:
    """The last nonce each origin handed out (RFC 9449 §8.2): any answer may carry one.

    One cache per role: an MCP server that is its own authorization server keeps a nonce
    for its token endpoint and another for its resource, on one origin."""

    def __init__(self) -> None:
        self._by_origin: dict[tuple[str, str, int | None], str] = {}
        self._lock = threading.Lock()
        if hasattr(os, "register_at_fork"):
            # A lock held by another thread at fork would never be released in the child.
            os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._by_origin = {}

    @property
    def held(self) -> bool:
        """Whether any server handed out a nonce (most never do)."""
        return bool(self._by_origin)

    def get(self, url: str) -> str | None:
        if not self._by_origin:  # the common case: no server asked for nonces
            return None
        return self._by_origin.get(_origin(url))

    def update(self, url: str, headers: Any) -> str | None:
        """Keep the nonce an answer from ``url`` carries, if any; return it."""
        value = headers.get(NONCE_HEADER)
        if not isinstance(value, str):
            return None
        value = value.strip()
        if not value or len(value) > MAX_NONCE_CHARS or not all("!" <= c <= "~" for c in value):
            return None
        with self._lock:
            if len(self._by_origin) >= MAX_ORIGINS:
                self._by_origin.clear()
            self._by_origin[_origin(url)] = value
        return value

    def clear(self) -> None:
        with self._lock:
            self._by_origin.clear()


TOKEN_NONCES = Nonces()
"""The nonces authorization servers handed out, for token requests (RFC 9449 §8)."""

RESOURCE_NONCES = Nonces()
"""The nonces resource servers handed out, for requests with a token (RFC 9449 §9)."""


def token_endpoint_wants_nonce(status: int, headers: Any, body: bytes) -> bool:
    """Whether an authorization server's answer asks for a nonce (RFC 9449 §8): a 400
    ``use_dpop_nonce`` with a ``DPoP-Nonce`` header. Nothing was processed."""
    if status != 400 or NONCE_HEADER not in headers:  # httpx's headers: any case
        return False
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return isinstance(answer, dict) and answer.get("error") == USE_NONCE


PROOF_ERRORS = frozenset({USE_NONCE, "invalid_dpop_proof"})
"""A resource's 401 with these errors refuses the proof, not the token: renewing the token
cannot help (RFC 9449 §7.1, §9)."""


def proof_refused(status: int, headers: Any) -> str | None:
    """The error of a resource's 401 that refuses the proof rather than the token
    (:data:`PROOF_ERRORS`, in a ``DPoP`` challenge), or ``None``."""
    if status != 401:
        return None
    for value in headers.get_list("www-authenticate"):
        try:
            challenges = parse_challenges(value)
        except ProtocolError:  # a malformed header says nothing
            continue
        for challenge in challenges:
            if challenge.scheme == "dpop" and challenge.error in PROOF_ERRORS:
                return challenge.error
    return None
