"""MCP clients against a real MCP server (``mcp`` 2.3) protected by the real oidc-provider.

The authorization server's counters prove what happened: refreshes granted, refresh
tokens replayed. Faults (401 on a stream, expired sessions) are injected by the MCP
server's test controls; tests wait on what the server saw, never on the clock.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from click.testing import CliRunner

from grantkeeper import (
    AuthState,
    CredentialKey,
    FileStore,
    HttpxAuth,
    InsufficientScope,
    Keeper,
    LoginRequired,
    ReauthenticationRequired,
    ServerConfig,
    auth_status,
)
from grantkeeper._cli._tools import call, tools
from grantkeeper.mcp import Httpx2Auth, McpSession, connect, fastmcp_client
from harness.authserver import AuthServer
from harness.clocks import ShiftClock
from harness.mcp_demo import login
from harness.mcp_server import INITIALIZE, McpServer, Seen

pytestmark = pytest.mark.realserver

MCP_HEADERS = {"accept": "application/json, text/event-stream"}


def refreshes(auth: AuthServer) -> tuple[int, int]:
    stats = auth.stats()
    return int(stats["refresh_success"]), int(stats["replays"])


def tokens(seen: list[Seen], method: str) -> list[str | None]:
    return [s.token for s in seen if s.method == method]


async def add(session: McpSession, a: int, b: int) -> Any:
    result = await session.call_tool("add", {"a": a, "b": b})
    return (result.structured_content or {}).get("result")


def test_tool_call_on_mcp2_with_httpx2(keeper: Keeper, server: McpServer, auth: AuthServer) -> None:
    async def go() -> tuple[Any, Any]:
        async with connect(server.url, keeper=keeper, mode="legacy") as session:
            who = await session.call_tool("whoami", {})
            return await add(session, 1, 2), who.structured_content

    total, who = asyncio.run(go())
    assert total == 3
    assert who["subject"] == "alice"
    assert refreshes(auth) == (0, 0)


def test_plain_httpx_against_the_real_server(keeper: Keeper, server: McpServer) -> None:
    with httpx.Client(auth=HttpxAuth(keeper), headers=MCP_HEADERS, timeout=10.0) as client:
        assert client.post(server.url, json=INITIALIZE).status_code == 200
        assert httpx.post(server.url, json=INITIALIZE, headers=MCP_HEADERS).status_code == 401


def test_fastmcp_client_calls_a_tool(keeper: Keeper, server: McpServer) -> None:
    async def go() -> Any:
        async with fastmcp_client(server.url, keeper=keeper) as client:
            result = await client.call_tool("add", {"a": 20, "b": 22})
            return result.structured_content

    assert asyncio.run(go()) == {"result": 42}


def test_expired_stored_token_is_refreshed_before_the_first_request(
    auth: AuthServer, server: McpServer, store: FileStore
) -> None:
    issued = login(auth, server.url, store)
    auth.reset_stats()
    clock = ShiftClock()
    clock.offset = timedelta(hours=2)  # the stored access token has expired
    keeper = Keeper(store, CredentialKey.for_server(server.url), clock=clock)
    try:

        async def go() -> Any:
            async with connect(server.url, keeper=keeper, mode="legacy") as session:
                return await add(session, 2, 3)

        assert asyncio.run(go()) == 5
    finally:
        keeper.close()
    assert refreshes(auth) == (1, 0)
    seen = server.seen()
    assert issued.access_token not in tokens(seen, "POST")
    assert all(s.status != 401 for s in seen)


class InstallsBBeforeTheLate401(httpx2.AsyncBaseTransport):
    """A transport that, when the server refuses A, lets a concurrent caller install B first."""

    def __init__(self, keeper: Keeper) -> None:
        self.keeper = keeper
        self.inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self.inner.handle_async_request(request)
        if response.status_code == 401 and self.keeper.current is not None:
            rejected = self.keeper.current.access_token
            if request.headers["authorization"] == f"Bearer {rejected}":
                await self.keeper.acredential(rejected=rejected)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_a_late_401_for_a_retries_with_b_without_refreshing(
    keeper: Keeper, server: McpServer, auth: AuthServer
) -> None:
    a = keeper.access_token()
    server.fail_next("POST")

    async def go() -> int:
        transport = InstallsBBeforeTheLate401(keeper)
        auth_ = Httpx2Auth(keeper)
        async with httpx2.AsyncClient(auth=auth_, transport=transport, headers=MCP_HEADERS) as c:
            return (await c.post(server.url, json=INITIALIZE)).status_code

    assert asyncio.run(go()) == 200
    assert refreshes(auth) == (1, 0)  # the concurrent caller's; the late 401 spent none
    posted = tokens(server.seen(), "POST")
    assert posted[0] == a and posted[1] == keeper.access_token() != a


def test_a_late_401_from_another_process_adopts_its_token(
    keeper: Keeper, server: McpServer, auth: AuthServer, store: FileStore
) -> None:
    a = keeper.access_token()
    peer = Keeper(store, keeper.key)
    try:
        b = peer.credential(rejected=a).access_token  # the peer refreshed: B is stored
    finally:
        peer.close()
    server.fail_next("POST")  # the server now refuses A
    with httpx.Client(auth=HttpxAuth(keeper), headers=MCP_HEADERS, timeout=10.0) as client:
        assert client.post(server.url, json=INITIALIZE).status_code == 200
    assert refreshes(auth) == (1, 0)  # the peer's only
    assert tokens(server.seen(), "POST") == [a, b]


def get_stream_open(seen: list[Seen]) -> bool:
    return any(s.method == "GET" and s.status == 200 for s in seen)


def after_a_401_on_the_next(
    method: str, keeper: Keeper, server: McpServer, call: Callable[[McpSession], Awaitable[Any]]
) -> tuple[str, Any]:
    """Have the server refuse the next ``method`` request with a 401, then ``call`` in a
    legacy session. Returns the access token held before (A) and what ``call`` returned."""
    a = keeper.access_token()
    server.fail_next(method)

    async def go() -> Any:
        async with connect(server.url, keeper=keeper, mode="legacy") as session:
            return await call(session)

    return a, asyncio.run(go())


def test_a_401_on_the_get_stream_is_recovered_by_the_same_policy(
    keeper: Keeper, server: McpServer, auth: AuthServer
) -> None:
    async def once_the_stream_is_open(session: McpSession) -> Any:
        await asyncio.to_thread(server.wait_for, get_stream_open)
        return await add(session, 4, 5)

    a, total = after_a_401_on_the_next("GET", keeper, server, once_the_stream_is_open)
    assert total == 9
    gets = [(s.status, s.token) for s in server.seen() if s.method == "GET"]
    assert gets[0] == (401, a)
    assert gets[1][0] == 200 and gets[1][1] not in (a, None)
    assert refreshes(auth) == (1, 0)


def add_after_expiry_and_a_401(
    keeper: Keeper, server: McpServer, n: int, skip: int
) -> tuple[Any, int]:
    """Open a session and call once; then expire the server's sessions, have it refuse one
    POST with a 401 after letting ``skip`` through, and add ``n`` to ``n``. Returns the sum
    and the session's reconnect count."""

    async def go() -> tuple[Any, int]:
        async with connect(server.url, keeper=keeper, mode="legacy") as session:
            await add(session, 1, 1)
            server.expire_sessions()
            server.fail_next("POST", skip=skip)
            return await add(session, n, n), session.reconnects

    return asyncio.run(go())


