"""``grantkeeper proxy``: a desktop host's stdio MCP session, carried over streamable HTTP.

A pipe, not a client: every message is forwarded as it came, ids untouched, in both
directions. The host's requests are POSTed; what each answer carries (JSON, or an event
stream of notifications, server requests and finally the response) goes to the host. The
host's notifications and responses (cancellations, answers to sampling, elicitation or
roots requests) are POSTed in the order the host sent them. The session's GET stream brings
what the server sends unprompted (``list_changed``, ``resources/updated``, logging).

What the pipe adds, and nothing else:
- grantkeeper's auth on every request (the transport policy of ``grantkeeper.mcp.connect``);
- a login when none is usable or the server needs another scope: the Keeper's recovery,
  one browser for every proxy of the credential, requests held meanwhile; without a
  browser, a JSON-RPC error naming the command that fixes it;
- session expiry (404 to a request naming the session): the host's ``initialize`` is
  replayed upstream, once per expiry, and the request sent again;
- keep-alive pings, whose answers stay here, and a DELETE of the session on exit;
- on a 2026-era request, the standard headers HTTP repeats from the body (SEP-2243):
  ``Mcp-Method``, ``Mcp-Name``, and the ``Mcp-Param-*`` a tool's ``inputSchema`` designates
  with ``x-mcp-header``, learnt from the ``tools/list`` answers relayed; a listed tool whose
  annotation is invalid is dropped from the answer, as the spec has clients do. A request
  whose values HTTP cannot carry there (a lone surrogate, a method that is not ASCII) is
  answered with an invalid-params error and never sent;
- ``--ignore-tool``: the tools a glob matches are dropped from every ``tools/list`` answer
  relayed, and a ``tools/call`` naming one, alone or in a batch, is answered here (invalid
  params), never sent.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Coroutine, Iterable
from fnmatch import fnmatchcase
from typing import Any, TypeGuard

import httpx2

from .._errors import GrantkeeperError, InsufficientScope
from .._keeper import Keeper
from .._network import failure
from .._redact import scrub_known_in
from .._rules import recovery_need
from .._servers import ServerConfig
from .._status import fix_command
from .stdio import ProtocolOut

log = logging.getLogger("grantkeeper.proxy")

SESSION_HEADER = "mcp-session-id"
VERSION_HEADER = "mcp-protocol-version"
METHOD_HEADER = "mcp-method"
NAME_HEADER = "mcp-name"
LAST_EVENT_ID = "last-event-id"
ACCEPT = "application/json, text/event-stream"

VERSION_META_KEY = "io.modelcontextprotocol/protocolVersion"
"""A 2026-era request carries its protocol version in ``params._meta``; HTTP repeats it in a
header, with the method, the name it acts on and the arguments a tool designates."""

HTTP_TIMEOUT = httpx2.Timeout(30.0, read=300.0)
"""The ``mcp`` SDK's defaults (and ``grantkeeper.mcp.connect``'s)."""

MAX_EVENT_SIZE = 64 * 1024 * 1024
"""A tool result may be large; the host bounds what it accepts, the pipe only a runaway."""

PROXY_ERROR = -32603
"""JSON-RPC internal error: the code of every answer the proxy gives in the server's place."""

INVALID_PARAMS = -32602
"""JSON-RPC invalid params: the answer to a request whose values HTTP cannot carry."""

RECONNECT_DELAY = 1.0
RECONNECT_MAX = 30.0
"""Backoff of the GET stream's reconnects (the server's ``retry:`` field overrides the first)."""

DEFAULT_PING_INTERVAL = 30.0

CLOSE_TIMEOUT = 5.0
"""Bounds the DELETE of the session on exit: a dead server must not hang the host's quit."""


RESUME_ATTEMPTS = 3
"""Tries to resume a broken request stream that made no progress, before giving up."""


