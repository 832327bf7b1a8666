"""Cross-app access: RFC 8693 token exchange at the enterprise IdP, then the RFC 7523
jwt-bearer grant at the MCP server's authorization server. The conformance suite's mock
(``auth/cross-app-access-complete-flow``) plays both against the real client; these tests
step the pieces, drive the flow over a mock transport, and last run it against two real
oidc-providers (the IdP and the MCP server's AS) and a real MCP server."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest

from grantkeeper import (
    CredentialKey,
    EnterpriseIdentity,
    FileStore,
    Keeper,
    MalformedResponse,
    ProtocolError,
    ReauthenticationRequired,
    ServerConfig,
    ServerConfigError,
    login,
)
from grantkeeper._oauth.discovery import Discovery
from grantkeeper._oauth.grants import (
    ID_JAG_TYPE,
    JWT_BEARER,
    jwt_bearer_request,
    parse_exchange_response,
    token_exchange_request,
)
from grantkeeper.mcp import connect
from harness import remember_secret
from harness.authserver import XAA_APP_CLIENT, XAA_IDP_CLIENT, AuthServer
from harness.mcp_server import McpServer
from tests.fake_authserver import ISSUER, META, SERVER

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


class Enterprise:
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


def run(
    tmp_path: Path, enterprise: Enterprise, discovery: Discovery = SUPPORTING, **kw: object
) -> object:
    return login(
        ServerConfig(SERVER),
        store=FileStore(tmp_path),
        discovery=discovery,
        http=httpx.Client(transport=httpx.MockTransport(enterprise.handle)),
        enterprise=IDENTITY,
        **kw,  # type: ignore[arg-type]
    )


def test_cross_app_login_exchanges_then_trades_and_stores(tmp_path: Path) -> None:
    enterprise = Enterprise()
    record = run(tmp_path, enterprise, client_id="app", client_secret="app-secret")
    assert [url for url, _, _ in enterprise.forms] == [f"{IDP}/token", f"{ISSUER}/token"]
    assert enterprise.forms[1][2] is not None and enterprise.forms[1][2].startswith("Basic ")
    stored = FileStore(tmp_path).read(ServerConfig(SERVER).key)
    assert stored is not None and stored.record == record
    assert stored.record.grant == JWT_BEARER
    assert not stored.record.renewable  # a new ID token is needed once it expires
    assert ASSERTION not in json.dumps(str(stored.record))


def test_a_server_without_jwt_bearer_is_refused_before_any_exchange(tmp_path: Path) -> None:
    enterprise = Enterprise()
    with pytest.raises(ProtocolError, match="jwt-bearer"):
        run(tmp_path, enterprise, discovery=Discovery(SERVER, SERVER, META), client_id="app")
    assert enterprise.forms == []


def test_cross_app_access_needs_our_client_id(tmp_path: Path) -> None:
    with pytest.raises(ServerConfigError, match="client id"):
        run(tmp_path, Enterprise())


# -- against the real servers: two oidc-providers (IdP, MCP server's AS), a real MCP server --


@pytest.fixture(scope="module")
def idp() -> Iterator[AuthServer]:
    with AuthServer(cross_app_idp=True) as server:
        yield server


@pytest.fixture(scope="module")
def mcp_as(idp: AuthServer) -> Iterator[AuthServer]:
    with AuthServer(trust_idp=idp.issuer) as server:
        yield server


def enterprise(idp: AuthServer, id_token: str) -> EnterpriseIdentity:
    return EnterpriseIdentity(f"{idp.issuer}/token", XAA_IDP_CLIENT[0], id_token, XAA_IDP_CLIENT[1])


def cross_app_login(mcp: McpServer, store: FileStore, identity: EnterpriseIdentity) -> object:
    record = login(
        mcp.url,
        store=store,
        enterprise=identity,
        client_id=XAA_APP_CLIENT[0],
        client_secret=XAA_APP_CLIENT[1],
        scope="mcp",
    )
    remember_secret(getattr(record, "access_token", None))
    return record


def assert_no_secret(exc: BaseException, *secrets: str) -> None:
    shown = f"{exc} {exc!r}"
    for secret in secrets:
        assert secret not in shown


@pytest.mark.realserver
def test_a_cross_app_login_calls_a_real_tool_as_the_enterprise_user(
    idp: AuthServer, mcp_as: AuthServer, tmp_path: Path
) -> None:
    idp.set_account("carol")
    id_token = idp.sign_in()
    before_exchange = idp.stats()["token_exchange_success"]
    before_bearer = mcp_as.stats()["jwt_bearer_success"]
    with McpServer(auth_server=mcp_as) as mcp:
        store = FileStore(tmp_path)
        cross_app_login(mcp, store, enterprise(idp, id_token))
        keeper = Keeper(store, CredentialKey.for_server(mcp.url))

        async def call() -> object:
            async with connect(mcp.url, keeper=keeper) as session:
                return (await session.call_tool("whoami", {})).structured_content

        try:
            who = asyncio.run(call())
        finally:
            keeper.close()
    assert isinstance(who, dict)
    # The MCP server sees the enterprise user, through the application's own client.
    assert who["subject"] == "carol" and who["client_id"] == XAA_APP_CLIENT[0]
    assert who["scopes"] == ["mcp"]
    assert idp.stats()["token_exchange_success"] == before_exchange + 1
    assert mcp_as.stats()["jwt_bearer_success"] == before_bearer + 1


@pytest.mark.realserver
def test_the_idp_refusing_the_exchange_is_a_typed_error_without_secrets(
    idp: AuthServer, mcp_as: AuthServer, tmp_path: Path
) -> None:
    id_token = idp.sign_in()
    header, payload, signature = id_token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged_payload = base64.urlsafe_b64encode(json.dumps({**claims, "sub": "admin"}).encode())
    forged = f"{header}.{forged_payload.rstrip(b'=').decode()}.{signature}"
    remember_secret(forged)
    with McpServer(auth_server=mcp_as) as mcp:
        store = FileStore(tmp_path)
        with pytest.raises(ReauthenticationRequired) as caught:
            cross_app_login(mcp, store, enterprise(idp, forged))
        assert store.read(CredentialKey.for_server(mcp.url)) is None
    assert_no_secret(caught.value, forged, id_token, XAA_IDP_CLIENT[1], XAA_APP_CLIENT[1])
    refusals = [e for e in idp.stats()["cross_app_errors"] if e["error"] == "invalid_grant"]
    assert any("signature" in e["detail"] for e in refusals)  # refused by the IdP, not by us


@pytest.mark.realserver
def test_the_as_refusing_the_assertion_is_a_typed_error_without_secrets(
    idp: AuthServer, tmp_path: Path
) -> None:
    # An AS that trusts another enterprise's IdP: our IdP's ID-JAG verifies nowhere there.
    with (
        AuthServer(cross_app_idp=True) as other_idp,
        AuthServer(trust_idp=other_idp.issuer) as strict_as,
        McpServer(auth_server=strict_as) as mcp,
    ):
        id_token = idp.sign_in()
        store = FileStore(tmp_path)
        with pytest.raises(ReauthenticationRequired) as caught:
            cross_app_login(mcp, store, enterprise(idp, id_token))
        assert store.read(CredentialKey.for_server(mcp.url)) is None
        refusals = strict_as.stats()["cross_app_errors"]
        assert [e["error"] for e in refusals] == ["invalid_grant"]
        assert strict_as.stats()["jwt_bearer_success"] == 0
    assert_no_secret(caught.value, id_token, XAA_IDP_CLIENT[1], XAA_APP_CLIENT[1])
    assert idp.stats()["token_exchange_success"] >= 1  # the IdP did issue the assertion
