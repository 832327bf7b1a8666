"""``grantkeeper proxy`` with its default ``--transport auto`` (mcp-remote's http-first rule):
streamable HTTP, unless the server answers the first POST with 404 or 405; then HTTP+SSE for
the rest of the run, the host none the wiser.

The proxy runs as a host runs it (a subprocess on stdio) against the real ``mcp`` server of
``harness.mcp_server``, serving streamable HTTP or only HTTP+SSE, protected by the real
authorization server. Tests wait on what the server saw or the host read, never on the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from grantkeeper import FileStore
from grantkeeper._proxy.sse import decides_streamable_http, falls_back_to_sse
from harness.authserver import AuthServer
from harness.mcp_demo import login
from harness.mcp_server import INITIALIZE, McpServer, Seen
from tests.test_proxy import CALL_TIMEOUT, ROOT, environment, host, proxy_args, text_of

pytestmark = pytest.mark.realserver

INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def call(request_id: Any, text: str) -> dict[str, Any]:
    params = {"name": "echo", "arguments": {"text": text}}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def sse_gets(seen: list[Seen]) -> list[Seen]:
    """The GETs of an HTTP+SSE client: a streamable HTTP session's GET names its session."""
    return [s for s in seen if s.method == "GET" and s.session_id is None]


Send = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]


@contextlib.asynccontextmanager
async def raw_host(url: str, home: Path, errlog: Path) -> AsyncIterator[Send]:
    """A host that speaks JSON-RPC itself, one message at a time: ``send(message)`` returns
    the answer to a request (``None`` for a notification). Leaving closes stdin, as a host
    quits, and wants the proxy to exit 0."""
    with errlog.open("w") as stderr:  # noqa: ASYNC230 (a local file, opened once)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *proxy_args(url, "-v"),
            env=environment(home),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
        assert process.stdin is not None and process.stdout is not None
        stdin, stdout = process.stdin, process.stdout

        async def send(message: dict[str, Any]) -> dict[str, Any] | None:
            stdin.write((json.dumps(message) + "\n").encode())
            await stdin.drain()
            if "id" not in message:
                return None
            async with asyncio.timeout(CALL_TIMEOUT):
                while True:
                    line = await stdout.readline()
                    assert line, "the proxy ended without answering"
                    answer: dict[str, Any] = json.loads(line)
                    if answer.get("id") == message["id"]:
                        return answer

        try:
            yield send
            stdin.close()
            async with asyncio.timeout(CALL_TIMEOUT):
                assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


# -- a server without streamable HTTP -----------------------------------------------------


@pytest.mark.parametrize(
    ("injected", "probed"),
    [(None, [405]), (404, [404]), (401, [401, 405])],
    ids=["405", "404", "401-then-405"],
)
def test_a_server_that_speaks_only_http_and_sse_is_served_over_it(
    auth: AuthServer, home: Path, injected: int | None, probed: list[int]
) -> None:
    """405 is what ``mcp``'s SSE app answers a POST to its stream's URL; a 404 (another
    server's) is injected. A 401 is auth's: the token is renewed and the POST sent again,
    and the 405 that answers it decides. Each way the host's initialize, sent again over
    HTTP+SSE, is answered there, and so is everything after it."""
    errlog = home.parent / "proxy.err"
    with McpServer(auth_server=auth, transport="sse") as server:
        if injected is not None:
            server.fail_next("POST", status=injected)
        stored = login(auth, server.url, FileStore(home))
        auth.reset_stats()

        async def run() -> tuple[list[str], str]:
            async with host(server.url, home, "-v", errlog=errlog) as session:
                await session.initialize()
                tools = await session.list_tools()
                echoed = await session.call_tool("echo", {"text": "over sse, found alone"})
                return [tool.name for tool in tools.tools], text_of(echoed)

        names, echoed = asyncio.run(run())
        seen = server.seen()
    assert "echo" in names and echoed == "over sse, found alone"
    probes = [s for s in seen if s.method == "POST" and s.path == "/sse"]
    assert [s.status for s in probes] == probed  # the first POST to the URL, then never again
    assert [s.status for s in sse_gets(seen)] == [200]  # the one stream of the session
    posted = [s.message for s in seen if s.method == "POST" and s.path == "/messages/"]
    methods = [m.get("method") for m in posted if m is not None]
    assert methods[:2] == ["initialize", "notifications/initialized"]
    assert {"tools/list", "tools/call"} <= set(methods)
    # The host's own initialize, its id untouched: no replay of the proxy's making.
    assert posted[0] is not None and not str(posted[0]["id"]).startswith("grantkeeper-")
    assert all(s.token for s in seen)  # auth on every request, the refused POST's too
    renewed = auth.stats()["refresh_success"]
    assert renewed == (1 if injected == 401 else 0)
    assert probes[0].token == stored.access_token
    (used,) = {s.token for s in seen[1:]}  # one token after the first POST
    assert (used != stored.access_token) == (injected == 401)  # renewed after a 401 only
    assert not any(s.method == "DELETE" for s in seen)  # nothing to DELETE on HTTP+SSE
    log = errlog.read_text()
    assert f"proxy.transport sse: the MCP server answered HTTP {probed[-1]}" in log


