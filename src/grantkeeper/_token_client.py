"""Send token endpoint requests over httpx, sync or async, with bounded time and size.

Transport failures are translated by whether the request can have reached the server:
failing to connect means nothing was spent; failing after sending leaves the outcome
unknown. The answer itself is classified by the pure ``parse_token_response``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import datetime

import httpx

from ._errors import MalformedResponse, ProviderUnavailable, RefreshOutcomeUnknown
from ._token_endpoint import MAX_RESPONSE_BYTES, TokenRequest, TokenResponse, parse_token_response

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
"""Bounds one token request. Codex allows 45 s; 30 s keeps a stuck provider from holding
the credential lock much longer than a user will wait."""


@contextlib.contextmanager
def _translated(url: str) -> Iterator[None]:
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        raise ProviderUnavailable(
            f"could not connect to the token endpoint {url} ({type(exc).__name__})"
        ) from None
    except httpx.TransportError as exc:
        # Read/write timeouts, resets, protocol errors: the request may have been processed.
        raise RefreshOutcomeUnknown(
            f"no answer from the token endpoint {url} ({type(exc).__name__}); "
            "the request may have been processed"
        ) from None


def _too_large(url: str) -> MalformedResponse:
    return MalformedResponse(f"the token endpoint {url} sent more than {MAX_RESPONSE_BYTES} bytes")


def send_token_request(
    client: httpx.Client,
    request: TokenRequest,
    *,
    now: Callable[[], datetime],
    timeouts: httpx.Timeout = DEFAULT_TIMEOUT,
) -> TokenResponse:
    """POST ``request`` with ``client`` and classify the answer."""
    http_request = request.to_httpx()
    http_request.extensions["timeout"] = timeouts.as_dict()
    with _translated(request.url):
        response = client.send(http_request, stream=True, follow_redirects=False)
        try:
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    raise _too_large(request.url)
        finally:
            response.close()
    return parse_token_response(
        response.status_code,
        response.headers,
        bytes(body),
        now=now(),
        secrets=request.form.values(),
    )


async def asend_token_request(
    client: httpx.AsyncClient,
    request: TokenRequest,
    *,
    now: Callable[[], datetime],
    timeouts: httpx.Timeout = DEFAULT_TIMEOUT,
) -> TokenResponse:
    """POST ``request`` with an async ``client`` and classify the answer."""
    http_request = request.to_httpx()
    http_request.extensions["timeout"] = timeouts.as_dict()
    with _translated(request.url):
        response = await client.send(http_request, stream=True, follow_redirects=False)
        try:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    raise _too_large(request.url)
        finally:
            await response.aclose()
    return parse_token_response(
        response.status_code,
        response.headers,
        bytes(body),
        now=now(),
        secrets=request.form.values(),
    )
