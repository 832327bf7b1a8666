"""Fakes for testing code that uses grantkeeper: a clock, a keyring, a token endpoint.

See :mod:`grantkeeper.testing`, which exports them.
"""

from __future__ import annotations

import http.server
import itertools
import json
import secrets
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from ._record import Credential, CredentialKey

__all__ = [
    "KEY",
    "OTHER",
    "FakeProvider",
    "Fault",
    "Grant",
    "KeyringLocked",
    "MemoryKeyring",
    "StepClock",
    "sample_record",
]

try:
    from keyring.errors import KeyringLocked
except ImportError:  # the keyring extra is optional; the store knows the error by name

    class KeyringLocked(Exception):  # type: ignore[no-redef]
        """What a locked keyring raises (``keyring.errors.KeyringLocked``)."""


class StepClock:
    """A clock (a :data:`~grantkeeper.Clock`) that moves only when the test says so."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start if start is not None else datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward."""
        self.now += timedelta(seconds=seconds)


class MemoryKeyring:
    """An in-memory ``keyring`` backend for :class:`~grantkeeper.KeyringStore`.

    Set ``locked`` to make every call fail as a desktop keyring does after a screen lock.
    ``secrets`` holds what was stored, by (service, username).
    """

    def __init__(self, *, locked: bool = False) -> None:
        self.secrets: dict[tuple[str, str], str] = {}
        self.locked = locked
        self._mutex = threading.Lock()

    def _check(self) -> None:
        if self.locked:
            raise KeyringLocked("Failed to unlock the collection!")

    def get_password(self, service: str, username: str) -> str | None:
        with self._mutex:
            self._check()
            return self.secrets.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        with self._mutex:
            self._check()
            self.secrets[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        with self._mutex:
            self._check()
            self.secrets.pop((service, username), None)


Fault = Callable[[dict[str, str]], "httpx.Response | None"]


@dataclass
class Grant:
    """One authorization: its live refresh token and the access tokens it issued."""

    refresh_token: str
    access_tokens: set[str] = field(default_factory=set)
    revoked: bool = False


class FakeProvider:
    """A token endpoint at ``http://127.0.0.1:<port>/token`` (or any URL via MockTransport).

    ``refresh_calls``, ``rotations`` and ``replays`` count what it saw; ``faults`` scripts
    answers (each a function of the form, returning a response or ``None`` to answer
    normally); ``on_token`` sees every token it mints (a test's secret scanner).
    """

    def __init__(
        self,
        *,
        expires_in: Any = 3600,
        invalid_grant_status: int = 400,
        on_token: Callable[[str], None] | None = None,
    ) -> None:
        self.expires_in = expires_in
        self.on_token = on_token
        self.invalid_grant_status = invalid_grant_status
        self.lock = threading.Lock()
        self.grants: list[Grant] = []
        self.spent: dict[str, Grant] = {}
        self.refresh_calls = 0
        self.rotations = 0
        self.replays = 0
        self.faults: list[Fault] = []
        self._counter = itertools.count(1)
        self._server: http.server.ThreadingHTTPServer | None = None
        self.url = "http://127.0.0.1:9/token"
        self.omit_refresh_token = False

    # -- grants -------------------------------------------------------------------------

    def issue(self) -> tuple[str, str]:
        """Start a new grant; return its (access token, refresh token)."""
        with self.lock:
            grant = Grant(self._token("rt"))
            access = self._token("at")
            grant.access_tokens.add(access)
            self.grants.append(grant)
            return access, grant.refresh_token

    def _token(self, prefix: str) -> str:
        token = f"{prefix}-{next(self._counter)}-{secrets.token_urlsafe(16)}"
        if self.on_token is not None:
            self.on_token(token)
        return token

    def is_active(self, access_token: str) -> bool:
        """Whether a resource server would accept ``access_token``."""
        with self.lock:
            return any(access_token in g.access_tokens and not g.revoked for g in self.grants)

    # -- the endpoint -------------------------------------------------------------------

    def handle(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """Answer one token request."""
        with self.lock:
            if form.get("grant_type") != "refresh_token":
                return 400, {"error": "unsupported_grant_type"}
            self.refresh_calls += 1
            token = form.get("refresh_token", "")
            for grant in self.grants:
                if grant.refresh_token == token and not grant.revoked:
                    self.spent[token] = grant
                    access = self._token("at")
                    grant.access_tokens.add(access)
                    body: dict[str, Any] = {
                        "access_token": access,
                        "token_type": "Bearer",
                        "expires_in": self.expires_in,
                    }
                    if not self.omit_refresh_token:
                        grant.refresh_token = self._token("rt")
                        body["refresh_token"] = grant.refresh_token
                        self.rotations += 1
                    return 200, body
            if token in self.spent:
                self.replays += 1
                self.spent[token].revoked = True
            return self.invalid_grant_status, {
                "error": "invalid_grant",
                "error_description": "grant request is invalid",
            }

    def mock_handler(self, request: httpx.Request) -> httpx.Response:
        """``httpx.MockTransport`` handler: scripted faults first, then :meth:`handle`."""
        form = dict(urllib.parse.parse_qsl(request.content.decode()))
        if self.faults:
            fault = self.faults.pop(0)
            answer = fault(form)
            if answer is not None:
                return answer
        status, body = self.handle(form)
        return httpx.Response(status, json=body)

    def transport(self) -> httpx.MockTransport:
        """A transport that routes every request to this provider."""
        return httpx.MockTransport(self.mock_handler)

    # -- over real HTTP -----------------------------------------------------------------

    def serve(self) -> str:
        """Serve on a free loopback port in a thread; return the token endpoint URL."""
        provider = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                if self.path == "/introspect":
                    status, body = 200, {"active": provider.is_active(form.get("token", ""))}
                else:
                    status, body = provider.handle(form)
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{server.server_address[1]}/token"
        return self.url

    def close(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# -- records for tests ---------------------------------------------------------------------

KEY = CredentialKey.for_server("https://mcp.example.test/mcp")
OTHER = CredentialKey.for_server("https://mcp.example.test/mcp", "work")


def sample_record(
    access_token: str = "conformance-access-token-0001",
    refresh_token: str | None = "conformance-refresh-token-0001",
    *,
    now: datetime = datetime(2030, 1, 1, 11, 0, tzinfo=UTC),
    lifetime: float = 3600,
    **changes: Any,
) -> Credential:
    """A plausible credential with the given tokens, obtained at ``now`` and living
    ``lifetime`` seconds from then; ``changes`` override any other field."""
    record = Credential(
        access_token=access_token,
        refresh_token=refresh_token,
        resource="https://mcp.example.test/mcp",
        scope="mcp",
        expires_at=now + timedelta(seconds=lifetime),
        obtained_at=now,
        issuer="https://auth.example.test",
        token_endpoint="https://auth.example.test/token",
        client_id="conformance-client",
        subject="alice",
    )
    return record.replace(**changes)
