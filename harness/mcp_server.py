"""A real MCP server for tests and benchmarks: the ``mcp`` package's streamable HTTP on loopback.

It is an OAuth protected resource (RFC 9728) of an :class:`~harness.authserver.AuthServer`:
bearer tokens are checked by token introspection (opaque tokens, so a revoked token fails
at once), metadata is served at ``/.well-known/oauth-protected-resource/mcp`` and a 401
carries ``WWW-Authenticate: Bearer ..., resource_metadata="..."``.

Tools: ``echo``, ``add``, ``slow(ms)``, ``whoami`` and ``barrier(n)``, which returns only
once ``n`` calls are inside it at the same time (a concurrency proof without timing), and
``hold``, which stays in flight until the client cancels it. Four
more call back into the client, to prove its handlers are wired: ``sample`` (sampling),
``ask`` (elicitation), ``roots`` (roots/list) and ``log`` (a log message notification).
The SDK deprecates these features from protocol 2026-07-28 on; they work on sessions that
negotiated an earlier version (``mode="legacy"``). ``confirm(item)`` elicits who confirms
``item`` at either era: a resolver (``Resolve``) fills its parameter, so at 2026-07-28 the
call is answered with an ``InputRequiredResult`` and the client retries it with the answer
and the ``requestState`` (a multi-round-trip request, SEP-2322), and at an earlier version a
standalone ``elicitation/create`` goes to the client mid-call. ``harness.pipe_tools`` adds
those a pipe (``grantkeeper proxy``) is tested with. ``routed(region, note)`` designates
``region`` as the ``Mcp-Param-Region`` header (``x-mcp-header``), and the prompt ``grüße``
has a name that no header carries as it stands: a 2026-era request for either without the
right header is refused (SEP-2243). ``tools=`` adds tools served as given, past the SDK's
checks (one whose ``x-mcp-header`` is invalid, say, as a non-conforming server would list it).

With ``auth_server=None`` the server is not protected at all: no metadata, no 401.

Around the SDK's app sits a thin test-control layer: it records every HTTP request (method,
status, session id, the bearer token sent, its ``Mcp-*`` headers, the JSON-RPC message it
carried), and on demand answers the next requests of a method with 401 or 403 (or another
status: a 405 from a server without streamable HTTP, a 500), or treats
sessions as expired (404, as the SDK answers an unknown session). Tests wait for what they
expect with :meth:`McpServer.wait_for`, never by sleeping.

    with AuthServer() as auth, McpServer(auth_server=auth) as mcp:
        ... mcp.url ...
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Annotated, Any

import anyio
import httpx
import uvicorn
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context, Elicit, MCPServer, Resolve
from mcp.server.mcpserver.tools import Tool
from mcp.server.streamable_http import EventStore
from mcp_types import SamplingMessage, TextContent
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from harness import remember_secret
from harness.authserver import AuthServer
from harness.dpop_check import NonceNeeded, ProofChecker, ProofRejected
from harness.pipe_tools import RESUME_RETRY_MS, PipeEvents, add_pipe_tools

INTROSPECTOR = ("introspector", "introspector-secret")
"""The static client harness/oidc registers for token introspection."""

START_TIMEOUT = 60.0
"""Seconds to wait for uvicorn to accept connections."""

BARRIER_TIMEOUT = 20.0
"""A barrier that never fills fails after this long instead of hanging the suite."""

WAIT_TIMEOUT = 60.0
"""Default bound of :meth:`McpServer.wait_for`: a safety net, not a synchronisation."""

SESSION_HEADER = "mcp-session-id"

REGION: dict[str, Any] = {"x-mcp-header": "Region"}
"""The annotation of ``routed``'s ``region``: HTTP repeats it as ``Mcp-Param-Region``."""

PROMPT = "grüße"

INITIALIZE: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "grantkeeper-test", "version": "0"},
    },
}
"""The first request of a raw host (tests and benchmarks that speak JSON-RPC themselves)."""

