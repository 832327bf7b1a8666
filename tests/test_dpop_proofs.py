"""DPoP (RFC 9449) without servers: the key, its proofs, nonces and the typed errors.

Proofs are checked with joserfc by the same checker the harness MCP server runs
(``harness/dpop_check.py``); the real servers are in ``tests/test_dpop.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from grantkeeper import (
    CredentialKey,
    FileStore,
    HttpxAuth,
    Keeper,
    ProtocolError,
    ProviderError,
    RetryRequired,
    ServerConfigError,
    StoreCorrupt,
)
from grantkeeper._oauth import dpop
from grantkeeper._oauth.auth_server_metadata import parse_metadata
from grantkeeper._oauth.dpop import (
    ALGORITHMS,
    RESOURCE_NONCES,
    TOKEN_NONCES,
    DPoPKey,
    choose_algorithm,
    load_key,
)
from grantkeeper._oauth.token_client import send_token_request
from grantkeeper._oauth.token_endpoint import refresh_request
from grantkeeper._record import record_from_json, record_to_json
from grantkeeper._redact import scrub_known
from grantkeeper._servers import _from_json
from grantkeeper.testing import sample_record
from harness.dpop_check import NonceNeeded, ProofChecker, ProofRejected

TOKEN_URL = "https://auth.example.test/token"
RESOURCE = "https://mcp.example.test/mcp"


@pytest.fixture(autouse=True)
def no_nonces() -> Iterator[None]:
    TOKEN_NONCES.clear()
    RESOURCE_NONCES.clear()
    yield
    TOKEN_NONCES.clear()
    RESOURCE_NONCES.clear()


def claims(proof: str) -> dict[str, Any]:
    part = proof.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))  # type: ignore[no-any-return]


def ath(token: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(token.encode()).digest()).rstrip(b"=").decode()


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_a_proof_verifies_with_joserfc_and_binds_method_uri_and_token(alg: str) -> None:
    key = DPoPKey.generate(alg)
    checker = ProofChecker()
    proof = key.proof("POST", f"{RESOURCE}?session=1#frag", access_token="token-1234")
    # The checker verifies the signature with the proof's own key and every claim.
    assert checker.check([proof], method="POST", url=RESOURCE, token="token-1234") == (
        key.thumbprint
    )
    body = claims(proof)
    assert body["htu"] == RESOURCE  # query and fragment dropped (RFC 9449 §4.2)
    assert body["ath"] == ath("token-1234")
    assert abs(body["iat"] - datetime.now(UTC).timestamp()) < 60
    again = key.proof("POST", RESOURCE, access_token="token-1234")
    assert claims(again)["jti"] != body["jti"]  # a fresh proof every time
    with pytest.raises(ProofRejected, match="htm"):
        checker.check([again], method="GET", url=RESOURCE, token="token-1234")
    with pytest.raises(ProofRejected, match="ath"):
        checker.check([again], method="POST", url=RESOURCE, token="another-token")
    with pytest.raises(ProofRejected, match="replayed"):
        checker.check([proof], method="POST", url=RESOURCE, token="token-1234")


def test_a_proof_asked_for_a_nonce_carries_it() -> None:
    key = DPoPKey.generate()
    checker = ProofChecker(nonce=True)
    with pytest.raises(NonceNeeded) as asked:
        checker.check(
            [key.proof("GET", RESOURCE, access_token="t")], method="GET", url=RESOURCE, token="t"
        )
    proof = key.proof("GET", RESOURCE, nonce=asked.value.nonce, access_token="t")
    assert checker.check([proof], method="GET", url=RESOURCE, token="t") == key.thumbprint


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_the_key_is_kept_in_the_record_and_loads_as_the_same_key(alg: str) -> None:
    key = DPoPKey.generate(alg)
    record = sample_record(token_type="DPoP", dpop_key=key.stored)
    data = record_to_json(record)
    assert data["schema"] == 2  # versions that know only Bearer refuse it
    loaded = record_from_json(json.loads(json.dumps(data)))
    assert loaded == record and loaded.dpop and loaded.presentable
    assert load_key(loaded.dpop_key or "").thumbprint == key.thumbprint
    # Without its key a DPoP token cannot be presented.
    assert not record.replace(dpop_key=None).presentable


@pytest.mark.parametrize(
    "stored",
    [
        "not json",
        "[]",
        '{"kty": "EC", "crv": "P-256", "alg": "ES256"}',
        '{"kty": "RSA", "alg": "RS256", "d": "AAAA"}',
    ],
)
def test_a_malformed_stored_key_is_store_corrupt(stored: str) -> None:
    with pytest.raises(StoreCorrupt, match="DPoP key is malformed"):
        load_key(stored)


def test_a_key_whose_public_half_was_altered_is_refused_and_named_by_no_value() -> None:
    jwk = json.loads(DPoPKey.generate("ES256").stored)
    other = json.loads(DPoPKey.generate("ES256").stored)
    jwk["x"] = other["x"]
    with pytest.raises(StoreCorrupt) as refused:
        load_key(json.dumps(jwk))
    assert jwk["d"] not in str(refused.value) and jwk["x"] not in str(refused.value)


def test_the_private_key_never_appears_in_reprs_or_echoed_text() -> None:
    key = DPoPKey.generate()
    private = json.loads(key.stored)["d"]
    record = sample_record(token_type="DPoP", dpop_key=key.stored)
    for shown in (repr(key), repr(record), str(record)):
        assert private not in shown and key.stored not in shown
    echoed = f"server says: bad key {private} in {key.stored}"
    scrubbed = scrub_known(echoed)
    assert private not in scrubbed and private[:12] not in scrubbed


@pytest.mark.parametrize(
    ("offered", "wanted", "chosen"),
    [
        (None, None, None),  # not advertised: Bearer
        (["ES256"], None, "ES256"),
        (["EdDSA"], None, "EdDSA"),
        (["RS256", "ES256", "EdDSA"], None, "EdDSA"),  # the faster flow (P8)
        (["RS256"], None, None),  # nothing we sign: Bearer
        (["ES256"], False, None),  # off for this server
        (None, True, "ES256"),  # on, though the server does not say
    ],
)
def test_the_algorithm_is_chosen_from_what_the_server_takes(
    offered: list[str] | None, wanted: bool | None, chosen: str | None
) -> None:
    assert choose_algorithm(offered, wanted=wanted) == chosen


def test_insisting_on_dpop_where_the_server_takes_none_of_our_algorithms_is_a_config_error() -> (
    None
):
    with pytest.raises(ServerConfigError, match="turn DPoP off"):
        choose_algorithm(["RS256"], wanted=True)


def test_metadata_names_the_algorithms_and_a_malformed_list_says_nothing() -> None:
    base = {
        "issuer": "https://auth.example.test",
        "authorization_endpoint": "https://auth.example.test/auth",
        "token_endpoint": TOKEN_URL,
    }
    parsed = parse_metadata(
        json.dumps({**base, "dpop_signing_alg_values_supported": ["ES256"]}).encode(),
        expected_issuer=base["issuer"],
    )
    assert parsed.dpop_signing_alg_values_supported == ("ES256",)
    malformed = json.dumps({**base, "dpop_signing_alg_values_supported": "ES256"}).encode()
    assert (
        parse_metadata(malformed, expected_issuer=base["issuer"]).dpop_signing_alg_values_supported
        is None
    )
    assert (
        parse_metadata(
            json.dumps(base).encode(), expected_issuer=base["issuer"]
        ).dpop_signing_alg_values_supported
        is None
    )


def test_servers_json_takes_dpop_as_a_boolean_only() -> None:
    assert _from_json("s", {"url": RESOURCE, "dpop": False}).dpop is False
    with pytest.raises(ServerConfigError, match="dpop"):
        _from_json("s", {"url": RESOURCE, "dpop": "yes"})


class TokenEndpoint:
    """Asks for a nonce ``asks`` times, then answers with a DPoP token."""

    def __init__(self, asks: int) -> None:
        self.asks = asks
        self.proofs: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.proofs.append(request.headers["dpop"])
        if len(self.proofs) <= self.asks:
            return httpx.Response(
                400,
                json={"error": "use_dpop_nonce"},
                headers={"DPoP-Nonce": f"nonce-{len(self.proofs)}"},
            )
        body = {"access_token": "new-access-token-0001", "token_type": "DPoP", "expires_in": 60}
        return httpx.Response(200, json=body, headers={"DPoP-Nonce": "nonce-next"})


def refreshing(endpoint: TokenEndpoint) -> Any:
    key = DPoPKey.generate()
    record = sample_record(token_type="DPoP", dpop_key=key.stored)
    with httpx.Client(transport=httpx.MockTransport(endpoint)) as client:
        return send_token_request(client, refresh_request(record), now=lambda: datetime.now(UTC))


def test_a_token_request_asked_for_a_nonce_is_sent_once_more_with_it() -> None:
    endpoint = TokenEndpoint(asks=1)
    answer = refreshing(endpoint)
    assert answer.token_type == "DPoP"
    first, second = (claims(proof) for proof in endpoint.proofs)
    assert "nonce" not in first and second["nonce"] == "nonce-1"
    assert first["htu"] == TOKEN_URL and first["htm"] == "POST" and "ath" not in first
    assert first["jti"] != second["jti"]
    assert TOKEN_NONCES.get(TOKEN_URL) == "nonce-next"  # the answer's nonce, for the next
    assert RESOURCE_NONCES.get(TOKEN_URL) is None  # a resource on that origin has its own


def test_a_server_that_keeps_asking_for_a_nonce_gets_two_requests_and_a_typed_error() -> None:
    endpoint = TokenEndpoint(asks=5)
    with pytest.raises(ProviderError, match="use_dpop_nonce") as refused:
        refreshing(endpoint)
    assert len(endpoint.proofs) == 2  # one retry, never a loop
    assert refused.value.status == 400


class Resource:
    """An MCP-like resource asking for a nonce on the first proof without one; with
    ``rotating``, a new one every time; with ``refusing``, every proof is invalid."""

    def __init__(self, *, rotating: bool = False, refusing: bool = False) -> None:
        self.seen: list[httpx.Headers] = []
        self.rotating = rotating
        self.refusing = refusing

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        # The headers as sent: a retry is the same request object, its headers replaced.
        self.seen.append(request.headers.copy())
        if self.refusing:
            challenge = 'DPoP error="invalid_dpop_proof", error_description="iat"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        nonce = f"rs-nonce-{len(self.seen)}" if self.rotating else "rs-nonce"
        if "dpop" not in request.headers or claims(request.headers["dpop"]).get("nonce") != (
            "rs-nonce"
        ):
            return httpx.Response(
                401,
                headers={"WWW-Authenticate": 'DPoP error="use_dpop_nonce"', "DPoP-Nonce": nonce},
            )
        return httpx.Response(200, json={"ok": True})


def request_token(headers: httpx.Headers) -> str:
    scheme, _, token = headers["authorization"].partition(" ")
    assert scheme == "DPoP"
    return token


@pytest.fixture
def dpop_keeper(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Keeper, DPoPKey]]:
    key = DPoPKey.generate()
    store = FileStore(tmp_path)
    now = datetime.now(UTC)
    record = sample_record(
        "dpop-access-token-0001",
        token_type=getattr(request, "param", "DPoP"),
        dpop_key=key.stored,
        now=now,
        resource=RESOURCE,
    )
    credential_key = CredentialKey.for_server(RESOURCE)
    store.write(credential_key, record, expected_version=None)
    with Keeper(store, credential_key) as keeper:
        yield keeper, key


def test_a_resource_request_carries_the_token_as_dpop_and_answers_a_nonce_challenge_once(
    dpop_keeper: tuple[Keeper, DPoPKey],
) -> None:
    keeper, key = dpop_keeper
    resource = Resource()
    with httpx.Client(auth=HttpxAuth(keeper), transport=httpx.MockTransport(resource)) as client:
        assert client.post(RESOURCE, json={"a": 1}).status_code == 200
        assert client.post(RESOURCE, json={"a": 2}).status_code == 200
    first, second, third = resource.seen
    assert request_token(first) == "dpop-access-token-0001"
    assert claims(first["dpop"])["jti"] != claims(second["dpop"])["jti"]
    checker = ProofChecker()
    for headers in (second, third):  # with the nonce: verified, and bound to the token
        proof = headers["dpop"]
        assert claims(proof)["nonce"] == "rs-nonce"
        assert (
            checker.check([proof], method="POST", url=RESOURCE, token="dpop-access-token-0001")
            == key.thumbprint
        )


def test_a_streamed_body_asked_for_a_nonce_is_not_replayed_but_the_next_request_has_it(
    dpop_keeper: tuple[Keeper, DPoPKey],
) -> None:
    keeper, _ = dpop_keeper
    resource = Resource()

    def body() -> Iterator[bytes]:
        yield b'{"a": 1}'

    with httpx.Client(auth=HttpxAuth(keeper), transport=httpx.MockTransport(resource)) as client:
        with pytest.raises(RetryRequired, match="nonce"):
            client.post(RESOURCE, content=body())
        assert client.post(RESOURCE, json={"a": 2}).status_code == 200
    assert len(resource.seen) == 2


@pytest.mark.parametrize("resource", [Resource(rotating=True), Resource(refusing=True)])
def test_a_refused_proof_costs_no_refresh_and_no_loop(
    dpop_keeper: tuple[Keeper, DPoPKey], resource: Resource, tmp_path: Path
) -> None:
    """A second nonce demand, or an invalid proof, refuses the proof, not the token: a
    typed error, and the stored credential untouched (renewing could not help)."""
    keeper, _ = dpop_keeper
    store = FileStore(tmp_path)
    (key,) = store.keys()
    before = store.read(key)
    expected = RetryRequired if resource.rotating else ProtocolError
    with httpx.Client(auth=HttpxAuth(keeper), transport=httpx.MockTransport(resource)) as client:
        with pytest.raises(expected, match="DPoP"):
            client.post(RESOURCE, json={"a": 1})
    assert len(resource.seen) == (2 if resource.rotating else 1)
    assert store.read(key) == before  # no refresh, no intent note


@pytest.mark.parametrize("dpop_keeper", ["Bearer"], indirect=True)
def test_a_bearer_token_answered_to_a_proof_is_sent_as_bearer(
    dpop_keeper: tuple[Keeper, DPoPKey],
) -> None:
    """RFC 9449 §5: a server may answer a proof with a Bearer token; the key is kept, the
    token goes as what it is."""
    keeper, _ = dpop_keeper
    seen: list[httpx.Headers] = []

    def resource(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.copy())
        return httpx.Response(200)

    with httpx.Client(auth=HttpxAuth(keeper), transport=httpx.MockTransport(resource)) as client:
        assert client.get(RESOURCE).status_code == 200
    assert seen[0]["authorization"] == "Bearer dpop-access-token-0001"
    assert "dpop" not in seen[0]


def test_without_cryptography_an_advertising_server_gets_a_bearer_login(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dpop, "available", lambda: False)
    assert choose_algorithm(["ES256"], wanted=None) is None  # as before DPoP
    assert choose_algorithm(["ES256"], wanted=True) == "ES256"  # insisting: generate says why


def test_nonces_are_kept_per_origin_with_default_ports_and_case_normalised() -> None:
    RESOURCE_NONCES.update("https://MCP.example.test:443/mcp", {"DPoP-Nonce": "n1"})
    assert RESOURCE_NONCES.get("https://mcp.example.test/other?x=1") == "n1"
    assert RESOURCE_NONCES.get("https://mcp.example.test:8443/mcp") is None
    assert RESOURCE_NONCES.get("http://mcp.example.test/mcp") is None
    assert (
        RESOURCE_NONCES.update(RESOURCE, {"DPoP-Nonce": "bad nonce"}) is None
    )  # not visible ASCII
