"""A loopback server that repeats secrets back, in every place a server can put text: an MCP
endpoint, a token endpoint, a revocation endpoint and the discovery documents in one origin.

Fault injection for ``tests/test_echoed_secrets.py``. It echoes what it was sent (the bearer
on an MCP request, the refresh token, client secret and client assertion of a token request),
or what a test tells it it knows, so that a secret of every kind reaches every place.
"""

from __future__ import annotations

import base64
import http.server
import json
import secrets
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from harness import remember_secret

Place = Literal["reason", "body", "stream", "challenge", "scheme", "headers", "result"]
"""Where an answer carries the echo: the status line's reason phrase, the JSON body (an OAuth
``error_description``, a JSON-RPC error's message and data), a JSON-RPC error in an event
stream, ``WWW-Authenticate`` parameters, a ``WWW-Authenticate`` scheme (a 401 offering only
some other scheme), other headers (``Content-Type``, ``Retry-After``, ``X-Echo``), or a
successful MCP result."""

PLACES: tuple[Place, ...] = (
    "reason",
    "body",
    "stream",
    "challenge",
    "scheme",
    "headers",
    "result",
)


@dataclass
class Echo:
    """What the server does. ``kind`` names the secret it echoes (a key of ``known``)."""

    kind: str
    place: Place
    fail_mcp: bool = True
    """Whether the MCP endpoint answers with the echo (else it works, echoing nothing)."""
    fail_token: bool = False
    """Whether the token endpoint answers with the echo (else it issues tokens)."""
    fail_discovery: bool = False
    """Whether the unauthenticated probe and the resource metadata carry the echo."""
    known: dict[str, str] = field(default_factory=dict)
    """The secrets the server has seen or was told of, by kind."""
    issued: list[str] = field(default_factory=list)

    def text(self) -> str:
        return self.known.get(self.kind, f"nothing-known-of-{self.kind}")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except OSError:
            pass  # the client hung up mid-answer (a proxy that has exited)

    # -- plumbing --------------------------------------------------------------------------

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def _send(
        self,
        status: int,
        body: bytes = b"",
        *,
        reason: str | None = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status, reason)
        self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, document: Any, **kwargs: Any) -> None:
        self._send(status, json.dumps(document).encode(), **kwargs)

    @property
    def origin(self) -> str:
        return self.server.origin

    # -- routes ----------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        echo = self.server.echo
        if self.path == "/.well-known/oauth-protected-resource/mcp":
            if echo.fail_discovery:
                self._failed_document(echo)
                return
            self._json(
                200,
                {"resource": f"{self.origin}/mcp", "authorization_servers": [self.origin]},
            )
        elif self.path == "/.well-known/oauth-authorization-server":
            self._json(
                200,
                {
                    "issuer": self.origin,
                    "authorization_endpoint": f"{self.origin}/authorize",
                    "token_endpoint": f"{self.origin}/token",
                    "revocation_endpoint": f"{self.origin}/revoke",
                    "grant_types_supported": ["authorization_code", "client_credentials"],
                    "token_endpoint_auth_methods_supported": [
                        "client_secret_basic",
                        "private_key_jwt",
                    ],
                    "code_challenge_methods_supported": ["S256"],
                },
            )
        else:
            # The MCP endpoint's GET stream, and every other document: not here.
            self._send(405 if self.path == "/mcp" else 404)

    def do_DELETE(self) -> None:  # noqa: N802
        self._send(200)

    def do_POST(self) -> None:  # noqa: N802
        body = self._body()
        if self.path == "/mcp":
            self._mcp(body)
        elif self.path == "/token":
            self._token(dict(urllib.parse.parse_qsl(body.decode())))
        elif self.path == "/revoke":
            self._learn(dict(urllib.parse.parse_qsl(body.decode())))
            self._failed_oauth(self.server.echo)
        else:
            self._send(404)

    # -- the MCP endpoint ------------------------------------------------------------------

    def _mcp(self, body: bytes) -> None:
        echo = self.server.echo
        scheme, _, bearer = self.headers.get("Authorization", "").partition(" ")
        if not bearer:  # discovery's probe: no credential
            hint = f"{self.origin}/.well-known/oauth-protected-resource/mcp"
            if echo.fail_discovery and echo.place == "challenge":
                e = echo.text()
                hint = f"http://{e}.invalid/prm"
                challenge = f'Bearer resource_metadata="{hint}", scope="{e}"'
            else:
                challenge = f'Bearer resource_metadata="{hint}"'
            self._send(401, headers={"WWW-Authenticate": challenge})
            return
        try:
            message = json.loads(body)
        except ValueError:
            message = None
        if not isinstance(message, dict) or message.get("id") is None:
            self._send(202)  # a notification: accepted
            return
        # A request may name its place (one proxy session tries them all): tools/call echo.
        params = message.get("params")
        named = params.get("name") if isinstance(params, dict) else None
        place = named if named in PLACES else echo.place
        if echo.fail_mcp and place != "result":
            self._failed_mcp(echo, place, message["id"])
            return
        result = _result(message, echo.text() if place == "result" else "nothing")
        self._json(200, {"jsonrpc": "2.0", "id": message["id"], "result": result})

    def _failed_mcp(self, echo: Echo, place: str, request_id: Any) -> None:
        e = echo.text()
        if place == "reason":
            self._send(500, b"oops", reason=f"Failed {e}", content_type="text/plain")
        elif place in ("body", "stream"):
            error = {
                "code": -32600,
                "message": f"rejected {e} (began {e[:12]})",
                "data": {"error_description": e},
            }
            answer = json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error})
            if place == "body":
                self._send(400, answer.encode())
            else:
                event = f"event: message\ndata: {answer}\n\n".encode()
                self._send(200, event, content_type="text/event-stream")
        elif place == "challenge":
            challenge = (
                f'Bearer error="insufficient_scope", scope="mcp:read {e}", '
                f'error_description="denied {e}", resource_metadata="{e}"'
            )
            self._send(403, headers={"WWW-Authenticate": challenge})
        elif place == "scheme":
            self._send(401, headers={"WWW-Authenticate": f'{e} realm="{e}"'})
        else:  # headers
            self._send(200, content_type=f"text/{e}", headers={"X-Echo": e})

    # -- the token and revocation endpoints ------------------------------------------------

    def _learn(self, form: dict[str, str]) -> None:
        """Note the secrets a token or revocation request carried."""
        known = self.server.echo.known
        scheme, _, credential = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "basic":
            pair = base64.b64decode(credential).decode()
            known["client_secret"] = urllib.parse.unquote(pair.partition(":")[2])
        for name, kind in (
            ("client_secret", "client_secret"),
            ("client_assertion", "assertion"),
            ("refresh_token", "refresh"),
        ):
            if form.get(name):
                known[kind] = form[name]
                remember_secret(form[name])

    def _token(self, form: dict[str, str]) -> None:
        echo = self.server.echo
        self._learn(form)
        if echo.fail_token:
            self._failed_oauth(echo)
            return
        access = f"access-ISSUED-{secrets.token_urlsafe(12)}"
        remember_secret(access)
        echo.issued.append(access)
        tokens = {"access_token": access, "token_type": "Bearer", "expires_in": 3600}
        if form.get("refresh_token"):
            tokens["refresh_token"] = form["refresh_token"]  # no rotation
        self._json(200, tokens)

    def _failed_oauth(self, echo: Echo) -> None:
        e = echo.text()
        if echo.place == "reason":
            self._json(400, {"error": "invalid_request"}, reason=f"Bad {e}")
        elif echo.place == "body":
            described = {"error": "invalid_request", "error_description": f"got {e} ({e[:12]})"}
            self._json(400, described)
        elif echo.place in ("challenge", "scheme"):
            challenge = f'Basic realm="{e}", error_description="{e}"'
            self._json(401, {"error": "invalid_client"}, headers={"WWW-Authenticate": challenge})
        else:  # headers (and "result", which a token endpoint has not)
            self._json(429, {"error": "slow_down"}, headers={"Retry-After": e, "X-Echo": e})

    # -- discovery -------------------------------------------------------------------------

    def _failed_document(self, echo: Echo) -> None:
        e = echo.text()
        if echo.place == "reason":
            self._send(500, reason=f"Failed {e}")
        elif echo.place == "headers":
            self._send(200, b"{}", content_type=f"application/{e}", headers={"X-Echo": e})
        else:  # body (and the others, whose echo the probe's challenge carries)
            resource = f"http://{e}.invalid/mcp" if echo.place == "body" else f"{self.origin}/mcp"
            self._json(200, {"resource": resource, "authorization_servers": [self.origin]})


def _result(message: dict[str, Any], e: str) -> dict[str, Any]:
    """A working MCP server's answer: a tool whose description and results repeat ``e``."""
    method = message.get("method")
    if method == "initialize":
        params = message.get("params") or {}
        return {
            "protocolVersion": params.get("protocolVersion", "2025-06-18"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "echo", "version": "1"},
        }
    if method == "tools/list":
        tool = {"name": "echo", "description": f"says {e}", "inputSchema": {"type": "object"}}
        return {"tools": [tool]}
    if method == "tools/call":
        return {"content": [{"type": "text", "text": f"you sent {e} (began {e[:12]})"}]}
    return {}


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    echo: Echo
    origin: str


@contextmanager
def echo_server(echo: Echo) -> Iterator[str]:
    """Serve ``echo`` on a free loopback port; yield its origin (``http://127.0.0.1:PORT``)."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.echo = echo
    server.origin = f"http://127.0.0.1:{server.server_address[1]}"
    # A short poll: shutting down waits for the loop to look, once per test.
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield server.origin
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
