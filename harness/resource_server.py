"""A tiny protected resource on loopback: 401 + RFC 9728 metadata, for discovery tests.

It is not an MCP server (see ``harness/mcp_server.py`` for that): every request to the
resource path without an accepted token answers 401 with a Bearer challenge, and the
well-known paths serve protected resource metadata naming the authorization server.
Knobs let tests break it on purpose: no hint in the challenge, metadata only at the root,
none at all, or metadata for another resource.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

START_TIMEOUT = 60.0
"""Seconds to wait for uvicorn to accept connections."""

Placement = Literal["path", "root", "none"]


@dataclass
class ResourceServer:
    """Serve ``path`` on 127.0.0.1 as a protected resource of ``issuer``."""

    issuer: str
    path: str = "/mcp"
    placement: Placement = "path"
    """Where the metadata lives: path-aware well-known URL, root one, or nowhere."""
    hint: bool = True
    """Whether the 401 names the metadata URL (``resource_metadata``)."""
    scope: str | None = None
    """A ``scope`` for the challenge, if any."""
    scopes_supported: list[str] = field(default_factory=lambda: ["mcp"])
    resource_override: str | None = None
    """Claim this resource in the metadata instead of our own URL (a mix-up attack)."""
    accept: Callable[[str], bool] = lambda token: False
    """Decides whether a bearer token is accepted."""
    requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The protected resource's URL (what a user logs in to)."""
        return self.origin + self.path

    @property
    def metadata_url(self) -> str:
        suffix = self.path if self.placement == "path" else ""
        return f"{self.origin}/.well-known/oauth-protected-resource{suffix}"

    def _metadata(self, request: Request) -> Response:
        self.requests.append(f"GET {request.url.path}")
        wanted = self.metadata_url.removeprefix(self.origin)
        if self.placement == "none" or request.url.path != wanted:
            return JSONResponse({"error": "not found"}, status_code=404)
        body: dict[str, Any] = {
            "resource": self.resource_override or self.url,
            "authorization_servers": [self.issuer],
            "scopes_supported": self.scopes_supported,
            "bearer_methods_supported": ["header"],
        }
        return JSONResponse(body)

    def _resource(self, request: Request) -> Response:
        self.requests.append(f"{request.method} {request.url.path}")
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer ") and self.accept(header[7:]):
            return JSONResponse({"jsonrpc": "2.0", "id": 0, "result": {}})
        params = ['error="invalid_token"']
        if self.scope:
            params.append(f'scope="{self.scope}"')
        if self.hint:
            params.append(f'resource_metadata="{self.metadata_url}"')
        return JSONResponse(
            {"error": "invalid_token"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer " + ", ".join(params)},
        )

    def start(self) -> ResourceServer:
        app = Starlette(
            routes=[
                Route("/.well-known/oauth-protected-resource{rest:path}", self._metadata),
                Route(self.path, self._resource, methods=["GET", "POST", "DELETE"]),
            ]
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        server = self._server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="resource-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started:  # startup only; no test assertion depends on timing
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the resource server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(START_TIMEOUT)
            self._thread = None

    def __enter__(self) -> ResourceServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