def test_a_url_with_neither_transport_answers_the_host_instead_of_waiting(home: Path) -> None:
    """Each initialize the host sends is answered (``send`` gives up after CALL_TIMEOUT): a
    switch whose stream never opened decides nothing, so the next POST asks again."""
    errlog = home.parent / "proxy.err"
    with McpServer(auth_server=None) as server:
        nowhere = f"{server.origin}/nowhere"

        async def run() -> list[dict[str, Any] | None]:
            async with raw_host(nowhere, home, errlog) as send:
                first = await send(INITIALIZE)
                return [first, await send({**INITIALIZE, "id": 2})]

        answers = asyncio.run(run())
        seen = server.seen()
    assert [a["id"] if a else None for a in answers] == [1, 2]
    for answer in answers:
        assert answer is not None
        assert (
            "answered HTTP 404 and opened no HTTP+SSE stream either" in answer["error"]["message"]
        )
    # Asked twice, one stream each (after discovery's own requests): none is left retrying.
    at_nowhere = [(s.method, s.status) for s in seen if s.path == "/nowhere"]
    assert at_nowhere[-4:] == [("POST", 404), ("GET", 404)] * 2
    log = errlog.read_text()
    assert log.count("proxy.transport sse: the MCP server answered HTTP 404") == 2
    assert log.count("refused its event stream") == 2


# -- a streamable HTTP server: no switch --------------------------------------------------


def test_a_streamable_http_server_is_served_as_before_pings_and_delete_included(
    auth: AuthServer, server: McpServer, home: Path
) -> None:
    login(auth, server.url, FileStore(home))
    errlog = home.parent / "proxy.err"

    def pinged(seen: list[Seen]) -> bool:
        return any(s.message is not None and s.message.get("method") == "ping" for s in seen)

    async def run() -> str:
        extra = ("-v", "--ping-interval", "0.05")
        async with host(server.url, home, *extra, errlog=errlog) as session:
            await session.initialize()
            await session.list_tools()
            echoed = text_of(await session.call_tool("echo", {"text": "streamable"}))
            await anyio.to_thread.run_sync(server.wait_for, pinged)
            return echoed

    assert asyncio.run(run()) == "streamable"
    seen = server.wait_for(lambda seen: any(s.method == "DELETE" for s in seen))
    assert sse_gets(seen) == []  # no HTTP+SSE stream was ever asked for
    assert {s.path for s in seen} == {"/mcp"}
    first = next(s for s in seen if s.method == "POST")
    assert first.status == 200 and first.message is not None
    assert first.message["method"] == "initialize"
    sessions = {s.session_id for s in seen if s.method in ("GET", "DELETE")}
    assert len(sessions) == 1 and None not in sessions  # its GET stream, then its DELETE
    pings = [s for s in seen if s.message is not None and s.message.get("method") == "ping"]
    assert all(s.session_id in sessions and s.status == 200 for s in pings)
    assert ("DELETE", 200) in {(s.method, s.status) for s in seen}
    log = errlog.read_text()
    assert "proxy.transport streamable-http: the first POST was answered HTTP 200" in log
    assert "proxy.transport sse" not in log


@pytest.mark.parametrize("status", [200, 201, 204, 400, 401, 403, 409, 422, 499])
def test_a_2xx_or_most_4xx_decide_streamable_http(status: int) -> None:
    assert decides_streamable_http(status) and not falls_back_to_sse(status)


@pytest.mark.parametrize("status", [100, 302, 404, 405, 408, 429, 500, 502, 503, 504])
def test_a_5xx_408_429_or_a_switch_status_do_not(status: int) -> None:
    assert not decides_streamable_http(status)


