"""Open MCP client sessions that authenticate with grantkeeper: ``mcp`` 2.x and fastmcp.

OAuth recovery happens per HTTP request, inside the auth flow. Session expiry (a 404 for a
request that named a session) happens per MCP call, here: the session is opened again
(a new ``initialize``) and the call retried, once. The two nest without loops: each
request gets at most one OAuth retry, each call at most one new session, in either order.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import httpx2

from ._errors import GrantkeeperError
from ._httpx2_auth import Httpx2Auth
from ._keeper import Keeper

if TYPE_CHECKING:
    from mcp.client.client import Client
    from mcp_types import CallToolResult, ListToolsResult

T = TypeVar("T")

SESSION_HEADER = "mcp-session-id"

DEFAULT_TIMEOUT = httpx2.Timeout(30.0, read=300.0)
"""The ``mcp`` SDK's own defaults: 30 s, and 300 s of read for long-lived event streams."""


def httpx2_auth(
    url: str,
    *,
    keeper: Keeper | None = None,
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Httpx2Auth:
    """Choose the policy: a static token or ``Authorization`` header turns OAuth off."""
    return Httpx2Auth.choose(url, keeper=keeper, token=token, headers=headers)


class _Observed(httpx2.Auth):
    """Remembers the grantkeeper error an auth flow raised.

    The SDK's transport runs requests in its own tasks; an error there may reach the caller
    only as "Connection closed". The session raises the remembered error instead.
    """

    def __init__(self, inner: httpx2.Auth) -> None:
        self.inner = inner
        self.error: GrantkeeperError | None = None

    async def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        flow = self.inner.async_auth_flow(request)
        try:
            outgoing = await flow.__anext__()
            while True:
                response = yield outgoing
                outgoing = await flow.asend(response)
        except StopAsyncIteration:
            return
        except GrantkeeperError as exc:
            self.error = exc
            raise
        finally:
            await flow.aclose()


class McpSession:
    """An ``mcp`` 2.x client session that survives session expiry (once per call).

    Use :meth:`call_tool` and :meth:`list_tools`, or :meth:`run` for any other call on the
    underlying ``mcp.Client`` (``session.client``).
    """

    def __init__(
        self, url: str, http: httpx2.AsyncClient, *, mode: str, auth: _Observed | None = None
    ) -> None:
        self.url = url
        self._http = http
        self._mode = mode
        self._auth = auth
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Client | None = None
        # Bumped by a response hook for every 404 to a request that named a session.
        self.expiries = 0
        #: How many times a session was opened again after it expired.
        self.reconnects = 0

    @property
    def client(self) -> Client:
        """The ``mcp.Client`` of the current session."""
        if self._client is None:
            raise RuntimeError("the MCP session is not open")
        return self._client

    async def _on_response(self, response: httpx2.Response) -> None:
        if response.status_code == 404 and SESSION_HEADER in response.request.headers:
            self.expiries += 1

    async def open(self) -> None:
        """Connect and initialise a session."""
        from mcp.client.client import Client
        from mcp.client.streamable_http import streamable_http_client

        stack = contextlib.AsyncExitStack()
        try:
            client = Client(
                streamable_http_client(self.url, http_client=self._http),
                mode=self._mode,
            )
            self._client = await stack.enter_async_context(client)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack

    async def aclose(self) -> None:
        """End the session (the transport sends its DELETE)."""
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def run(self, call: Callable[[Client], Awaitable[T]]) -> T:
        """Run ``call``; if the session expired under it, open a new one and run it again."""
        from mcp.shared.exceptions import MCPError

        before = self.expiries
        try:
            return await call(self.client)
        except BaseException as exc:
            self._raise_auth_error(exc)
            if not isinstance(exc, MCPError) or self.expiries == before:
                raise
        self.reconnects += 1
        await self.aclose()
        await self.open()
        try:
            return await call(self.client)
        except BaseException as exc:
            self._raise_auth_error(exc)
            raise

    def _raise_auth_error(self, exc: BaseException) -> None:
        """Raise the auth flow's error, if it caused ``exc``; the session is then dead."""
        error = self._auth.error if self._auth is not None else None
        if error is not None and error is not exc:
            raise error from exc

    async def call_tool(
        self, name: str, arguments: Mapping[str, Any] | None = None
    ) -> CallToolResult:
        """Call the tool ``name`` with ``arguments``."""
        return await self.run(lambda client: client.call_tool(name, dict(arguments or {})))

    async def list_tools(self) -> ListToolsResult:
        """List the server's tools."""
        return await self.run(lambda client: client.list_tools())


@contextlib.asynccontextmanager
async def connect(
    url: str,
    *,
    keeper: Keeper | None = None,
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
    http_timeout: httpx2.Timeout = DEFAULT_TIMEOUT,
    mode: str = "auto",
) -> AsyncIterator[McpSession]:
    """Open an ``mcp`` 2.x session to ``url`` that authenticates with grantkeeper.

    ``keeper`` supplies an OAuth credential; ``token`` or an ``Authorization`` header in
    ``headers`` sends a static one instead. ``http_timeout`` bounds each HTTP request
    and the wait for a credential (its ``pool`` part). ``mode`` is ``mcp.Client``'s: ``"auto"``
    negotiates, ``"legacy"`` forces the ``initialize`` handshake (sessions with ids).

    A grantkeeper error raised inside the transport's tasks (say, authentication is
    required) reaches the caller as itself, not wrapped in an exception group.
    """
    auth = _Observed(httpx2_auth(url, keeper=keeper, token=token, headers=headers))
    try:
        async with httpx2.AsyncClient(
            auth=auth, headers=dict(headers or {}), timeout=http_timeout, follow_redirects=False
        ) as http:
            session = McpSession(url, http, mode=mode, auth=auth)
            http.event_hooks["response"].append(session._on_response)
            await session.open()
            try:
                yield session
            finally:
                await session.aclose()
    except BaseExceptionGroup as group:
        found = _grantkeeper_error(group)
        if found is None:
            raise
        raise found from group


def _grantkeeper_error(group: BaseExceptionGroup[BaseException]) -> GrantkeeperError | None:
    for exc in group.exceptions:
        if isinstance(exc, GrantkeeperError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            inner = _grantkeeper_error(exc)
            if inner is not None:
                return inner
    return None


def fastmcp_client(
    url: str, *, keeper: Keeper | None = None, token: str | None = None, **kwargs: Any
) -> Any:
    """A fastmcp ``Client`` for ``url`` that authenticates with grantkeeper.

    Extra keyword arguments go to ``fastmcp.Client``. Use it as fastmcp documents:
    ``async with fastmcp_client(url, keeper=keeper) as client: ...``.
    """
    from fastmcp import Client as FastMCPClient

    return FastMCPClient(url, auth=httpx2_auth(url, keeper=keeper, token=token), **kwargs)
