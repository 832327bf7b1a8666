"""Token endpoint requests and responses (RFC 6749 §5, §6; RFC 8707), kept pure.

Building a request and classifying an answer do no I/O; ``_token_client`` sends.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from ._errors import (
    ClientRegistrationInvalid,
    MalformedResponse,
    ProviderError,
    ProviderUnavailable,
    ReauthenticationRequired,
    RefreshOutcomeUnknown,
)
from ._record import Credential
from ._redact import redact

MAX_RESPONSE_BYTES = 1 << 20
"""Token responses are a few KiB; anything near a megabyte is not one, so stop reading."""

MAX_EXPIRES_IN = 10 * 365 * 24 * 3600
"""Ten years: a larger ``expires_in`` is a bug on the server, not a token lifetime."""

MAX_DESCRIPTION_CHARS = 200
"""How much of a provider's ``error_description`` we repeat in our own messages."""


@dataclass(frozen=True)
class TokenRequest:
    """A token endpoint POST: URL, form fields and headers. ``repr`` hides the form."""

    url: str
    form: dict[str, str]
    headers: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"TokenRequest(url={self.url!r}, grant_type={self.form.get('grant_type')!r})"

    def to_httpx(self) -> httpx.Request:
        """Return the request for an httpx client."""
        return httpx.Request(
            "POST",
            self.url,
            data=self.form,
            headers={"Accept": "application/json", **self.headers},
        )


@dataclass(frozen=True)
class TokenResponse:
    """A successful token response, with ``expires_in`` coerced to seconds."""

    access_token: str
    token_type: str
    expires_in: float | None
    refresh_token: str | None
    scope: str | None
    id_token: str | None

    def __repr__(self) -> str:
        return (
            f"TokenResponse(access_token={redact(self.access_token)!r}, "
            f"refresh_token={redact(self.refresh_token)!r}, expires_in={self.expires_in!r})"
        )


def client_auth(
    form: dict[str, str],
    client_id: str | None,
    client_secret: str | None,
    method: str | None,
    *,
    assertion: str | None = None,
) -> dict[str, str]:
    """Add client authentication (RFC 6749 §2.3) to ``form``; return extra headers.

    ``private_key_jwt`` sends the signed ``assertion`` (RFC 7523 §2.2) and no secret.
    """
    if client_id is None:
        raise ProviderError("the credential has no client_id; log in again to register")
    if method == "private_key_jwt":
        if not assertion:
            raise ProviderError("private_key_jwt needs a signed client assertion")
        form["client_assertion_type"] = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        form["client_assertion"] = assertion
        return {}
    if client_secret and method != "client_secret_post":
        # RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
        pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
        return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode("ascii")}
    form["client_id"] = client_id
    if client_secret:
        form["client_secret"] = client_secret
    return {}


def refresh_request(record: Credential) -> TokenRequest:
    """Build the refresh_token grant for ``record`` (RFC 6749 §6), with ``resource``."""
    if not record.refresh_token:
        raise ReauthenticationRequired("no refresh token is stored")
    if not record.token_endpoint:
        raise ProviderError("the credential has no token endpoint; log in again")
    form = {
        "grant_type": "refresh_token",
        "refresh_token": record.refresh_token,
        "resource": record.resource,
    }
    headers = client_auth(
        form, record.client_id, record.client_secret, record.token_endpoint_auth_method
    )
    return TokenRequest(record.token_endpoint, form, headers)


