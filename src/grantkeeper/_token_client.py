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
            f"could not connect to the token endpoint {url} ({type(exc).__name__})", sent=False
        ) from None
    except httpx.TransportError as exc:
        # Read/write timeouts, resets, protocol errors: the request may have been processed.
        raise RefreshOutcomeUnknown(
            f"no answer from the token endpoint {url} ({type(exc).__name__}); "
            "the request may have been processed"
        ) from None


class _Body:
    """Collects a response body, refusing more than ``MAX_RESPONSE_BYTES``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.data = bytearray()

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > MAX_RESPONSE_BYTES:
            raise MalformedResponse(
                f"the token endpoint {self.url} sent more than {MAX_RESPONSE_BYTES} bytes"
            )


def _prepared(request: TokenRequest, timeouts: httpx.Timeout) -> httpx.Request:
    http_request = request.to_httpx()
    http_request.extensions["timeout"] = timeouts.as_dict()
    return http_request


def _classified(
    request: TokenRequest, response: httpx.Response, body: _Body, now: Callable[[], datetime]
) -> TokenResponse:
    return parse_token_response(
        response.status_code,
        response.headers,
        bytes(body.data),
        now=now(),
        secrets=request.form.values(),
    )


# The two senders differ only in how they await the body; preparation, the size bound,
# error translation and classification are shared above.


def send_token_request(
    client: httpx.Client,
    request: TokenRequest,
    *,
    now: Callable[[], datetime],
    timeouts: httpx.Timeout = DEFAULT_TIMEOUT,
) -> TokenResponse:
    """POST ``request`` with ``client`` and classify the answer."""
    body = _Body(request.url)
    with _translated(request.url):
        response = client.send(_prepared(request, timeouts), stream=True, follow_redirects=False)
        try:
            for chunk in response.iter_bytes():
                body.add(chunk)
        finally:
            response.close()
    return _classified(request, response, body, now)


async def asend_token_request(
    client: httpx.AsyncClient,
    request: TokenRequest,
    *,
    now: Callable[[], datetime],
    timeouts: httpx.Timeout = DEFAULT_TIMEOUT,
) -> TokenResponse:
    """POST ``request`` with an async ``client`` and classify the answer."""
    body = _Body(request.url)
    with _translated(request.url):
        response = await client.send(
            _prepared(request, timeouts), stream=True, follow_redirects=False
        )
        try:
            async for chunk in response.aiter_bytes():
                body.add(chunk)
        finally:
            await response.aclose()
    return _classified(request, response, body, now)
