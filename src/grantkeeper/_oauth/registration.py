"""Dynamic client registration (RFC 7591) as a public client, and the read that tells
whether the server still knows it (RFC 7592), kept pure."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .._errors import ProtocolError, ServerConfigError
from .._redact import redact, remember
from .auth_server_metadata import AuthServerMetadata
from .urls import require_secure

MAX_REGISTRATION_BYTES = 64 * 1024
"""A registration response is well under a KiB; bound what we parse."""


@dataclass(frozen=True)
class ClientRegistration:
    """What the authorization server issued for us. ``repr`` hides the secret."""

    client_id: str
    client_secret: str | None = None
    token_endpoint_auth_method: str | None = None
    registration_client_uri: str | None = None
    """Where the registration can be read (RFC 7592), with the token below."""
    registration_access_token: str | None = None
    """The bearer token for :attr:`registration_client_uri`; it reaches that registration
    only. Kept for the read that finds out, before a browser opens, whether the server
    still knows this client."""

    def __post_init__(self) -> None:
        remember(self.client_secret, self.registration_access_token)

    def __repr__(self) -> str:
        return (
            f"ClientRegistration(client_id={self.client_id!r}, "
            f"client_secret={redact(self.client_secret)!r})"
        )


def metadata_document_client(
    url: str | None, metadata: AuthServerMetadata
) -> ClientRegistration | None:
    """The client a metadata document URL names, if there is one and the server takes it.

    SEP-991 (OAuth Client ID Metadata Documents): the URL itself is the ``client_id`` of a
    public client, so no registration happens. It must be HTTPS with a path. Without
    server support this is ``None`` and the caller registers dynamically instead.
    """
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or parts.path in ("", "/") or parts.fragment:
        raise ServerConfigError(
            f"the client metadata URL {url[:200]!r} must be an https URL with a path"
        )
    if not metadata.client_id_metadata_document_supported:
        return None
    return ClientRegistration(url, None, "none")


def registration_body(
    *, redirect_uris: list[str], client_name: str, scope: str | None
) -> dict[str, Any]:
    """The RFC 7591 §2 metadata for a public native client using the code flow."""
    body: dict[str, Any] = {
        "client_name": client_name,
        "redirect_uris": redirect_uris,
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
        "application_type": "native",
    }
    if scope:
        body["scope"] = scope
    return body


def parse_registration(status: int, body: bytes) -> ClientRegistration:
    """Parse the RFC 7591 §3.2 answer, or raise :class:`ProtocolError` saying why not."""
    if len(body) > MAX_REGISTRATION_BYTES:
        raise ProtocolError("client registration response is too large")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        raise ProtocolError(f"client registration failed: HTTP {status}, not a JSON object")
    if status not in (200, 201):
        error = data.get("error") if isinstance(data.get("error"), str) else "error"
        raise ProtocolError(f"client registration failed: HTTP {status} ({error})")
    client_id = data.get("client_id")
    secret = data.get("client_secret")
    method = data.get("token_endpoint_auth_method")
    if not isinstance(client_id, str) or not client_id:
        raise ProtocolError("client registration response has no client_id")
    if secret is not None and not isinstance(secret, str):
        raise ProtocolError("client registration response has a malformed client_secret")
    uri, token = data.get("registration_client_uri"), data.get("registration_access_token")
    if not isinstance(uri, str) or not isinstance(token, str) or not token:
        uri = token = None  # without both there is nothing to read the registration with
    else:
        try:
            uri = require_secure(uri, "registration_client_uri")
        except ProtocolError:
            uri = token = None  # a management URI we will not send a token to: no read
    return ClientRegistration(
        client_id=client_id,
        client_secret=secret or None,
        token_endpoint_auth_method=method if isinstance(method, str) else None,
        registration_client_uri=uri,
        registration_access_token=token,
    )


def read_verdict(status: int) -> bool | None:
    """What an RFC 7592 §2.1 read's status says: ``True`` the server knows the client,
    ``False`` it does not (401: the client or its token is gone; 404), ``None`` no answer
    either way (an outage, a refusal to say), so the registration is kept."""
    if status == 200:
        return True
    if status in (401, 404):
        return False
    return None
