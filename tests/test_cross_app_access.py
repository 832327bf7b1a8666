"""Cross-app access: RFC 8693 token exchange at the enterprise IdP, then the RFC 7523
jwt-bearer grant at the MCP server's authorization server. The conformance suite's mock
(``auth/cross-app-access-complete-flow``) plays both against the real client; these tests
step the pieces and drive the flow over a mock transport."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest

from grantkeeper import (
    EnterpriseIdentity,
    FileStore,
    MalformedResponse,
    ProtocolError,
    ReauthenticationRequired,
    ServerConfig,
    ServerConfigError,
    login,
)
from grantkeeper._discovery import Discovery
from grantkeeper._grants import (
    ID_JAG_TYPE,
    JWT_BEARER,
    jwt_bearer_request,
    parse_exchange_response,
    token_exchange_request,
)
from tests.test_login_flow import ISSUER, META, SERVER

NOW = datetime(2026, 12, 1, tzinfo=UTC)
IDP = "https://idp.example.com"
ID_TOKEN = "the-users-id-token-secret"
ASSERTION = "the-id-jag-assertion-secret"
IDENTITY = EnterpriseIdentity(f"{IDP}/token", "idp-client", ID_TOKEN)
SUPPORTING = Discovery(
    SERVER, SERVER, replace(META, grant_types_supported=("authorization_code", JWT_BEARER))
)


def test_the_exchange_asks_the_idp_for_an_assertion_grant_for_our_server() -> None:
    request = token_exchange_request(IDENTITY, audience=ISSUER, resource=SERVER, scope="mcp")
    assert request.url == f"{IDP}/token"
    assert request.form == {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "requested_token_type": ID_JAG_TYPE,
        "audience": ISSUER,
        "resource": SERVER,
        "subject_token": ID_TOKEN,
        "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
        "scope": "mcp",
        "client_id": "idp-client",
    }
    assert ID_TOKEN not in repr(request) and ID_TOKEN not in repr(IDENTITY)


def test_the_jwt_bearer_grant_authenticates_as_our_client() -> None:
    request = jwt_bearer_request(
        token_endpoint=f"{ISSUER}/token",
        assertion=ASSERTION,
        client_id="app",
        client_secret="app-secret",
        auth_method="client_secret_basic",
        scope=None,
    )
    assert request.form == {"grant_type": JWT_BEARER, "assertion": ASSERTION}
    assert (
        request.headers["Authorization"] == "Basic " + base64.b64encode(b"app:app-secret").decode()
    )


def test_an_exchange_answer_is_an_id_jag_with_token_type_n_a() -> None:
    body = json.dumps(
        {"access_token": ASSERTION, "issued_token_type": ID_JAG_TYPE, "token_type": "N_A"}
    ).encode()
    assert parse_exchange_response(200, {}, body, now=NOW) == ASSERTION


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (200, {"access_token": "x", "issued_token_type": "urn:other"}, MalformedResponse),
        (200, [1], MalformedResponse),
        (400, {"error": "invalid_grant"}, ReauthenticationRequired),
    ],
)
def test_a_bad_exchange_answer_is_a_typed_error(
    status: int, body: object, error: type[Exception]
) -> None:
    with pytest.raises(error):
        parse_exchange_response(status, {}, json.dumps(body).encode(), now=NOW)


class World:
    """The enterprise IdP and the MCP server's authorization server, on one mock transport."""

    def __init__(self) -> None:
        self.forms: list[tuple[str, dict[str, list[str]], str | None]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        form = parse_qs(request.content.decode())
        self.forms.append((str(request.url), form, request.headers.get("authorization")))
        if str(request.url) == f"{IDP}/token":
            answer = {"access_token": ASSERTION, "issued_token_type": ID_JAG_TYPE}
            return httpx.Response(200, json={**answer, "token_type": "N_A"})
        assert form["assertion"] == [ASSERTION]
        return httpx.Response(
            200,
            json={"access_token": "mcp-access-secret", "token_type": "Bearer", "expires_in": 60},
        )


def run(tmp_path: Path, world: World, discovery: Discovery = SUPPORTING, **kw: object) -> object:
    return login(
        ServerConfig(SERVER),
        store=FileStore(tmp_path),
        discovery=discovery,
        http=httpx.Client(transport=httpx.MockTransport(world.handle)),
        enterprise=IDENTITY,
        **kw,  # type: ignore[arg-type]
    )


def test_cross_app_login_exchanges_then_trades_and_stores(tmp_path: Path) -> None:
    world = World()
    record = run(tmp_path, world, client_id="app", client_secret="app-secret")
    assert [url for url, _, _ in world.forms] == [f"{IDP}/token", f"{ISSUER}/token"]
    assert world.forms[1][2] is not None and world.forms[1][2].startswith("Basic ")
    stored = FileStore(tmp_path).read(ServerConfig(SERVER).key)
    assert stored is not None and stored.record == record
    assert stored.record.grant == JWT_BEARER
    assert not stored.record.renewable  # a new ID token is needed once it expires
    assert ASSERTION not in json.dumps(str(stored.record))


def test_a_server_without_jwt_bearer_is_refused_before_any_exchange(tmp_path: Path) -> None:
    world = World()
    with pytest.raises(ProtocolError, match="jwt-bearer"):
        run(tmp_path, world, discovery=Discovery(SERVER, SERVER, META), client_id="app")
    assert world.forms == []


def test_cross_app_access_needs_our_client_id(tmp_path: Path) -> None:
    with pytest.raises(ServerConfigError, match="client id"):
        run(tmp_path, World())
