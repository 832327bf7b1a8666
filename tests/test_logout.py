"""Logout: the credential is deleted whatever the revocation endpoint says, and revoked with
RFC 7009 requests when it answers, against a mock and against the real oidc-provider."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from grantkeeper import FileStore, ServerConfig, logout
from grantkeeper.testing import sample_record
from harness.authserver import AuthServer
from harness.resource_server import ResourceServer
from tests.helpers import KEY, T0
from tests.login_helpers import cli, do_login, introspect


def store_with_revocation(home: Path, n: int) -> FileStore:
    """A file store at ``home`` holding the ``n``th credential of client ``client-1``, whose
    record names a revocation endpoint (on a port nothing listens on)."""
    store = FileStore(home)
    record = sample_record(
        f"access-secret-value-{n}",
        f"refresh-secret-value-{n}",
        now=T0,
        client_id="client-1",
        revocation_endpoint="http://127.0.0.1:9/revoke",
    )
    store.write(KEY, record, expected_version=None)
    return store


def test_logout_deletes_even_when_revocation_fails(home: Path) -> None:
    store = store_with_revocation(home, 1)

    def down(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    result = logout(store, KEY, http=httpx.Client(transport=httpx.MockTransport(down)))
    assert result.removed and result.revoked == () and len(result.problems) == 2
    assert all("secret" not in problem for problem in result.problems)
    assert store.read(KEY) is None
    assert logout(store, KEY).removed is False


def test_logout_sends_rfc7009_requests(home: Path) -> None:
    store = store_with_revocation(home, 2)
    forms: list[str] = []

    def ok(request: httpx.Request) -> httpx.Response:
        forms.append(request.content.decode())
        return httpx.Response(200)

    result = logout(store, KEY, http=httpx.Client(transport=httpx.MockTransport(ok)))
    assert result.revoked == ("refresh_token", "access_token")
    assert "token_type_hint=refresh_token" in forms[0] and "client_id=client-1" in forms[0]


# -- against the real authorization server ------------------------------------------------


@pytest.mark.realserver
def test_logout_deletes_and_revokes_at_the_server(
    auth_server: AuthServer, resource: ResourceServer, home: Path
) -> None:
    record = do_login(auth_server, resource, home)
    assert introspect(auth_server, record.refresh_token or "")["active"] is True
    result = cli("logout", resource.url, home=home)
    assert result.returncode == 0, result.stderr
    assert "revoked" in result.stdout
    assert FileStore(home).read(ServerConfig(resource.url).key) is None
    assert introspect(auth_server, record.refresh_token or "")["active"] is False
    assert introspect(auth_server, record.access_token)["active"] is False
    assert cli("token", resource.url, home=home).returncode == 3


@pytest.mark.realserver
def test_logout_no_revoke_keeps_the_grant(
    auth_server: AuthServer, resource: ResourceServer, home: Path
) -> None:
    record = do_login(auth_server, resource, home)
    result = logout(FileStore(home), ServerConfig(resource.url).key, revoke=False)
    assert result.removed and result.revoked == ()
    assert introspect(auth_server, record.refresh_token or "")["active"] is True
