"""The login flow against a scripted authorization server: bad callbacks change nothing,
a forgotten dynamic client is registered once more, and no message carries a secret."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

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
from grantkeeper.testing import sample_record
from tests.fake_authserver import CODE, FOUND, ISSUER, REDIRECT, SERVER, FakeAS, Handler, browser
from tests.helpers import T0


def run(
    tmp_path: Path, fake: FakeAS | Handler, authorize: Callable[[str], str], **kw: object
) -> object:
    """Log in to SERVER (discovered as FOUND) into a file store in ``tmp_path``, with
    ``fake`` (or a handler in its place) as the authorization server."""
    handler = fake.handle if isinstance(fake, FakeAS) else fake
    return login(
        ServerConfig(SERVER),
        store=FileStore(tmp_path),
        discovery=FOUND,
        authorize=authorize,
        redirect_uri=REDIRECT,
        http=httpx.Client(transport=httpx.MockTransport(handler)),
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


def test_authorize_and_redirect_uri_come_together(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="together"):
        login(SERVER, store=FileStore(tmp_path), authorize=browser(), discovery=FOUND)


def refuse_registration(request: httpx.Request) -> httpx.Response:
    """An authorization server that registers no client."""
    return httpx.Response(400, json={"error": "invalid_client_metadata"})


def oversized_token_response(request: httpx.Request) -> httpx.Response:
    """An authorization server that registers a client, then answers the code with 2 MiB."""
    if request.url.path == "/register":
        return httpx.Response(201, json={"client_id": "c"})
    return httpx.Response(200, content=json.dumps({"pad": "x" * (2 << 20)}).encode())


@pytest.mark.parametrize(
    ("answer", "match"),
    [(refuse_registration, "invalid_client_metadata"), (oversized_token_response, "more than")],
    ids=["registration-refused", "oversized-token-response"],
)
def test_a_failed_login_is_typed_and_stores_nothing(
    tmp_path: Path, answer: Handler, match: str
) -> None:
    with pytest.raises(GrantkeeperError, match=match):
        run(tmp_path, answer, browser())
    assert FileStore(tmp_path).keys() == []