_SESSION_NOT_FOUND = {
    "jsonrpc": "2.0",
    "id": None,
    "error": {"code": -32600, "message": "Session not found"},
}
"""The SDK's own answer to an unknown session id."""


@dataclasses.dataclass(frozen=True)
class Seen:
    """One HTTP request the server answered."""

    method: str
    path: str
    status: int
    token: str | None
    session_id: str | None
    content_type: str | None = dataclasses.field(default=None, compare=False)
    """The answer's ``Content-Type``: ``text/event-stream`` for a stream."""
    mcp_headers: dict[str, str] = dataclasses.field(default_factory=dict, compare=False)
    """The request's ``Mcp-*`` headers (``Mcp-Method``, ``Mcp-Param-*``...), names lowercase."""
    at: float = dataclasses.field(default_factory=time.monotonic, compare=False)
    """When the answer started (``time.monotonic``), for benchmarks and debugging."""
    message: dict[str, Any] | None = dataclasses.field(default=None, compare=False, repr=False)
    """The JSON-RPC message the request carried, parsed (its ``method``, ``id``, ``params``);
    ``None`` without one: a GET or DELETE, a batch, or a request refused before it was read."""


@dataclasses.dataclass
class _Fault:
    method: str
    status: int
    remaining: int
    scope: str | None
    skip: int
    hold: str | None = None


class Answer(BaseModel):
    """What the ``ask`` tool elicits from the client."""

    answer: str


class Confirmation(BaseModel):
    """What the ``confirm`` tool elicits from the client."""

    name: str


async def who_confirms(item: str) -> Elicit[Confirmation]:
    """``confirm``'s resolver: ask the client's user who confirms ``item``."""
    return Elicit(f"Who confirms {item}?", Confirmation)


_PROVEN_KEY: contextvars.ContextVar[str | None] = contextvars.ContextVar("proven_key", default=None)
"""The thumbprint of the key whose DPoP proof came with this request (``None``: no proof)."""


class _IntrospectionVerifier:
    """``mcp``'s TokenVerifier, asking the authorization server about each token (RFC 7662).

    A token bound to a DPoP key (``cnf.jkt``) is accepted only with a proof of that key,
    checked before (``_Controls``); a proof with an unbound token is refused too."""

    def __init__(self, introspection_endpoint: str) -> None:
        self.endpoint = introspection_endpoint
        self.calls = 0

    async def verify_token(self, token: str) -> AccessToken | None:
        self.calls += 1
        # The endpoint is plain HTTP on loopback: verify=False skips building a TLS context
        # per call, which cost ~18 ms of CPU each and made the server its own bottleneck.
        async with httpx.AsyncClient(timeout=10.0, trust_env=False, verify=False) as http:
            response = await http.post(self.endpoint, data={"token": token}, auth=INTROSPECTOR)
        if response.status_code != 200:
            return None
        claims = response.json()
        if not claims.get("active"):
            return None
        confirmation = claims.get("cnf")
        bound = confirmation.get("jkt") if isinstance(confirmation, dict) else None
        if bound != _PROVEN_KEY.get():
            return None
        audience = claims.get("aud")
        resource = audience[0] if isinstance(audience, list) and audience else audience
        return AccessToken(
            token=token,
            client_id=str(claims.get("client_id", "")),
            scopes=str(claims.get("scope", "")).split(),
            expires_at=claims.get("exp"),
            resource=resource if isinstance(resource, str) else None,
            subject=claims.get("sub"),
            claims={"iss": claims.get("iss")},
        )


