"""The token client's outcome classification, row by row, and its total deadline."""

from __future__ import annotations

import http.server
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from grantkeeper import (
    ClientRegistrationInvalid,
    GrantkeeperError,
    MalformedResponse,
    ProviderError,
    ProviderUnavailable,
    ReauthenticationRequired,
    RefreshOutcomeUnknown,
)
from grantkeeper._oauth.token_client import (
    DEFAULT_DEADLINE,
)
from grantkeeper._oauth.token_endpoint import TokenRequest, refresh_request
from grantkeeper.testing import sample_record
from tests.fake_authserver import Handler, both_ways
from tests.helpers import T0
from tests.loopback_endpoint import Received, loopback_endpoint

RT = "refresh-SECRET-0123456789abcdef"


def request_to(url: str = "https://as.example.test/token") -> TokenRequest:
    return refresh_request(sample_record("a", RT, token_endpoint=url, now=T0))


# -- transport failures: was the request sent? -------------------------------------------

NOT_SENT = (ProviderUnavailable, False)
REFUSED = (ProviderError, None)  # refused before sending; retrying cannot help
UNKNOWN = (RefreshOutcomeUnknown, None)

TRANSPORT_ROWS: dict[type[Exception], tuple[type[GrantkeeperError], bool | None]] = {
    httpx.ConnectError: NOT_SENT,  # refused, DNS
    httpx.ConnectTimeout: NOT_SENT,
    httpx.PoolTimeout: NOT_SENT,
    httpx.ProxyError: NOT_SENT,  # the tunnel was refused before the request went through it
    httpx.UnsupportedProtocol: REFUSED,
    httpx.ReadTimeout: UNKNOWN,
    httpx.WriteTimeout: UNKNOWN,
    httpx.TimeoutException: UNKNOWN,
    httpx.ReadError: UNKNOWN,  # reset after sending
    httpx.WriteError: UNKNOWN,
    httpx.CloseError: UNKNOWN,
    httpx.NetworkError: UNKNOWN,
    httpx.LocalProtocolError: UNKNOWN,
    httpx.RemoteProtocolError: UNKNOWN,
    httpx.ProtocolError: UNKNOWN,
    httpx.TransportError: UNKNOWN,
    httpx.DecodingError: UNKNOWN,  # an undecodable body
    httpx.TooManyRedirects: UNKNOWN,
    httpx.RequestError: UNKNOWN,
    httpx.StreamError: UNKNOWN,
    httpx.StreamConsumed: UNKNOWN,
    httpx.StreamClosed: UNKNOWN,
    httpx.ResponseNotRead: UNKNOWN,
    httpx.RequestNotRead: UNKNOWN,
}


def test_the_table_has_a_row_for_every_error_httpx_raises_while_sending() -> None:
    raised = {
        value
        for value in vars(httpx).values()
        if isinstance(value, type) and issubclass(value, httpx.RequestError | httpx.StreamError)
    }
    assert raised == set(TRANSPORT_ROWS)


def instance(kind: type[Exception]) -> Exception:
    try:
        return kind("injected")
    except TypeError:  # the StreamError family takes no message
        return kind()


@pytest.mark.parametrize("kind", list(TRANSPORT_ROWS), ids=lambda kind: kind.__name__)
def test_each_transport_failure_is_classified_by_whether_it_was_sent(
    kind: type[Exception],
) -> None:
    expected, sent = TRANSPORT_ROWS[kind]

    def handler(request: httpx.Request) -> httpx.Response:
        raise instance(kind)

    for outcome in both_ways(handler, request_to()):
        assert type(outcome) is expected, outcome
        if sent is not None:
            assert getattr(outcome, "sent", None) is sent


def test_a_refused_loopback_connection_was_not_sent() -> None:
    with socket.socket() as unlistened:
        unlistened.bind(("127.0.0.1", 0))  # bound, never listening: connect is refused
        url = f"http://127.0.0.1:{unlistened.getsockname()[1]}/token"
        for outcome in both_ways(None, request_to(url)):
            assert isinstance(outcome, ProviderUnavailable) and outcome.sent is False


def test_an_invalid_url_is_a_typed_error_before_sending() -> None:
    for outcome in both_ways(None, request_to("http://[::1/token")):
        assert type(outcome) is ProviderError


def test_a_body_that_does_not_decode_leaves_the_outcome_unknown() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        # The gzip decoder fails while the body is read: the request was processed or not.
        return httpx.Response(200, headers={"content-encoding": "gzip"}, content=b"not gzip")

    for outcome in both_ways(handler, request_to()):
        assert type(outcome) is RefreshOutcomeUnknown, outcome


# -- answers: what the provider said ---------------------------------------------------


def answer(status: int, body: object, headers: dict[str, str] | None = None) -> Handler:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return lambda request: httpx.Response(status, content=content, headers=headers)


