"""DPoP (RFC 9449) on a shared credential, against the real oidc-provider and MCP server.

oidc-provider runs with DPoP and nonces required (``--dpop nonce``): it binds access and
refresh tokens to the proof's key, and refuses a refresh with another key. The harness MCP
server checks every proof with joserfc (``harness/dpop_check.py``) and asks for its own
nonce. One key per credential, stored with the record: every process signs with it.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from grantkeeper import (
    AuthState,
    Credential,
    FileStore,
    HttpxAuth,
    Keeper,
    ServerConfig,
    auth_status,
    login,
)
from grantkeeper._oauth.dpop import RESOURCE_NONCES, TOKEN_NONCES
from grantkeeper.mcp import connect
from harness.authserver import AuthServer
from harness.fleet import run_fleet
from harness.mcp_server import INITIALIZE, McpServer
from harness.real_login import age

pytestmark = pytest.mark.realserver

AUTH_SERVER = {"access_ttl": 300, "dpop": "nonce"}
REDIRECT_URI = "http://127.0.0.1:9/callback"
MCP_HEADERS = {"accept": "application/json, text/event-stream"}


@pytest.fixture(scope="module")
def dpop_server(auth_server: AuthServer) -> Iterator[McpServer]:
    with McpServer(auth_server=auth_server, dpop_nonce=True) as running:
        yield running


@pytest.fixture
def mcp(dpop_server: McpServer, auth_server: AuthServer) -> McpServer:
    """The MCP server and the AS, their counts reset; no nonce held in this process."""
    dpop_server.reset()
    auth_server.reset_stats()
    TOKEN_NONCES.clear()
    RESOURCE_NONCES.clear()
    return dpop_server


def log_in(auth: AuthServer, url: str, store: FileStore, **options: Any) -> Credential:
    """grantkeeper's own login, the browser played against the real server."""
    return login(
        ServerConfig(url, profile=f"p{uuid.uuid4().hex[:8]}", **options),
        store=store,
        authorize=lambda authorize_url: auth.approve(authorize_url, REDIRECT_URI),
        redirect_uri=REDIRECT_URI,
    )


def test_login_binds_the_tokens_to_a_stored_key_and_every_request_proves_it(
    auth_server: AuthServer, mcp: McpServer, tmp_path: Path
) -> None:
    store = FileStore(tmp_path)
    credential = log_in(auth_server, mcp.url, store)
    assert credential.token_type == "DPoP" and credential.dpop
    assert credential.dpop_key is not None
    stats = auth_server.stats()
    assert stats["dpop_tokens"] == 1  # the code exchange, bound to the key
    assert stats["dpop_nonce_challenges"] == 1  # asked once, answered once
    assert stats["code_errors"] == []

    (key,) = store.keys()
    config = ServerConfig(mcp.url, profile=key.profile)
    assert auth_status(config, store).state is AuthState.OAUTH  # nothing to do

    with Keeper(store, key) as keeper:

        async def go() -> Any:
            async with connect(mcp.url, keeper=keeper, mode="legacy") as session:
                result = await session.call_tool("add", {"a": 2, "b": 3})
                return (result.structured_content or {}).get("result")

        assert asyncio.run(go()) == 5
    assert mcp.proofs.rejected == []
    assert mcp.proofs.accepted >= 2  # initialize, the call (and more of the session)
    assert mcp.proofs.nonce_challenges == 1  # the first proof; the nonce is kept after


def test_a_refresh_proves_the_same_key_and_the_new_token_works(
    auth_server: AuthServer, mcp: McpServer, tmp_path: Path
) -> None:
    store = FileStore(tmp_path)
    first = log_in(auth_server, mcp.url, store)
    (key,) = store.keys()
    age(store, key, expires_in=timedelta(seconds=-1))
    with Keeper(store, key) as keeper:
        renewed = keeper.credential()
        with httpx.Client(auth=HttpxAuth(keeper), headers=MCP_HEADERS, timeout=30) as client:
            assert client.post(mcp.url, json=INITIALIZE).status_code == 200
    assert renewed.access_token != first.access_token
    assert renewed.dpop_key == first.dpop_key and renewed.token_type == "DPoP"
    stats = auth_server.stats()
    assert stats["refresh_success"] == 1
    assert stats["refresh_errors"] == [] and stats["replays"] == 0
    assert mcp.proofs.rejected == []
    # The refresh token is bound to the key (a public client): the stored key is the key.
    assert store.read(key).record.dpop_key == first.dpop_key  # type: ignore[union-attr]


