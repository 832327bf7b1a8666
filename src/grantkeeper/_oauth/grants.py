"""The grants a machine uses (client credentials, RFC 6749 §4.4; cross-app access and
workload identity, RFC 7523), and how any stored credential is renewed.

A person's credential is renewed with its refresh token; a machine client's by asking
again with its own credentials, a workload's with its own identity token. All go through
the Keeper's one transaction per expiry: :func:`renewal_request` is the only place that
tells them apart. Building requests is pure; :func:`obtain`, :func:`cross_app_access` and
:func:`workload_login` send the first request and store the result.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from .._errors import (
    ClientRegistrationInvalid,
    MalformedResponse,
    ProtocolError,
    ProviderError,
    ProviderUnavailable,
    ReauthenticationRequired,
    ServerConfigError,
)
from .._freshness import Clock, utc_now
from .._network import failure
from .._record import CLIENT_CREDENTIALS, Credential, CredentialKey
from .._redact import redact
from .._rules import Outcome, outcome_of, workload_rejected
from .._stores.base import DEFAULT_LOCK_TIMEOUT, Store
from .auth_server_metadata import AuthServerMetadata
from .client_assertion import client_assertion
from .code_flow import save
from .dpop import DPoPKey
from .token_client import send_token_request
from .token_endpoint import (
    MAX_RESPONSE_BYTES,
    TokenRequest,
    client_auth,
    new_credential,
    parse_token_response,
    record_key,
    refresh_request,
)
from .urls import require_secure
from .workload import WorkloadIdentity, refused

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


def renewal_request(
    record: Credential, now: datetime, *, workload: WorkloadIdentity | None = None
) -> TokenRequest:
    """The request that renews ``record``: ask again with the workload's token (read now,
    from ``workload`` or where the record says) or for client credentials, else refresh."""
    if record.workload_source is not None:
        if not record.token_endpoint or not record.client_id:
            raise ProviderError("the credential lacks its token endpoint or client; log in again")
        request = workload_request(
            token_endpoint=record.token_endpoint,
            workload=workload or WorkloadIdentity.from_source(record.workload_source),
            client_id=record.client_id,
            client_secret=record.client_secret,
            resource=record.sent_resource,
            scope=record.scope_requested,
        )
        return dataclasses.replace(request, dpop=record_key(record))
    if record.grant != CLIENT_CREDENTIALS:
        return refresh_request(record)  # with the record's DPoP key, if it has one
    if not record.token_endpoint or not record.issuer or not record.client_id:
        raise ProviderError("the credential lacks its token endpoint or client; obtain it again")
    request = client_credentials_request(
        token_endpoint=record.token_endpoint,
        issuer=record.issuer,
        client_id=record.client_id,
        auth_method=record.token_endpoint_auth_method or "client_secret_basic",
        now=now,
        client_secret=record.client_secret,
        key_source=record.client_key_source,
        scope=record.scope_requested,
        resource=record.sent_resource,
    )
    return dataclasses.replace(request, dpop=record_key(record))


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
    dpop: DPoPKey | None = None,
    resource_indicator: bool = True,
) -> Credential:
    """Ask for a client-credentials token and store it; return the credential. With
    ``dpop`` the token is bound to that key, kept in the record for every renewal; with
    ``resource_indicator=False`` no request of it names ``resource``."""
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
        resource=resource if resource_indicator else None,
    )
    return _first_grant(
        store,
        key,
        dataclasses.replace(request, dpop=dpop),
        http=http,
        clock=clock,
        lock_timeout=lock_timeout,
        metadata=metadata,
        resource=resource,
        scope=scope,
        client_id=client_id,
        client_secret=client_secret if auth_method != "private_key_jwt" else None,
        auth_method=auth_method,
        grant=CLIENT_CREDENTIALS,
        client_key_source=key_source,
        scope_requested=scope,
        dpop_key=dpop.stored if dpop is not None else None,
        resource_indicator=resource_indicator,
    )


def _first_grant(
    store: Store,
    key: CredentialKey,
    request: TokenRequest,
    *,
    http: httpx.Client,
    clock: Clock,
    lock_timeout: float,
    **credential: Any,
) -> Credential:
    """Send a grant's first request and store the credential its answer makes (the
    ``credential`` fields go to :func:`new_credential`), under the refresh lock."""
    tokens = send_token_request(http, request, now=clock)
    record = new_credential(tokens, received=clock(), **credential)
    save(store, key, record, lock_timeout=lock_timeout, http=http)
    return record


# -- cross-app access: RFC 8693 at the enterprise IdP, then RFC 7523 at the MCP server's AS --

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
ID_JAG_TYPE = "urn:ietf:params:oauth:token-type:id-jag"
"""An Identity Assertion JWT Authorization Grant (the enterprise-managed authorization draft)."""


@dataclass(frozen=True)
class EnterpriseIdentity:
    """A user's sign-in at their enterprise identity provider, for cross-app access.

    The IdP exchanges ``id_token`` (RFC 8693) for an identity assertion grant that the MCP
    server's authorization server takes as a jwt-bearer grant (RFC 7523): no browser, no
    consent page. ``repr`` hides the token and the secret.
    """

    token_endpoint: str
    client_id: str
    id_token: str
    client_secret: str | None = None

    def __repr__(self) -> str:
        return (
            f"EnterpriseIdentity(token_endpoint={self.token_endpoint!r}, "
            f"client_id={self.client_id!r}, id_token={redact(self.id_token)!r})"
        )


def token_exchange_request(
    identity: EnterpriseIdentity, *, audience: str, resource: str | None, scope: str | None
) -> TokenRequest:
    """Ask the IdP for an assertion grant for ``audience``'s ``resource`` (RFC 8693 §2.1);
    ``resource`` ``None`` for a login that does not send it (``audience`` still names the
    authorization server)."""
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "requested_token_type": ID_JAG_TYPE,
        "audience": audience,
        "subject_token": identity.id_token,
        "subject_token_type": ID_TOKEN_TYPE,
    }
    if resource:
        form["resource"] = resource
    if scope:
        form["scope"] = scope
    method = "client_secret_basic" if identity.client_secret else None
    headers = client_auth(form, identity.client_id, identity.client_secret, method)
    return TokenRequest(
        require_secure(identity.token_endpoint, "IdP token endpoint"), form, headers
    )


def jwt_bearer_request(
    *,
    token_endpoint: str,
    assertion: str,
    client_id: str,
    client_secret: str | None,
    auth_method: str | None,
    scope: str | None,
    resource: str | None = None,
) -> TokenRequest:
    """Trade the assertion grant for an access token (RFC 7523 §2.1), as our own client."""
    form = {"grant_type": JWT_BEARER, "assertion": assertion}
    if scope:
        form["scope"] = scope
    if resource:
        form["resource"] = resource
    headers = client_auth(form, client_id, client_secret, auth_method)
    return TokenRequest(token_endpoint, form, headers)


def parse_exchange_response(
    status: int, headers: Mapping[str, str], body: bytes, *, now: datetime
) -> str:
    """The assertion grant from an RFC 8693 §2.2 answer, or the typed error.

    Its ``token_type`` is ``N_A`` (it is no access token), so a 200 is read here and only
    the other answers go to the access-token parser, for their typed errors.
    """
    if status == 200:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            data = None
        if not isinstance(data, dict):
            raise MalformedResponse("the token exchange answer is not a JSON object")
        grant = data.get("access_token")
        if data.get("issued_token_type") != ID_JAG_TYPE or not isinstance(grant, str) or not grant:
            raise MalformedResponse("the identity provider issued no identity assertion grant")
        return grant
    parse_token_response(status, headers, body, now=now)  # raises the typed error
    raise MalformedResponse(f"the identity provider answered HTTP {status}")


def _exchange(http: httpx.Client, request: TokenRequest, clock: Clock) -> str:
    try:
        response = http.send(request.to_httpx(), stream=True, follow_redirects=False)
        try:
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    raise MalformedResponse("the token exchange answer is too large")
        finally:
            response.close()
    except httpx.HTTPError as exc:
        raise ProviderUnavailable(
            f"the identity provider could not be reached ({failure(exc)})"
        ) from None
    return parse_exchange_response(response.status_code, response.headers, bytes(body), now=clock())


def cross_app_access(
    store: Store,
    key: CredentialKey,
    *,
    identity: EnterpriseIdentity,
    metadata: AuthServerMetadata,
    resource: str,
    http: httpx.Client,
    client_id: str,
    client_secret: str | None,
    scope: str | None = None,
    clock: Clock = utc_now,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    resource_indicator: bool = True,
) -> Credential:
    """Exchange the enterprise sign-in for an access token to ``resource``; store it.

    The result renews with its refresh token if one came; otherwise, at expiry, a new
    cross-app login (a fresh ID token) is needed, which the Keeper reports as usual.
    ``resource_indicator=False``: the exchange and every refresh send no ``resource``.
    """
    if JWT_BEARER not in metadata.grant_types_supported:
        raise ProtocolError("the authorization server does not accept jwt-bearer grants")
    sent_resource = resource if resource_indicator else None
    assertion = _exchange(
        http,
        token_exchange_request(
            identity, audience=metadata.issuer, resource=sent_resource, scope=scope
        ),
        clock,
    )
    method = "client_secret_basic" if client_secret else None
    request = jwt_bearer_request(
        token_endpoint=metadata.token_endpoint,
        assertion=assertion,
        client_id=client_id,
        client_secret=client_secret,
        auth_method=method,
        scope=scope,
    )
    return _first_grant(
        store,
        key,
        request,
        http=http,
        clock=clock,
        lock_timeout=lock_timeout,
        metadata=metadata,
        resource=resource,
        scope=scope,
        client_id=client_id,
        client_secret=client_secret,
        auth_method=method,
        grant=JWT_BEARER,
        resource_indicator=resource_indicator,
    )


# -- workload identity federation (SEP-1933): RFC 7523 with the workload's own JWT --------


def workload_request(
    *,
    token_endpoint: str,
    workload: WorkloadIdentity,
    client_id: str,
    client_secret: str | None,
    resource: str | None,
    scope: str | None,
) -> TokenRequest:
    """The jwt-bearer grant with the workload's token as the source holds it now: a
    public client (its id in the form), or ``client_secret_basic`` with a secret;
    ``resource`` ``None`` for a credential that does not send it."""
    return jwt_bearer_request(
        token_endpoint=token_endpoint,
        assertion=workload.read(),
        client_id=client_id,
        client_secret=client_secret,
        auth_method="client_secret_basic" if client_secret else None,
        scope=scope,
        resource=resource,
    )


def workload_login(
    store: Store,
    key: CredentialKey,
    *,
    workload: WorkloadIdentity,
    metadata: AuthServerMetadata,
    resource: str,
    http: httpx.Client,
    client_id: str,
    client_secret: str | None = None,
    scope: str | None = None,
    clock: Clock = utc_now,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    dpop: DPoPKey | None = None,
    resource_indicator: bool = True,
) -> Credential:
    """Trade the workload's own token for an access token to ``resource``; store it.

    The record keeps where the token is read (``workload.source``), never the token: the
    Keeper renews it by asking again with whatever token the workload holds then. A refusal
    is :class:`~grantkeeper.WorkloadTokenRejected`, sent once and never retried here.
    ``resource_indicator=False``: neither this request nor a renewal sends ``resource``.
    """
    if JWT_BEARER not in metadata.grant_types_supported:
        raise ProtocolError("the authorization server does not accept jwt-bearer grants")
    request = workload_request(
        token_endpoint=metadata.token_endpoint,
        workload=workload,
        client_id=client_id,
        client_secret=client_secret,
        resource=resource if resource_indicator else None,
        scope=scope,
    )
    try:
        return _first_grant(
            store,
            key,
            dataclasses.replace(request, dpop=dpop),
            http=http,
            clock=clock,
            lock_timeout=lock_timeout,
            metadata=metadata,
            resource=resource,
            scope=scope,
            client_id=client_id,
            client_secret=client_secret,
            auth_method="client_secret_basic" if client_secret else None,
            grant=JWT_BEARER,
            workload_source=workload.source,
            scope_requested=scope,
            dpop_key=dpop.stored if dpop is not None else None,
            resource_indicator=resource_indicator,
        )
    except (ReauthenticationRequired, ClientRegistrationInvalid) as exc:
        note_refusal(request, exc)
        raise workload_rejected(exc, workload.source, str(key)) from None


def note_refusal(request: TokenRequest, error: BaseException) -> None:
    """After a workload identity request failed: a definitive answer refused its token,
    which this process then does not send again for a while (``workload.refused``)."""
    token = request.form.get("assertion")
    if token and request.form.get("grant_type") == JWT_BEARER:
        if outcome_of(error) is Outcome.DEFINITIVE:
            refused(token)
