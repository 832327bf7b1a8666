"""The authorization request and its callback (RFC 6749 §4.1, RFC 7636, RFC 8707, RFC 9207)."""

from __future__ import annotations

import hmac
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from .._errors import AuthorizationDenied, ProtocolError

MAX_CALLBACK_CHARS = 8192
"""Callback URLs carry a code, a state and an issuer: a few hundred characters."""

__all__ = ["AuthorizationDenied", "authorization_url", "parse_callback"]


def authorization_url(
    endpoint: str,
    *,
    client_id: str,
    redirect_uri: str,
    state: str,
    code_challenge: str,
    resource: str,
    scope: str | None,
) -> str:
    """Build the URL a browser opens to ask the user for consent."""
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "state": state,
        "code_challenge": code_challenge,
        "code_challenge_method": "S256",
        "resource": resource,
    }
    if scope:
        params["scope"] = scope
    parts = urlsplit(endpoint)
    query = f"{parts.query}&{urlencode(params)}" if parts.query else urlencode(params)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


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
        raise AuthorizationDenied(f"authorization failed: {error[:100]} {description[:200]}")
    code = single("code")
    if not code:
        raise ProtocolError("the callback has no authorization code")
    return code
