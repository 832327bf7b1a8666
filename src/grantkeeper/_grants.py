"""The client credentials grant (RFC 6749 §4.4), and how any stored credential is renewed.

A person's credential is renewed with its refresh token; a machine client's by asking
again with its own credentials. Both go through the Keeper's one transaction per expiry:
:func:`renewal_request` is the only place that tells them apart. Building requests is
pure; :func:`obtain` sends the first request and stores the result.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx

from ._as_metadata import AuthServerMetadata
from ._client_assertion import client_assertion
from ._errors import ProviderError, ServerConfigError
from ._freshness import Clock, utc_now
from ._login import save
from ._record import CLIENT_CREDENTIALS, Credential, CredentialKey
from ._store import DEFAULT_LOCK_TIMEOUT, Store
from ._token_client import send_token_request
from ._token_endpoint import TokenRequest, client_auth, refresh_request

AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")
"""How a client-credentials client may authenticate at the token endpoint."""


def client_credentials_request(
    *,
    token_endpoint: str,
    issuer: str,
    client_id: str,
    auth_method: str,
    now: datetime,
    client_secret: str | None = None,
    key_source: str | None = None,
    scope: str | None = None,
    resource: str | None = None,
) -> TokenRequest:
    """Build the client_credentials grant, authenticated as ``auth_method`` says."""
    form = {"grant_type": CLIENT_CREDENTIALS}
    if scope:
        form["scope"] = scope
    if resource:
        form["resource"] = resource
    assertion = None
    if auth_method == "private_key_jwt":
        if key_source is None:
            raise ServerConfigError("private_key_jwt needs a client key (a PEM file or env var)")
        assertion = client_assertion(key_source, client_id=client_id, audience=issuer, now=now)
    elif not client_secret:
        raise ServerConfigError(f"{auth_method} needs a client secret")
    headers = client_auth(form, client_id, client_secret, auth_method, assertion=assertion)
    return TokenRequest(token_endpoint, form, headers)


def renewal_request(record: Credential, now: datetime) -> TokenRequest:
    """The request that renews ``record``: ask again for client credentials, else refresh."""
    if record.grant != CLIENT_CREDENTIALS:
        return refresh_request(record)
    if not record.token_endpoint or not record.issuer or not record.client_id:
        raise ProviderError("the credential lacks its token endpoint or client; obtain it again")
    return client_credentials_request(
        token_endpoint=record.token_endpoint,
        issuer=record.issuer,
        client_id=record.client_id,
        auth_method=record.token_endpoint_auth_method or "client_secret_basic",
        now=now,
        client_secret=record.client_secret,
        key_source=record.client_key_source,
        scope=record.scope_requested,
        resource=record.resource,
    )


def choose_auth_method(
    metadata: AuthServerMetadata, *, explicit: str | None, has_secret: bool, has_key: bool
) -> str:
    """The configured method, else what the credentials given allow and the server takes."""
    if explicit is not None:
        if explicit not in AUTH_METHODS:
            raise ServerConfigError(
                f"client auth method {explicit[:40]!r} is not one of {', '.join(AUTH_METHODS)}"
            )
        return explicit
    if has_key:
        return "private_key_jwt"
    if not has_secret:
        raise ServerConfigError("client credentials need a client secret or a private key")
    offered = metadata.token_endpoint_auth_methods_supported
    if offered and "client_secret_basic" not in offered and "client_secret_post" in offered:
        return "client_secret_post"
    return "client_secret_basic"  # RFC 6749 §2.3.1: every server must support it


def obtain(
    store: Store,
    key: CredentialKey,
    *,
    metadata: AuthServerMetadata,
    resource: str,
    http: httpx.Client,
    client_id: str,
    auth_method: str,
    client_secret: str | None = None,
    key_source: str | None = None,
    scope: str | None = None,
    clock: Clock = utc_now,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> Credential:
    """Ask for a client-credentials token and store it; return the credential."""
    if auth_method != "private_key_jwt":
        key_source = None  # only a signing method reads a key
    request = client_credentials_request(
        token_endpoint=metadata.token_endpoint,
        issuer=metadata.issuer,
        client_id=client_id,
        auth_method=auth_method,
        now=clock(),
        client_secret=client_secret,
        key_source=key_source,
        scope=scope,
        resource=resource,
    )
    tokens = send_token_request(http, request, now=clock)
    now = clock()
    record = Credential(
        access_token=tokens.access_token,
        token_type=tokens.token_type,
        scope=tokens.scope if tokens.scope is not None else scope,
        expires_at=None
        if tokens.expires_in is None
        else now + timedelta(seconds=tokens.expires_in),
        obtained_at=now,
        issuer=metadata.issuer,
        token_endpoint=metadata.token_endpoint,
        revocation_endpoint=metadata.revocation_endpoint,
        resource=resource,
        client_id=client_id,
        client_secret=client_secret if auth_method != "private_key_jwt" else None,
        token_endpoint_auth_method=auth_method,
        grant=CLIENT_CREDENTIALS,
        client_key_source=key_source,
        scope_requested=scope,
    )
    save(store, key, record, lock_timeout=lock_timeout)
    return record