class McpServer:
    """A protected MCP server on 127.0.0.1, served by uvicorn on a thread of its own."""

    url: str

    def __init__(
        self,
        *,
        auth_server: AuthServer | None,
        required_scopes: tuple[str, ...] = (),
        json_response: bool = False,
        event_store: EventStore | None = None,
        transport: str = "streamable-http",
        tools: Sequence[Tool] = (),
        dpop_nonce: bool = False,
    ) -> None:
        self.auth_server = auth_server
        #: Checks every DPoP proof; ``dpop_nonce`` makes it ask each proof for its nonce.
        self.proofs = ProofChecker(nonce=dpop_nonce)
        self.required_scopes = required_scopes
        self.json_response = json_response
        #: Numbers events so clients can resume a broken stream (``harness.pipe_tools``).
        self.event_store = event_store
        #: ``"sse"`` serves the older HTTP+SSE transport at ``/sse`` instead.
        self.transport = transport
        #: Tools served as given, besides the harness's own (see the module's docstring).
        self.extra_tools = list(tools)
        self._condition = threading.Condition()
        self._seen: list[Seen] = []
        self._faults: list[_Fault] = []
        self._expired: set[str] = set()
        self._refused: dict[str, int] = {}
        self._held: dict[str, tuple[int, asyncio.Event]] = {}
        self._sessions: set[str] = set()
        self._barrier_waiting = 0
        self._barrier_event: asyncio.Event | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._verifier: _IntrospectionVerifier | None = None
        #: What the talking-back tools of ``harness.pipe_tools`` saw.
        self.pipe_events = PipeEvents()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> McpServer:
        """Bind an ephemeral port, build the app for it, and serve until :meth:`stop`."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        self.origin = f"http://127.0.0.1:{port}"
        #: The path of :attr:`url`, where the faults of :meth:`fail_next` are injected.
        self.path = "/sse" if self.transport == "sse" else "/mcp"
        self.url = f"{self.origin}{self.path}"
        app = _Controls(self._build_app(), self)
        config = uvicorn.Config(app, log_level="warning", lifespan="on", ws="none")
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="mcp-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the MCP server did not start")
            time.sleep(0.01)  # polling uvicorn's own readiness flag; no test state depends on it
        return self

    def stop(self) -> None:
        """Stop serving and join the thread. Safe to call more than once."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        self._server = self._thread = None

    def __enter__(self) -> McpServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _build_app(self) -> ASGIApp:
        auth: AuthSettings | None = None
        verifier: _IntrospectionVerifier | None = None
        if self.auth_server is not None:
            discovery = httpx.get(
                f"{self.auth_server.issuer}/.well-known/openid-configuration",
                timeout=10.0,
                trust_env=False,
            ).json()
            verifier = _IntrospectionVerifier(discovery["introspection_endpoint"])
            auth = AuthSettings(
                issuer_url=self.auth_server.issuer,  # type: ignore[arg-type]
                resource_server_url=self.url,  # type: ignore[arg-type]
                required_scopes=list(self.required_scopes) or None,
                validate_token_resource=True,
            )
        self._verifier = verifier
        server: MCPServer[Any] = MCPServer(
            "grantkeeper-test", token_verifier=verifier, auth=auth, tools=self.extra_tools
        )

        @server.tool()
        def echo(text: str) -> str:
            """Return ``text``."""
            return text

        @server.tool()
        def add(a: int, b: int) -> int:
            """Return ``a + b``."""
            return a + b

        @server.tool()
        async def slow(ms: int) -> str:
            """Sleep ``ms`` milliseconds (load for benchmarks), then answer."""
            await anyio.sleep(ms / 1000)
            return f"slept {ms} ms"

        @server.tool()
        def routed(region: Annotated[str, Field(json_schema_extra=REGION)], note: str = "") -> str:
            """Return ``region``, which HTTP also carries as ``Mcp-Param-Region``."""
            return region

        @server.prompt(name=PROMPT)
        def greeting() -> str:
            """A prompt whose name needs the header encoding (not ASCII)."""
            return "hello"

        @server.tool()
        def whoami() -> dict[str, Any]:
            """Who the bearer token belongs to, as the server sees it."""
            token = get_access_token()
            if token is None:
                return {"subject": None}
            return {"subject": token.subject, "client_id": token.client_id, "scopes": token.scopes}

        @server.tool()
        async def hold() -> str:
            """Answer only when cancelled: a call that stays in flight until the client
            gives up on it. Fails after ``BARRIER_TIMEOUT``, so nothing lingers."""
            await anyio.sleep(BARRIER_TIMEOUT)
            raise TimeoutError("hold was never cancelled")

        @server.tool()
        async def barrier(n: int) -> int:
            """Return only once ``n`` calls are waiting here at the same time."""
            return await self._barrier(n)

        @server.tool()
        async def sample(prompt: str, ctx: Context) -> str:
            """Ask the client's model to answer ``prompt`` (sampling); return its text."""
            message = SamplingMessage(role="user", content=TextContent(type="text", text=prompt))
            result = await ctx.session.create_message(
                [message], max_tokens=64, related_request_id=ctx.request_id
            )
            content = result.content
            return content.text if isinstance(content, TextContent) else repr(content)

        @server.tool()
        async def ask(question: str, ctx: Context) -> dict[str, Any]:
            """Elicit an answer to ``question`` from the client's user."""
            result = await ctx.elicit(question, schema=Answer)
            data = getattr(result, "data", None)
            return {"action": result.action, "answer": data.answer if data else None}

        @server.tool()
        async def confirm(
            item: str, confirmation: Annotated[Confirmation, Resolve(who_confirms)]
        ) -> str:
            """Confirm ``item`` in the name the client's user gives (elicited at either era)."""
            return f"{item} confirmed by {confirmation.name}"

        @server.tool()
        async def roots(ctx: Context) -> list[str]:
            """The URIs of the client's roots (roots/list)."""
            listed = await ctx.session.list_roots()
            return [str(root.uri) for root in listed.roots]

        @server.tool()
        async def log(text: str, ctx: Context) -> str:
            """Send ``text`` to the client as an ``info`` log message, then answer."""
            await ctx.session.send_log_message(
                level="info", data=text, logger="harness", related_request_id=ctx.request_id
            )
            return "logged"

        add_pipe_tools(server, self.pipe_events)

        if self.transport == "sse":
            return server.sse_app()
        return server.streamable_http_app(
            json_response=self.json_response,
            event_store=self.event_store,
            retry_interval=RESUME_RETRY_MS if self.event_store is not None else None,
        )

    async def _barrier(self, n: int) -> int:
        if self._barrier_event is None or self._barrier_event.is_set():
            self._barrier_event = asyncio.Event()
            self._barrier_waiting = 0
        event = self._barrier_event
        self._barrier_waiting += 1
        if self._barrier_waiting >= n:
            event.set()
        with anyio.fail_after(BARRIER_TIMEOUT):
            await event.wait()
        return n

    # -- test controls --------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        *,
        status: int = 401,
        count: int = 1,
        scope: str | None = None,
        skip: int = 0,
    ) -> None:
        """Answer ``count`` ``method`` requests to :attr:`url` with ``status``, after letting
        ``skip`` of them through.

        A 401 is an ``invalid_token`` challenge, a 403 an ``insufficient_scope`` one naming
        ``scope``; both carry ``resource_metadata`` like the SDK's own. Any other status (a
        404 or 405 from a server without streamable HTTP, a 500) is a bare JSON error.
        """
        with self._condition:
            self._faults.append(_Fault(method.upper(), status, count, scope, skip))

    def refuse(self, token: str, *, gather: int = 1) -> None:
        """Answer 401 to every request that carries ``token``, as if it had been revoked.

        The first ``gather`` such requests are held until all of them have arrived, so a
        test can have N requests in flight with the same token before any 401 returns.
        """
        with self._condition:
            self._refused[token] = gather

    def expire_sessions(self) -> list[str]:
        """Forget every session open now: requests naming one get 404, as after a restart."""
        with self._condition:
            expired = sorted(self._sessions - self._expired)
            self._expired.update(expired)
            return expired

    def seen(self) -> list[Seen]:
        """Every request answered so far, oldest first."""
        with self._condition:
            return list(self._seen)

    def reset(self) -> None:
        """Forget the requests recorded so far, any fault not yet used, and the proofs counted."""
        self.proofs.reset_counts()
        with self._condition:
            self._seen.clear()
            self._faults.clear()
            self._refused.clear()
            self._held.clear()

    def wait_for(
        self, predicate: Callable[[list[Seen]], bool], timeout: float = WAIT_TIMEOUT
    ) -> list[Seen]:
        """Block until ``predicate(seen)`` holds; raise ``TimeoutError`` after ``timeout``."""
        with self._condition:
            if not self._condition.wait_for(lambda: predicate(self._seen), timeout):
                raise TimeoutError("the MCP server never saw what the test waited for")
            return list(self._seen)

    @property
    def introspections(self) -> int:
        """How many times the server asked the authorization server about a token."""
        return self._verifier.calls if self._verifier else 0

    # -- used by _Controls ----------------------------------------------------------------

    def _take_fault(self, method: str, token: str | None) -> _Fault | None:
        with self._condition:
            if token is not None and token in self._refused:
                return _Fault(method, 401, 1, None, 0, hold=token)
            for fault in self._faults:
                if fault.method == method and fault.remaining > 0:
                    if fault.skip > 0:
                        fault.skip -= 1
                        return None
                    fault.remaining -= 1
                    return fault
            return None

    async def _hold(self, token: str) -> None:
        """Wait until the number of requests ``refuse(gather=)`` asked for carry ``token``."""
        with self._condition:
            gather = self._refused.get(token, 1)
            count, event = self._held.get(token, (0, asyncio.Event()))
            count += 1
            self._held[token] = (count, event)
        if count >= gather:
            event.set()
        if count <= gather:
            with anyio.fail_after(BARRIER_TIMEOUT):
                await event.wait()

    def _is_expired(self, session_id: str | None) -> bool:
        with self._condition:
            return session_id is not None and session_id in self._expired

    def _record(self, seen: Seen, new_session: str | None) -> None:
        with self._condition:
            self._seen.append(seen)
            if new_session:
                self._sessions.add(new_session)
            self._condition.notify_all()


