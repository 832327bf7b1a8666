"""Token revocation (RFC 7009): build the request, read the answer, and send them.

Client authentication is the token endpoint's (RFC 7009 §2.1), so a public client sends
its ``client_id`` and a confidential one its secret, as at refresh. Each token goes to the
revocation endpoint of the issuer that issued it (the record's own), never to another.
"""

from __future__ import annotations

from typing import Literal

import httpx

from .._errors import GrantkeeperError, ProtocolError
from .._network import failure
from .._record import Credential
from .token_endpoint import TokenRequest, client_auth
from .urls import SENDING_FAILURES

REVOCATION_TIMEOUT = httpx.Timeout(15.0, connect=10.0)
"""Bounds each revocation request (a logout's runs while the credential's lock is held)."""

TokenKind = Literal["refresh_token", "access_token"]


def revocation_request(record: Credential, kind: TokenKind) -> TokenRequest | None:
    """The revocation POST for ``record``'s token of ``kind``, or ``None`` if there is none."""
    token = record.refresh_token if kind == "refresh_token" else record.access_token
    if not token or not record.revocation_endpoint:
        return None
    form = {"token": token, "token_type_hint": kind}
    headers = client_auth(
        form, record.client_id, record.client_secret, record.token_endpoint_auth_method
    )
    return TokenRequest(record.revocation_endpoint, form, headers)


def check_revocation_response(status: int, kind: TokenKind) -> None:
    """Raise :class:`ProtocolError` unless the server confirmed (RFC 7009 §2.2: 200)."""
    if status == 200:
        return
    if status == 503:
        raise ProtocolError(f"the revocation endpoint is unavailable (HTTP 503): {kind} kept")
    raise ProtocolError(f"the revocation endpoint refused the {kind} (HTTP {status})")


def revoke_tokens(
    http: httpx.Client, record: Credential, kinds: tuple[TokenKind, ...]
) -> tuple[tuple[TokenKind, ...], tuple[str, ...]]:
    """Revoke ``record``'s tokens of ``kinds``, in order, at its own revocation endpoint.

    Returns the kinds the server confirmed and, one line each, why the others failed. A
    redirect is never followed (it could carry a token to another host), and a server that
    cannot be reached is not tried again for the next kind.
    """
    revoked: list[TokenKind] = []
    problems: list[str] = []
    for number, kind in enumerate(kinds):
        try:
            request = revocation_request(record, kind)
            if request is None:
                continue
            http_request = request.to_httpx()
            http_request.extensions["timeout"] = REVOCATION_TIMEOUT.as_dict()
            response = http.send(http_request, follow_redirects=False)
            check_revocation_response(response.status_code, kind)
        except httpx.TransportError as exc:
            problems += [f"{k} not revoked: {failure(exc)}" for k in kinds[number:]]
            break
        except SENDING_FAILURES as exc:
            problems.append(f"{kind} not revoked: {failure(exc)}")
        except GrantkeeperError as exc:
            problems.append(exc.message)
        else:
            revoked.append(kind)
    return tuple(revoked), tuple(problems)
