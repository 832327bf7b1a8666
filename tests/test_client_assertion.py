"""private_key_jwt: the client assertion is an ES256 JWT for the issuer, signed with a key
read from a file or the environment, and the key never shows in an error or a record."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from grantkeeper import ServerConfigError
from grantkeeper._oauth.client_assertion import client_assertion, key_source
from grantkeeper._record import CLIENT_CREDENTIALS, record_from_json, record_to_json
from grantkeeper.testing import sample_record

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ISSUER = "https://auth.example.com"


def b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def test_a_client_assertion_is_a_valid_es256_jwt_for_the_issuer(
    ec_key: tuple[ec.EllipticCurvePrivateKey, Path],
) -> None:
    key, path = ec_key
    token = client_assertion(key_source(file=str(path)), client_id="m", audience=ISSUER, now=NOW)
    header, claims, signature = token.split(".")
    assert json.loads(b64decode(header)) == {"alg": "ES256", "typ": "JWT"}
    body = json.loads(b64decode(claims))
    assert body["iss"] == body["sub"] == "m"
    assert body["aud"] == ISSUER
    assert body["exp"] - body["iat"] == 60 and body["iat"] == int(NOW.timestamp())
    assert len(body["jti"]) >= 16
    raw = b64decode(signature)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    key.public_key().verify(der, f"{header}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))
    second = client_assertion(key_source(file=str(path)), client_id="m", audience=ISSUER, now=NOW)
    assert json.loads(b64decode(second.split(".")[1]))["jti"] != body["jti"]


def test_the_key_never_appears_in_errors_or_records(
    ec_key: tuple[ec.EllipticCurvePrivateKey, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, path = ec_key
    pem = path.read_text()
    broken = pem.replace("A", "B", 5)
    monkeypatch.setenv("GK_TEST_KEY", broken)
    with pytest.raises(ServerConfigError) as caught:
        client_assertion(key_source(env="GK_TEST_KEY"), client_id="m", audience=ISSUER, now=NOW)
    assert "PRIVATE KEY" not in str(caught.value) and broken[40:80] not in str(caught.value)
    record = sample_record(
        "cc-access-1",
        None,
        grant=CLIENT_CREDENTIALS,
        client_id="machine",
        scope_requested="mcp",
        token_endpoint_auth_method="private_key_jwt",
        client_key_source=key_source(file=str(path)),
    )
    stored = json.dumps(record_to_json(record))
    assert pem[40:80] not in stored and "PRIVATE KEY" not in stored
    assert pem[40:80] not in repr(record)
    assert record_from_json(json.loads(stored)) == record


def test_a_missing_key_env_is_a_typed_error() -> None:
    with pytest.raises(ServerConfigError, match="GK_NO_SUCH_KEY"):
        client_assertion(key_source(env="GK_NO_SUCH_KEY"), client_id="m", audience=ISSUER, now=NOW)
