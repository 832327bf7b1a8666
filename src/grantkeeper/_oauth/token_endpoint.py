"""Token endpoint requests and responses (RFC 6749 §5, §6; RFC 8707), kept pure.

Building a request and classifying an answer do no I/O; ``token_client`` sends.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, TypeGuard
from urllib.parse import quote, quote_plus, unquote

import httpx

from .._errors import (
    ClientRegistrationInvalid,
    MalformedResponse,
    ProviderError,
    ProviderUnavailable,
    ReauthenticationRequired,
    RefreshOutcomeUnknown,
    UnsupportedTokenType,
)
from .._record import Credential
from .._redact import redact, remember, scrub
from .._rules import Outcome, answer_outcome
from .auth_server_metadata import AuthServerMetadata
from .dpop import PROOF_HEADER, DPoPKey, load_key

MAX_RESPONSE_BYTES = 1 << 20
"""Token responses are a few KiB; anything near a megabyte is not one, so stop reading."""

MAX_EXPIRES_IN = 10 * 365 * 24 * 3600
"""Ten years: a larger ``expires_in`` is a bug on the server, not a token lifetime."""

MAX_DESCRIPTION_CHARS = 200
"""How much of a provider's ``error_description`` we repeat in our own messages."""

SECRET_FORM_FIELDS = frozenset(
    {
        "client_secret",
        "client_assertion",
        "refresh_token",
        "code",
        "code_verifier",
        "assertion",
        "subject_token",
        "actor_token",
        "password",
    }
)
"""Form fields whose values authenticate the client or are a grant's secret. The others
(``grant_type``, ``redirect_uri``, ``resource``, ``client_id``, ``scope``) are ordinary
words that error messages must keep readable."""


@dataclass(frozen=True)
class TokenRequest:
    """A token endpoint POST: URL, form fields and headers. ``repr`` hides the form."""

    url: str
    form: dict[str, str]
    headers: dict[str, str] = field(default_factory=dict)
    dpop: DPoPKey | None = None
    """The key each sending of the request signs a fresh DPoP proof with (RFC 9449 §5)."""

    def __post_init__(self) -> None:
        # Not only the token endpoint's answer may repeat them (see _redact).
        remember(*self.secret_values())

    def __repr__(self) -> str:
        return f"TokenRequest(url={self.url!r}, grant_type={self.form.get('grant_type')!r})"

    def secret_values(self) -> tuple[str, ...]:
        """Return every value an error message must not repeat, in each encoding it can take.

        These are the :data:`SECRET_FORM_FIELDS` values and the ``Authorization`` header: its
        whole value, its credential and, for Basic, the client secret inside the decoded
        ``client_id:secret`` pair. Hiding that half hides the pair while its client id stays
        readable. Each value also comes percent-encoded, as a server echoing the raw form
        would write it.
        """
        values = [v for k, v in self.form.items() if k in SECRET_FORM_FIELDS and v]
        for name, value in self.headers.items():
            if name.lower() != "authorization" or not value:
                continue
            scheme, _, credential = value.strip().partition(" ")
            credential = credential.strip()
            values += [value, credential, credential.rstrip("=")]
            if scheme.lower() == "basic":
                values += _basic_secret(credential)
        return tuple(
            dict.fromkeys(
                variant
                for value in values
                if value
                for variant in (value, quote(value, safe=""), quote_plus(value))
            )
        )

    def to_httpx(self, *, nonce: str | None = None) -> httpx.Request:
        """Return the request for an httpx client, with a new proof (and ``nonce``) if DPoP."""
        headers = {"Accept": "application/json", **self.headers}
        if self.dpop is not None:
            headers[PROOF_HEADER] = self.dpop.proof("POST", self.url, nonce=nonce)
        return httpx.Request("POST", self.url, data=self.form, headers=headers)