def code_request(
    *,
    token_endpoint: str,
    code: str,
    redirect_uri: str,
    code_verifier: str,
    resource: str,
    client_id: str,
    client_secret: str | None = None,
    auth_method: str | None = None,
) -> TokenRequest:
    """Build the authorization_code grant (RFC 6749 §4.1.3, RFC 7636 §4.5, RFC 8707)."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": code_verifier,
        "resource": resource,
    }
    headers = client_auth(form, client_id, client_secret, auth_method)
    return TokenRequest(token_endpoint, form, headers)


def _scrub(text: str, secrets: Iterable[str | None]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, redact(secret))
    return text[:MAX_DESCRIPTION_CHARS]


def _retry_after(value: str | None, now: datetime) -> float | None:
    if not value:
        return None
    value = value.strip()
    # isdigit() alone takes any Unicode digit ("¹", "٣"), which float() refuses.
    if value.isascii() and value.isdigit():
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    try:
        return max(0.0, (parsedate_to_datetime(value) - now).total_seconds())
    except (TypeError, ValueError):
        return None


def _coerce_expires_in(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise MalformedResponse("token response has a non-numeric expires_in")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise MalformedResponse("token response has a non-numeric expires_in") from None
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise MalformedResponse("token response has a non-numeric expires_in")
    if value < 0 or value > MAX_EXPIRES_IN:
        raise MalformedResponse(f"token response has an implausible expires_in ({value:g} s)")
    return float(value)


def _opt_str(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedResponse(f"token response field {name!r} is not a string")
    return value


def parse_token_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: datetime,
    secrets: Iterable[str | None] = (),
) -> TokenResponse:
    """Classify a token endpoint answer: return the tokens or raise the typed error.

    ``invalid_grant`` arrives as 400 or 401 depending on the server; both mean the grant is
    dead. 429 and 503 mean nothing was processed. Any other failure after the request was
    sent leaves the outcome unknown. ``secrets`` are scrubbed from any text we repeat.
    """
    secrets = tuple(secrets)
    try:
        payload = json.loads(body) if body else None
    except (ValueError, RecursionError):
        payload = None
    obj: dict[str, Any] = payload if isinstance(payload, dict) else {}
    error = obj.get("error") if isinstance(obj.get("error"), str) else None
    if error is not None:
        error = _scrub(error, secrets)  # repeated in messages: a server may echo the token
    description = obj.get("error_description")
    detail = f": {_scrub(description, secrets)}" if isinstance(description, str) else ""

    if status == 200 and payload is not None and error is None:
        return _parse_success(obj if isinstance(payload, dict) else None)
    if error == "invalid_grant":
        raise ReauthenticationRequired(f"the authorization server rejected the grant{detail}")
    if error in ("invalid_client", "unauthorized_client"):
        raise ClientRegistrationInvalid(
            f"the authorization server does not accept this client ({error}){detail}"
        )
    if status in (429, 503) or error == "temporarily_unavailable":
        raise ProviderUnavailable(
            f"the authorization server is unavailable (HTTP {status}){detail}",
            status=status,
            error=error,
            retry_after=_retry_after(headers.get("retry-after"), now),
        )
    if error is not None and 400 <= status < 500:
        raise ProviderError(
            f"the authorization server refused the request ({error}){detail}",
            status=status,
            error=error,
        )
    if status == 200:
        raise MalformedResponse("the token endpoint answered 200 with no usable JSON object")
    raise RefreshOutcomeUnknown(
        f"the authorization server failed with HTTP {status}; the request may have been processed",
        status=status,
        error=error,
    )


def _parse_success(body: dict[str, Any] | None) -> TokenResponse:
    if body is None:
        raise MalformedResponse("token response is not a JSON object")
    access_token = _opt_str(body, "access_token")
    if not access_token:
        raise MalformedResponse("token response has no access_token")
    token_type = _opt_str(body, "token_type") or "Bearer"
    if token_type.lower() != "bearer":
        raise MalformedResponse(f"unsupported token_type {token_type[:20]!r}; only Bearer is")
    refresh_token = _opt_str(body, "refresh_token") or None
    return TokenResponse(
        access_token=access_token,
        token_type="Bearer",
        expires_in=_coerce_expires_in(body.get("expires_in")),
        refresh_token=refresh_token,
        scope=_opt_str(body, "scope"),
        id_token=_opt_str(body, "id_token"),
    )


def apply_response(record: Credential, response: TokenResponse, now: datetime) -> Credential:
    """Return ``record`` updated with ``response``, received at ``now``.

    A response that omits ``refresh_token`` or ``scope`` keeps the old ones (RFC 6749 §6).
    An omitted ``expires_in`` leaves the expiry unknown rather than guessing.
    """
    expires_at = (
        None if response.expires_in is None else now + timedelta(seconds=response.expires_in)
    )
    return record.replace(
        access_token=response.access_token,
        token_type=response.token_type,
        refresh_token=response.refresh_token or record.refresh_token,
        scope=response.scope if response.scope is not None else record.scope,
        expires_at=expires_at,
        obtained_at=now,
        reauth_reason=None,
        intent=None,
    )
