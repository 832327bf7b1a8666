"""Send token endpoint requests over httpx, sync or async, bounded in time and size.

Transport failures are translated by whether the request can have reached the server:
failing to connect means nothing was spent; failing after sending leaves the outcome
unknown. The answer itself is classified by the pure ``parse_token_response``; this module
logs what it dropped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from datetime import datetime

import httpx

from .._errors import MalformedResponse, ProviderError, ProviderUnavailable, RefreshOutcomeUnknown
from .._network import failure
from .._observe.log import event
from .._redact import scrub
from .._rules import UNSENDABLE_FAILURES, Outcome, transport_outcome
from .dpop import TOKEN_NONCES, token_endpoint_wants_nonce
from .token_endpoint import MAX_RESPONSE_BYTES, TokenRequest, TokenResponse, parse_token_response

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
"""Bounds each phase of one token request. Codex allows 45 s; 30 s keeps a stuck provider
from holding the credential lock much longer than a user will wait."""

DEFAULT_DEADLINE = 30.0
"""Seconds the whole provider call may take, however slowly the server answers. Per-read
timeouts alone let a server that drips a byte at a time hold the credential lock, and every
process queued on it, without end; the store's lock timeout (60 s) counts on a holder
keeping it for one 30 s provider call plus two writes. Each wait for bytes is cut to the
time left and the body is checked between chunks; httpx has no hook between the reads of
the status line and headers, so a server dripping those is bounded only by httpcore's
100 KiB header limit."""

_MIN_TIMEOUT = 0.001
"""A phase timeout never drops to zero, which a socket reads as "do not block" rather than
"no time left"; the deadline check after it reports the exhausted deadline."""


class _Deadline:
    """The total time one provider call may take, on the monotonic clock."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._start = time.monotonic()

    def remaining(self) -> float | None:
        if self.seconds is None:
            return None
        return self.seconds - (time.monotonic() - self._start)

    def passed(self) -> bool:
        remaining = self.remaining()
        return remaining is not None and remaining <= 0

    def shrink(self, limit: float | None) -> float | None:
        """Return ``limit`` cut to the time left."""
        remaining = self.remaining()
        if remaining is None:
            return limit
        left = max(remaining, _MIN_TIMEOUT)
        return left if limit is None else min(limit, left)


class _PhaseTimeouts(dict[str, float | None]):
    """httpx's timeout extension, each phase cut to the deadline's time left as it starts.

    httpcore looks up the pool, connect, write and read timeouts as each phase begins, so a
    slow connect leaves less for the answer. The stored values, shrunk once at the start,
    still bound a transport that copies the mapping instead.
    """

    def __init__(self, timeouts: httpx.Timeout, deadline: _Deadline) -> None:
        super().__init__({k: deadline.shrink(v) for k, v in timeouts.as_dict().items()})
        self._limits = timeouts.as_dict()
        self._deadline = deadline

    def get(self, phase: str, default: float | None = None) -> float | None:  # type: ignore[override]
        if phase not in self._limits:
            return default
        return self._deadline.shrink(self._limits[phase])

    def __getitem__(self, phase: str) -> float | None:
        return self._deadline.shrink(self._limits[phase])


def _scrubbed(request: TokenRequest, message: str) -> str:
    # Our own messages name only the URL and an exception class, but they are errors built
    # from a request that carries secrets: they pass the same scrub as the provider's text.
    return scrub(message, request.secret_values(), len(message))


def _unknown(request: TokenRequest, why: str) -> RefreshOutcomeUnknown:
    return RefreshOutcomeUnknown(
        _scrubbed(
            request,
            f"no usable answer from the token endpoint {request.url} ({why}); "
            "the request may have been processed",
        )
    )


def _deadline_passed(deadline: _Deadline) -> str:
    return f"the {deadline.seconds:g} s deadline for the provider call passed"


@contextlib.contextmanager
def _translated(request: TokenRequest, deadline: _Deadline) -> Iterator[None]:
    try:
        yield
    except (httpx.RequestError, httpx.StreamError) as exc:
        why = _deadline_passed(deadline) if deadline.passed() else failure(exc)
        outcome = transport_outcome(exc)
        if outcome is Outcome.NOT_SENT:
            raise ProviderUnavailable(
                _scrubbed(
                    request, f"could not connect to the token endpoint {request.url} ({why})"
                ),
                sent=False,
            ) from None
        if outcome is Outcome.REFUSED:
            # Refused before sending, and trying again cannot help.
            raise ProviderError(
                _scrubbed(request, f"cannot send to the token endpoint {request.url} ({why})")
            ) from None
        # Read/write timeouts, resets, protocol errors, an undecodable body, and anything
        # else httpx raises once the request may be on the wire: it may have been processed.
        raise _unknown(request, why) from None