STATUS_ROWS: list[tuple[str, Handler, type[GrantkeeperError], bool | None]] = [
    ("400-invalid_grant", answer(400, {"error": "invalid_grant"}), ReauthenticationRequired, None),
    ("401-invalid_grant", answer(401, {"error": "invalid_grant"}), ReauthenticationRequired, None),
    (
        "401-invalid_client",
        answer(401, {"error": "invalid_client"}),
        ClientRegistrationInvalid,
        None,
    ),
    (
        "400-unauthorized_client",
        answer(400, {"error": "unauthorized_client"}),
        ClientRegistrationInvalid,
        None,
    ),
    ("429", answer(429, b""), ProviderUnavailable, True),
    ("429-retry-after", answer(429, b"", {"retry-after": "2"}), ProviderUnavailable, True),
    ("503", answer(503, b"busy"), ProviderUnavailable, True),
    ("503-retry-after", answer(503, b"", {"retry-after": "2"}), ProviderUnavailable, True),
    (
        "400-temporarily_unavailable",
        answer(400, {"error": "temporarily_unavailable"}),
        ProviderUnavailable,
        True,
    ),
    ("500", answer(500, {"error": "server_error"}), RefreshOutcomeUnknown, None),
    ("502", answer(502, b"<html>bad gateway"), RefreshOutcomeUnknown, None),
    ("504", answer(504, b""), RefreshOutcomeUnknown, None),
    ("400-invalid_scope", answer(400, {"error": "invalid_scope"}), ProviderError, None),
    ("400-invalid_request", answer(400, {"error": "invalid_request"}), ProviderError, None),
    # Not a token response: the Keeper keeps the intent, as for an unknown outcome.
    ("200-not-json", answer(200, b"<html>"), MalformedResponse, None),
]


@pytest.mark.parametrize(
    ("handler", "expected", "sent"),
    [row[1:] for row in STATUS_ROWS],
    ids=[row[0] for row in STATUS_ROWS],
)
def test_each_provider_answer_is_classified(
    handler: Handler, expected: type[GrantkeeperError], sent: bool | None
) -> None:
    for outcome in both_ways(handler, request_to()):
        assert type(outcome) is expected, outcome
        if sent is not None:
            assert getattr(outcome, "sent", None) is sent


# -- the total deadline ------------------------------------------------------------------


def test_the_default_deadline_is_thirty_seconds() -> None:
    assert DEFAULT_DEADLINE == 30.0


def drip(received: Received, handler: http.server.BaseHTTPRequestHandler) -> None:
    """Answer headers at once, then the body one byte per 0.2 s (the fault itself)."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    handler.wfile.flush()
    for _ in range(1000):  # ends early, on a broken pipe, once the client hangs up
        handler.wfile.write(b" ")
        handler.wfile.flush()
        time.sleep(0.2)  # the fault's pace, not a synchronisation


def stall(received: Received, handler: http.server.BaseHTTPRequestHandler) -> None:
    """Never answer: wait until the client hangs up."""
    handler.connection.recv(1)


@pytest.mark.parametrize("fault", [drip, stall])
def test_a_slow_server_cannot_hold_the_call_past_its_deadline(
    fault: Callable[[Received, http.server.BaseHTTPRequestHandler], None],
) -> None:
    # Every phase timeout stays 30 s: only the total deadline can end these calls.
    with loopback_endpoint(fault) as url:
        for outcome in both_ways(None, request_to(url), deadline=1.0):
            assert type(outcome) is RefreshOutcomeUnknown, outcome
            assert "deadline" in outcome.message


class Chunks(httpx.SyncByteStream, httpx.AsyncByteStream):
    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks

    async def __aiter__(self) -> Any:
        for chunk in self.chunks:
            yield chunk


def test_an_answer_complete_when_the_deadline_passes_is_kept() -> None:
    # A zero deadline has passed by the first chunk. A whole answer may have spent the
    # token, so it is kept; one still arriving is not waited for.
    body = json.dumps({"access_token": "late-but-whole"}).encode()

    def whole(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body)

    def unfinished(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Chunks(body[:5], body[5:]))

    for outcome in both_ways(whole, request_to(), deadline=0.0):
        assert getattr(outcome, "access_token", None) == "late-but-whole"
    for outcome in both_ways(unfinished, request_to(), deadline=0.0):
        assert type(outcome) is RefreshOutcomeUnknown and "deadline" in outcome.message


def test_no_deadline_means_only_the_phase_timeouts_bound_the_call() -> None:
    body = json.dumps({"access_token": "b"}).encode()

    def chunked(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Chunks(body[:5], body[5:]))

    for outcome in both_ways(chunked, request_to(), deadline=None):
        assert getattr(outcome, "access_token", None) == "b"
