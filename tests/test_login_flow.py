"""The login flow against a scripted authorization server: bad callbacks change nothing,
a forgotten dynamic client is registered once more, and no message carries a secret."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from grantkeeper import (
    AuthorizationDenied,
    ClientRegistrationInvalid,
    FileStore,
    GrantkeeperError,
    ServerConfig,
    login,
)
from grantkeeper._errors import ProtocolError
from grantkeeper._oauth.auth_server_metadata import AuthServerMetadata
from grantkeeper._oauth.discovery import Discovery
from grantkeeper.testing import sample_record
from tests.helpers import T0

ISSUER = "https://auth.example.com"
SERVER = "https://mcp.example.com/mcp"
REDIRECT = "http://127.0.0.1:8765/callback"
CODE = "the-authorization-code-secret"
META = AuthServerMetadata(
    issuer=ISSUER,
    authorization_endpoint=f"{ISSUER}/authorize",
    token_endpoint=f"{ISSUER}/token",
    registration_endpoint=f"{ISSUER}/register",
    scopes_supported=("mcp", "offline_access"),
    iss_parameter_supported=True,
)
FOUND = Discovery(SERVER, SERVER, META)


class FakeAS:
    """Registers clients and answers the token endpoint; forgets clients on request."""

    def __init__(self, forget: int = 0) -> None:
        self.registered: list[str] = []
        self.token_forms: list[dict[str, list[str]]] = []
        self.forget = forget

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/register":
            client_id = f"client-{len(self.registered) + 1}"
            self.registered.append(client_id)
            return httpx.Response(201, json={"client_id": client_id})
        form = parse_qs(request.content.decode())
        self.token_forms.append(form)
        if self.forget:
            self.forget -= 1
            return httpx.Response(401, json={"error": "invalid_client"})
        return httpx.Response(
            200,
            json={
                "access_token": "access-token-secret-value",
                "refresh_token": "refresh-token-secret-value",
                "token_type": "Bearer",
                "expires_in": 3600,
            },
        )

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handle))


def browser(**overrides: str | None) -> Callable[[str], str]:
    """Answer an authorization URL the way a server would, with ``overrides`` applied."""

    def authorize(url: str) -> str:
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        params: dict[str, str | None] = {"code": CODE, "state": query["state"], "iss": ISSUER}
        params.update(overrides)
        return f"{query['redirect_uri']}?" + urlencode(
            {k: v for k, v in params.items() if v is not None}
        )

    return authorize


def run(tmp_path: Path, fake: FakeAS, authorize: Callable[[str], str], **kw: object) -> object:
    return login(
        ServerConfig(SERVER),
        store=FileStore(tmp_path),
        discovery=FOUND,
        authorize=authorize,
        redirect_uri=REDIRECT,
        http=fake.client(),
        **kw,  # type: ignore[arg-type]
    )


def test_a_good_callback_stores_the_credential_with_its_endpoints(tmp_path: Path) -> None:
    fake = FakeAS()
    run(tmp_path, fake, browser())
    stored = FileStore(tmp_path).read(ServerConfig(SERVER).key)
    assert stored is not None
    assert stored.record.token_endpoint == f"{ISSUER}/token" and stored.record.issuer == ISSUER
    form = fake.token_forms[0]
    assert form["resource"] == [SERVER] and form["code_verifier"]


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"state": "forged"}, ProtocolError, "state does not match"),
        ({"code": None}, ProtocolError, "no authorization code"),
        ({"code": None, "error": "access_denied"}, AuthorizationDenied, "access_denied"),
        ({"iss": "https://evil.example.com"}, ProtocolError, "mix-up"),
        ({"iss": None}, ProtocolError, "no iss"),
    ],
)
def test_bad_callbacks_raise_typed_errors_and_leave_the_store_alone(
    tmp_path: Path, overrides: dict[str, str | None], error: type[Exception], match: str
) -> None:
    store = FileStore(tmp_path)
    key = ServerConfig(SERVER).key
    previous = sample_record("previous-access-secret", "previous-refresh-secret", now=T0)
    store.write(key, previous, expected_version=None)
    fake = FakeAS()
    with pytest.raises(error, match=match) as info:
        run(tmp_path, fake, browser(**overrides))
    assert CODE not in str(info.value)
    assert fake.token_forms == []  # no code was exchanged
    stored = store.read(key)
    assert stored is not None and stored.record == previous and stored.version == 1


def test_a_forgotten_dynamic_client_is_registered_once_more(tmp_path: Path) -> None:
    fake = FakeAS(forget=1)
    run(tmp_path, fake, browser())
    assert fake.registered == ["client-1", "client-2"]
    stored = FileStore(tmp_path).read(ServerConfig(SERVER).key)
    assert stored is not None and stored.record.client_id == "client-2"


def test_re_registration_happens_only_once(tmp_path: Path) -> None:
    fake = FakeAS(forget=2)
    with pytest.raises(ClientRegistrationInvalid):
        run(tmp_path, fake, browser())
    assert len(fake.registered) == 2
    assert FileStore(tmp_path).read(ServerConfig(SERVER).key) is None


def test_a_pre_registered_client_is_never_re_registered(tmp_path: Path) -> None:
    fake = FakeAS(forget=1)
    with pytest.raises(ClientRegistrationInvalid) as info:
        run(tmp_path, fake, browser(), client_id="fixed", client_secret="client-secret-value")
    assert fake.registered == []
    assert "client-secret-value" not in str(info.value)


def test_registration_failure_is_typed_and_stores_nothing(tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": "invalid_client_metadata"})

    with pytest.raises(GrantkeeperError, match="invalid_client_metadata"):
        login(
            ServerConfig(SERVER),
            store=FileStore(tmp_path),
            discovery=FOUND,
            authorize=browser(),
            redirect_uri=REDIRECT,
            http=httpx.Client(transport=httpx.MockTransport(refuse)),
        )
    assert FileStore(tmp_path).keys() == []


def test_authorize_and_redirect_uri_come_together(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="together"):
        login(SERVER, store=FileStore(tmp_path), authorize=browser(), discovery=FOUND)


def test_oversized_token_response_is_typed(tmp_path: Path) -> None:
    def huge(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/register":
            return httpx.Response(201, json={"client_id": "c"})
        return httpx.Response(200, content=json.dumps({"pad": "x" * (2 << 20)}).encode())

    with pytest.raises(GrantkeeperError, match="more than"):
        login(
            ServerConfig(SERVER),
            store=FileStore(tmp_path),
            discovery=FOUND,
            authorize=browser(),
            redirect_uri=REDIRECT,
            http=httpx.Client(transport=httpx.MockTransport(huge)),
        )
    assert FileStore(tmp_path).keys() == []