class _Body:
    """Collects a response body, refusing more than ``MAX_RESPONSE_BYTES`` or the deadline."""

    def __init__(self, request: TokenRequest, deadline: _Deadline) -> None:
        self.request = request
        self.deadline = deadline
        self.data = bytearray()

    def add(self, chunk: bytes, response: httpx.Response) -> None:
        self.data += chunk
        if len(self.data) > MAX_RESPONSE_BYTES:
            raise MalformedResponse(
                _scrubbed(
                    self.request,
                    f"the token endpoint {self.request.url} sent more than "
                    f"{MAX_RESPONSE_BYTES} bytes",
                )
            )
        # Checked between chunks: a server dripping bytes never lets a read time out. An
        # answer already complete is kept, however late: it may have spent the token.
        if self.deadline.passed() and not _complete(response, len(self.data)):
            raise _unknown(self.request, _deadline_passed(self.deadline))


def _complete(response: httpx.Response, decoded: int) -> bool:
    """Whether the whole body announced by ``Content-Length`` is in."""
    length = response.headers.get("content-length", "")
    if not (length.isascii() and length.isdigit()):
        return False
    # Bytes off the wire; without a content coding the decoded count is the same, and it
    # is the only count for a body a transport handed over already read.
    received = response.num_bytes_downloaded
    if "content-encoding" not in response.headers:
        received = max(received, decoded)
    return received >= int(length)


def _prepared(request: TokenRequest, timeouts: httpx.Timeout, deadline: _Deadline) -> httpx.Request:
    nonce = TOKEN_NONCES.get(request.url) if request.dpop is not None else None
    try:
        http_request = request.to_httpx(nonce=nonce)
    except UNSENDABLE_FAILURES as exc:  # the outcome table's "refused": nothing left
        raise ProviderError(
            _scrubbed(request, f"the token endpoint URL is invalid ({type(exc).__name__})")
        ) from None
    # Bounds each wait for bytes, the first byte of the answer included; the check between
    # chunks bounds a body that trickles in.
    http_request.extensions["timeout"] = _PhaseTimeouts(timeouts, deadline)
    return http_request


def _classified(
    request: TokenRequest,
    response: httpx.Response,
    body: _Body,
    now: Callable[[], datetime],
    requested_at: datetime,
) -> TokenResponse:
    tokens = parse_token_response(
        response.status_code,
        response.headers,
        bytes(body.data),
        now=now(),
        secrets=request.secret_values(),
    )
    for name in tokens.dropped:
        event(
            logging.WARNING,
            "token_response.field_dropped",
            field=name,
            grant_type=request.form.get("grant_type"),
            endpoint=request.url,
        )
    return dataclasses.replace(tokens, requested_at=requested_at)


def _send_again(request: TokenRequest, response: httpx.Response, body: _Body, attempt: int) -> bool:
    """Whether to send a DPoP request once more, with the nonce the server just asked for.

    A ``use_dpop_nonce`` answer processed nothing (RFC 9449 §8): the grant is unspent. Any
    answer's nonce is kept for the next proof to that server.
    """
    if request.dpop is None:
        return False
    TOKEN_NONCES.update(request.url, response.headers)
    return attempt == 0 and token_endpoint_wants_nonce(
        response.status_code, response.headers, bytes(body.data)
    )


# The two senders differ only in how they await the response; preparation, the deadline,
# the size bound, nonce retries, error translation and classification are shared above.


def send_token_request(
    client: httpx.Client,
    request: TokenRequest,
    *,
    now: Callable[[], datetime],
    timeouts: httpx.Timeout = DEFAULT_TIMEOUT,
    deadline: float | None = DEFAULT_DEADLINE,
) -> TokenResponse:
    """POST ``request`` with ``client`` within ``deadline`` seconds; classify the answer."""
    bound = _Deadline(deadline)
    for attempt in range(2):
        body = _Body(request, bound)
        with _translated(request, bound):
            prepared = _prepared(request, timeouts, bound)
            requested_at = now()
            response = client.send(prepared, stream=True, follow_redirects=False)
            try:
                for chunk in response.iter_bytes():
                    body.add(chunk, response)
            finally:
                response.close()
        if not _send_again(request, response, body, attempt):
            break
    return _classified(request, response, body, now, requested_at)


async def asend_token_request(
    client: httpx.AsyncClient,
    request: TokenRequest,
    *,
    now: Callable[[], datetime],
    timeouts: httpx.Timeout = DEFAULT_TIMEOUT,
    deadline: float | None = DEFAULT_DEADLINE,
) -> TokenResponse:
    """POST ``request`` with an async ``client`` within ``deadline`` seconds; classify it."""
    bound = _Deadline(deadline)
    for attempt in range(2):
        body = _Body(request, bound)
        with _translated(request, bound):
            prepared = _prepared(request, timeouts, bound)
            requested_at = now()
            response = await client.send(prepared, stream=True, follow_redirects=False)
            try:
                async for chunk in response.aiter_bytes():
                    body.add(chunk, response)
            finally:
                await response.aclose()
        if not _send_again(request, response, body, attempt):
            break
    return _classified(request, response, body, now, requested_at)
