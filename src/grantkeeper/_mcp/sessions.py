"""Open MCP client sessions that authenticate with grantkeeper: ``mcp`` 2.x and fastmcp.

OAuth recovery happens per HTTP request, inside the auth flow. Session expiry (a 404 for a
request that named a session) happens per MCP call, here: the session is opened again
(a new ``initialize``) and the call retried, once. The two nest without loops: each
request gets at most one OAuth retry, each call at most one new session, in either order.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
)
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc
import anyio.to_thread
import httpx2

from .._errors import GrantkeeperError, LoginRequired, OAuthUnsupported, ProtocolError
from .._http_auth.httpx2_auth import Httpx2Auth
from .._keeper import Keeper
from .._network import check_proxies, client_options, tls_context
from .._observe.log import event

if TYPE_CHECKING:
    from mcp.client.client import Client
    from mcp.client.session import (
        ElicitationFnT,
        ListRootsFnT,
        LoggingFnT,
        MessageHandlerFnT,
        SamplingFnT,
    )
    from mcp_types import CallToolResult, Implementation, ListToolsResult, LoggingLevel

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
    """Choose the policy: a static token or ``Authorization`` header turns OAuth off, a
    ``keeper`` supplies OAuth credentials, and with neither no credential is sent."""
    return Httpx2Auth.choose(url, keeper=keeper, token=token, headers=headers)


def httpx2_client_factory(
    headers: dict[str, str] | None = None,
    timeout: httpx2.Timeout | None = None,
    auth: httpx2.Auth | None = None,
    follow_redirects: bool = False,
) -> httpx2.AsyncClient:
    """``mcp`` 2.x's own client (``create_mcp_http_client``: its timeouts, redirects left to
    the transport unless the caller asks), made with grantkeeper's proxies and trust store.

    An ``httpx_client_factory`` for whatever takes one on ``mcp`` 2.x (openai-agents, fastmcp's
    transports, which also pass ``follow_redirects``): its requests then reach servers as
    :func:`connect`'s do. Pair it with ``auth=httpx2_auth(url, keeper=keeper)``.
    """
    return httpx2.AsyncClient(
        headers=headers,
        timeout=timeout or DEFAULT_TIMEOUT,
        auth=auth,
        follow_redirects=follow_redirects,
        **client_options(),
    )


class _Attempt:
    """One MCP call, or one session start: what its own HTTP requests ran into.

    It lives in a context variable while the call runs. The ``mcp`` transport sends every
    message in a copy of its sender's context (``mcp.shared._context_streams``), so the
    auth flow and response hook of each HTTP request a call causes find that call's
    attempt, and the GET event stream, started by the handshake, finds the handshake's.
    A new attempt starts clean: an auth error or a 404 is reported by the call whose
    request met it, never by a later one.
    """

    __slots__ = ("error", "expired")

    def __init__(self) -> None:
        #: The first grantkeeper error an auth flow of this attempt raised.
        self.error: GrantkeeperError | None = None
        #: Whether a request of this attempt that named a session got 404.
        self.expired = False


_ATTEMPT: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar(
    "grantkeeper_mcp_attempt", default=None
)


@contextlib.contextmanager
def _attempt() -> Iterator[_Attempt]:
    attempt = _Attempt()
    token = _ATTEMPT.set(attempt)
    try:
        yield attempt
    finally:
        _ATTEMPT.reset(token)


class _Observed(httpx2.Auth):
    """Hands each grantkeeper error an auth flow raises to the attempt that sent the request,
    and remembers the first one that ended the transport."""

    def __init__(self, inner: httpx2.Auth) -> None:
        self.inner = inner
        #: The auth error that ended the current transport, if one did. In ``mcp`` 2.x's
        #: streamable HTTP client a POST that fails ends the transport (a request's in its
        #: task group, a notification's in its writer), while the GET stream retries and
        #: the closing DELETE is best effort. Cleared when a new transport opens.
        self.fatal: GrantkeeperError | None = None

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
            attempt = _ATTEMPT.get()
            if attempt is not None and attempt.error is None:
                attempt.error = exc
            if request.method == "POST" and self.fatal is None:
                self.fatal = exc
            raise
        finally:
            await flow.aclose()


class McpSession:
    """An ``mcp`` 2.x client session that survives session expiry (once per call).

    Use :meth:`call_tool` and :meth:`list_tools`, or :meth:`run` for any other call on the
    underlying ``mcp.Client`` (``session.client``). ``client_options`` are keyword arguments
    for every ``mcp.Client`` the session opens (its callbacks, say).

    Each ``mcp.Client`` lives in a task of its own, started in ``task_group``: its transport
    is an anyio task group, which must be left by the task that entered it, and a session
    may be opened again by whichever task's call met the expiry.
    """

    def __init__(
        self,
        url: str,
        http: httpx2.AsyncClient,
        *,
        mode: str,
        task_group: anyio.abc.TaskGroup,
        auth: _Observed | None = None,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.url = url
        self._http = http
        self._mode = mode
        self._task_group = task_group
        self._auth = auth
        self._options = dict(client_options or {})
        self._client: Client | None = None
        self._close: anyio.Event | None = None
        self._closed: anyio.Event | None = None
        # Bumped by each open; a call that met an expiry reopens only the session it ran on.
        self._generation = 0
        self._reopening = anyio.Lock()
        #: How many responses were 404 to a request that named a session.
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
            attempt = _ATTEMPT.get()
            if attempt is not None:
                attempt.expired = True

    async def open(self) -> None:
        """Connect and initialise a session."""
        if self._auth is not None:
            self._auth.fatal = None
        opened, close, closed = anyio.Event(), anyio.Event(), anyio.Event()
        failed: list[BaseException] = []
        self._task_group.start_soon(self._hold_open, opened, failed, close, closed)
        await opened.wait()
        if failed:
            raise failed[0]
        self._close, self._closed = close, closed
        self._generation += 1

    async def _hold_open(
        self,
        opened: anyio.Event,
        failed: list[BaseException],
        close: anyio.Event,
        closed: anyio.Event,
    ) -> None:
        """Own one ``mcp.Client`` from entering it to leaving it.

        A failure to open goes to :meth:`open`'s caller. Once open, an error that ends the
        transport leaves this task and so cancels ``connect``'s body, as it would have had
        the transport run there.
        """
        from mcp.client.client import Client
        from mcp.client.streamable_http import streamable_http_client

        entered = False
        try:
            with _attempt() as attempt:
                try:
                    async with Client(
                        streamable_http_client(self.url, http_client=self._http),
                        mode=self._mode,
                        **self._options,
                    ) as client:
                        entered = True
                        self._client = client
                        opened.set()
                        await close.wait()
                except BaseException as exc:
                    if isinstance(exc, anyio.get_cancelled_exc_class()):
                        failed.append(exc)
                        raise  # a cancellation is never swallowed
                    if not entered:
                        failed.append(self._auth_error(attempt, exc) or exc)
                    elif not close.is_set():
                        raise
                    # Else the session was being closed on purpose, say for a new one after
                    # an expiry: its late replies to calls that moved on find the streams
                    # closed, and that is no reason to end connect().
                    event(logging.DEBUG, "mcp.session_closed", error=type(exc).__name__)
        finally:
            opened.set()
            closed.set()

    async def aclose(self) -> None:
        """End the session (the transport sends its DELETE)."""
        close, closed = self._close, self._closed
        self._close = self._closed = self._client = None
        if close is not None and closed is not None:
            close.set()
            await closed.wait()

    async def _reopen(self, generation: int) -> None:
        """Open a new session in place of session ``generation``, unless one already was."""
        async with self._reopening:
            if self._generation != generation:
                return
            self.reconnects += 1
            await self.aclose()
            await self.open()

    async def _current(self) -> tuple[Client, int]:
        if self._client is None and self._reopening.locked():
            async with self._reopening:  # another call is opening the new session
                pass
        return self.client, self._generation

    async def run(self, call: Callable[[Client], Awaitable[T]]) -> T:
        """Run ``call``; if the session expired under it, open a new one and run it again.

        Concurrent calls that meet the same expiry share one new session.
        """
        from mcp.shared.exceptions import MCPError
        from mcp_types import CONNECTION_CLOSED

        client, generation = await self._current()
        with _attempt() as attempt:
            try:
                return await call(client)
            except BaseException as exc:
                self._raise_auth_error(attempt, exc)
                if not isinstance(exc, MCPError):
                    raise
                # Expired: this call met the 404 (the server never ran it). Replaced:
                # another call's 404 closed the session under this one, which then saw
                # only the connection close.
                replaced = exc.code == CONNECTION_CLOSED and (
                    self._generation != generation or self._client is not client
                )
                if not (attempt.expired or replaced):
                    raise
        await self._reopen(generation)
        client, _ = await self._current()
        with _attempt() as attempt:
            try:
                return await call(client)
            except BaseException as exc:
                self._raise_auth_error(attempt, exc)
                raise

    def _auth_error(self, attempt: _Attempt, exc: BaseException) -> GrantkeeperError | None:
        """The auth error that caused ``exc``, if one did.

        The SDK's transport runs requests in its own tasks, so an auth error there reaches
        the caller only as "Connection closed" or a cancellation. The cause is the call's
        own request's error, or, for a closed connection, the error that ended the
        transport. A 404, a cancellation or a timeout with neither keeps its own type.
        """
        from mcp.shared.exceptions import MCPError
        from mcp_types import CONNECTION_CLOSED

        error = attempt.error
        if error is None and isinstance(exc, MCPError) and exc.code == CONNECTION_CLOSED:
            error = self._auth.fatal if self._auth is not None else None
        return None if error is exc else error

    def _raise_auth_error(self, attempt: _Attempt, exc: BaseException) -> None:
        error = self._auth_error(attempt, exc)
        if error is not None:
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
    allow_unauthenticated: bool = False,
    sampling_callback: SamplingFnT | None = None,
    elicitation_callback: ElicitationFnT | None = None,
    list_roots_callback: ListRootsFnT | None = None,
    logging_callback: LoggingFnT | None = None,
    message_handler: MessageHandlerFnT | None = None,
    log_level: LoggingLevel | None = None,
    client_info: Implementation | None = None,
) -> AsyncIterator[McpSession]:
    """Open an ``mcp`` 2.x session to ``url`` that authenticates with grantkeeper.

    Auth is one of three:

    - OAuth: ``keeper`` supplies the credential, refreshed and recovered after a 401;
    - a static bearer: ``token``, or an ``Authorization`` header in ``headers``;
    - none, for a server that needs none: neither of the above. A 401 then raises
      :class:`~grantkeeper.LoginRequired`.

    With a ``keeper`` that holds nothing, the server is asked whether it offers OAuth:
    if it does, :class:`~grantkeeper.LoginRequired`; if not,
    :class:`~grantkeeper.OAuthUnsupported`, or with ``allow_unauthenticated`` a session
    without auth.

    ``http_timeout`` bounds each HTTP request and the wait for a credential (its ``pool``
    part). ``mode`` is ``mcp.Client``'s: ``"auto"`` negotiates, ``"legacy"`` forces the
    ``initialize`` handshake (sessions with ids). The callbacks, ``message_handler``,
    ``log_level`` and ``client_info`` go to ``mcp.Client`` as they are, for every session
    this one opens.

    A grantkeeper error raised inside the transport's tasks (say, authentication is
    required) reaches the caller as itself, not wrapped in an exception group.
    """
    handlers = {
        "sampling_callback": sampling_callback,
        "elicitation_callback": elicitation_callback,
        "list_roots_callback": list_roots_callback,
        "logging_callback": logging_callback,
        "message_handler": message_handler,
        "log_level": log_level,
        "client_info": client_info,
    }
    options = {name: value for name, value in handlers.items() if value is not None}
    auth = _Observed(httpx2_auth(url, keeper=keeper, token=token, headers=headers))
    try:
        async with (
            httpx2.AsyncClient(
                auth=auth,
                headers=dict(headers or {}),
                timeout=http_timeout,
                follow_redirects=False,
                **client_options(),
            ) as http,
            anyio.create_task_group() as sessions,
        ):
            session = McpSession(
                url, http, mode=mode, task_group=sessions, auth=auth, client_options=options
            )
            http.event_hooks["response"].append(session._on_response)
            await _start(session, auth, allow_unauthenticated=allow_unauthenticated)
            try:
                yield session
            finally:
                await session.aclose()
                # A session still opening (for a call that is being abandoned) goes too.
                sessions.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        found = _grantkeeper_error(group)
        if found is None:
            raise
        raise found from group


async def _start(session: McpSession, auth: _Observed, *, allow_unauthenticated: bool) -> None:
    """Open ``session``; if OAuth finds nothing stored, ask the server whether it offers any."""
    try:
        await session.open()
        return
    except BaseException as exc:
        error = _grantkeeper_error(exc)
        if not isinstance(error, LoginRequired) or not _is_oauth(auth.inner):
            raise
        nothing_stored = error
    # Raised outside the except block: an OAuthUnsupported that carried the LoginRequired
    # as its context would read as "log in" to authentication_required().
    if await _offers_oauth(session.url) is not False:
        raise nothing_stored
    if not allow_unauthenticated:
        raise OAuthUnsupported(
            f"nothing is stored for {session.url}, and the server offers no OAuth: "
            "connect without a Keeper (or with allow_unauthenticated) if it needs no auth",
            key=nothing_stored.key,
        )
    auth.inner = Httpx2Auth.anonymous(session.url)
    await session.open()


async def _offers_oauth(url: str) -> bool | None:
    """Whether ``url`` offers OAuth, by discovery; ``None`` when discovery cannot tell."""
    from .._oauth.discovery import discover

    try:
        await anyio.to_thread.run_sync(discover, url)
    except OAuthUnsupported:
        return False
    except ProtocolError:
        return None
    return True


def _is_oauth(auth: httpx2.Auth) -> bool:
    return isinstance(auth, Httpx2Auth) and auth.oauth


def _grantkeeper_error(exc: BaseException) -> GrantkeeperError | None:
    """``exc`` itself, or the first grantkeeper error in it if it is an exception group."""
    if isinstance(exc, GrantkeeperError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _grantkeeper_error(inner)
            if found is not None:
                return found
    return None


def fastmcp_client(
    url: str, *, keeper: Keeper | None = None, token: str | None = None, **kwargs: Any
) -> Any:
    """A fastmcp ``Client`` for ``url`` that authenticates with grantkeeper.

    Auth is chosen as by :func:`connect`: ``keeper``, ``token``, or none. Extra keyword
    arguments go to ``fastmcp.Client``. Use it as fastmcp documents:
    ``async with fastmcp_client(url, keeper=keeper) as client: ...``.
    """
    from fastmcp import Client as FastMCPClient
    from fastmcp.client.transports import SSETransport, StreamableHttpTransport, infer_transport

    # The transport fastmcp would pick for the URL, made with grantkeeper's trust store (its
    # proxies come from the environment, as ours do).
    auth = httpx2_auth(url, keeper=keeper, token=token)
    check_proxies()  # typed here, not from inside fastmcp's first request
    if isinstance(infer_transport(url), SSETransport):
        return FastMCPClient(SSETransport(url, auth=auth, verify=tls_context()), **kwargs)
    return FastMCPClient(StreamableHttpTransport(url, auth=auth, verify=tls_context()), **kwargs)
