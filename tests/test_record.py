"""The credential record: JSON round trip, legacy layouts, malformed input, redaction."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from grantkeeper import Credential, CredentialKey, RefreshIntent, StoreCorrupt
from grantkeeper._record import (
    BEARER_SCHEMA,
    CLIENT_CREDENTIALS,
    SCHEMA_VERSION,
    record_from_json,
    record_to_json,
)
from grantkeeper.testing import sample_record
from tests.helpers import T0

pytestmark = pytest.mark.portable  # needs no Linux-only server

SECRET_AT = "access-SECRET-0123456789abcdef"
SECRET_RT = "refresh-SECRET-0123456789abcdef"


def test_round_trip_keeps_every_field() -> None:
    record = sample_record(SECRET_AT, SECRET_RT, now=T0).replace(
        scope="mcp offline_access",
        client_secret="client-SECRET-0123456789",
        token_endpoint_auth_method="private_key_jwt",
        revocation_endpoint="http://127.0.0.1:9/revoke",
        reauth_reason="invalid_grant",
        intent=RefreshIntent("f" * 16, 42, "host", T0, 2, "unknown", "holder"),
        rejected_refresh_at=T0,
        grant=CLIENT_CREDENTIALS,
        client_key_source="file:/etc/grantkeeper/client.pem",
        scope_requested="mcp",
        dpop_key='{"kty":"OKP","crv":"Ed25519","x":"x","d":"d","alg":"EdDSA"}',
        workload_source="file:/var/run/secrets/tokens/mcp",
        resource_indicator=False,
        token_type="DPoP",
    )
    unset = [f.name for f in dataclasses.fields(record) if getattr(record, f.name) is None]
    assert not unset, f"set every field, so that each one's round trip is checked: {unset}"
    defaults = [
        f.name
        for f in dataclasses.fields(record)
        if f.default is not dataclasses.MISSING
        and f.default is not None
        and getattr(record, f.name) == f.default
    ]
    assert not defaults, f"set every field off its default, so its round trip shows: {defaults}"
    assert record_from_json(json.loads(json.dumps(record_to_json(record)))) == record


def test_expiry_is_stored_as_absolute_utc() -> None:
    data = record_to_json(sample_record(SECRET_AT, SECRET_RT, lifetime=90, now=T0))
    assert data["expires_at"] == "2026-11-24T12:01:30Z"
    assert data["schema"] == 1


def legacy(**fields: Any) -> dict[str, Any]:
    """A record as an older layout stored it: access token ``a`` for https://x.test/mcp,
    with ``fields`` added."""
    return {"access_token": "a", "resource": "https://x.test/mcp", **fields}


def test_legacy_expires_in_with_receive_time_gets_an_absolute_expiry() -> None:
    received = "2026-11-24T12:00:00Z"
    data = legacy(expires_in="300", received_at=received, client_id="legacy-client")
    record = record_from_json(data)
    assert record.expires_at == T0 + timedelta(seconds=300)
    assert record.client_id == "legacy-client"


def test_legacy_expires_in_alone_means_unknown_expiry() -> None:
    record = record_from_json(legacy(expires_in=300))
    assert record.expires_at is None


def test_epoch_milliseconds_as_codex_stores_them() -> None:
    millis = int(T0.timestamp() * 1000)
    record = record_from_json({"access_token": "a", "resource": "r", "expires_at": millis})
    assert record.expires_at == T0


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {"resource": "r"},
        {"access_token": 5, "resource": "r"},
        {"access_token": "a"},
        {"access_token": "a", "resource": "r", "expires_at": "not-a-time-" + SECRET_RT},
        {"access_token": "a", "resource": "r", "expires_at": float("nan")},
        {"access_token": "a", "resource": "r", "expires_at": True},
        {"access_token": "a", "resource": "r", "refresh_token": ["x"]},
        {"access_token": "a", "resource": "r", "client": "nope"},
        {"access_token": "a", "resource": "r", "intent": {"pid": 1}},
        {"access_token": "a", "resource": "r", "intent": "x"},
        {"access_token": "a", "resource": "r", "schema": "1"},
        {
            "access_token": "a",
            "resource": "r",
            "expires_in": SECRET_RT,
            "obtained_at": "2026-11-24T12:00:00Z",
        },
    ],
)
def test_malformed_records_raise_store_corrupt_without_secrets(data: Any) -> None:
    with pytest.raises(StoreCorrupt) as info:
        record_from_json(data, key="https://x.test/mcp")
    assert SECRET_RT not in str(info.value)
    assert info.value.key == "https://x.test/mcp"


def test_newer_schema_is_refused_not_misread() -> None:
    with pytest.raises(StoreCorrupt, match="newer grantkeeper"):
        record_from_json({"schema": 99, "access_token": "a", "resource": "r"})


def test_repr_and_str_show_only_a_suffix() -> None:
    record = sample_record(SECRET_AT, SECRET_RT, now=T0).replace(
        client_secret="client-SECRET-0123456789"
    )
    for text in (repr(record), str(record), f"{record}", repr([record])):
        assert "SECRET" not in text
    assert "…cdef" in repr(record)


def test_keys_canonicalise_spellings_of_one_url() -> None:
    a = CredentialKey.for_server("HTTPS://Example.COM:443/mcp#frag")
    b = CredentialKey.for_server("https://example.com/mcp")
    assert a == b and str(a) == "https://example.com/mcp"
    assert CredentialKey.for_server("http://127.0.0.1:8080").server_url == "http://127.0.0.1:8080/"
    assert str(CredentialKey.for_server("https://e.com/m", "work")) == "https://e.com/m#work"
    with pytest.raises(ValueError):
        CredentialKey.for_server("ftp://example.com")


def test_same_identity_compares_issuer_and_resource() -> None:
    record = sample_record("a", "r", now=T0)
    assert record.same_identity(record.replace(access_token="b", subject="bob"))
    assert not record.same_identity(record.replace(issuer="https://other.test"))
    assert not isinstance(record, dict) and isinstance(record, Credential)
    assert datetime.now(UTC) > T0 - timedelta(days=1)


def test_a_record_whose_token_is_not_bearer_is_refused_by_older_versions() -> None:
    """Versions that read only layout 1 ignore ``token_type`` and would send a DPoP token as
    Bearer: such a record is written as layout 2, which they refuse. Bearer records stay 1."""
    bearer = sample_record("at-0123456789", "rt-0123456789", now=T0)
    dpop = bearer.replace(token_type="DPoP")
    assert record_to_json(bearer)["schema"] == BEARER_SCHEMA == 1
    assert record_to_json(dpop)["schema"] == 2
    assert record_from_json(record_to_json(dpop)) == dpop
    assert record_from_json(record_to_json(bearer)) == bearer


def test_a_record_that_never_sends_resource_is_refused_by_older_versions() -> None:
    """Versions that read up to layout 2 ignore ``resource_indicator``: they would send
    ``resource`` and write the record back without the opt-out, so it is written as 3."""
    opted_out = sample_record("at-0123456789", "rt-0123456789", now=T0).replace(
        resource_indicator=False
    )
    data = record_to_json(opted_out)
    assert data["schema"] == SCHEMA_VERSION == 3
    assert record_from_json(data) == opted_out
    assert record_to_json(opted_out.replace(token_type="DPoP"))["schema"] == 3
    # What a version reading up to 2 does with it: refuses it, typed.
    with pytest.raises(StoreCorrupt, match="schema 4"):
        record_from_json({**data, "schema": 4})
