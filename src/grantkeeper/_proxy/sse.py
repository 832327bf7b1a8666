"""``grantkeeper proxy --transport sse``: the same pipe over the HTTP+SSE transport of older
servers (protocol 2024-11-05).

One GET opens the session: its first event names the endpoint to POST messages to, and
everything the server sends (answers included) comes over that one stream. So a POST only
delivers; answers are relayed from the stream, ids untouched. The transport has no
resumption: when the stream ends, its session is gone. Requests still unanswered then get
a JSON-RPC error, a new stream is opened and the host's ``initialize`` replayed on it
before anything else is sent. Auth, logins, pings and errors are ``streamable_http``'s.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any
from urllib.parse import urljoin

import httpx2

from .._errors import GrantkeeperError
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
        self._pending: dict[str, Any] = {}  # host requests sent, unanswered: key -> id
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
                self._pending[key] = message["id"]
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
                log.info("event stream ended: %s", type(exc).__name__)
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
        except (GrantkeeperError, httpx2.HTTPError, NoSession, TimeoutError) as exc:
            log.warning("could not open a new session: %s", exc)
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
        for request_id in pending.values():
            self._fail(
                {"id": request_id, "method": "?"},
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
            self._pending.pop(key, None)
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
