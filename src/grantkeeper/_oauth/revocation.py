"""Token revocation (RFC 7009): build the request and read the answer, kept pure.

Client authentication is the token endpoint's (RFC 7009 §2.1), so a public client sends
its ``client_id`` and a confidential one its secret, as at refresh.
"""

from __future__ import annotations

from typing import Literal

from .._errors import ProtocolError
from .._record import Credential
from .token_endpoint import TokenRequest, client_auth

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