def test_session_expiry_then_401_recover_once_each(
    keeper: Keeper, server: McpServer, auth: AuthServer
) -> None:
    # The call gets 404; re-initialising gets 401.
    assert add_after_expiry_and_a_401(keeper, server, 2, skip=1) == (4, 1)
    assert refreshes(auth) == (1, 0)


def test_401_then_session_expiry_recover_once_each(
    keeper: Keeper, server: McpServer, auth: AuthServer
) -> None:
    # The call gets 401, its retry 404.
    assert add_after_expiry_and_a_401(keeper, server, 3, skip=0) == (6, 1)
    assert refreshes(auth) == (1, 0)
    statuses = [s.status for s in server.seen() if s.method == "POST"]
    assert statuses.count(401) == 1


def test_a_401_on_the_retry_is_authentication_required_without_a_loop(
    keeper: Keeper, server: McpServer, auth: AuthServer
) -> None:
    async def go() -> None:
        async with connect(server.url, keeper=keeper, mode="legacy") as session:
            server.fail_next("POST", count=2)
            await add(session, 1, 1)

    with pytest.raises(ReauthenticationRequired):
        asyncio.run(go())
    assert refreshes(auth) == (1, 0)
    statuses = [s.status for s in server.seen() if s.method == "POST"]
    assert statuses.count(401) == 2