class _Controls:
    """ASGI wrapper: records requests and injects the faults a test asked for."""

    def __init__(self, app: ASGIApp, owner: McpServer) -> None:
        self.app = app
        self.owner = owner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        authorization = headers.get("authorization", "")
        scheme, _, credential = authorization.partition(" ")
        token = credential.strip() if scheme.lower() in ("bearer", "dpop") and credential else None
        remember_secret(token)
        if scheme.lower() == "dpop" and token is not None:
            # Checked here, before the SDK's auth (which knows only Bearer) sees the token.
            proofs = [v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"dpop"]
            host = headers.get("host", "")
            try:
                proven = self.owner.proofs.check(
                    proofs, method=scope["method"], url=f"http://{host}{scope['path']}", token=token
                )
            except NonceNeeded as exc:
                await _dpop_challenge(send, "use_dpop_nonce", nonce=exc.nonce)
                return
            except ProofRejected as exc:
                await _dpop_challenge(send, "invalid_dpop_proof", description=str(exc))
                return
            _PROVEN_KEY.set(proven)
            scope = {
                **scope,
                "headers": [
                    (b"authorization", f"Bearer {token}".encode("latin-1"))
                    if k.lower() == b"authorization"
                    else (k, v)
                    for k, v in scope["headers"]
                ],
            }
        session_id = headers.get(SESSION_HEADER)
        method = scope["method"]
        status = 0
        new_session: str | None = None
        content_type: str | None = None

        mcp_headers = {k: v for k, v in headers.items() if k.startswith("mcp-")}
        body: list[bytes] = []

        async def recording_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
            return message

        def record() -> None:
            seen = Seen(
                method,
                scope["path"],
                status,
                token,
                session_id,
                content_type,
                mcp_headers,
                message=_parsed(b"".join(body)),
            )
            self.owner._record(seen, new_session)

        async def recording_send(message: Message) -> None:
            nonlocal status, new_session, content_type
            if message["type"] == "http.response.start":
                status = message["status"]
                if status == 403 and self.owner.required_scopes:
                    message = {**message, "headers": self._name_scopes(message["headers"])}
                for key, value in message.get("headers", []):
                    name = key.decode("latin-1").lower()
                    if name == SESSION_HEADER:
                        new_session = value.decode("latin-1")
                    elif name == "content-type":
                        content_type = value.decode("latin-1").split(";")[0].strip()
                # Recorded when the answer starts: an event stream may stay open for long.
                record()
            await send(message)

        try:
            own_path = scope["path"] == self.owner.path
            fault = self.owner._take_fault(method, token) if own_path else None
            if fault is not None:
                if fault.hold is not None:
                    await self.owner._hold(fault.hold)
                await self._challenge(fault, recording_send)
            elif scope["path"] == "/mcp" and self.owner._is_expired(session_id):
                await _json(recording_send, 404, _SESSION_NOT_FOUND)
            else:
                await self.app(scope, recording_receive, recording_send)
        finally:
            if not status:
                record()  # no answer at all (the app failed or the client went away)

    def _name_scopes(self, headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The SDK's ``insufficient_scope`` challenge, with the ``scope`` it omits.

        The MCP authorization spec says a server should name the scopes it needs there, so
        a client can ask for them (a step-up); the SDK's middleware names them only in its
        description. The 403 itself is the SDK's.
        """
        scope = " ".join(self.owner.required_scopes)
        named: list[tuple[bytes, bytes]] = []
        for key, value in headers:
            text = value.decode("latin-1")
            named_already = re.search(r"(^|[\s,])scope=", text) is not None
            if key.lower() == b"www-authenticate" and "insufficient_scope" in text:
                if not named_already:
                    value = f'{text}, scope="{scope}"'.encode("latin-1")
            named.append((key, value))
        return named

    async def _challenge(self, fault: _Fault, send: Send) -> None:
        if fault.status not in (401, 403):
            # Not about auth (a 404, 405 or 500 a test wants): no challenge to act on.
            await _json(send, fault.status, {"detail": "injected by the test"})
            return
        metadata = f"{self.owner.origin}/.well-known/oauth-protected-resource{self.owner.path}"
        if fault.status == 403:
            params = f'error="insufficient_scope", scope="{fault.scope or ""}"'
        else:
            params = 'error="invalid_token", error_description="injected by the test"'
        challenge = f'Bearer {params}, resource_metadata="{metadata}"'
        await _json(
            send,
            fault.status,
            {"error": "insufficient_scope" if fault.status == 403 else "invalid_token"},
            extra=[(b"www-authenticate", challenge.encode())],
        )


async def _dpop_challenge(
    send: Send, error: str, *, nonce: str | None = None, description: str = ""
) -> None:
    """401 with a DPoP challenge (RFC 9449 §7.1), and the nonce a proof must carry (§9)."""
    challenge = f'DPoP error="{error}", algs="ES256 EdDSA"'
    if description:
        challenge += f', error_description="{description}"'
    extra = [(b"www-authenticate", challenge.encode())]
    if nonce is not None:
        extra.append((b"dpop-nonce", nonce.encode()))
    await _json(send, 401, {"error": error}, extra=extra)


def _parsed(body: bytes) -> dict[str, Any] | None:
    """A request body as the JSON object it is, or ``None``."""
    if not body.strip():
        return None
    try:
        message = json.loads(body)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


async def _json(
    send: Send, status: int, body: dict[str, Any], extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
