"""A scripted authorization server for login and token-request tests: its metadata, a client
registry and token endpoint (:class:`FakeAS`), a browser that answers its authorization URL,
and a token request sent both ways (sync and async)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from grantkeeper import CallbackTimeout
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


PAR_ENDPOINT = f"{ISSUER}/par"
"""Where :class:`FakeAS` takes pushed authorization requests (RFC 9126)."""


class FakeAS:
    """Registers clients and answers the token endpoint; forgets clients on request.

    ``forget`` makes the next token requests fail with ``invalid_client``. :meth:`restart`
    forgets every client, as a server that lost its state: the authorization endpoint then
    refuses them (400), and so do pushed requests and registration reads. With
    ``management`` registrations come with an RFC 7592 read URI and token."""

    def __init__(
        self,
        forget: int = 0,
        *,
        management: bool = False,
        rotate: bool = False,
        issuer: str = ISSUER,
        name: str = "",
    ) -> None:
        self.rotate = rotate  # a new registration access token on every read (RFC 7592 §3)
        self.read_tokens: dict[str, str] = {}
        self.issuer = issuer
        self.name = name  # before every client ID and token it issues, to tell servers apart
        self.revoked: list[dict[str, list[str]]] = []
        self.registered: list[str] = []
        self.token_forms: list[dict[str, list[str]]] = []
        self.forget = forget
        self.management = management
        self.forgotten: set[str] = set()
        self.pushed: list[dict[str, list[str]]] = []
        self.reads: list[tuple[str, str | None]] = []
        self.authorize_probes: list[str] = []

    def restart(self) -> None:
        """Lose every registration, as a server restarted without its state."""
        self.forgotten.update(self.registered)

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/register":
            client_id = f"{self.name}client-{len(self.registered) + 1}"
            self.registered.append(client_id)
            body = {"client_id": client_id}
            if self.management:
                self.read_tokens[client_id] = f"registration-token-of-{client_id}"
                body["registration_client_uri"] = f"{self.issuer}/reg/{client_id}"
                body["registration_access_token"] = self.read_tokens[client_id]
            return httpx.Response(201, json=body)
        if path.startswith("/reg/"):
            client_id = path.removeprefix("/reg/")
            self.reads.append((client_id, request.headers.get("authorization")))
            known = client_id in self.registered and client_id not in self.forgotten
            token = self.read_tokens.get(client_id)
            if not known or request.headers.get("authorization") != f"Bearer {token}":
                return httpx.Response(401, json={"error": "invalid_token"})
            body = {"client_id": client_id}
            if self.rotate:
                self.read_tokens[client_id] = f"{token}-again"
                body["registration_client_uri"] = str(request.url)
                body["registration_access_token"] = self.read_tokens[client_id]
            return httpx.Response(200, json=body)
        if path == "/authorize":
            client_id = request.url.params.get("client_id", "")
            self.authorize_probes.append(client_id)
            if client_id in self.forgotten or client_id not in self.registered:
                return httpx.Response(400, text="invalid_client")
            return httpx.Response(303, headers={"location": f"{self.issuer}/interaction/1"})
        form = parse_qs(request.content.decode())
        if path == "/revoke":
            self.revoked.append(form)
            return httpx.Response(200)
        if path == "/par":
            self.pushed.append(form)
            if form.get("client_id", [""])[0] in self.forgotten:
                return httpx.Response(401, json={"error": "invalid_client"})
            return httpx.Response(
                201, json={"request_uri": f"urn:example:{len(self.pushed)}", "expires_in": 60}
            )
        self.token_forms.append(form)
        if form.get("client_id", [""])[0] in self.forgotten:
            return httpx.Response(401, json={"error": "invalid_client"})
        if self.forget:
            self.forget -= 1
            return httpx.Response(401, json={"error": "invalid_client"})
        return httpx.Response(
            200,
            json={
                "access_token": f"{self.name}access-token-secret-value",
                "refresh_token": f"{self.name}refresh-token-secret-value",
                "token_type": "Bearer",
                "expires_in": 3600,
            },
        )

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handle))

    def browser(self, windows: list[str] | None = None) -> Callable[[str], str]:
        """A person at a browser: each URL opened is appended to ``windows``. A pushed
        request is looked up by its ``request_uri``. A client this server does not know
        gets the server's error page, so no redirect ever reaches the listener: the
        login's wait times out."""

        def authorize(url: str) -> str:
            if windows is not None:
                windows.append(url)
            query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
            if "request_uri" in query:
                number = int(query["request_uri"].rsplit(":", 1)[1])
                query = {k: v[0] for k, v in self.pushed[number - 1].items()}
            if query["client_id"] in self.forgotten or query["client_id"] not in self.registered:
                raise CallbackTimeout("no authorization redirect reached the listener")
            return f"{query['redirect_uri']}?" + urlencode(
                {"code": CODE, "state": query["state"], "iss": self.issuer}
            )

        return authorize


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