def test_insufficient_scope_reaches_the_caller_with_the_scope(
    keeper: Keeper, server: McpServer
) -> None:
    async def go() -> None:
        async with connect(server.url, keeper=keeper, mode="legacy") as session:
            server.fail_next("POST", status=403, scope="mcp:admin")
            await add(session, 1, 1)

    with pytest.raises(InsufficientScope) as raised:
        asyncio.run(go())
    assert raised.value.scope == "mcp:admin"


def handshake_done(seen: list[Seen]) -> bool:
    """The initialized notification was accepted and the GET event stream is open."""
    return any(s.status == 202 for s in seen) and any(s.method == "GET" for s in seen)


def test_concurrent_401s_during_a_rotation_cause_one_refresh_and_no_lock_is_held(
    keeper: Keeper, server: McpServer, auth: AuthServer
) -> None:
    n = 6

    async def go() -> list[Any]:
        async with connect(server.url, keeper=keeper, mode="legacy") as session:
            await asyncio.to_thread(server.wait_for, handshake_done)
            # A is revoked while the session is open; all n calls are sent with it.
            server.refuse(keeper.access_token(), gather=n)
            # barrier(n) answers only when all n calls are inside the server at once.
            calls = [session.call_tool("barrier", {"n": n}) for _ in range(n)]
            results = await asyncio.gather(*calls)
            return [(r.structured_content or {}).get("result") for r in results]

    assert asyncio.run(go()) == [n] * n
    assert refreshes(auth) == (1, 0)
    assert [s.status for s in server.seen() if s.method == "POST"].count(401) == n


def test_barrier_of_concurrent_calls_all_get_through(keeper: Keeper, server: McpServer) -> None:
    n = 8

    async def go() -> list[Any]:
        async with connect(server.url, keeper=keeper, mode="legacy") as session:
            calls = [session.call_tool("barrier", {"n": n}) for _ in range(n)]
            return [r.structured_content for r in await asyncio.gather(*calls)]

    assert asyncio.run(go()) == [{"result": n}] * n


def test_not_logged_in_is_login_required(server: McpServer, store: FileStore) -> None:
    keeper = Keeper(store, CredentialKey.for_server(server.url))

    async def go() -> None:
        async with connect(server.url, keeper=keeper) as session:
            await add(session, 1, 1)

    try:
        with pytest.raises(LoginRequired):
            asyncio.run(go())
    finally:
        keeper.close()


