"""The authorization-code flow with PKCE: register a client if needed, exchange, store under lock.

Presenting the authorization URL is the caller's job (``authorize``): a browser with a
loopback listener, a pasted redirect, or an application's own UI. The lock is held only
for the final write, never while a person reads a consent page.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable

import httpx

from .. import _rescue_copies
from .._errors import ProtocolError, StoreError
from .._freshness import Clock, utc_now
from .._network import failure
from .._observe.log import event
from .._record import Credential, CredentialKey
from .._stores.base import DEFAULT_LOCK_TIMEOUT, Store
from .auth_server_metadata import AuthServerMetadata
from .authorization import (
    authorization_params,
    parse_callback,
    parse_pushed_response,
    pushed_request,
    pushed_url,
    url_with,
)
from .dpop import DPoPKey
from .jws import b64url_decode
from .pkce import new_verifier, s256_challenge
from .registration import ClientRegistration, parse_registration, registration_body
from .revocation import revoke_tokens
from .token_client import send_token_request
from .token_endpoint import code_request, new_credential
from .urls import SENDING_FAILURES

Authorize = Callable[[str], str]
"""Shows the authorization URL to a person and returns the callback URL they reached."""

CLIENT_NAME = "grantkeeper"


def register_client(
    http: httpx.Client, metadata: AuthServerMetadata, redirect_uri: str, scope: str | None
) -> ClientRegistration:
    """Register a public client dynamically (RFC 7591)."""
    if not metadata.registration_endpoint:
        raise ProtocolError(
            "the authorization server offers no dynamic registration; pass a client id"
        )
    body = registration_body(redirect_uris=[redirect_uri], client_name=CLIENT_NAME, scope=scope)
    try:
        response = http.post(metadata.registration_endpoint, json=body)
    except httpx.HTTPError as exc:
        raise ProtocolError(f"client registration failed: {failure(exc)}") from None
    return parse_registration(response.status_code, response.content)


def push_authorization_request(
    http: httpx.Client, endpoint: str, params: dict[str, str], client: ClientRegistration
) -> str:
    """Push ``params`` (RFC 9126) and return the ``request_uri`` the browser is sent with.

    Raises :class:`ClientRegistrationInvalid` for a client the server does not know, else
    :class:`ProtocolError` for any failure."""
    request = pushed_request(endpoint, params, client)
    try:
        response = http.send(request.to_httpx(), follow_redirects=False)
    except SENDING_FAILURES as exc:
        raise ProtocolError(
            f"the pushed authorization request failed: {type(exc).__name__}"
        ) from None
    return parse_pushed_response(response.status_code, response.content)


def _subject(id_token: str | None) -> str | None:
    """The ``sub`` claim of an ID token, used only to tell accounts apart (not verified)."""
    if not id_token or id_token.count(".") != 2:
        return None
    payload = id_token.split(".")[1]
    try:
        claims = json.loads(b64url_decode(payload))
    except (ValueError, RecursionError):
        return None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    return sub if isinstance(sub, str) else None


def run_code_flow(
    store: Store,
    key: CredentialKey,
    *,
    metadata: AuthServerMetadata,
    resource: str,
    redirect_uri: str,
    authorize: Authorize,
    http: httpx.Client,
    scope: str | None = None,
    client: ClientRegistration | None = None,
    clock: Clock = utc_now,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    dpop: DPoPKey | None = None,
    resource_indicator: bool = True,
) -> Credential:
    """Run the authorization code flow and store the credential; return it. With ``dpop``
    the code is exchanged with a proof of that key, and the key is kept in the record.
    ``resource_indicator=False`` sends no ``resource``, here and at every refresh: the
    record keeps the choice."""
    registration = client or register_client(http, metadata, redirect_uri, scope)
    verifier, state = new_verifier(), secrets.token_urlsafe(24)
    sent_resource = resource if resource_indicator else None
    params = authorization_params(
        client_id=registration.client_id,
        redirect_uri=redirect_uri,
        state=state,
        code_challenge=s256_challenge(verifier),
        resource=sent_resource,
        scope=scope,
    )
    if metadata.pushes_only:
        assert metadata.pushed_authorization_request_endpoint is not None
        # The server takes no other (RFC 9126 §5): only the client and a reference go
        # through the browser, and a client it forgot is refused here, not on a page.
        # Where pushing is optional the URL carries the request itself: a reference
        # expires within a minute or so, and a printed URL may be opened later than that.
        request_uri = push_authorization_request(
            http, metadata.pushed_authorization_request_endpoint, params, registration
        )
        url = pushed_url(
            metadata.authorization_endpoint,
            client_id=registration.client_id,
            request_uri=request_uri,
        )
    else:
        url = url_with(metadata.authorization_endpoint, params)
    code = parse_callback(
        authorize(url),
        expected_state=state,
        issuer=metadata.issuer,
        require_iss=metadata.iss_parameter_supported,
    )
    request = code_request(
        token_endpoint=metadata.token_endpoint,
        code=code,
        redirect_uri=redirect_uri,
        code_verifier=verifier,
        resource=sent_resource,
        client_id=registration.client_id,
        client_secret=registration.client_secret,
        auth_method=registration.token_endpoint_auth_method,
        dpop=dpop,
    )
    tokens = send_token_request(http, request, now=clock)
    record = new_credential(
        tokens,
        received=clock(),
        metadata=metadata,
        resource=resource,
        scope=scope,
        client_id=registration.client_id,
        client_secret=registration.client_secret,
        auth_method=registration.token_endpoint_auth_method,
        subject=_subject(tokens.id_token),
        dpop_key=dpop.stored if dpop is not None else None,
        resource_indicator=resource_indicator,
    )
    save(store, key, record, lock_timeout=lock_timeout, http=http)
    return record


def save(
    store: Store,
    key: CredentialKey,
    record: Credential,
    *,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    http: httpx.Client | None = None,
) -> Credential | None:
    """Replace whatever is stored for ``key`` with ``record``, under the transaction lock;
    return the record it replaced, if one was readable.

    A rescue copy of an answer that replaced the old record goes too: it can never apply
    again, and would otherwise outlive the login. So does a replaced grant of another
    issuer (the server moved to a new authorization server, SEP-2352): with ``http`` its
    tokens are revoked at their own issuer once the new record is stored, since nothing
    will ever refresh them again.
    """
    with store.lock(key, timeout=lock_timeout):
        try:
            current = store.read(key)
        except StoreError as exc:
            # A corrupt record must not block a new login, which is how users recover.
            event(
                logging.WARNING,
                "login.replacing_unreadable",
                key=str(key),
                error=type(exc).__name__,
            )
            store.delete(key)
            current = None
        version = store.write(key, record, expected_version=current.version if current else None)
        if current is not None and _rescue_copies.discard(key, current.record):
            event(logging.INFO, "rescue.superseded", key=str(key))
    event(logging.INFO, "login.stored", key=str(key), version=version)
    replaced = current.record if current is not None else None
    if http is not None and replaced is not None and _other_issuer(replaced, record):
        _retire(http, key, replaced)
    return replaced


def _other_issuer(old: Credential, new: Credential) -> bool:
    return bool(old.issuer and new.issuer and old.issuer != new.issuer)


def _retire(http: httpx.Client, key: CredentialKey, old: Credential) -> None:
    """Revoke a replaced grant at the issuer that issued it; a failure costs nothing but
    a warning (the grant is no longer stored anywhere)."""
    revoked, problems = revoke_tokens(http, old, ("refresh_token", "access_token"))
    event(
        logging.INFO if not problems else logging.WARNING,
        "login.retired_other_issuer",
        key=str(key),
        issuer=old.issuer,
        revoked=",".join(revoked) or None,
        failed=len(problems) or None,
    )
