"""Token endpoint requests and the pure classification of answers."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from grantkeeper import (
    ClientRegistrationInvalid,
    MalformedResponse,
    ProviderError,
    ProviderUnavailable,
    ReauthenticationRequired,
    RefreshOutcomeUnknown,
)
from grantkeeper._token_client import asend_token_request, send_token_request
from grantkeeper._token_endpoint import (
    MAX_RESPONSE_BYTES,
    apply_response,
    parse_token_response,
    refresh_request,
)
from tests.helpers import T0, make_record

RT = "refresh-SECRET-0123456789abcdef"


def parse(status: int, body: Any, headers: dict[str, str] | None = None) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_token_response(status, headers or {}, raw, now=T0, secrets=[RT])


def test_refresh_request_carries_resource_and_public_client_id() -> None:
    request = refresh_request(make_record("a", RT))
    assert request.form == {
        "grant_type": "refresh_token",
        "refresh_token": RT,
        "resource": "https://mcp.example.test/mcp",
        "client_id": "client-1",
    }
    assert RT not in repr(request)


def test_confidential_client_uses_basic_auth_with_form_encoding() -> None:
    record = make_record("a", RT).replace(client_id="id:1", client_secret="s/ecret")
    request = refresh_request(record)
    assert "client_id" not in request.form
    decoded = base64.b64decode(request.headers["Authorization"].split()[1]).decode()
    assert decoded == "id%3A1:s%2Fecret"


def test_success_with_string_expiry_and_rotation() -> None:
    response = parse(
        200,
        {
            "access_token": "A2",
            "token_type": "bearer",
            "expires_in": " 300 ",
            "refresh_token": "R2",
        },
    )
    assert response.expires_in == 300.0 and response.token_type == "Bearer"
    updated = apply_response(make_record("a", RT, subject="s"), response, T0)
    assert updated.refresh_token == "R2"
    assert updated.expires_at is not None and (updated.expires_at - T0).total_seconds() == 300


def test_omitted_refresh_token_scope_and_type_are_carried_or_defaulted() -> None:
    response = parse(200, {"access_token": "A2"})
    record = make_record("a", RT).replace(scope="mcp")
    updated = apply_response(record, response, T0)
    assert (updated.refresh_token, updated.scope, updated.expires_at) == (RT, "mcp", None)


@pytest.mark.parametrize("status", [400, 401])
def test_invalid_grant_is_reauthentication_whatever_the_status(status: int) -> None:
    with pytest.raises(ReauthenticationRequired) as info:
        parse(status, {"error": "invalid_grant", "error_description": f"token {RT} reused"})
    assert RT not in str(info.value) and "reused" in str(info.value)


@pytest.mark.parametrize("error", ["invalid_client", "unauthorized_client"])
def test_client_errors(error: str) -> None:
    with pytest.raises(ClientRegistrationInvalid):
        parse(401, {"error": error})


@pytest.mark.parametrize(
    ("status", "headers", "retry_after"),
    [
        (429, {"retry-after": "12"}, 12.0),
        (503, {"retry-after": "Tue, 24 Nov 2026 12:00:30 GMT"}, 30.0),
        (503, {"retry-after": "soon"}, None),
        (503, {"retry-after": "¹"}, None),  # a Unicode digit, not a number of seconds
        (503, {"retry-after": "9" * 400}, None),
        (400, {}, None),
    ],
)
def test_unavailable_means_nothing_was_spent(
    status: int, headers: dict[str, str], retry_after: float | None
) -> None:
    body = {"error": "temporarily_unavailable"} if status == 400 else b"busy"
    with pytest.raises(ProviderUnavailable) as info:
        parse(status, body, headers)
    assert info.value.retryable and info.value.retry_after == retry_after


@pytest.mark.parametrize("status", [500, 502, 504])
def test_server_errors_leave_the_outcome_unknown(status: int) -> None:
    with pytest.raises(RefreshOutcomeUnknown):
        parse(status, b"<html>")


def test_other_oauth_errors_are_plain_provider_errors() -> None:
    with pytest.raises(ProviderError) as info:
        parse(400, {"error": "invalid_scope"})
    assert type(info.value) is ProviderError and info.value.error == "invalid_scope"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b"\xff\xfe",
        {"token_type": "Bearer"},
        {"access_token": ""},
        {"access_token": 5},
        {"access_token": "a", "token_type": "DPoP"},
        {"access_token": "a", "expires_in": "soon"},
        {"access_token": "a", "expires_in": -1},
        {"access_token": "a", "expires_in": 1e12},
        {"access_token": "a", "expires_in": True},
        {"access_token": "a", "refresh_token": 7},
        {"access_token": "a", "scope": ["mcp"]},
    ],
)
def test_malformed_success_bodies(body: Any) -> None:
    with pytest.raises(MalformedResponse):
        parse(200, body)


Handler = Callable[[httpx.Request], httpx.Response]


def send_both_ways(handler: Handler) -> list[object]:
    """Send one refresh with the sync and the async sender; return what each gave or raised."""
    request = refresh_request(make_record("a", RT))
    outcomes: list[object] = []
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        try:
            outcomes.append(send_token_request(client, request, now=lambda: T0))
        except Exception as exc:
            outcomes.append(exc)

    async def send_async() -> object:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            try:
                return await asend_token_request(client, request, now=lambda: T0)
            except Exception as exc:
                return exc

    outcomes.append(asyncio.run(send_async()))
    return outcomes


def test_sync_and_async_senders_agree_on_a_good_answer() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"access_token": "b", "token_type": "Bearer"})

    sync, async_ = send_both_ways(handler)
    assert sync == async_
    assert getattr(sync, "access_token", None) == "b"


def test_oversized_answer_is_refused_without_reading_it_all() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"{" + b" " * (MAX_RESPONSE_BYTES + 10))

    for outcome in send_both_ways(handler):
        assert isinstance(outcome, MalformedResponse) and "more than" in str(outcome)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx.ConnectError("refused"), ProviderUnavailable),
        (httpx.ConnectTimeout("slow"), ProviderUnavailable),
        (httpx.ReadTimeout("slow"), RefreshOutcomeUnknown),
        (httpx.RemoteProtocolError("reset"), RefreshOutcomeUnknown),
    ],
)
def test_transport_errors_are_classified_by_whether_the_request_was_sent(
    exc: Exception, expected: type[Exception]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    for outcome in send_both_ways(handler):
        assert type(outcome) is expected
