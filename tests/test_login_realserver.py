"""Login, token and status against the real oidc-provider, through a real resource
server, our real loopback listener, and the CLI run as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grantkeeper import (
    FileStore,
    GrantkeeperError,
    Keeper,
    ReauthenticationRequired,
    ServerConfig,
    login,
    save_server,
)
from harness import remember_secret
from harness.authserver import AuthServer
from harness.resource_server import Placement, ResourceServer
from tests.login_helpers import (
    CLI_TIMEOUT,
    FAR_FUTURE,
    Browser,
    cli,
    do_login,
    introspect,
    remember,
)

pytestmark = pytest.mark.realserver


def test_login_discovers_registers_and_stores_what_a_restart_needs(
    auth_server: AuthServer, resource: ResourceServer, home: Path
) -> None:
    before = auth_server.stats()
    record = do_login(auth_server, resource, home)
    assert record.issuer == auth_server.issuer
    assert record.token_endpoint and record.token_endpoint.startswith(auth_server.issuer)
    assert record.revocation_endpoint and record.revocation_endpoint.startswith(auth_server.issuer)
    assert record.resource == resource.url
    assert record.expires_at is not None and record.refresh_token
    assert record.scope is not None and "mcp" in record.scope.split()
    assert introspect(auth_server, record.access_token)["aud"] == resource.url
    assert auth_server.stats()["registrations"] == before["registrations"] + 1
    assert "POST /mcp" in resource.requests  # the 401 that started discovery

    # A new process after expiry: refreshes at the stored endpoint, discovers nothing.
    seen = len(resource.requests)
    key = ServerConfig(resource.url).key
    with Keeper(FileStore(home), key, clock=lambda: FAR_FUTURE) as restarted:
        fresh = remember(restarted.credential())
    assert fresh.access_token != record.access_token
    assert introspect(auth_server, fresh.access_token)["active"] is True
    assert auth_server.stats()["refresh_success"] == before["refresh_success"] + 1
    assert auth_server.stats()["replays"] == 0
    assert len(resource.requests) == seen


def test_cli_login_no_browser_then_token_and_status(
    auth_server: AuthServer, resource: ResourceServer, home: Path
) -> None:
    env = {**os.environ, "GRANTKEEPER_HOME": str(home), "GRANTKEEPER_STORE": "file"}
    process = subprocess.Popen(
        [sys.executable, "-m", "grantkeeper", "login", resource.url, "--no-browser"]
        + ["--name", "demo", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    url = ""
    for line in process.stderr:
        if line.startswith("http"):
            url = line.strip()
            break
    assert url, "login printed no authorization URL"
    Browser(auth_server)(url)
    stdout, stderr = process.communicate(timeout=CLI_TIMEOUT)
    assert process.returncode == 0, stderr
    result = json.loads(stdout)
    assert result["name"] == "demo" and result["state"] == "oauth" and result["refreshable"]

    token = cli("token", "demo", home=home)
    assert token.returncode == 0, token.stderr
    remember_secret(token.stdout.strip())
    assert introspect(auth_server, token.stdout.strip())["active"] is True

    status = cli("status", "--json", home=home)
    assert status.returncode == 0, status.stderr
    [entry] = json.loads(status.stdout)
    assert entry["name"] == "demo" and entry["state"] == "oauth"
    assert token.stdout.strip() not in status.stdout

    listing = cli("list", "--json", home=home)
    assert [e["name"] for e in json.loads(listing.stdout)] == ["demo"]


def test_revoked_grant_moves_status_to_reauthentication_and_token_exits_3(
    auth_server: AuthServer, resource: ResourceServer, home: Path
) -> None:
    record = do_login(auth_server, resource, home)
    save_server(ServerConfig(resource.url, name="svc"), home)
    assert json.loads(cli("status", "svc", "--json", home=home).stdout)[0]["state"] == "oauth"
    auth_server.revoke_all()
    key = ServerConfig(resource.url).key
    with (
        pytest.raises(ReauthenticationRequired),
        Keeper(FileStore(home), key, clock=lambda: FAR_FUTURE) as keeper,
    ):
        keeper.credential()

    status = cli("status", "svc", "--json", home=home)
    assert status.returncode == 3
    assert json.loads(status.stdout)[0]["state"] == "reauthentication_required"
    token = cli("token", "svc", home=home)
    assert token.returncode == 3
    assert token.stdout == ""
    assert token.stderr.startswith("error: ") and len(token.stderr.strip().splitlines()) == 1
    assert "Traceback" not in token.stderr
    assert record.access_token not in token.stderr


def test_manual_login_takes_a_pasted_redirect(
    auth_server: AuthServer, resource: ResourceServer, home: Path
) -> None:
    env = {**os.environ, "GRANTKEEPER_HOME": str(home), "GRANTKEEPER_STORE": "file"}
    process = subprocess.Popen(
        [sys.executable, "-m", "grantkeeper", "login", resource.url, "--manual"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None and process.stdin is not None
    url = next(line.strip() for line in process.stderr if line.startswith("http"))
    # The browser is elsewhere (a remote shell): the redirect is never delivered, only pasted.
    callback = auth_server.approve(url)
    stdout, stderr = process.communicate(callback + "\n", timeout=CLI_TIMEOUT)
    assert process.returncode == 0, stderr
    assert stdout.startswith("Logged in to 127.0.0.1")
    assert callback not in stdout + stderr


@pytest.mark.parametrize(
    ("placement", "hint"), [("path", False), ("root", False), ("root", True), ("none", True)]
)
def test_discovery_variants_against_the_real_server(
    auth_server: AuthServer, home: Path, placement: Placement, hint: bool
) -> None:
    with ResourceServer(auth_server.issuer, placement=placement, hint=hint) as server:
        if placement == "none":
            # No resource metadata and no AS metadata at the server's origin: the legacy
            # default endpoints are guessed, and their absence is a typed error.
            with pytest.raises(GrantkeeperError):
                login(server.url, store=FileStore(home), open_browser=Browser(auth_server))
            assert FileStore(home).keys() == []
            return
        record = remember(
            login(server.url, store=FileStore(home), open_browser=Browser(auth_server))
        )
    assert record.issuer == auth_server.issuer


def test_status_check_tells_login_required_from_unsupported(
    auth_server: AuthServer, resource: ResourceServer, home: Path
) -> None:
    save_server(ServerConfig(resource.url, name="guarded"), home)
    result = cli("status", "guarded", "--check", "--json", home=home)
    assert result.returncode == 3
    assert json.loads(result.stdout)[0]["state"] == "login_required"
