"""RFC 7523 §2.2 client assertions for ``private_key_jwt``: a short-lived JWT we sign.

The private key is read when an assertion is made, from where the configuration says
(a PEM file or an environment variable), and is never stored, logged or repr'd: a record
keeps only the *source* (``file:/path`` or ``env:NAME``). Signing needs ``cryptography``
(the ``grantkeeper[encryption]`` extra).
"""

from __future__ import annotations

import json
import os
import secrets
from datetime import datetime

from .._errors import GrantkeeperError, ServerConfigError
from .._redact import remember
from .jws import Sign, b64url, signer

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
"""RFC 7523 §2.2's ``client_assertion_type``."""

ASSERTION_LIFETIME = 60
"""Seconds an assertion is valid: one token request, with room for clock skew."""

MAX_KEY_BYTES = 64 * 1024
"""A PEM private key is a few KiB; refuse to read anything that large."""


def key_source(*, file: str | None = None, env: str | None = None) -> str:
    """The stored name of where a client key comes from (never the key)."""
    if (file is None) == (env is None):
        raise ServerConfigError("give the private key as a PEM file or an environment variable")
    return f"file:{os.path.abspath(file)}" if file is not None else f"env:{env}"


def read_source(
    source: str, *, what: str, limit: int, error: type[GrantkeeperError] = ServerConfigError
) -> bytes:
    """Read ``what`` (a secret) from ``source``, ``file:PATH`` or ``env:NAME``, at most
    ``limit`` bytes; ``error`` names where it looked, never the value."""
    kind, _, where = source.partition(":")
    if kind == "env":
        value = os.environ.get(where)
        if value is None:
            raise error(f"the {what} comes from ${where}, which is not set")
        return value.encode()
    if kind == "file":
        try:
            with open(where, "rb") as handle:
                data = handle.read(limit + 1)
        except OSError as exc:
            raise error(f"cannot read the {what} from the file {where}: {exc.strerror}") from None
        if len(data) > limit:
            raise error(f"the file {where} is too large for a {what}")
        return data
    raise error(f"the {what} source is neither file: nor env:")


def load_key(source: str) -> bytes:
    """Read the PEM private key named by ``source``; errors never contain it."""
    return read_source(source, what="client key", limit=MAX_KEY_BYTES)


def _signer(pem: bytes, algorithm: str | None) -> tuple[str, Sign]:
    """The JWS ``alg`` and a function signing bytes with the key in ``pem``."""
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        raise ServerConfigError(
            "private_key_jwt needs the cryptography package: pip install 'grantkeeper[encryption]'"
        ) from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        # The library's message may quote the input; ours names only the problem.
        raise ServerConfigError("the client key is not an unencrypted PEM private key") from None
    return signer(key, algorithm, purpose="private_key_jwt")


def client_assertion(
    source: str,
    *,
    client_id: str,
    audience: str,
    now: datetime,
    algorithm: str | None = None,
) -> str:
    """A signed RFC 7523 client assertion: ``iss`` = ``sub`` = ``client_id``, ``aud`` =
    the authorization server's issuer identifier (RFC 7523bis), a fresh ``jti``."""
    alg, sign = _signer(load_key(source), algorithm)
    issued = int(now.timestamp())
    header = {"alg": alg, "typ": "JWT"}
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME,
        "jti": secrets.token_urlsafe(16),
    }
    signing_input = ".".join(
        b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    assertion = f"{signing_input}.{b64url(sign(signing_input.encode('ascii')))}"
    remember(assertion)  # it authenticates the client for a minute: never print it
    return assertion
