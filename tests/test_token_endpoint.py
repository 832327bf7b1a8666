"""Token endpoint requests and the pure classification of answers."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
from collections.abc import Callable
from datetime import timedelta
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
    UnsupportedTokenType,
)
from grantkeeper._oauth.auth_server_metadata import AuthServerMetadata
from grantkeeper._oauth.token_client import send_token_request
from grantkeeper._oauth.token_endpoint import (
    MAX_RESPONSE_BYTES,
    apply_response,
    new_credential,
    parse_token_response,
    refresh_request,
)
from grantkeeper.testing import sample_record
from tests.fake_authserver import both_ways
from tests.helpers import T0

pytestmark = pytest.mark.portable  # needs no Linux-only server

RT = "refresh-SECRET-0123456789abcdef"


def parse(status: int, body: Any, headers: dict[str, str] | None = None) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_token_response(status, headers or {}, raw, now=T0, secrets=[RT])


def test_refresh_request_carries_resource_and_public_client_id() -> None:
    request = refresh_request(sample_record("a", RT, now=T0, client_id="client-1"))
    assert request.form == {
        "grant_type": "refresh_token",
        "refresh_token": RT,
        "resource": "https://mcp.example.test/mcp",
        "client_id": "client-1",
    }
    assert RT not in repr(request)


def test_confidential_client_uses_basic_auth_with_form_encoding() -> None:
    record = sample_record("a", RT, now=T0).replace(client_id="id:1", client_secret="s/ecret")
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
    updated = apply_response(sample_record("a", RT, subject="s", now=T0), response, T0)
    assert updated.refresh_token == "R2"
    assert updated.expires_at is not None and (updated.expires_at - T0).total_seconds() == 300


def test_omitted_refresh_token_scope_and_type_are_carried_or_defaulted() -> None:
    response = parse(200, {"access_token": "A2"})
    record = sample_record("a", RT, now=T0).replace(scope="mcp")
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
        {"access_token": "a b"},  # cannot go into an Authorization header
        {"access_token": "a\n"},
    ],
)
def test_malformed_success_bodies(body: Any) -> None:
    with pytest.raises(MalformedResponse):
        parse(200, body)


@pytest.mark.parametrize(
    ("named", "kept"),
    [("DPoP", "DPoP"), ("dpop", "DPoP"), ("mac", "mac"), ("N_A", "N_A"), (" x\ty ", "xy")],
)
def test_a_token_of_another_type_is_kept_as_named(named: str, kept: str) -> None:
    """It may have spent A, so it is the answer; the Keeper refuses to present it."""
    response = parse(200, {"access_token": "a", "refresh_token": "rt-B", "token_type": named})
    assert response.token_type == kept and response.refresh_token == "rt-B"


def test_a_first_grant_with_a_token_of_another_type_stores_nothing() -> None:
    """A login's answer spent nothing of ours: a credential no request could use is refused."""
    issuer = "https://as.example.test"
    meta = AuthServerMetadata(issuer, f"{issuer}/authorize", f"{issuer}/token")
    answer = parse(200, {"access_token": "a", "refresh_token": "rt-B", "token_type": "DPoP"})
    with pytest.raises(UnsupportedTokenType) as raised:
        new_credential(
            answer,
            received=T0,
            metadata=meta,
            resource="https://mcp.example.test/mcp",
            scope=None,
            client_id="c",
            client_secret=None,
            auth_method=None,
        )
    assert raised.value.token_type == "DPoP" and "nothing was stored" in str(raised.value)


