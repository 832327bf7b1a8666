"""Machine clients: the client_credentials grant with every auth method, renewed by the Keeper.

Renewal requests are stepped by hand (the signed assertion itself is in
test_client_assertion.py); each auth method is then shown against the real oidc-provider (its
cc-basic, cc-post and cc-jwt clients in harness/oidc/server.mjs).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from grantkeeper import (
    Credential,
    CredentialKey,
    FileStore,
    Keeper,
    ServerConfig,
    login,
    save_server,
)
from grantkeeper._oauth.client_assertion import CLIENT_ASSERTION_TYPE, key_source
from grantkeeper._oauth.grants import renewal_request
from grantkeeper._record import CLIENT_CREDENTIALS
from grantkeeper._rules import Action, Context, decide
from grantkeeper.testing import sample_record
from harness.authserver import AuthServer
from harness.resource_server import ResourceServer
from tests.login_helpers import introspect, remember

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ISSUER = "https://auth.example.com"


MACHINE: dict[str, Any] = {
    "refresh_token": None,
    "resource": "https://mcp.example.com/mcp",
    "issuer": ISSUER,
    "token_endpoint": f"{ISSUER}/token",
    "client_id": "machine",
    "client_secret": "machine-secret",
    "token_endpoint_auth_method": "client_secret_basic",
    "grant": CLIENT_CREDENTIALS,
    "scope_requested": "mcp",
    "scope": None,
    "subject": None,
}


def machine_record(**changes: Any) -> Credential:
    """A machine client's credential, obtained an hour before NOW and expired a second ago;
    ``changes`` override its fields."""
    start = NOW - timedelta(hours=1)
    return sample_record("cc-access-1", now=start, lifetime=3599, **{**MACHINE, **changes})


# -- renewal, stepped by hand -------------------------------------------------------------


def test_renewal_of_a_machine_credential_asks_again_with_basic_auth() -> None:
    request = renewal_request(machine_record(), NOW)
    assert request.form == {
        "grant_type": "client_credentials",
        "scope": "mcp",
        "resource": "https://mcp.example.com/mcp",
    }
    expected = base64.b64encode(b"machine:machine-secret").decode()
    assert request.headers == {"Authorization": f"Basic {expected}"}


def test_renewal_with_client_secret_post_puts_the_secret_in_the_form() -> None:
    request = renewal_request(machine_record(token_endpoint_auth_method="client_secret_post"), NOW)
    assert request.form["client_id"] == "machine"
    assert request.form["client_secret"] == "machine-secret"
    assert request.headers == {}


def test_renewal_with_private_key_jwt_signs_a_new_assertion(
    ec_key: tuple[ec.EllipticCurvePrivateKey, Path],
) -> None:
    record = machine_record(
        token_endpoint_auth_method="private_key_jwt",
        client_secret=None,
        client_key_source=key_source(file=str(ec_key[1])),
    )
    request = renewal_request(record, NOW)
    assert request.form["client_assertion_type"] == CLIENT_ASSERTION_TYPE
    assert request.form["client_assertion"].count(".") == 2
    assert "client_secret" not in request.form and request.headers == {}
    assert "client_assertion" not in repr(request) and request.form["client_assertion"] not in repr(
        request
    )


def test_renewal_of_a_person_s_credential_still_spends_the_refresh_token() -> None:
    record = machine_record(grant=None, refresh_token="rt-1")
    assert renewal_request(record, NOW).form["grant_type"] == "refresh_token"


def test_an_expired_machine_credential_is_renewed_not_sent_to_a_login() -> None:
    ctx = Context(now=NOW, skew=timedelta(seconds=30), pid=1, host="h")
    decision = decide(machine_record(), ctx, key="k")
    assert decision.action is Action.REFRESH
    assert decision.intent is not None
    # A person's credential without a refresh token still needs the person.
    person = decide(machine_record(grant=None), ctx, key="k")
    assert person.action is Action.FAIL


# -- against the real oidc-provider ------------------------------------------------------


def cc_count(server: AuthServer) -> int:
    return int(server.stats()["client_credentials_success"])


def jwt_key_file(server: AuthServer, tmp_path: Path) -> Path:
    with httpx.Client(trust_env=False, timeout=10) as http:
        pem = http.get(f"{server.issuer}/__admin/cc-jwt-key").json()["private_key_pem"]
    path = tmp_path / "cc-jwt.pem"
    path.write_text(pem)
    path.chmod(0o600)
    return path


def machine_login(
    resource: ResourceServer,
    store: FileStore,
    client_id: str,
    secret: str | None,
    method: str | None = None,
    key_file: str | None = None,
) -> Credential:
    """Log ``client_id`` in at ``resource`` with the client_credentials grant, into ``store``:
    it proves itself with ``secret`` or the key in ``key_file``, by ``method`` if given."""
    client: dict[str, Any] = {
        "client_id": client_id,
        "client_secret": secret,
        "client_auth_method": method,
        "client_key_file": key_file,
    }
    return login(resource.url, store=store, client_credentials=True, **client)


def grantkeeper(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m grantkeeper *args`` in a child that inherits this environment, its
    output captured as text."""
    command = [sys.executable, "-m", "grantkeeper", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def renew_concurrently(keeper: Keeper, rejected: str, callers: int = 8) -> set[str]:
    """``callers`` threads report the same rejected token at once; return what they got."""
    barrier = threading.Barrier(callers)
    got: list[str] = []

    def call() -> None:
        barrier.wait()
        got.append(keeper.credential(rejected=rejected, timeout=60).access_token)

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == callers
    return set(got)


@pytest.mark.realserver
@pytest.mark.parametrize(
    ("client_id", "secret", "method"),
    [
        ("cc-basic", "cc-basic-secret", None),
        ("cc-post", "cc-post-secret", "client_secret_post"),
        ("cc-jwt", None, "private_key_jwt"),
    ],
)
def test_each_auth_method_obtains_and_renews_once_per_expiry(
    auth_server: AuthServer,
    resource: ResourceServer,
    tmp_path: Path,
    client_id: str,
    secret: str | None,
    method: str | None,
) -> None:
    store = FileStore(tmp_path)
    key_file = str(jwt_key_file(auth_server, tmp_path)) if client_id == "cc-jwt" else None
    before = cc_count(auth_server)
    record = remember(machine_login(resource, store, client_id, secret, method, key_file))
    assert record.grant == CLIENT_CREDENTIALS and record.refresh_token is None
    assert record.token_endpoint_auth_method == (method or "client_secret_basic")
    assert introspect(auth_server, record.access_token)["active"] is True
    assert cc_count(auth_server) == before + 1
    on_disk = next((tmp_path / "credentials").iterdir()).read_text()
    assert "PRIVATE KEY" not in on_disk

    with Keeper(store, CredentialKey.for_server(resource.url)) as keeper:
        assert keeper.credential().access_token == record.access_token
        renewed = renew_concurrently(keeper, record.access_token)
    assert len(renewed) == 1 and record.access_token not in renewed
    assert cc_count(auth_server) == before + 2  # eight callers, one request
    assert introspect(auth_server, renewed.pop())["active"] is True


@pytest.mark.realserver
def test_a_wrong_secret_is_a_typed_error_that_names_no_secret(
    auth_server: AuthServer, resource: ResourceServer, tmp_path: Path
) -> None:
    from grantkeeper import ClientRegistrationInvalid

    with pytest.raises(ClientRegistrationInvalid) as caught:
        machine_login(resource, FileStore(tmp_path), "cc-basic", "not-the-secret-at-all")
    assert "not-the-secret-at-all" not in str(caught.value)


@pytest.mark.realserver
def test_cli_login_client_credentials_with_a_key_from_the_environment(
    auth_server: AuthServer,
    resource: ResourceServer,
    tmp_path: Path,
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GK_CC_KEY", jwt_key_file(auth_server, tmp_path).read_text())
    before = cc_count(auth_server)
    login_args = ["login", resource.url, "--name", "machine", "--client-credentials", "--json"]
    done = grantkeeper(*login_args, "--client-id", "cc-jwt", "--client-key-env", "GK_CC_KEY")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["refreshable"] is True
    assert "PRIVATE KEY" not in done.stdout + done.stderr
    servers = json.loads((home / "servers.json").read_text())["servers"]["machine"]
    assert servers["grant"] == "client_credentials" and servers["client_key_env"] == "GK_CC_KEY"
    assert servers["client_issuer"] == auth_server.issuer  # bound where it was issued
    assert cc_count(auth_server) == before + 1
    # A later process renews from servers.json's settings alone: `token` prints a fresh one.
    token = grantkeeper("token", "machine")
    assert token.returncode == 0, token.stderr
    assert introspect(auth_server, token.stdout.strip())["active"] is True


@pytest.mark.realserver
def test_cli_login_with_a_new_client_id_replaces_a_stale_issuer_binding(
    auth_server: AuthServer, resource: ResourceServer, home: Path
) -> None:
    """An entry whose client was used at another issuer (the server moved; the entry
    predates ``client_issuer``, so the stored credential says where) refuses to present
    it. Logging in with ``--client-id``, even the same id registered anew at the new
    issuer, rebinds the entry there, and later logins need no flag."""
    old_issuer = "https://old-issuer.example.com"
    save_server(
        ServerConfig(
            resource.url,
            name="moved",
            client_id="cc-basic",
            client_secret="cc-basic-secret",
            grant="client_credentials",
        ),
        home,
    )
    store = FileStore(home)
    key = CredentialKey.for_server(resource.url)
    store.write(
        key,
        sample_record(resource=resource.url, issuer=old_issuer, client_id="cc-basic"),
        expected_version=None,
    )
    stale = grantkeeper("login", "moved", "--client-credentials", "--json")
    assert stale.returncode != 0 and old_issuer in stale.stderr
    assert "cc-basic-secret" not in stale.stdout + stale.stderr
    done = grantkeeper(
        "login", "moved", "--client-credentials", "--client-id", "cc-basic",
        "--client-secret", "cc-basic-secret", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    saved = json.loads((home / "servers.json").read_text())["servers"]["moved"]
    assert saved["client_issuer"] == auth_server.issuer
    again = grantkeeper("login", "moved", "--client-credentials", "--json")
    assert again.returncode == 0, again.stderr
