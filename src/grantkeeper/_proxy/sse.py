"""``grantkeeper proxy --transport sse``: the same pipe over the HTTP+SSE transport of older
servers (protocol 2024-11-05).

One GET opens the session: its first event names the endpoint to POST messages to, and
everything the server sends (answers included) comes over that one stream. So a POST only
delivers; answers are relayed from the stream, ids untouched. The transport has no
resumption: when the stream ends, its session is gone. Requests still unanswered then get
a JSON-RPC error, a new stream is opened and the host's ``initialize`` replayed on it
before anything else is sent. Auth, logins, pings and errors are ``streamable_http``'s.

``--transport auto`` (the default) is :class:`AutoProxy`: streamable HTTP, or this
transport when the server answers the first POST with 404 or 405 (:func:`falls_back_to_sse`).
The first answer that decides does: a 2xx, or a 4xx other than 404, 405, 408 and 429
(:func:`decides_streamable_http`), is streamable HTTP's. A 5xx, 408 or 429 (a gateway's, as
likely as the server's) decides nothing, nor does a POST that got no answer or an HTTP+SSE
session that did not open: the message gets its error, and the next POST asks again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any
from urllib.parse import urljoin

import httpx2

from .._errors import GrantkeeperError
from .._network import failure
from .streamable_http import (
    MAX_EVENT_SIZE,
    RECONNECT_DELAY,
    RECONNECT_MAX,
    NoSession,
    Proxy,
    SessionExpired,
    encode,
    is_request,
    is_response,
    message_key,
    parse_event,
    raw_line,
)

log = logging.getLogger("grantkeeper.proxy")

ANSWER_TIMEOUT = 60.0
"""Bounds the wait for the answer to the proxy's own requests (a replayed initialize)."""


class SseProxy(Proxy):
    """A :class:`~.streamable_http.Proxy` whose upstream is an HTTP+SSE session."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._endpoint: str | None = None
        self._connected = asyncio.Event()  # an endpoint is known and the session is usable
        self._stream: asyncio.Task[None] | None = None
        # Host requests sent, unanswered: key -> the request (its answer may be rewritten,
        # a tools/list's by --ignore-tool: see _from_stream).
        self._pending: dict[str, dict[str, Any]] = {}
        self._own: dict[str, asyncio.Future[dict[str, Any]]] = {}  # our requests' answers
        self._renewed = asyncio.Event()
        self._replays = itertools.count(1)

    async def run(self, lines: asyncio.Queue[bytes | None]) -> None:
        self._stream = asyncio.create_task(self._stream_loop())
        try:
            await super().run(lines)
        finally:
            self._stream.cancel()
            await asyncio.gather(self._stream, return_exceptions=True)

    async def close(self) -> None:
        # The transport has nothing to DELETE: closing the stream ends the session.
        self.session_id = None
        await super().close()

    # -- sending --------------------------------------------------------------------------

    async def _post(self, message: Any, *, relay: bool) -> dict[str, Any] | None:
        await self._connected.wait()
        endpoint = self._endpoint
        assert endpoint is not None
        return await self._post_to(endpoint, message, relay=relay)

    async def _post_to(self, endpoint: str, message: Any, *, relay: bool) -> dict[str, Any] | None:
        key = message_key(message.get("id")) if is_request(message) else None
        answer: asyncio.Future[dict[str, Any]] | None = None
        if key is not None:
            if relay:
                self._pending[key] = message
            else:
                answer = self._own[key] = asyncio.get_running_loop().create_future()
        try:
            response = await self.http.post(
                endpoint, content=encode(message), headers={"content-type": "application/json"}
            )
            if response.status_code == 404:
                raise SessionExpired
            if response.status_code >= 400:
                text = f"the MCP server answered HTTP {response.status_code}"
                self._fail(message, text, relay=relay)
                return None
            if answer is None:
                return None
            async with asyncio.timeout(ANSWER_TIMEOUT):
                return await answer
        except BaseException:
            if key is not None:
                self._pending.pop(key, None)
            raise
        finally:
            if key is not None:
                self._own.pop(key, None)

    # -- the stream -----------------------------------------------------------------------

    async def _stream_loop(self) -> None:
        delay = RECONNECT_DELAY
        while True:
            try:
                async with self.http.stream(
                    "GET", self.url, headers={"accept": "text/event-stream"}
                ) as response:
                    if response.status_code >= 400:
                        log.warning("the MCP server refused its event stream: HTTP %s",
                                    response.status_code)  # fmt: skip
                    else:
                        async for event in httpx2.EventSource(
                            response, max_event_size=MAX_EVENT_SIZE
                        ):
                            if event.event == "endpoint":
                                delay = RECONNECT_DELAY
                                self._opened(urljoin(self.url, event.data.strip()))
                            elif event.event in ("message", "") and event.data:
                                self._from_stream(event.data)
            except GrantkeeperError as exc:
                log.warning("event stream: %s", self._explain(exc))
            except httpx2.HTTPError as exc:
                log.info("event stream ended: %s", failure(exc))
            self._lost()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    def _opened(self, endpoint: str) -> None:
        self._endpoint = endpoint
        if self._initialize is None:
            self._connected.set()  # a first session: the host initializes it itself
        else:
            self._spawn(self._replay(endpoint))

    async def _replay(self, endpoint: str) -> None:
        """Initialize a new session as the host did, before the host's messages flow."""
        assert self._initialize is not None
        replay = {**self._initialize, "id": f"grantkeeper-{next(self._replays)}"}
        try:
            answer = await self._post_to(endpoint, replay, relay=False)
            if answer is None or "error" in answer:
                raise NoSession("the MCP server refused to open a new session")
            initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            await self._post_to(endpoint, initialized, relay=False)
        except (GrantkeeperError, httpx2.HTTPError, NoSession, SessionExpired, TimeoutError) as exc:
            # SessionExpired: a 404 from the endpoint the stream named; the session is gone.
            log.warning("could not open a new session: %s", str(exc) or type(exc).__name__)
            return
        self._generation += 1
        self.reinitializations += 1
        self._connected.set()
        self._renewed.set()

    def _lost(self) -> None:
        """The stream ended, and its session with it."""
        self._connected.clear()
        self._endpoint = None
        pending, self._pending = self._pending, {}
        for request in pending.values():
            self._fail(
                {"id": request["id"], "method": "?"},
                "the MCP server's event stream ended before it answered; the request may have run",
            )

    def _from_stream(self, data: str) -> None:
        message = parse_event(data)
        if message is None:
            return
        if is_response(message):
            key = message_key(message.get("id"))
            own = self._own.get(key)
            if own is not None:
                if not own.done():
                    own.set_result(message)
                return
            request = self._pending.pop(key, None)
            if request is not None:
                final = self._as_host_gets(request, message)
                if final is not message:
                    self._to_host_message(final)
                    return
        self._to_host(raw_line(data, message))

    async def _reinitialize(self, generation: int) -> None:
        """The server forgot the session (404): open a new stream, which replays."""
        async with self._session_lock:
            if generation != self._generation or self._initialize is None:
                return
            self._renewed.clear()
            if self._stream is not None:
                self._stream.cancel()
                await asyncio.gather(self._stream, return_exceptions=True)
            self._lost()
            self._stream = asyncio.create_task(self._stream_loop())
            try:
                async with asyncio.timeout(ANSWER_TIMEOUT):
                    await self._renewed.wait()
            except TimeoutError:
                raise NoSession("the MCP server opened no new session in time") from None

    def _after_notification(self, message: Any) -> None:
        pass  # no GET stream of its own: the session's stream is already open