@pytest.mark.parametrize("status", [500, 502, 429])
def test_a_5xx_or_429_to_the_first_post_decides_nothing_then_a_200_decides_streamable_http(
    auth: AuthServer, server: McpServer, home: Path, status: int
) -> None:
    login(auth, server.url, FileStore(home))
    server.fail_next("POST", status=status)
    errlog = home.parent / "proxy.err"

    async def run() -> list[dict[str, Any] | None]:
        async with raw_host(server.url, home, errlog) as send:
            refused = await send(INITIALIZE)
            # The host tries again: the same transport, and this time the server answers.
            again = await send({**INITIALIZE, "id": 2})
            await send(INITIALIZED)
            return [refused, again, await send(call(3, "still streamable"))]

    refused, again, echoed = asyncio.run(run())
    assert refused is not None and f"HTTP {status}" in refused["error"]["message"]
    assert again is not None and "result" in again
    assert echoed is not None and echoed["result"]["content"][0]["text"] == "still streamable"
    seen = server.wait_for(lambda seen: any(s.method == "DELETE" for s in seen))
    assert sse_gets(seen) == []
    assert {s.path for s in seen} == {"/mcp"}
    assert [s.status for s in seen if s.method == "POST"][:2] == [status, 200]
    log = errlog.read_text()
    assert f"proxy.transport undecided: the first POST was answered HTTP {status}" in log
    assert "proxy.transport streamable-http: the first POST was answered HTTP 200" in log
    assert "proxy.transport sse" not in log


@pytest.mark.parametrize("retried", ["initialize", "tools/list"])
def test_a_gateways_502_to_the_first_post_still_lets_the_next_405_switch_to_http_and_sse(
    auth: AuthServer, home: Path, retried: str
) -> None:
    """A 502 (a corporate proxy before an HTTP+SSE-only server, say) decides nothing; the
    405 answering the next POST switches. When that POST is not the host's initialize (the
    502 answered it), the host's initialize opens the HTTP+SSE session first, as the proxy's
    own replay, so the server never sees a request on a session nobody initialized."""
    errlog = home.parent / "proxy.err"
    with McpServer(auth_server=auth, transport="sse") as server:
        login(auth, server.url, FileStore(home))
        server.fail_next("POST", status=502)
        tools_list = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        second = {**INITIALIZE, "id": 2} if retried == "initialize" else tools_list

        async def run() -> list[dict[str, Any] | None]:
            async with raw_host(server.url, home, errlog) as send:
                refused = await send(INITIALIZE)
                answered = await send(second)
                await send(INITIALIZED)
                return [refused, answered, await send(call(3, "over sse after a 502"))]

        refused, answered, echoed = asyncio.run(run())
        seen = server.seen()
    assert refused is not None and "HTTP 502" in refused["error"]["message"]
    assert answered is not None and "result" in answered, answered
    assert echoed is not None and echoed["result"]["content"][0]["text"] == "over sse after a 502"
    probes = [s.status for s in seen if s.method == "POST" and s.path == "/sse"]
    assert probes == [502, 405]
    assert [s.status for s in sse_gets(seen)] == [200]
    posted = [s.message for s in seen if s.method == "POST" and s.path == "/messages/"]
    assert all(m is not None for m in posted)
    methods = [m["method"] for m in posted if m is not None]
    if retried == "initialize":  # the host's own, sent again: nothing replayed
        assert methods == ["initialize", "notifications/initialized", "tools/call"]
        assert posted[0] is not None and posted[0]["id"] == 2
    else:
        assert methods[:3] == ["initialize", "notifications/initialized", "tools/list"]
        assert posted[0] is not None and str(posted[0]["id"]).startswith("grantkeeper-")
    log = errlog.read_text()
    assert "proxy.transport undecided: the first POST was answered HTTP 502" in log
    assert "proxy.transport sse: the MCP server answered HTTP 405" in log


def test_a_404_after_a_working_session_renews_the_session_not_the_transport(
    auth: AuthServer, server: McpServer, home: Path
) -> None:
    login(auth, server.url, FileStore(home))
    errlog = home.parent / "proxy.err"

    async def run() -> tuple[str, str]:
        async with host(server.url, home, "-v", errlog=errlog) as session:
            await session.initialize()
            before = text_of(await session.call_tool("echo", {"text": "before"}))
            assert server.expire_sessions()
            after = text_of(await session.call_tool("echo", {"text": "after"}))
            return before, after

    assert asyncio.run(run()) == ("before", "after")
    seen = server.seen()
    assert ("POST", 404) in {(s.method, s.status) for s in seen}
    assert sse_gets(seen) == []
    assert {s.path for s in seen} == {"/mcp"}
    opened = {s.session_id for s in seen if s.method == "POST" and s.status == 200}
    assert len(opened - {None}) == 2  # the forgotten session, and the one the proxy opened
    log = errlog.read_text()
    assert "forgot the session" in log
    assert "proxy.transport sse" not in log