class _Stream:
    """Where a request's event stream stands: what to resume from, and when."""

    def __init__(self) -> None:
        self.last_event_id: str | None = None
        self.retry = RECONNECT_DELAY


class SessionExpired(Exception):
    """The server answered 404 to a request that named our session."""


class Unsendable(Exception):
    """HTTP cannot carry a message: a header value, or the body, does not encode.

    Its text names the part (a header's name), never the value: that may be a secret.
    """


def is_response(message: Any) -> TypeGuard[dict[str, Any]]:
    return (
        isinstance(message, dict)
        and "method" not in message
        and ("result" in message or "error" in message)
    )


def is_request(message: Any) -> TypeGuard[dict[str, Any]]:
    return isinstance(message, dict) and "method" in message and "id" in message


def encode(message: Any) -> bytes:
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        # A lone surrogate: JSON has "\ud800" (and json.loads takes it), UTF-8 does not.
        # Escaped, the same message is still JSON.
        return json.dumps(message, separators=(",", ":")).encode()


def header_safe(value: str) -> bool:
    """Whether ``value`` goes into an HTTP header as it is: printable ASCII, no edge spaces."""
    return value.isascii() and value.isprintable() and value == value.strip()


class Proxy:
    """One host session, one upstream session (renewed when the server forgets it)."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        http: httpx2.AsyncClient,
        out: ProtocolOut,
        keeper: Keeper | None,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        ignore_tools: Iterable[str] = (),
    ) -> None:
        self.config = config
        self.url = config.url
        self.http = http
        self.out = out
        #: The credential's Keeper (``None`` without OAuth); its recovery hook logs in.
        self.keeper = keeper
        self.ping_interval = ping_interval
        #: ``--ignore-tool`` globs: the tools they match are hidden from the host and their
        #: calls refused here (see :meth:`ignored`).
        self.ignore_tools = tuple(ignore_tools)
        self.session_id: str | None = None
        self.protocol_version: str | None = None
        self._initialize: dict[str, Any] | None = None
        self._listening = False
        self._generation = 0
        self._session_lock = asyncio.Lock()
        self._ready = asyncio.Event()
        self._ready.set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._cancelled: set[Any] = set()
        # Requests in flight by id, and whether each speaks the 2026 era (see _from_host).
        self._in_flight: dict[str, tuple[asyncio.Task[Any], bool]] = {}
        # The x-mcp-header map of each tool of the latest 2026-era listing (see _tools_listed).
        self._param_headers: dict[str, dict[tuple[str, ...], str]] = {}
        self._internal_ids = itertools.count(1)
        #: Times the upstream session was opened again after the server forgot it.
        self.reinitializations = 0

    # -- the host side --------------------------------------------------------------------

    async def run(self, lines: asyncio.Queue[bytes | None]) -> None:
        """Serve the host until its stdin closes, then end the upstream session."""
        if self.keeper is not None:
            self._spawn(self._prepare())
        if self.ping_interval > 0:
            self._spawn(self._keepalive())
        try:
            while not self.out.closed:
                line = await lines.get()
                if line is None:
                    break
                await self._from_host(line)
        finally:
            await self.close()

    async def _from_host(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: nested past any real message
            self._to_host_message(
                {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}}
            )
            return
        if isinstance(message, list):
            # A batch is sent as one POST, as it came; a call to an ignored tool in it is
            # answered here like one sent alone, and only the rest goes.
            kept = [element for element in message if not self._refused_here(element)]
            if message and not kept:
                return
            message = kept
        elif self._refused_here(message):
            return
        if is_request(message):
            if message["method"] == "initialize":
                self._initialize = message
            log.debug("host.request method=%s id=%s", message["method"], message["id"])
            key = message_key(message["id"])
            task = self._spawn(self._send(message))
            self._in_flight[key] = (task, _envelope_version(message) is not None)
            task.add_done_callback(lambda done: self._forget(key, done))
            return
        if isinstance(message, dict):
            method = message.get("method")
            if method == "notifications/cancelled":
                params = message.get("params")
                key = message_key(params.get("requestId") if isinstance(params, dict) else None)
                self._cancelled.add(key)
                entry = self._in_flight.get(key)
                if entry is not None and entry[1]:
                    # The 2026 HTTP wire has no client notifications: closing the request's
                    # stream is its cancellation.
                    entry[0].cancel()
                    return
            log.debug("host.message method=%s id=%s", method, message.get("id"))
        # Notifications and responses keep the host's order: each is sent before the next.
        await self._send(message)

    def _refused_here(self, message: Any) -> bool:
        """Whether ``message`` calls a tool ``--ignore-tool`` hides; then it is answered here
        (a notification dropped) and must never be sent."""
        tool = _called_tool(message) if isinstance(message, dict) else None
        if tool is None or not self.ignored(tool):
            return False
        # Hidden from the host's listings, so a call to it is one the user ruled out:
        # answered here as an unknown tool (the spec's code), never sent.
        text = f"tool {tool!r} is not available: the proxy ignores it (--ignore-tool)"
        self._fail(message, text, code=INVALID_PARAMS)
        return True

    def _to_host(self, raw: bytes) -> None:
        self.out.write(raw)

    def _to_host_message(self, message: Any) -> None:
        self.out.write(encode(without_secrets(message)))

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _forget(self, key: str, task: asyncio.Task[Any]) -> None:
        # Only this task's entry: the host may have reused the id for a newer request.
        entry = self._in_flight.get(key)
        if entry is not None and entry[0] is task:
            del self._in_flight[key]

    # -- sending upstream -----------------------------------------------------------------

    def _headers(self, message: Any, *, accept: str = ACCEPT) -> dict[str, str]:
        headers = {"accept": accept, "content-type": "application/json"}
        if self.session_id:
            headers[SESSION_HEADER] = self.session_id
        version = self.protocol_version
        if isinstance(message, dict):
            envelope = _envelope_version(message)
            if envelope is not None:
                if not header_safe(envelope):
                    raise Unsendable("its MCP-Protocol-Version header cannot carry the version")
                version = envelope
                method = message.get("method")
                params = message.get("params")
                if isinstance(method, str) and isinstance(params, dict):
                    headers.update(self._standard_headers(method, params))
            elif message.get("method") == "initialize":
                version = None  # initialize is the negotiation
        if version:
            headers[VERSION_HEADER] = version
        return headers

    def _standard_headers(self, method: str, params: dict[str, Any]) -> dict[str, str]:
        """What HTTP repeats of a 2026-era request's body: its method, the name it acts on,
        and for a tool call the arguments its listed ``inputSchema`` designates."""
        # Imported here, not with the module: ``mcp`` costs every proxy's start a good part
        # of a second, and only 2026-era sessions need it.
        from mcp.shared.inbound import (
            MCP_PARAM_HEADER_PREFIX,
            NAME_BEARING_METHODS,
            encode_header_value,
            mcp_param_headers,
        )

        # Values outside printable ASCII are base64-wrapped, but what is not Unicode text
        # (a lone surrogate) has no encoding at all; the method is sent verbatim.
        if not header_safe(method):
            raise Unsendable("its Mcp-Method header cannot carry the method")
        headers = {METHOD_HEADER: method}
        name = params.get(NAME_BEARING_METHODS.get(method, ""))
        if isinstance(name, str):
            try:
                headers[NAME_HEADER] = encode_header_value(name)
            except UnicodeError:
                raise Unsendable("its Mcp-Name header cannot carry the name") from None
        arguments = params.get("arguments")
        if method == "tools/call" and isinstance(name, str) and isinstance(arguments, dict):
            # A tool never listed has no schema known here: no Mcp-Param, as from the SDK's client.
            header_map = self._param_headers.get(name) or {}
            for path, token in header_map.items():
                try:  # one at a time, to say which (the token is the server's, never a value)
                    headers.update(mcp_param_headers({path: token}, arguments))
                except UnicodeError:
                    header = f"{MCP_PARAM_HEADER_PREFIX}{token}"
                    raise Unsendable(f"its {header} header cannot carry the argument") from None
        return headers

    def _as_host_gets(self, request: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
        """The answer to ``request`` as the host gets it (the server's own when unchanged)."""
        listed = self._without_ignored(request, self._tools_listed(request, response))
        return _with_result_type(request, listed)

    def ignored(self, tool: str) -> bool:
        """Whether ``--ignore-tool`` hides ``tool`` (a glob matches its whole name, in case)."""
        return any(fnmatchcase(tool, pattern) for pattern in self.ignore_tools)

    def _without_ignored(self, request: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
        """``response`` to a ``tools/list``, of any era, without the tools ``--ignore-tool``
        hides (the server's own answer when it lists none of them)."""
        if not self.ignore_tools or request.get("method") != "tools/list":
            return response
        result = response.get("result")
        tools = result.get("tools") if isinstance(result, dict) else None
        if not isinstance(result, dict) or not isinstance(tools, list):
            return response
        kept = [
            tool
            for tool in tools
            if not (
                isinstance(tool, dict)
                and isinstance(tool.get("name"), str)
                and self.ignored(tool["name"])
            )
        ]
        if len(kept) == len(tools):
            return response
        log.debug("tools/list: %d tool(s) ignored", len(tools) - len(kept))
        return {**response, "result": {**result, "tools": kept}}

    def _tools_listed(self, request: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
        """``response`` as the host gets it: for a 2026-era ``tools/list``, without the tools
        whose ``x-mcp-header`` annotations are invalid, their header maps remembered.

        The spec has clients refuse such a tool, and the host never sees the HTTP side: the
        proxy is the client that must. A page with a cursor adds to the listing it continues;
        a listing without one replaces what the last taught.
        """
        if request.get("method") != "tools/list" or _envelope_version(request) is None:
            return response
        result = response.get("result")
        tools = result.get("tools") if isinstance(result, dict) else None
        if not isinstance(result, dict) or not isinstance(tools, list):
            return response
        from mcp.shared.inbound import find_invalid_x_mcp_header, x_mcp_header_map

        params = request.get("params")
        if not (isinstance(params, dict) and params.get("cursor") is not None):
            self._param_headers = {}
        kept: list[Any] = []
        for tool in tools:
            name = tool.get("name") if isinstance(tool, dict) else None
            if not isinstance(tool, dict) or not isinstance(name, str):
                kept.append(tool)  # not a tool the host can call by name: the host's to judge
                continue
            schema = tool.get("inputSchema")
            reason = find_invalid_x_mcp_header(schema)
            if reason is not None:
                log.warning("dropping tool %r: invalid x-mcp-header (%s)", name, reason)
                self._param_headers.pop(name, None)
                continue
            header_map = x_mcp_header_map(schema)
            if header_map:
                self._param_headers[name] = header_map
            else:
                self._param_headers.pop(name, None)
            kept.append(tool)
        if len(kept) == len(tools):
            return response
        return {**response, "result": {**result, "tools": kept}}

    async def _send(
        self, message: Any, *, relay: bool = True, internal: bool = False
    ) -> dict[str, Any] | None:
        """Send ``message`` upstream, relaying what comes back; return a request's response.

        Retries once after the session expired (re-initializing first); anything else the
        proxy cannot fix becomes a JSON-RPC error for a request. Auth, logins included, is
        the client's: an error that reaches here is final.
        """
        request_id = message.get("id") if is_request(message) else None
        renewed = False
        while True:
            if not internal:
                await self._ready.wait()
            generation = self._generation
            try:
                return await self._post(message, relay=relay)
            except SessionExpired:
                if renewed or self._initialize is None:
                    self._fail(message, "the MCP server ended the session", relay=relay)
                    return None
                renewed = True
                try:
                    await self._reinitialize(generation)
                except NoSession as exc:
                    self._fail(message, str(exc), relay=relay)
                    return None
                except GrantkeeperError as exc:
                    self._fail(message, self._explain(exc), exc, relay=relay)
                    return None
            except GrantkeeperError as exc:
                self._fail(message, self._explain(exc), exc, relay=relay)
                return None
            except Unsendable as exc:
                # Nothing was sent: a request is answered, a notification dropped (logged).
                what = "request" if is_request(message) else "message"
                text = f"cannot send the {what} over HTTP: {exc}"
                self._fail(message, text, relay=relay, code=INVALID_PARAMS)
                return None
            except httpx2.HTTPError as exc:
                # An untrusted certificate or a refusing proxy is named (see _network).
                what = f"cannot reach the MCP server at {self.url}: {failure(exc)}"
                self._fail(message, what, relay=relay)
                return None
            except Exception as exc:
                # Whatever else breaks relaying one message (an answer nested too deep to
                # encode, say), the host gets an answer instead of waiting for ever. Only the
                # type is told: an exception's text may quote the message's values.
                self._fail(
                    message, f"the proxy could not relay this ({type(exc).__name__})", relay=relay
                )
                return None
            finally:
                if request_id is not None:
                    self._cancelled.discard(message_key(request_id))

    def fix(self, exc: GrantkeeperError) -> str | None:
        """The command a person runs to fix ``exc``, if only a person can: for a missing
        scope, a login asking for it and every scope held (what a recovery would ask)."""
        if not exc.needs_login:
            return None
        held = self.keeper.current if self.keeper is not None else None
        need = recovery_need(exc, held) if isinstance(exc, InsufficientScope) else None
        return fix_command(need or exc, self.config.label, self.config.profile)

    def _explain(self, exc: GrantkeeperError) -> str:
        text = str(exc)
        fix = self.fix(exc)
        if fix is not None and "grantkeeper login" not in text:
            text = f"{text}; run `{fix}`"
        return text

    def _fail(
        self,
        message: Any,
        text: str,
        exc: BaseException | None = None,
        *,
        relay: bool = True,
        code: int = PROXY_ERROR,
    ) -> None:
        method = message.get("method") if isinstance(message, dict) else None
        if isinstance(method, str) and not header_safe(method):
            method = "?"  # it may be the very value that could not be sent
        log.warning("%s (%s)", text, method or "response")
        if not is_request(message) or not relay:
            return
        data: dict[str, Any] = {"proxy": "grantkeeper"}
        if exc is not None:
            data["error"] = type(exc).__name__
        fix = self.fix(exc) if isinstance(exc, GrantkeeperError) else None
        if fix is not None:
            data["fix"] = fix
        self._to_host_message(
            {
                "jsonrpc": "2.0",
                "id": message["id"],
                "error": {"code": code, "message": text, "data": data},
            }
        )
        return None

    def _answered(self, status: int) -> None:
        """The server answered a POST with ``status`` (auth has had its say). Nothing to learn
        here; ``--transport auto`` (:class:`~.sse.AutoProxy`) learns its transport from the
        first answer, and may raise to take that POST over to HTTP+SSE."""

    def _request(self, message: Any) -> httpx2.Request:
        """The POST carrying ``message``; :class:`Unsendable` when HTTP cannot carry it."""
        headers = self._headers(message)
        try:
            content = encode(message)
        except (ValueError, RecursionError):
            raise Unsendable("its body cannot be encoded as JSON") from None
        try:
            return self.http.build_request("POST", self.url, content=content, headers=headers)
        except UnicodeError:  # httpx2 encodes header values as ASCII
            raise Unsendable("its headers cannot be encoded") from None

    async def _post(self, message: Any, *, relay: bool) -> dict[str, Any] | None:
        request = self._request(message)
        named_session = SESSION_HEADER in request.headers
        request_id = message.get("id") if is_request(message) else None
        initializing = is_request(message) and message.get("method") == "initialize"
        response = await self.http.send(request, stream=True)
        try:
            status = response.status_code
            self._answered(status)
            if status == 404 and named_session:
                raise SessionExpired
            if initializing and status < 400:
                session_id = response.headers.get(SESSION_HEADER)
                if session_id and not header_safe(session_id):
                    # Sent back on every request, it would make each one unsendable.
                    log.warning("the MCP server sent a session id HTTP cannot carry; ignored")
                    session_id = None
                self.session_id = session_id or self.session_id
            content_type = response.headers.get("content-type", "").partition(";")[0]
            content_type = content_type.strip().lower()
            if request_id is None:
                if status >= 400:
                    log.warning("the MCP server answered %s to a %s", status, message.get("method"))
                else:
                    self._after_notification(message)
                return None
            if content_type == "text/event-stream" and status < 400:
                final = await self._relay_events(response, message, relay=relay)
            else:
                final = await self._relay_body(response, message, relay=relay)
        finally:
            await response.aclose()
        if initializing and final is not None:
            result = final.get("result")
            version = result.get("protocolVersion") if isinstance(result, dict) else None
            if isinstance(version, str) and header_safe(version):
                self.protocol_version = version
        return final

    async def _relay_body(
        self, response: httpx2.Response, request: dict[str, Any], *, relay: bool
    ) -> dict[str, Any] | None:
        request_id = request["id"]
        body = await response.aread()
        try:
            parsed = json.loads(body) if body.strip() else None
        except (ValueError, RecursionError):
            parsed = None
        messages = parsed if isinstance(parsed, list) else [parsed]
        if not 200 <= response.status_code < 300 and len(messages) == 1:
            (only,) = messages
            if is_response(only) and "error" in only:
                # A refusal under an id of the server's own (``mcp`` 1.x answers a request it
                # cannot read with id "server-error"): it is this request's answer.
                messages = [{**only, "id": request_id}]
        final: dict[str, Any] | None = None
        for message in messages:
            if is_response(message) and message.get("id") in (request_id, None):
                if message.get("id") is None:  # rejected before the server read its id
                    message = {**message, "id": request_id}
                final = self._as_host_gets(request, message)
                if relay:
                    self._to_host_message(final)
            elif isinstance(message, dict):
                self._to_host_message(message)
        if final is None:
            status = response.status_code
            text = f"the MCP server answered HTTP {status} without a JSON-RPC response"
            self._fail({"id": request_id, "method": "?"}, text, relay=relay)
        return final

    async def _relay_events(
        self, response: httpx2.Response, request: dict[str, Any], *, relay: bool
    ) -> dict[str, Any] | None:
        """Relay a request's event stream until its response; if the stream breaks first
        and the server numbered its events, resume it (GET with ``Last-Event-ID``)."""
        request_id = request["id"]
        stream = _Stream()
        final = await self._relay_stream(response, request, stream, relay=relay)
        attempts = 0
        while final is None and stream.last_event_id is not None and attempts < RESUME_ATTEMPTS:
            if message_key(request_id) in self._cancelled:
                break
            attempts += 1
            await asyncio.sleep(stream.retry)  # the server's own hint (``retry:``)
            headers = self._headers(None, accept="text/event-stream")
            headers[LAST_EVENT_ID] = stream.last_event_id
            before = stream.last_event_id
            try:
                async with self.http.stream("GET", self.url, headers=headers) as resumed:
                    content_type = resumed.headers.get("content-type", "")
                    if resumed.status_code >= 400 or "text/event-stream" not in content_type:
                        log.info("the MCP server did not resume a stream: %s", resumed.status_code)
                        break
                    final = await self._relay_stream(resumed, request, stream, relay=relay)
            except httpx2.HTTPError as exc:
                log.debug("resuming a stream failed: %s", type(exc).__name__)
            if stream.last_event_id != before:
                attempts = 0  # it made progress: a stream may be resumed many times
        if final is not None:
            return final
        if message_key(request_id) in self._cancelled:
            return None  # the host cancelled it: no answer is expected
        self._fail(
            {"id": request_id, "method": "?"},
            "the MCP server closed the stream without answering",
            relay=relay,
        )
        return None

    async def _relay_stream(
        self, response: httpx2.Response, request: dict[str, Any], stream: _Stream, *, relay: bool
    ) -> dict[str, Any] | None:
        request_id = request["id"]
        try:
            async for event in httpx2.EventSource(response, max_event_size=MAX_EVENT_SIZE):
                if event.id:
                    stream.last_event_id = event.id
                if event.retry is not None:
                    stream.retry = event.retry / 1000
                if not event.data or event.event not in ("message", ""):
                    continue  # a priming event, or one that is not a message
                message = parse_event(event.data)
                if message is None:
                    continue
                if is_response(message) and message.get("id") == request_id:
                    final = self._as_host_gets(request, message)
                    if relay and final is message:
                        self._to_host(raw_line(event.data, message))
                    elif relay:
                        self._to_host_message(final)
                    return final
                self._to_host(raw_line(event.data, message))
        except (httpx2.SSEError, httpx2.TransportError) as exc:
            log.info("event stream broke: %s", type(exc).__name__)
        return None

    def _after_notification(self, message: Any) -> None:
        if (
            isinstance(message, dict)
            and message.get("method") == "notifications/initialized"
            and self.session_id is not None
        ):
            self._listen()

    # -- the session ------------------------------------------------------------------

    async def _reinitialize(self, generation: int) -> None:
        """Open a new session with the host's own ``initialize``, once per expiry."""
        async with self._session_lock:
            if generation != self._generation or self._initialize is None:
                return  # another request already renewed it
            self._ready.clear()
            try:
                log.warning("the MCP server forgot the session; initializing a new one")
                self._stop_listening()
                self.session_id = None
                replay = {**self._initialize, "id": f"grantkeeper-{next(self._internal_ids)}"}
                answer = await self._send(replay, relay=False, internal=True)
                if answer is None or "error" in answer:
                    raise NoSession("the MCP server refused to open a new session")
                self._generation += 1
                self.reinitializations += 1
                await self._send(
                    {"jsonrpc": "2.0", "method": "notifications/initialized"}, internal=True
                )
            finally:
                self._ready.set()

    def _listen(self) -> None:
        """Open the GET stream for what the server sends unprompted (once per session)."""
        self._stop_listening()
        self._listener = asyncio.create_task(self._listen_loop(self._generation))

    def _stop_listening(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            self._listener = None

    async def _listen_loop(self, generation: int) -> None:
        last_event_id: str | None = None
        delay = RECONNECT_DELAY
        while generation == self._generation and self.session_id is not None:
            headers = self._headers(None, accept="text/event-stream")
            if last_event_id is not None:
                headers[LAST_EVENT_ID] = last_event_id
            try:
                async with self.http.stream("GET", self.url, headers=headers) as response:
                    if response.status_code == 405:
                        log.info("the MCP server offers no event stream for its session")
                        return
                    if response.status_code == 404:
                        self._spawn(self._renew_quietly(generation))
                        return
                    if response.status_code >= 400:
                        log.info("event stream refused with HTTP %s", response.status_code)
                    else:
                        delay = RECONNECT_DELAY
                        async for event in httpx2.EventSource(
                            response, max_event_size=MAX_EVENT_SIZE
                        ):
                            if event.id:
                                last_event_id = event.id
                            if event.retry is not None:
                                delay = event.retry / 1000
                            message = parse_event(event.data) if event.data else None
                            if message is not None:
                                self._to_host(raw_line(event.data, message))
            except GrantkeeperError as exc:
                log.warning("event stream: %s", self._explain(exc))
            except httpx2.HTTPError as exc:
                log.debug("event stream ended: %s", type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def _renew_quietly(self, generation: int) -> None:
        try:
            await self._reinitialize(generation)
        except (GrantkeeperError, NoSession, httpx2.HTTPError) as exc:
            log.warning("could not open a new session: %s", exc)

    async def _prepare(self) -> None:
        """Look for a credential at once (the Keeper's recovery logs in if none is usable),
        while the host starts up: its first request then finds one ready."""
        assert self.keeper is not None
        try:
            await self.keeper.acredential()
        except GrantkeeperError as exc:
            log.warning("%s", self._explain(exc))

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            if self.session_id is None or self._initialize is None:
                continue
            ping = {"jsonrpc": "2.0", "id": f"grantkeeper-{next(self._internal_ids)}"}
            await self._send({**ping, "method": "ping"}, relay=False)

    async def close(self) -> None:
        """Stop everything in flight and end the upstream session (DELETE)."""
        self._stop_listening()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.session_id is None:
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                response = await self.http.delete(self.url, headers=self._headers(None))
            log.info("session ended: HTTP %s", response.status_code)
        except (GrantkeeperError, httpx2.HTTPError, TimeoutError) as exc:
            log.info("could not end the session: %s", type(exc).__name__)
        self.session_id = None


class NoSession(Exception):
    """Re-initializing was refused; the request that found the expiry fails with this."""


def _with_result_type(request: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """``response``, with ``resultType: "complete"`` written out when a 2026-era result
    leaves it out.

    At 2026-07-28 every result carries ``resultType`` (SEP-2322), and a client must take a
    missing one as ``complete``; some hosts reject the result instead (the ``mcp`` SDK's
    client, 2.3.0, validates each against its 2026 model), and the host never sees the HTTP
    side, so the proxy, as the client there, says what the spec says the server meant.
    """
    if _envelope_version(request) is None:
        return response
    result = response.get("result")
    if not isinstance(result, dict) or "resultType" in result:
        return response
    return {**response, "result": {**result, "resultType": "complete"}}


def _envelope_version(message: dict[str, Any]) -> str | None:
    """The protocol version a 2026-era request carries in ``params._meta``, if any."""
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    version = meta.get(VERSION_META_KEY) if isinstance(meta, dict) else None
    return version if isinstance(version, str) else None


def _called_tool(message: dict[str, Any]) -> str | None:
    """The tool a ``tools/call`` request names, if it names one."""
    params = message.get("params")
    name = params.get("name") if isinstance(params, dict) else None
    return name if message.get("method") == "tools/call" and isinstance(name, str) else None


def message_key(request_id: Any) -> str:
    # "1" and 1 are different ids; JSON keeps them apart.
    return json.dumps(request_id)


def parse_event(data: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        log.warning("the MCP server sent an event that is not JSON; dropped")
        return None


def raw_line(data: str, message: Any) -> bytes:
    """The server's own bytes when they fit on one line, else the message re-encoded (also
    an error that repeated a known secret: :func:`without_secrets`)."""
    clean = without_secrets(message)
    return data.encode() if "\n" not in data and clean is message else encode(clean)


def without_secrets(message: Any) -> Any:
    """``message``, or when it is a JSON-RPC error response (the server's, or the proxy's
    own) that repeats a secret this process knows, a copy with the secret hidden.

    Errors are messages, built from a server's text: a server that echoes the bearer it
    was sent must not hand it to the host. Results and notifications pass as they came.
    """
    if not (isinstance(message, dict) and "error" in message and "method" not in message):
        return message
    error = scrub_known_in(message["error"])
    return message if error == message["error"] else {**message, "error": error}
