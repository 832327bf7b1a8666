"""Authorization server metadata (RFC 8414, OpenID Connect Discovery 1.0), validated."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .._errors import ProtocolError
from .urls import require_secure

MAX_METADATA_BYTES = 256 * 1024
"""Metadata documents are a few KiB; refuse to parse anything near this size."""


@dataclass(frozen=True)
class AuthServerMetadata:
    """The endpoints and capabilities grantkeeper uses from an authorization server."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    registration_endpoint: str | None = None
    revocation_endpoint: str | None = None
    scopes_supported: tuple[str, ...] = ()
    code_challenge_methods_supported: tuple[str, ...] = ()
    iss_parameter_supported: bool = False
    client_id_metadata_document_supported: bool = False
    """The server takes a client ID metadata document URL as ``client_id`` (SEP-991)."""
    grant_types_supported: tuple[str, ...] = ()
    token_endpoint_auth_methods_supported: tuple[str, ...] = ()
    pushed_authorization_request_endpoint: str | None = None
    """Where authorization requests are pushed (RFC 9126)."""
    require_pushed_requests: bool = False
    """The server takes authorization requests only pushed (RFC 9126 §5)."""
    dpop_signing_alg_values_supported: tuple[str, ...] | None = None
    """The algorithms the server takes DPoP proofs in (RFC 9449 §5.1); ``None`` when it does
    not say it takes DPoP at all."""

    @property
    def pushes_only(self) -> bool:
        """Whether every authorization request must be pushed (and can be: an endpoint)."""
        return self.require_pushed_requests and bool(self.pushed_authorization_request_endpoint)


def metadata_urls(issuer: str) -> list[str]:
    """Where to look for ``issuer``'s metadata, in order (RFC 8414 §3.1, OIDC Discovery §4).

    Path-aware locations come first; an issuer without a path has only the root ones.
    """
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    base = (parts.scheme, parts.netloc)
    urls = []
    for well_known in ("oauth-authorization-server", "openid-configuration"):
        urls.append(urlunsplit((*base, f"/.well-known/{well_known}{path}", "", "")))
    if path:
        urls.append(urlunsplit((*base, f"{path}/.well-known/openid-configuration", "", "")))
    return urls


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ProtocolError(f"authorization server metadata: {what} is not a list of strings")
    return tuple(value)


def parse_metadata(body: bytes, *, expected_issuer: str) -> AuthServerMetadata:
    """Parse and validate a metadata document fetched for ``expected_issuer``.

    The issuer must match exactly (RFC 8414 §3.3), endpoints must be HTTPS off loopback,
    and PKCE S256 must not be ruled out.
    """
    if len(body) > MAX_METADATA_BYTES:
        raise ProtocolError("authorization server metadata is too large")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise ProtocolError("authorization server metadata is not JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("authorization server metadata is not a JSON object")
    issuer = data.get("issuer")
    if issuer != expected_issuer:
        raise ProtocolError(
            f"authorization server metadata names issuer {str(issuer)[:200]!r}, "
            f"expected {expected_issuer!r}"
        )
    methods = _strings(data.get("code_challenge_methods_supported"), "code challenge methods")
    if methods and "S256" not in methods:
        raise ProtocolError("the authorization server does not support PKCE S256")

    def endpoint(name: str, required: bool) -> str | None:
        value = data.get(name)
        if value is None and not required:
            return None
        return require_secure(value, f"authorization server {name}")

    return AuthServerMetadata(
        issuer=require_secure(issuer, "issuer"),
        authorization_endpoint=endpoint("authorization_endpoint", True) or "",
        token_endpoint=endpoint("token_endpoint", True) or "",
        registration_endpoint=endpoint("registration_endpoint", False),
        revocation_endpoint=endpoint("revocation_endpoint", False),
        scopes_supported=_strings(data.get("scopes_supported"), "scopes_supported"),
        code_challenge_methods_supported=methods,
        iss_parameter_supported=data.get("authorization_response_iss_parameter_supported") is True,
        client_id_metadata_document_supported=(
            data.get("client_id_metadata_document_supported") is True
        ),
        grant_types_supported=_strings(data.get("grant_types_supported"), "grant_types_supported"),
        token_endpoint_auth_methods_supported=_strings(
            data.get("token_endpoint_auth_methods_supported"),
            "token_endpoint_auth_methods_supported",
        ),
        pushed_authorization_request_endpoint=endpoint(
            "pushed_authorization_request_endpoint", False
        ),
        require_pushed_requests=data.get("require_pushed_authorization_requests") is True,
        dpop_signing_alg_values_supported=_dpop_algorithms(
            data.get("dpop_signing_alg_values_supported")
        ),
    )


def _dpop_algorithms(value: Any) -> tuple[str, ...] | None:
    """The advertised DPoP algorithms; a malformed list says nothing usable, as if absent,
    and costs the login nothing (DPoP is an upgrade the client may skip)."""
    if not isinstance(value, list) or not all(isinstance(alg, str) for alg in value):
        return None
    return tuple(value)
