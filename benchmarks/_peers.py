"""The clients compared in P1 and P2, each holding the same fresh, really issued token.

Every peer is an ``httpx2.AsyncClient`` configured the way its users configure it, so the
benchmarks drive all of them through the same code (the ``mcp`` SDK's streamable HTTP
transport, or plain requests) and differ only in how a request gets its credential:

- ``static``: an ``Authorization`` header set once on the client (the floor);
- ``grantkeeper``: :func:`grantkeeper.mcp.httpx2_auth` over a :class:`~grantkeeper.Keeper`;
- ``mcp SDK``: ``mcp.client.auth.OAuthClientProvider`` whose storage holds the token;
- ``fastmcp``: ``fastmcp.client.auth.OAuth`` whose key-value store holds the token.

fastmcp's ``OAuth`` is measured as the ``httpx2.Auth`` it is (``fastmcp.Client`` passes it
to the same transport), so its client wrapper's own costs don't blur the comparison.
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

from grantkeeper import Credential, CredentialKey, FileStore, Keeper
from grantkeeper._freshness import utc_now
from grantkeeper.mcp import httpx2_auth

PEERS = ("static", "grantkeeper", "mcp SDK", "fastmcp")
REDIRECT_URI = "http://127.0.0.1:9/callback"


@dataclass(frozen=True)
class Login:
    """One real login: the server it is for, where grantkeeper stored it, and the record."""

    url: str
    home: Path
    credential: Credential


@contextlib.contextmanager
def logged_in(url: str | None = None, *, access_ttl: int = 3600) -> Iterator[Login]:
    """A real oidc-provider on loopback and a login to ``url``.

    Without ``url``, a real ``mcp`` server is started beside it, in a process of its own,
    and the login is for that.
    """
    from benchmarks._server_process import mcp_server_process
    from harness.authserver import AuthServer
    from harness.real_login import log_in

    with contextlib.ExitStack() as stack:
        home = stack.enter_context(tempfile.TemporaryDirectory(prefix="gk-bench-"))
        auth = stack.enter_context(AuthServer(access_ttl=access_ttl))
        if url is None:
            url = stack.enter_context(mcp_server_process(auth.issuer))
        credential = log_in(auth, FileStore(home), CredentialKey.for_server(url), resource=url)
        yield Login(url, Path(home), credential)


def _refuse_browser(*_: object) -> Any:
    raise RuntimeError("the benchmark's token is fresh: no peer may start a browser login")


class _HeldTokens:
    """The ``mcp`` SDK's ``TokenStorage``, holding one login in memory."""

    def __init__(self, tokens: Any, client: Any) -> None:
        self.tokens, self.client = tokens, client

    async def get_tokens(self) -> Any:
        return self.tokens

    async def set_tokens(self, tokens: Any) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> Any:
        return self.client

    async def set_client_info(self, client_info: Any) -> None:
        self.client = client_info


def _sdk_shapes(credential: Credential) -> tuple[Any, Any, Any]:
    """The login as the SDK's token, client registration and client metadata."""
    from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
    from pydantic import AnyUrl

    assert credential.expires_at is not None and credential.client_id is not None
    expires_in = int((credential.expires_at - utc_now()).total_seconds())
    token = OAuthToken(
        access_token=credential.access_token,
        refresh_token=credential.refresh_token,
        expires_in=expires_in,
        scope=credential.scope,
    )
    client = OAuthClientInformationFull(
        client_id=credential.client_id,
        client_secret=credential.client_secret,
        redirect_uris=[AnyUrl(REDIRECT_URI)],
        token_endpoint_auth_method=credential.token_endpoint_auth_method,
        scope=credential.scope,
    )
    metadata = OAuthClientMetadata(redirect_uris=[AnyUrl(REDIRECT_URI)], scope=credential.scope)
    return token, client, metadata


@contextlib.asynccontextmanager
async def peer_client(
    peer: str, login: Login, *, limits: httpx2.Limits | None = None
) -> AsyncIterator[httpx2.AsyncClient]:
    """An ``httpx2.AsyncClient`` that authenticates the way ``peer`` does."""
    options: dict[str, Any] = {"timeout": httpx2.Timeout(60.0), "follow_redirects": False}
    if limits is not None:
        options["limits"] = limits
    credential = login.credential
    keeper: Keeper | None = None
    if peer == "static":
        options["headers"] = {"Authorization": f"Bearer {credential.access_token}"}
    elif peer == "grantkeeper":
        keeper = Keeper(FileStore(login.home), CredentialKey.for_server(login.url))
        options["auth"] = httpx2_auth(login.url, keeper=keeper)
    elif peer == "mcp SDK":
        from mcp.client.auth import OAuthClientProvider

        token, client, metadata = _sdk_shapes(credential)
        options["auth"] = OAuthClientProvider(
            login.url, metadata, _HeldTokens(token, client), _refuse_browser, _refuse_browser
        )
    elif peer == "fastmcp":
        options["auth"] = await _fastmcp_auth(login)
    else:
        raise ValueError(f"unknown peer {peer!r}; choose from {', '.join(PEERS)}")
    try:
        async with httpx2.AsyncClient(**options) as http:
            yield http
    finally:
        if keeper is not None:
            keeper.close()


async def _fastmcp_auth(login: Login) -> httpx2.Auth:
    from fastmcp.client.auth import OAuth
    from key_value.aio.stores.memory import MemoryStore

    token, client, _ = _sdk_shapes(login.credential)
    with warnings.catch_warnings():
        # fastmcp warns that an in-memory store forgets tokens on restart: true, and beside
        # the point of a benchmark that starts from a stored token.
        warnings.simplefilter("ignore", UserWarning)
        oauth = OAuth(login.url, scopes=login.credential.scope, token_storage=MemoryStore())
    await oauth.token_storage_adapter.set_tokens(token)
    await oauth.token_storage_adapter.set_client_info(client)
    oauth.redirect_handler = _refuse_browser  # type: ignore[method-assign,assignment]
    return oauth