STREAMABLE_HTTP = "streamable-http"
SSE = "sse"


def falls_back_to_sse(status: int) -> bool:
    """mcp-remote's http-first rule, for the server's answer to the first POST only: 404 or
    405 says no streamable HTTP endpoint is at the URL, so the server speaks HTTP+SSE there.
    """
    return status in (404, 405)


def decides_streamable_http(status: int) -> bool:
    """Whether the answer to a first POST says the server speaks streamable HTTP: a 2xx, or
    a 4xx other than 404 and 405 (:func:`falls_back_to_sse`), 408 and 429 (what a 401 or 403
    became once auth had its say counts: the server read the request). After it, a 404 is a
    session the server forgot, never a transport.

    A 5xx, 408 or 429 decides nothing: a proxy or gateway in front (a corporate proxy's 502
    before an HTTP+SSE server, say) answers those as readily as the server, and a transient
    failure must not fix the transport for the whole run."""
    return 200 <= status < 300 or (400 <= status < 500 and status not in (404, 405, 408, 429))


class NotStreamableHttp(Exception):
    """The server answered the first POST with a status :func:`falls_back_to_sse` names."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class AutoProxy(SseProxy):
    """``--transport auto``: streamable HTTP, unless the server's answer to the first POST
    says it has none (:func:`falls_back_to_sse`); then HTTP+SSE for the rest of the run, the
    first message sent again over it, so the host sees nothing but the answer. When the
    host's ``initialize`` went in an attempt that decided nothing and another message is the
    one sent again, the first HTTP+SSE session is initialized as the host asked, before it.

    Until that answer, other messages wait for it: a host sends nothing but pings before
    its ``initialize`` is answered. An attempt that decides nothing (no answer: the network,
    a login that failed; a 5xx, 408 or 429: :func:`decides_streamable_http`; a switch whose
    HTTP+SSE session did not open) leaves the transport undecided: the message fails as on
    streamable HTTP, and the next POST asks again. Once decided, every method is the chosen
    transport's: a DELETE on close and the session's GET stream only on streamable HTTP, one
    stream on HTTP+SSE.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: ``None`` until an answer decided; then ``"streamable-http"`` or ``"sse"`` for good
        #: (``"sse"`` once its first session is open).
        self.transport: str | None = None
        self._deciding = asyncio.Lock()
        self._fresh = True  # no HTTP+SSE session opened yet: the host's messages open it
        self._first_stream: asyncio.Future[bool] | None = None
        self._held: Any = None  # the message the switch holds while the first stream opens

    async def run(self, lines: asyncio.Queue[bytes | None]) -> None:
        try:
            await Proxy.run(self, lines)  # the HTTP+SSE stream opens only when chosen
        finally:
            if self._stream is not None:
                self._stream.cancel()
                await asyncio.gather(self._stream, return_exceptions=True)

    async def close(self) -> None:
        if self.transport == SSE:
            await super().close()
        else:
            await Proxy.close(self)

    async def _post(self, message: Any, *, relay: bool) -> dict[str, Any] | None:
        if self.transport is None:
            async with self._deciding:
                if self.transport is None:
                    return await self._first_post(message, relay=relay)
        if self.transport == SSE:
            return await super()._post(message, relay=relay)
        return await Proxy._post(self, message, relay=relay)

    async def _first_post(self, message: Any, *, relay: bool) -> dict[str, Any] | None:
        try:
            return await Proxy._post(self, message, relay=relay)
        except NotStreamableHttp as refused:
            status = refused.status
        log.info(
            "proxy.transport sse: the MCP server answered HTTP %s to the first POST; "
            "using HTTP+SSE (protocol 2024-11-05)",
            status,
        )
        failure = await self._open_first_session(message)
        if failure is not None:
            # Neither transport is there (a wrong URL, say): the host gets an answer, not a
            # wait for a session that may never come, and its next POST decides again (a
            # stream left retrying would hold every later message on a session for ever).
            await self._undecide()
            self._fail(message, f"the MCP server answered HTTP {status} and {failure}", relay=relay)
            return None
        # Decided only now: until the session is usable, other messages wait for the
        # decision, so none is left waiting on a session that is given up.
        self.transport = SSE
        return await super()._post(message, relay=relay)

    async def _open_first_session(self, held: Any) -> str | None:
        """Open the first HTTP+SSE session for ``held``; what went wrong, if it did not."""
        future = self._first_stream = asyncio.get_running_loop().create_future()
        self._held = held
        self._stream = asyncio.create_task(self._stream_loop())

        def ended(_: asyncio.Task[None]) -> None:
            # A stream loop that died of what it does not catch settles it too: no hang.
            if not future.done():
                future.set_result(False)

        self._stream.add_done_callback(ended)
        try:
            if not await future:
                return "opened no HTTP+SSE stream either"
        finally:
            self._held = None
        endpoint = self._endpoint
        if not self._connected.is_set() and endpoint is not None:
            # The host's initialize went in an attempt that decided nothing: the session is
            # initialized as the host asked before the held message, as after an expiry.
            await self._replay(endpoint)
        if not self._connected.is_set():
            return "opened no usable HTTP+SSE session"
        return None

    async def _undecide(self) -> None:
        """Back to undecided: no stream left retrying, and the next POST asks again."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.cancel()
            await asyncio.gather(stream, return_exceptions=True)
        self._lost()
        self._first_stream = None
        self._fresh = True
        self.transport = None

    def _answered(self, status: int) -> None:
        if self.transport is not None:
            return
        if falls_back_to_sse(status):
            raise NotStreamableHttp(status)
        if not decides_streamable_http(status):
            log.info(
                "proxy.transport undecided: the first POST was answered HTTP %s; "
                "the next POST decides",
                status,
            )
            return
        self.transport = STREAMABLE_HTTP
        log.info("proxy.transport streamable-http: the first POST was answered HTTP %s", status)

    def _opened(self, endpoint: str) -> None:
        if self._fresh:
            self._fresh = False
            self._endpoint = endpoint
            if self._initialize is None or self._initialize is self._held:
                # The first session, opened by the held message, the host's own initialize
                # (replaying it as well would initialize twice). Otherwise
                # _open_first_session replays the host's initialize before it.
                self._connected.set()
        else:
            super()._opened(endpoint)
        self._settle_first_stream(True)

    def _lost(self) -> None:
        super()._lost()
        self._settle_first_stream(False)

    def _settle_first_stream(self, opened: bool) -> None:
        if self._first_stream is not None and not self._first_stream.done():
            self._first_stream.set_result(opened)

    async def _reinitialize(self, generation: int) -> None:
        if self.transport == SSE:
            await super()._reinitialize(generation)
        else:
            await Proxy._reinitialize(self, generation)

    def _after_notification(self, message: Any) -> None:
        if self.transport != SSE:
            Proxy._after_notification(self, message)
