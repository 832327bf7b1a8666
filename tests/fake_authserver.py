"""A scripted authorization server for login and token-request tests: its metadata, a client
registry and token endpoint (:class:`FakeAS`), a browser that answers its authorization URL,
and a token request sent both ways (sync and async)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from grantkeeper._oauth.auth_server_metadata import AuthServerMetadata
from grantkeeper._oauth.discovery import Discovery
from grantkeeper._oauth.token_client import asend_token_request, send_token_request
from grantkeeper._oauth.token_endpoint import TokenRequest
from tests.helpers import T0

Handler = Callable[[httpx.Request], httpx.Response]

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


def both_ways(handler: Handler | None, request: TokenRequest, **kwargs: Any) -> list[object]:
    """Send ``request`` with the sync and the async sender; return what each gave or raised."""
    transport = None if handler is None else httpx.MockTransport(handler)
    results: list[object] = []
    with httpx.Client(transport=transport) as client:
        try:
            results.append(send_token_request(client, request, now=lambda: T0, **kwargs))
        except Exception as exc:
            results.append(exc)

    async def send_async() -> object:
        async with httpx.AsyncClient(transport=transport) as client:
            try:
                return await asend_token_request(client, request, now=lambda: T0, **kwargs)
            except Exception as exc:
                return exc

    results.append(asyncio.run(send_async()))
    return results