def test_the_bound_token_sent_as_bearer_is_refused(
    auth_server: AuthServer, mcp: McpServer, tmp_path: Path
) -> None:
    """The harness server's own check, which every other test here leans on: the sender
    constraint holds there, so a token grantkeeper sent without its proof would fail."""
    store = FileStore(tmp_path)
    credential = log_in(auth_server, mcp.url, store)
    bearer = {**MCP_HEADERS, "authorization": f"Bearer {credential.access_token}"}
    assert httpx.post(mcp.url, json=INITIALIZE, headers=bearer, timeout=30).status_code == 401


def test_dpop_off_for_the_server_gets_bearer_tokens(
    auth_server: AuthServer, mcp: McpServer, tmp_path: Path
) -> None:
    credential = log_in(auth_server, mcp.url, FileStore(tmp_path), dpop=False)
    assert credential.token_type == "Bearer" and credential.dpop_key is None
    assert auth_server.stats()["dpop_tokens"] == 0


def test_a_fleet_shares_one_key_through_rotations_with_no_replay(
    auth_server: AuthServer, mcp: McpServer, tmp_path: Path
) -> None:
    """8 processes x 4 threads through 6 rotations: each caller sends an MCP request with
    its token and a fresh proof of the one stored key."""
    store = FileStore(tmp_path)
    log_in(auth_server, mcp.url, store)
    (key,) = store.keys()
    auth_server.reset_stats()
    mcp.reset()  # the login's discovery requests
    rounds = 6
    report = run_fleet(
        functools.partial(FileStore, tmp_path),
        key,
        processes=8,
        threads=4,
        rounds=rounds,
        resource_url=mcp.url,
    )
    stats = auth_server.stats()
    assert report.errors == []
    assert report.requests == 8 * 4 * rounds
    assert [len(tokens) for tokens in report.tokens_per_round] == [1] * rounds
    assert stats["refresh_success"] == rounds  # refresh calls == rotations
    assert stats["replays"] == 0 and stats["refresh_errors"] == []
    assert stats["dpop_tokens"] == rounds
    assert mcp.proofs.rejected == []  # every proof accepted
    answers = collections.Counter((seen.method, seen.status) for seen in mcp.seen())
    assert answers == {("POST", 200): 8 * 4 * rounds}, answers
    assert mcp.proofs.accepted == 8 * 4 * rounds


def test_a_machine_client_gets_a_bound_token_and_its_renewal_proves_the_same_key(
    auth_server: AuthServer, mcp: McpServer, tmp_path: Path
) -> None:
    """Client credentials (RFC 6749 §4.4) with DPoP: renewed by asking again, same key."""
    store = FileStore(tmp_path)
    first = login(
        ServerConfig(mcp.url, profile="machine"),
        store=store,
        client_credentials=True,
        client_id="cc-basic",
        client_secret="cc-basic-secret",
    )
    assert first.token_type == "DPoP" and first.dpop
    (key,) = store.keys()
    age(store, key, expires_in=timedelta(seconds=-1))
    with Keeper(store, key) as keeper:
        with httpx.Client(auth=HttpxAuth(keeper), headers=MCP_HEADERS, timeout=30) as client:
            assert client.post(mcp.url, json=INITIALIZE).status_code == 200
        renewed = keeper.credential()
    assert renewed.access_token != first.access_token
    assert renewed.dpop_key == first.dpop_key and renewed.token_type == "DPoP"
    stats = auth_server.stats()
    assert stats["client_credentials_success"] == 2 and stats["dpop_tokens"] == 2
    assert mcp.proofs.rejected == []