def test_cli_lists_tools_and_calls_one_and_exits_3_when_login_is_needed(
    keeper: Keeper, server: McpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRANTKEEPER_STORE", "file")
    monkeypatch.setenv("GRANTKEEPER_HOME", str(tmp_path))
    runner = CliRunner()

    listed = runner.invoke(tools, [server.url, "--json"])
    assert listed.exit_code == 0, listed.output
    names = {tool["name"] for tool in json.loads(listed.output)["tools"]}
    assert {"echo", "add", "slow", "whoami", "barrier"} <= names

    called = runner.invoke(call, [server.url, "add", "--arg", "a=2", "--json-args", '{"b": 5}'])
    assert called.exit_code == 0, called.output
    assert json.loads(called.output) == {"result": 7}

    echoed = runner.invoke(call, [server.url, "echo", "--arg", "text=hi", "--json"])
    assert echoed.exit_code == 0
    assert json.loads(echoed.output)["structuredContent"] == {"result": "hi"}

    # Nothing is stored for this profile: the request goes out without a token, the
    # protected server answers 401, and the hint names the same URL and profile.
    missing = runner.invoke(call, [server.url, "echo", "--arg", "text=hi", "--profile", "p2"])
    assert missing.exit_code == 3, missing.stderr
    assert f"run: grantkeeper login {server.url} --profile p2" in missing.stderr

    # A path the server does not serve: a login would not help, and the user is told why.
    other = server.url.replace("/mcp", "/other")
    unsupported = runner.invoke(call, [other, "echo", "--arg", "text=hi"])
    assert unsupported.exit_code == 1
    assert "Not Found" in unsupported.stderr or "HTTP 404" in unsupported.stderr
    assert "grantkeeper login" not in unsupported.stderr and "TaskGroup" not in unsupported.stderr


def gets(seen: list[Seen]) -> list[int]:
    return [s.status for s in seen if s.method == "GET"]


async def scope_error_on_the_get_stream(server: McpServer, session: McpSession) -> None:
    """Make the GET stream's auth flow raise InsufficientScope, which the SDK swallows and
    retries; return once the retry is open, so the error has surely been raised."""
    await add(session, 1, 1)
    await asyncio.to_thread(server.wait_for, lambda seen: gets(seen)[-2:] == [403, 200])


def test_an_auth_error_on_the_get_stream_does_not_stick_to_later_session_expiry(
    keeper: Keeper, server: McpServer, auth: AuthServer
) -> None:
    server.fail_next("GET", status=403, scope="mcp:admin")

    async def go() -> tuple[Any, int]:
        async with connect(server.url, keeper=keeper, mode="legacy") as session:
            await scope_error_on_the_get_stream(server, session)
            server.expire_sessions()
            return await add(session, 2, 3), session.reconnects

    assert asyncio.run(go()) == (5, 1)
    assert refreshes(auth) == (0, 0)


def test_an_auth_error_on_the_get_stream_does_not_stick_to_a_cancelled_call(
    keeper: Keeper, server: McpServer
) -> None:
    server.fail_next("GET", status=403, scope="mcp:admin")

    async def go() -> tuple[bool, Any]:
        async with connect(server.url, keeper=keeper, mode="legacy") as session:
            await scope_error_on_the_get_stream(server, session)
            before = len([s for s in server.seen() if s.method == "POST"])
            # hold stays in flight until we cancel it, which we do once the server has it.
            call = asyncio.create_task(session.call_tool("hold", {}))
            await asyncio.to_thread(
                server.wait_for,
                lambda seen: len([s for s in seen if s.method == "POST"]) > before,
            )
            call.cancel()
            try:
                await call
            except asyncio.CancelledError:
                cancelled = True
            else:
                cancelled = False
            return cancelled, await add(session, 3, 4)

    assert asyncio.run(go()) == (True, 7)


def test_an_auth_error_on_the_get_stream_does_not_stick_to_a_timeout(
    keeper: Keeper, server: McpServer
) -> None:
    server.fail_next("GET", status=403, scope="mcp:admin")

    async def go() -> Any:
        async with connect(server.url, keeper=keeper, mode="legacy") as session:
            await scope_error_on_the_get_stream(server, session)
            before = len([s for s in server.seen() if s.method == "POST"])
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(None) as deadline:
                    call = asyncio.ensure_future(session.call_tool("hold", {}))
                    await asyncio.to_thread(
                        server.wait_for,
                        lambda seen: len([s for s in seen if s.method == "POST"]) > before,
                    )
                    deadline.reschedule(asyncio.get_running_loop().time())
                    await call
            return await add(session, 5, 6)

    assert asyncio.run(go()) == 11


def test_a_401_on_the_closing_delete_is_recovered_once(
    keeper: Keeper, server: McpServer, auth: AuthServer
) -> None:
    a, total = after_a_401_on_the_next("DELETE", keeper, server, lambda s: add(s, 1, 2))
    assert total == 3
    deletes = [(s.status, s.token) for s in server.seen() if s.method == "DELETE"]
    b = keeper.access_token()
    assert deletes == [(401, a), (200, b)] and b != a
    assert refreshes(auth) == (1, 0)


@pytest.fixture(scope="module")
def json_server(auth_server: AuthServer) -> Iterator[McpServer]:
    """The same server answering each POST with one JSON document, not an event stream."""
    with McpServer(auth_server=auth_server, json_response=True) as server:
        yield server


@pytest.mark.parametrize("answer", ["text/event-stream", "application/json"])
def test_a_401_on_a_post_is_recovered_once_whatever_the_answer_is(
    answer: str,
    auth: AuthServer,
    server: McpServer,
    json_server: McpServer,
    store: FileStore,
) -> None:
    target = server if answer == "text/event-stream" else json_server
    target.reset()
    login(auth, target.url, store)
    auth.reset_stats()
    keeper = Keeper(store, CredentialKey.for_server(target.url))
    a = keeper.access_token()

    async def go() -> Any:
        async with connect(target.url, keeper=keeper, mode="legacy") as session:
            await asyncio.to_thread(target.wait_for, handshake_done)
            target.fail_next("POST")
            return await add(session, 20, 22)

    try:
        assert asyncio.run(go()) == 42
    finally:
        keeper.close()
    posts = [s for s in target.seen() if s.method == "POST"]
    refused = [s.status for s in posts].index(401)
    calls = posts[refused : refused + 2]  # the refused request and its one retry
    assert [(s.status, s.token) for s in calls] == [(401, a), (200, keeper.access_token())]
    assert calls[1].content_type == answer
    assert refreshes(auth) == (1, 0)


def test_an_expired_token_without_a_refresh_token_fails_at_start_up(
    auth: AuthServer, server: McpServer, store: FileStore
) -> None:
    issued = login(auth, server.url, store)
    key = CredentialKey.for_server(server.url)
    stored = store.read(key)
    assert stored is not None
    store.write(key, stored.record.replace(refresh_token=None), expected_version=stored.version)
    auth.reset_stats()
    clock = ShiftClock()
    clock.offset = timedelta(hours=2)  # the stored access token has expired
    keeper = Keeper(store, key, clock=clock)
    reached_the_body = False

    async def go() -> None:
        nonlocal reached_the_body
        async with connect(server.url, keeper=keeper, mode="legacy"):
            reached_the_body = True

    try:
        with pytest.raises(ReauthenticationRequired):
            asyncio.run(go())
    finally:
        keeper.close()
    assert not reached_the_body
    assert server.seen() == []  # the expired token was never sent
    assert refreshes(auth) == (0, 0)
    status = auth_status(ServerConfig(url=server.url), store, clock=clock)
    assert status.state is AuthState.REAUTHENTICATION_REQUIRED
    assert issued.access_token not in status.detail


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_a_calls_own_auth_error_reaches_that_call_not_as_a_cancellation(
    mode: str, keeper: Keeper, server: McpServer
) -> None:
    """The call's POST fails in the transport's task, which cancels the caller: the call
    learns why from its own attempt (this relies on mcp sending in the caller's context)."""
    at_the_call: list[type[BaseException]] = []

    async def go() -> None:
        async with connect(server.url, keeper=keeper, mode=mode) as session:
            if mode == "legacy":  # let the handshake's own POSTs through first
                await asyncio.to_thread(server.wait_for, handshake_done)
            server.fail_next("POST", count=2)
            try:
                await add(session, 1, 1)
            except BaseException as exc:
                at_the_call.append(type(exc))
                raise

    with pytest.raises(ReauthenticationRequired):
        asyncio.run(go())
    assert at_the_call == [ReauthenticationRequired]


def test_concurrent_calls_on_an_expired_session_share_one_new_session(
    keeper: Keeper, server: McpServer, auth: AuthServer
) -> None:
    n = 4

    async def go() -> tuple[list[Any], int]:
        async with connect(server.url, keeper=keeper, mode="legacy") as session:
            await add(session, 1, 1)
            server.expire_sessions()
            # barrier(n) answers only once all n calls are inside the server at once, so
            # every one of them met the 404 and all run on the same new session.
            calls = [session.call_tool("barrier", {"n": n}) for _ in range(n)]
            results = await asyncio.gather(*calls)
            return [(r.structured_content or {}).get("result") for r in results], (
                session.reconnects
            )

    assert asyncio.run(go()) == ([n] * n, 1)
    initializes = [s for s in server.seen() if s.method == "POST" and s.session_id is None]
    assert len(initializes) == 2  # the first session's and the one new session's
    assert refreshes(auth) == (0, 0)
