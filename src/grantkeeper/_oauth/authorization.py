"""The authorization request and its callback (RFC 6749 §4.1, RFC 7636, RFC 8707, RFC 9207),
and the pushed authorization request that carries it where the server offers one (RFC 9126).
"""

from __future__ import annotations

import hmac
import json
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from .._errors import AuthorizationDenied, ClientRegistrationInvalid, ProtocolError
from .registration import ClientRegistration
from .token_endpoint import TokenRequest, client_auth

MAX_CALLBACK_CHARS = 8192
"""Callback URLs carry a code, a state and an issuer: a few hundred characters."""

MAX_PUSHED_RESPONSE_BYTES = 16 * 1024
"""A pushed authorization response is a request URI and a lifetime: well under a KiB."""

DENIED = "authorization failed: "
"""How an error redirect's message starts, followed by its ``error`` code (see
:func:`denied_code`)."""

__all__ = [
    "AuthorizationDenied",
    "authorization_params",
    "authorization_url",
    "denied_code",
    "parse_callback",
    "parse_pushed_response",
    "pushed_request",
    "pushed_url",
    "url_with",
]


def authorization_url(
    endpoint: str,
    *,
    client_id: str,
    redirect_uri: str,
    state: str,
    code_challenge: str,
    resource: str | None,
    scope: str | None,
) -> str:
    """Build the URL a browser opens to ask the user for consent (``resource`` ``None``:
    a login that does not send it)."""
    params = authorization_params(
        client_id=client_id,
        redirect_uri=redirect_uri,
        state=state,
        code_challenge=code_challenge,
        resource=resource,
        scope=scope,
    )
    return url_with(endpoint, params)


def authorization_params(
    *,
    client_id: str,
    redirect_uri: str,
    state: str,
    code_challenge: str,
    resource: str | None,
    scope: str | None,
) -> dict[str, str]:
    """The parameters of an authorization request, for the URL or for a push."""
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "state": state,
        "code_challenge": code_challenge,
        "code_challenge_method": "S256",
    }
    if resource:
        params["resource"] = resource
    if scope:
        params["scope"] = scope
    return params


def url_with(endpoint: str, params: dict[str, str]) -> str:
    """``endpoint`` with ``params`` added to its query (RFC 6749 §3.1 keeps its own)."""
    parts = urlsplit(endpoint)
    query = f"{parts.query}&{urlencode(params)}" if parts.query else urlencode(params)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def pushed_request(
    endpoint: str, params: dict[str, str], client: ClientRegistration
) -> TokenRequest:
    """The RFC 9126 §2.1 POST of ``params`` to the pushed authorization request endpoint,
    with the client authentication the token endpoint takes from ``client``."""
    form = dict(params)
    form.pop("client_id", None)  # client_auth puts it back where the method wants it
    headers = client_auth(
        form, client.client_id, client.client_secret, client.token_endpoint_auth_method
    )
    if "client_id" not in form:
        form["client_id"] = client.client_id  # RFC 9126 §2.1: sent with Basic too
    return TokenRequest(endpoint, form, headers)


def parse_pushed_response(status: int, body: bytes) -> str:
    """The ``request_uri`` of an RFC 9126 §2.2 answer.

    Raises :class:`ClientRegistrationInvalid` when the server does not know the client
    (``invalid_client``: an authorization server that forgot a registration says so here,
    before a browser opens), else :class:`ProtocolError` saying what went wrong.
    """
    data = None
    if len(body) <= MAX_PUSHED_RESPONSE_BYTES:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            data = None
    if not isinstance(data, dict):
        data = {}
    error = data.get("error") if isinstance(data.get("error"), str) else None
    if status in (400, 401) and error == "invalid_client":
        raise ClientRegistrationInvalid(
            "the authorization server does not know this client (invalid_client)"
        )
    if status not in (200, 201):
        said = f" ({error[:100]})" if error else ""
        raise ProtocolError(f"the pushed authorization request failed: HTTP {status}{said}")
    request_uri = data.get("request_uri")
    if not isinstance(request_uri, str) or not request_uri or len(request_uri) > 2048:
        raise ProtocolError("the pushed authorization response has no usable request_uri")
    return request_uri


def pushed_url(endpoint: str, *, client_id: str, request_uri: str) -> str:
    """The URL a browser opens for a pushed request (RFC 9126 §4): only the client and the
    reference go through the browser; the rest stayed between client and server."""
    return url_with(endpoint, {"client_id": client_id, "request_uri": request_uri})


def parse_callback(
    url: str,
    *,
    expected_state: str,
    issuer: str,
    require_iss: bool,
) -> str:
    """Return the authorization code from a callback URL after checking it.

    ``state`` is compared in constant time. RFC 9207's ``iss`` must equal ``issuer`` when
    present, and must be present when the server advertises it (``require_iss``).
    """
    if not isinstance(url, str) or len(url) > MAX_CALLBACK_CHARS:
        raise ProtocolError("the callback URL is missing or too long")
    try:
        params = parse_qs(urlsplit(url.strip()).query, keep_blank_values=True)
    except ValueError:  # e.g. an unclosed IPv6 bracket in a pasted URL
        raise ProtocolError("the callback URL is not a valid URL") from None

    def single(name: str) -> str | None:
        values = params.get(name)
        if values is None:
            return None
        if len(values) != 1:
            raise ProtocolError(f"the callback repeats the {name!r} parameter")
        return values[0]

    state = single("state")
    if state is None or not hmac.compare_digest(state.encode(), expected_state.encode()):
        raise ProtocolError("the callback's state does not match this login (possible CSRF)")
    iss = single("iss")
    if iss is not None and iss != issuer:
        raise ProtocolError("the callback's iss names another authorization server (mix-up)")
    if iss is None and require_iss:
        raise ProtocolError("the callback has no iss although the server promises one")
    error = single("error")
    if error is not None:
        description = single("error_description") or ""
        raise AuthorizationDenied(f"{DENIED}{error[:100]} {description[:200]}")
    code = single("code")
    if not code:
        raise ProtocolError("the callback has no authorization code")
    return code


def denied_code(error: AuthorizationDenied) -> str | None:
    """The ``error`` code of an error redirect :func:`parse_callback` refused, else
    ``None`` (read back from the message, which is all the error carries)."""
    if not error.message.startswith(DENIED):
        return None
    return error.message.removeprefix(DENIED).split(" ", 1)[0] or None