@pytest.mark.parametrize(
    ("extra", "dropped"),
    [
        ({"scope": ["mcp"]}, ("scope",)),
        ({"scope": 7}, ("scope",)),
        ({"token_type": "BEARER"}, ()),
        ({"token_type": "bEaReR"}, ()),
        ({"token_type": 1}, ("token_type",)),
        ({"token_type": ""}, ("token_type",)),
        ({"expires_in": "soon"}, ("expires_in",)),
        ({"expires_in": -1}, ("expires_in",)),
        ({"expires_in": 1e12}, ("expires_in",)),
        ({"expires_in": True}, ("expires_in",)),
        ({"expires_in": "nan"}, ("expires_in",)),
        ({"expires_in": "inf"}, ("expires_in",)),
        ({"expires_in": 10**400}, ("expires_in",)),  # too large for a float
        ({"expires_in": [60]}, ("expires_in",)),
        ({"id_token": {"sub": "x"}}, ("id_token",)),
        ({"refresh_token": 7}, ("refresh_token",)),
        ({"refresh_token": ""}, ("refresh_token",)),
        ({"refresh_token": ["r"]}, ("refresh_token",)),
        ({"refresh_token": "r t\u00e9"}, ()),  # a form value: any non-empty string is sent
        ({"scope": None, "expires_in": None, "refresh_token": None}, ()),
        (
            {"scope": [], "token_type": "Bearer", "expires_in": "x", "id_token": 1},
            ("expires_in", "scope", "id_token"),
        ),
    ],
)
def test_a_200_that_spent_the_token_is_kept_whatever_its_optional_fields(
    extra: dict[str, Any], dropped: tuple[str, ...]
) -> None:
    response = parse(200, {"access_token": "A2-issued", **extra})
    assert response.access_token == "A2-issued" and response.token_type == "Bearer"
    assert response.dropped == dropped
    assert response.refresh_token_dropped == ("refresh_token" in dropped)
    for name in dropped:
        assert getattr(response, name) is None or name == "token_type"


def test_a_zero_expires_in_states_no_lifetime() -> None:
    response = parse(200, {"access_token": "A2", "expires_in": 0})
    assert response.expires_in is None and response.dropped == ()
    assert apply_response(sample_record("a", RT, now=T0), response, T0).expires_at is None


def test_an_unusable_refresh_token_is_not_replaced_by_the_spent_one() -> None:
    record = sample_record("a", RT, now=T0).replace(scope="mcp")
    omitted = apply_response(record, parse(200, {"access_token": "A2"}), T0)
    assert omitted.refresh_token == RT  # RFC 6749 §6: omitted means the old one stays
    unusable = apply_response(record, parse(200, {"access_token": "A2", "refresh_token": 7}), T0)
    assert unusable.refresh_token is None and unusable.access_token == "A2"
    kept_scope = apply_response(record, parse(200, {"access_token": "A2", "scope": 1}), T0)
    assert kept_scope.scope == "mcp"


def test_expiry_counts_from_when_the_request_was_sent() -> None:
    sent = T0 - timedelta(seconds=40)
    response = dataclasses.replace(
        parse(200, {"access_token": "A2", "expires_in": 300}), requested_at=sent
    )
    updated = apply_response(sample_record("a", RT, now=T0), response, T0)
    assert updated.expires_at == sent + timedelta(seconds=300) and updated.obtained_at == sent
    unsent = apply_response(sample_record("a", RT, now=T0), parse(200, {"access_token": "A2"}), T0)
    assert unsent.obtained_at == T0


def test_the_senders_stamp_the_moment_before_sending() -> None:
    ticks = iter([T0, T0 + timedelta(seconds=5)])
    request = refresh_request(sample_record("a", RT, now=T0))

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"access_token": "b", "expires_in": 60})

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        response = send_token_request(client, request, now=lambda: next(ticks))
    assert response.requested_at == T0


def test_each_dropped_field_is_one_warning_event_naming_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"access_token": "b", "scope": ["x"], "refresh_token": 5, "expires_in": "x"}
        return httpx.Response(200, json=body)

    with caplog.at_level(logging.WARNING, logger="grantkeeper"):
        for outcome in send_both_ways(handler):
            assert getattr(outcome, "access_token", None) == "b"
    events = [r.grantkeeper for r in caplog.records if hasattr(r, "grantkeeper")]
    assert [(e["event"], e["field"]) for e in events] == 2 * [
        ("token_response.field_dropped", "expires_in"),
        ("token_response.field_dropped", "refresh_token"),
        ("token_response.field_dropped", "scope"),
    ]
    assert all(e["grant_type"] == "refresh_token" for e in events)


Handler = Callable[[httpx.Request], httpx.Response]


def send_both_ways(handler: Handler) -> list[object]:
    """Send one refresh with the sync and the async sender; return what each gave or raised."""
    return both_ways(handler, refresh_request(sample_record("a", RT, now=T0)))


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