def _basic_secret(credential: str) -> list[str]:
    """Return the secret half of a Basic credential, form-encoded and decoded (RFC 6749 §2.3.1)."""
    try:
        pair = base64.b64decode(credential, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return []
    _, colon, encoded = pair.partition(":")
    if not colon:
        return [pair]
    return [encoded, unquote(encoded)]


@dataclass(frozen=True)
class TokenResponse:
    """A successful token response, with ``expires_in`` coerced to seconds.

    Optional fields that were present but unusable are ``None`` here, and their names are in
    :attr:`dropped`. A token endpoint answer that spent the refresh token is too valuable
    to throw away over a cosmetic field.
    """

    access_token: str
    token_type: str
    expires_in: float | None
    refresh_token: str | None
    scope: str | None
    id_token: str | None
    #: Names (never values) of optional fields that were present but unusable.
    dropped: tuple[str, ...] = ()
    #: When the request was sent: the token's lifetime counts from here.
    requested_at: datetime | None = None

    def __post_init__(self) -> None:
        remember(self.access_token, self.refresh_token, self.id_token)

    @property
    def refresh_token_dropped(self) -> bool:
        """Whether a ``refresh_token`` came back unusable: the old one is spent all the same."""
        return "refresh_token" in self.dropped

    def __repr__(self) -> str:
        return (
            f"TokenResponse(access_token={redact(self.access_token)!r}, "
            f"refresh_token={redact(self.refresh_token)!r}, expires_in={self.expires_in!r}, "
            f"dropped={self.dropped!r})"
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
    """Build the refresh_token grant for ``record`` (RFC 6749 §6), with ``resource``
    unless its login opted out (:attr:`Credential.resource_indicator`)."""
    if not record.refresh_token:
        raise ReauthenticationRequired("no refresh token is stored")
    if not record.token_endpoint:
        raise ProviderError("the credential has no token endpoint; log in again")
    form = {"grant_type": "refresh_token", "refresh_token": record.refresh_token}
    if record.sent_resource:
        form["resource"] = record.sent_resource
    headers = client_auth(
        form, record.client_id, record.client_secret, record.token_endpoint_auth_method
    )
    return TokenRequest(record.token_endpoint, form, headers, dpop=record_key(record))


def record_key(record: Credential) -> DPoPKey | None:
    """The DPoP key ``record`` keeps, which every renewal of it proves possession of."""
    return load_key(record.dpop_key) if record.dpop_key is not None else None


def code_request(
    *,
    token_endpoint: str,
    code: str,
    redirect_uri: str,
    code_verifier: str,
    resource: str | None,
    client_id: str,
    client_secret: str | None = None,
    auth_method: str | None = None,
    dpop: DPoPKey | None = None,
) -> TokenRequest:
    """Build the authorization_code grant (RFC 6749 §4.1.3, RFC 7636 §4.5, RFC 8707);
    ``resource`` ``None`` for a login that does not send it."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": code_verifier,
    }
    if resource:
        form["resource"] = resource
    headers = client_auth(form, client_id, client_secret, auth_method)
    return TokenRequest(token_endpoint, form, headers, dpop=dpop)


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    return scrub(text, secrets, MAX_DESCRIPTION_CHARS)


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


def _seconds(value: Any) -> float | None:
    """Return ``value`` as a usable lifetime in seconds, or ``None`` if it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        seconds = float(value.strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):  # "soon"; an integer too large for a float
        return None
    if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_EXPIRES_IN:
        return None
    return seconds


def _usable_refresh(value: Any) -> TypeGuard[str]:
    # Only ever sent in a form body, so any non-empty string will do (RFC 6749 §A.17).
    return isinstance(value, str) and bool(value)


def _usable_token(value: Any) -> TypeGuard[str]:
    # It goes into an Authorization header as is: visible ASCII only (RFC 6750 §2.1).
    return isinstance(value, str) and bool(value) and all("!" <= c <= "~" for c in value)


def parse_token_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: datetime,
    secrets: Iterable[str | None] = (),
) -> TokenResponse:
    """Classify a token endpoint answer: return the tokens or raise the typed error.

    :func:`~grantkeeper._rules.answer_outcome` decides what the answer means (the outcome
    table); this function only reads the body and words the error. ``secrets``
    (:meth:`TokenRequest.secret_values`) are scrubbed from the provider's text we repeat;
    this is the one place that text enters.
    """
    hidden = tuple(secret for secret in secrets if secret)
    try:
        payload = json.loads(body) if body else None
    except (ValueError, RecursionError):
        payload = None
    obj: dict[str, Any] = payload if isinstance(payload, dict) else {}
    code = obj.get("error") if isinstance(obj.get("error"), str) else None
    # Classify by the code as sent; repeat only scrubbed text, since a server may echo
    # anything it was given, the client's credentials included.
    error = None if code is None else _scrub(code, hidden)
    description = obj.get("error_description")
    detail = f": {_scrub(description, hidden)}" if isinstance(description, str) else ""

    carried = _usable_token(obj.get("access_token")) or _usable_refresh(obj.get("refresh_token"))
    outcome = answer_outcome(status, code, carried)
    if outcome is Outcome.ANSWERED:
        return _parse_success(obj)
    if outcome is Outcome.DEFINITIVE:
        if code == "invalid_grant":
            raise ReauthenticationRequired(f"the authorization server rejected the grant{detail}")
        raise ClientRegistrationInvalid(
            f"the authorization server does not accept this client ({error}){detail}"
        )
    if outcome is Outcome.NOT_PROCESSED:
        raise ProviderUnavailable(
            f"the authorization server is unavailable (HTTP {status}){detail}",
            status=status,
            error=error,
            retry_after=_retry_after(headers.get("retry-after"), now),
        )
    if outcome is Outcome.REFUSED:
        raise ProviderError(
            f"the authorization server refused the request ({error}){detail}",
            status=status,
            error=error,
        )
    if 200 <= status < 300:
        if payload is None or not isinstance(payload, dict):
            raise MalformedResponse(
                f"the token endpoint answered {status} with no usable JSON object"
            )
        raise MalformedResponse(f"the token endpoint answered {status} with no usable access_token")
    raise RefreshOutcomeUnknown(
        f"the authorization server failed with HTTP {status}; the request may have been processed",
        status=status,
        error=error,
    )


MAX_TOKEN_TYPE_CHARS = 40
"""How much of a ``token_type`` we keep: the registered ones (RFC 6750, RFC 9449) are short."""

_KNOWN_TOKEN_TYPES = {"bearer": "Bearer", "dpop": "DPoP"}
"""Token types by their case-insensitive name (RFC 6749 §5.1), as they are spelled."""


def _parse_success(body: dict[str, Any]) -> TokenResponse:
    """Return the tokens of a 2xx answer with a usable token, dropping unusable optional
    fields.

    The refresh token that was sent is spent by now: the answer is kept, whatever else it
    says. Without a usable access token, its ``access_token`` is empty and
    :func:`apply_response` stores it expired, so B's refresh token is spent next, never A's.
    A ``token_type`` other than Bearer is kept as the provider named it, so the record
    says what the token is (see ``Keeper``'s ``UnsupportedTokenType``).
    """
    dropped: list[str] = []
    access_token = body.get("access_token")
    if not _usable_token(access_token):
        if not _usable_refresh(body.get("refresh_token")):  # answer_outcome checked this
            raise MalformedResponse("token response has no usable access_token")
        if access_token is not None:
            dropped.append("access_token")
        access_token = ""
    if "error" in body:
        dropped.append("error")  # a token came with it: the token is the answer

    token_type = "Bearer"
    raw_type = body.get("token_type")
    if isinstance(raw_type, str) and raw_type.strip():
        named = raw_type.strip()
        token_type = _KNOWN_TOKEN_TYPES.get(named.lower()) or "".join(
            c for c in named[:MAX_TOKEN_TYPE_CHARS] if "!" <= c <= "~"
        )
        token_type = token_type or "unknown"
    elif raw_type is not None:
        dropped.append("token_type")  # not a type at all: it claims nothing, keep Bearer

    raw_expiry = body.get("expires_in")
    expires_in = _seconds(raw_expiry)
    if raw_expiry is not None and expires_in is None:
        dropped.append("expires_in")  # the lifetime is unknown, as if it were omitted
    if expires_in == 0:
        # Zero gives no lifetime, like an omitted one: the token serves until a server
        # rejects it, instead of being expired on arrival and refreshed on every call.
        expires_in = None

    refresh_token = body.get("refresh_token")
    if refresh_token is not None and not _usable_refresh(refresh_token):
        # Present but unusable is not omitted: the old refresh token is spent either way.
        dropped.append("refresh_token")
        refresh_token = None

    def optional_str(name: str) -> str | None:
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            dropped.append(name)
            return None
        return value

    scope = optional_str("scope")
    id_token = optional_str("id_token")
    return TokenResponse(
        access_token=access_token,
        token_type=token_type,
        expires_in=expires_in,
        refresh_token=refresh_token,
        scope=scope,
        id_token=id_token,
        dropped=tuple(dropped),
    )


def apply_response(record: Credential, response: TokenResponse, now: datetime) -> Credential:
    """Return ``record`` updated with ``response``, received at ``now``.

    The lifetime counts from :attr:`TokenResponse.requested_at` when known: the server
    started it at some moment after we sent the request, never before, so counting from
    the sending errs early. A response that omits ``refresh_token`` or ``scope`` keeps the
    old ones (RFC 6749 §6); one whose ``refresh_token`` was unusable keeps none, since the
    old one is spent. An omitted ``expires_in`` leaves the expiry unknown.
    """
    start = response.requested_at or now
    expires_at = (
        None if response.expires_in is None else start + timedelta(seconds=response.expires_in)
    )
    if not response.access_token:
        expires_at = start  # none came: expired at once, so B's refresh token gets one
    if response.refresh_token is not None or response.refresh_token_dropped:
        refresh_token = response.refresh_token
    else:
        refresh_token = record.refresh_token
    return record.replace(
        access_token=response.access_token,
        token_type=response.token_type,
        refresh_token=refresh_token,
        scope=response.scope if response.scope is not None else record.scope,
        expires_at=expires_at,
        obtained_at=start,
        reauth_reason=None,
        intent=None,
    )


def new_credential(
    response: TokenResponse,
    *,
    received: datetime,
    metadata: AuthServerMetadata,
    resource: str,
    scope: str | None,
    client_id: str,
    client_secret: str | None,
    auth_method: str | None,
    **extra: Any,
) -> Credential:
    """The credential a grant's first ``response`` makes (a login, client credentials,
    jwt-bearer); its lifetime counts from when the request left (else ``received``).

    A token grantkeeper cannot present (not Bearer) is refused here: a first answer spent
    no refresh token of ours, so nothing is lost by not storing a credential no request
    could use. (A refresh's answer is kept instead: it may carry the only live refresh
    token.)
    """
    if not response.access_token:
        raise MalformedResponse("the token response has no usable access_token")
    obtained = response.requested_at or received
    credential = Credential(
        access_token=response.access_token,
        token_type=response.token_type,
        refresh_token=response.refresh_token,
        scope=response.scope if response.scope is not None else scope,
        expires_at=None
        if response.expires_in is None
        else obtained + timedelta(seconds=response.expires_in),
        obtained_at=obtained,
        issuer=metadata.issuer,
        token_endpoint=metadata.token_endpoint,
        revocation_endpoint=metadata.revocation_endpoint,
        resource=resource,
        client_id=client_id,
        client_secret=client_secret,
        token_endpoint_auth_method=auth_method,
        **extra,
    )
    if not credential.presentable:
        raise UnsupportedTokenType.issued(credential.token_type, kept=False)
    return credential
