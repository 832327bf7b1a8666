"""Obtain a real credential from the oidc-provider harness through grantkeeper's own login.

Tests and the demo use this instead of hand-made records, so what they refresh is exactly
what a user's ``grantkeeper login`` would have stored: issuer, token endpoint, resource,
registered client and an absolute expiry.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from grantkeeper import Credential, CredentialKey, Store
from grantkeeper._oauth.auth_server_metadata import parse_metadata
from grantkeeper._oauth.code_flow import run_code_flow
from harness import remember_secret
from harness.authserver import AuthServer

REDIRECT_URI = "http://127.0.0.1:9/callback"
"""Never listened on: ``AuthServer.approve`` stops at the redirect and hands it back."""

SCOPE = "openid offline_access mcp"


def log_in(server: AuthServer, store: Store, key: CredentialKey, *, resource: str) -> Credential:
    """Register a client, play the browser, store the credential and return it."""
    with httpx.Client(timeout=10.0, trust_env=False) as http:
        response = http.get(f"{server.issuer}/.well-known/openid-configuration")
        metadata = parse_metadata(response.content, expected_issuer=server.issuer)
        credential = run_code_flow(
            store,
            key,
            metadata=metadata,
            resource=resource,
            redirect_uri=REDIRECT_URI,
            authorize=lambda url: server.approve(url, REDIRECT_URI),
            http=http,
            scope=SCOPE,
        )
    remember_secret(credential.access_token)
    if credential.refresh_token:
        remember_secret(credential.refresh_token)
    return credential


def age(store: Store, key: CredentialKey, *, expires_in: timedelta) -> None:
    """Rewrite the stored credential as if obtained an hour before it now expires, in
    ``expires_in`` (negative: already expired; inside the refresh margin: stale)."""
    stored = store.read(key)
    if stored is None:
        raise LookupError(f"nothing stored for {key}")
    expires_at = datetime.now(UTC) + expires_in
    aged = stored.record.replace(expires_at=expires_at, obtained_at=expires_at - timedelta(hours=1))
    store.write(key, aged, expected_version=stored.version)


def reroute(store: Store, key: CredentialKey, issuer: str, *, to: str) -> Credential:
    """Rewrite the stored credential's token endpoint to reach ``issuer`` through ``to`` (a
    proxy in front of it that a test holds or cuts); return what is stored now."""
    stored = store.read(key)
    if stored is None or stored.record.token_endpoint is None:
        raise LookupError(f"no token endpoint stored for {key}")
    endpoint = stored.record.token_endpoint.replace(issuer, to)
    rerouted = stored.record.replace(token_endpoint=endpoint)
    store.write(key, rerouted, expected_version=stored.version)
    return rerouted
