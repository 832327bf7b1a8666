"""The agent frameworks' own MCP clients with grantkeeper, against the real servers.

pydantic-ai, the OpenAI Agents SDK and langchain-mcp-adapters each build their MCP client
from the code the README shows (``examples/``, checked equal to the README here), through the
hook each offers: a fastmcp ``Client`` for pydantic-ai's ``MCPToolset``, ``auth`` and
``httpx_client_factory`` for the other two. Each lists the tools of the real ``mcp`` 2.3
server and calls one across token rotations against the real oidc-provider: every call
answers, one refresh per rotation, no refresh token replayed, no login (no authorization
code is exchanged). langchain-mcp-adapters requires ``mcp`` 1.x, so it runs in
``.venv-agents-mcp1`` (``harness/mcp1_agents_client.py``), with the OpenAI Agents SDK on
``mcp`` 1.x beside it. No model is called: the clients are
used alone, and pydantic-ai's agent runs on its local ``TestModel``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from pydantic_ai.mcp import MCPToolset

from examples.openai_agents_server import mcp_server
from examples.pydantic_ai_toolset import mcp_toolset
from grantkeeper import (
    CredentialKey,
    FileStore,
    HttpxAuth,
    Keeper,
    LoginRequired,
    ReauthenticationRequired,
    ServerConfigError,
    authentication_required,
)
from grantkeeper.mcp import httpx2_auth, httpx2_client_factory, httpx_client_factory
from harness import secrets_seen
from harness.authserver import AuthServer
from harness.clocks import ShiftClock
from harness.mcp1_agents_client import STEP, exception_types
from harness.mcp_demo import login
from harness.mcp_server import McpServer
from tests.helpers import ROOT

pytestmark = pytest.mark.realserver

AUTH_SERVER = {"access_ttl": 3600}
"""Tokens that stay fresh while a slow machine starts a framework (the clock moves past them
in two-hour steps): every refresh counted is one the test asked for."""

ROTATIONS = 3
"""Token rotations each run goes through: the calls are one more."""

EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.py") if p.name != "__init__.py")

Call = Callable[[str], Awaitable[str | None]]
Open = Callable[[str, Keeper], AbstractAsyncContextManager[tuple[list[str], Call]]]


PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


@asynccontextmanager
async def toolset_calls(toolset: MCPToolset[None]) -> AsyncIterator[tuple[list[str], Call]]:
    async def call(text: str) -> str | None:
        answer = await toolset.direct_call_tool("echo", {"text": text})
        return answer if isinstance(answer, str) else None

    async with toolset:
        yield [tool.name for tool in await toolset.list_tools()], call


def pydantic_ai(url: str, keeper: Keeper) -> AbstractAsyncContextManager[tuple[list[str], Call]]:
    return toolset_calls(mcp_toolset(url, keeper))


def pydantic_ai_auth(
    url: str, keeper: Keeper
) -> AbstractAsyncContextManager[tuple[list[str], Call]]:
    """``MCPToolset``'s own ``auth`` argument, the other way the README names."""
    # init_timeout: pydantic-ai's 5 s also bounds a handshake that waits for a refresh.
    auth = httpx2_auth(url, keeper=keeper)
    return toolset_calls(MCPToolset(url, auth=auth, init_timeout=30))


@asynccontextmanager
async def openai_agents(url: str, keeper: Keeper) -> AsyncIterator[tuple[list[str], Call]]:
    server = mcp_server(url, keeper)

    async def call(text: str) -> str | None:
        result = await server.call_tool("echo", {"text": text})
        return getattr(result.content[0], "text", None) if result.content else None

    async with server:
        yield [tool.name for tool in await server.list_tools()], call


FRAMEWORKS: dict[str, Open] = {
    "pydantic-ai": pydantic_ai,
    "pydantic-ai-auth": pydantic_ai_auth,
    "openai-agents": openai_agents,
}


def calls_across_rotations(open_client: Open, url: str, keeper: Keeper, clock: ShiftClock) -> Any:
    """List the tools, then call ``echo`` ROTATIONS + 1 times, the clock moved on between
    calls: every call after the first finds its access token expired."""

    async def go() -> dict[str, Any]:
        async with open_client(url, keeper) as (tools, call):
            answers = []
            for number in range(ROTATIONS + 1):
                if number:
                    clock.offset += STEP
                answers.append(await call(f"call {number}"))
            return {"tools": tools, "echo": answers}

    return anyio.run(go)


def assert_one_refresh_per_rotation(
    report: dict[str, Any], auth: AuthServer, server: McpServer, store: FileStore, first: str
) -> None:
    assert "error" not in report, report
    assert {"echo", "add", "whoami"} <= set(report["tools"])
    assert report["echo"] == [f"call {n}" for n in range(ROTATIONS + 1)]
    stats = auth.stats()
    # One refresh per rotation, no refresh token spent twice, no login (no code exchanged).
    assert (stats["refresh_success"], stats["replays"], stats["code_success"]) == (ROTATIONS, 0, 0)
    seen = server.seen()
    assert all(s.status != 401 for s in seen), [s.status for s in seen]
    sent = [s.token for s in seen if s.method == "POST"]
    assert None not in sent
    # The first login's token, then each rotation's, in order; the last one is stored.
    distinct = list(dict.fromkeys(sent))
    assert distinct[0] == first and len(distinct) == ROTATIONS + 1
    stored = store.read(CredentialKey.for_server(server.url))
    assert stored is not None and stored.record.access_token == distinct[-1]


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_calls_across_rotations_with_one_refresh_each(
    framework: str, auth: AuthServer, server: McpServer, store: FileStore
) -> None:
    first = login(auth, server.url, store).access_token
    auth.reset_stats()
    clock = ShiftClock()
    keeper = Keeper(store, CredentialKey.for_server(server.url), clock=clock)
    try:
        report = calls_across_rotations(FRAMEWORKS[framework], server.url, keeper, clock)
    finally:
        keeper.close()
    assert_one_refresh_per_rotation(report, auth, server, store, first)


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_a_401_gets_one_refresh_and_one_retry(
    framework: str, auth: AuthServer, server: McpServer, keeper: Keeper
) -> None:
    async def go() -> list[str | None]:
        async with FRAMEWORKS[framework](server.url, keeper) as (_, call):
            first = await call("before")
            server.fail_next("POST")  # the server refuses the token the next call carries
            return [first, await call("after")]

    assert anyio.run(go) == ["before", "after"]
    refused = [s for s in server.seen() if s.status == 401]
    assert len(refused) == 1
    assert (auth.stats()["refresh_success"], auth.stats()["replays"]) == (1, 0)
    assert keeper.current is not None and keeper.current.access_token != refused[0].token


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_without_a_login_the_error_says_to_log_in(
    framework: str, auth: AuthServer, server: McpServer, tmp_path: Path
) -> None:
    keeper = Keeper(FileStore(tmp_path), CredentialKey.for_server(server.url))

    async def go() -> None:
        async with FRAMEWORKS[framework](server.url, keeper):
            pass

    try:
        with pytest.raises(Exception) as caught:
            anyio.run(go)
    finally:
        keeper.close()
    # Wrapped or not by the framework, the cause is there, typed, for the caller to act on.
    assert isinstance(authentication_required(caught.value), LoginRequired), caught.value
    assert all(s.token is None for s in server.seen())  # nothing to send, nothing sent
    stats = auth.stats()
    assert (stats["refresh_success"], stats["code_success"], stats["registrations"]) == (0, 0, 0)


CARRIES_OUR_ERRORS = {"pydantic-ai": True, "pydantic-ai-auth": True, "openai-agents": False}
"""Whether a framework's error, for a request whose auth failed in mid-session, holds
grantkeeper's (fastmcp re-raises it; the OpenAI Agents SDK reports a closed connection)."""


def refresh_errors(auth: AuthServer) -> list[str]:
    return [e["error"] for e in auth.stats()["refresh_errors"]]


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_a_grant_revoked_mid_session_says_to_log_in_again(
    framework: str, auth: AuthServer, server: McpServer, store: FileStore
) -> None:
    login(auth, server.url, store)
    auth.reset_stats()
    clock = ShiftClock()
    keeper = Keeper(store, CredentialKey.for_server(server.url), clock=clock)

    async def go() -> None:
        async with FRAMEWORKS[framework](server.url, keeper) as (_, call):
            assert await call("before") == "before"
            auth.revoke_all()  # the grant ends at the provider
            clock.offset += STEP  # and the next call needs a refresh
            await call("after")

    try:
        with pytest.raises(Exception) as caught:
            anyio.run(go)
        # The framework's own call met the provider's answer: one refresh, refused.
        assert refresh_errors(auth) == ["invalid_grant"]
        found = authentication_required(caught.value)
        if CARRIES_OUR_ERRORS[framework]:
            assert isinstance(found, ReauthenticationRequired), caught.value
        else:
            assert found is None, caught.value
            assert type(caught.value).__name__ == "MCPError", caught.value
            assert "Connection closed" in str(caught.value)
        # Whatever the framework made of it, the Keeper says what a person has to do, at
        # once: the provider's answer ended the grant, and nothing is spent again.
        with pytest.raises(ReauthenticationRequired):
            keeper.credential()
    finally:
        keeper.close()
    assert refresh_errors(auth) == ["invalid_grant"]
    stats = auth.stats()
    assert (stats["refresh_success"], stats["replays"], stats["code_success"]) == (0, 0, 0)


def test_a_pydantic_ai_agent_calls_the_tool_through_the_toolset(
    keeper: Keeper, server: McpServer, auth: AuthServer
) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.models.test import TestModel

    # TestModel: pydantic-ai's local stand-in for a model, which calls the tools it is told
    # to; no model is called.
    agent = Agent(TestModel(call_tools=["echo"]), toolsets=[mcp_toolset(server.url, keeper)])
    # agent.run, not run_sync: run_sync leaves its own event loop open for later calls.
    result = anyio.run(agent.run, "say something")
    assert result.output == '{"echo":"a"}'  # TestModel's call, answered by the server
    assert any(s.message and s.message.get("method") == "tools/call" for s in server.seen())
    assert (auth.stats()["refresh_success"], auth.stats()["replays"]) == (0, 0)


@pytest.mark.parametrize("factory", [httpx2_client_factory, httpx_client_factory])
def test_the_client_factories_make_clients_as_grantkeeper_does(
    factory: Callable[..., Any], keeper: Keeper, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the frameworks pass is kept: headers, timeout, auth.
    auth = (
        httpx2_auth("http://127.0.0.1/mcp", keeper=keeper)
        if factory is httpx2_client_factory
        else HttpxAuth(keeper)
    )
    client = factory(headers={"x-trace": "1"}, auth=auth)
    followed = factory(follow_redirects=factory is httpx2_client_factory)
    try:
        assert client.headers["x-trace"] == "1" and client.auth is auth
        # mcp's own defaults: 30 s, 300 s of read for event streams; redirects as that
        # major version's own client has them, unless the caller (fastmcp) says otherwise.
        assert (client.timeout.connect, client.timeout.read) == (30.0, 300.0)
        assert client.follow_redirects is (factory is httpx_client_factory)
        assert followed.follow_redirects is (factory is httpx2_client_factory)
    finally:
        anyio.run(client.aclose)
        anyio.run(followed.aclose)
    # And grantkeeper's network settings: a proxy setting no request could use is typed,
    # naming the variable, where a framework's default client would fail on first use.
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "ftp://proxy.example:21")
    with pytest.raises(ServerConfigError, match="HTTPS_PROXY"):
        factory()


MCP1 = ROOT / ".venv-agents-mcp1" / "bin" / "python"
MCP1_FRAMEWORKS = ["langchain", "openai-agents"]
"""Run by ``harness/mcp1_agents_client.py`` in ``.venv-agents-mcp1``, on ``mcp`` 1.x."""


def run_on_mcp1(
    framework: str,
    url: str,
    home: Path,
    *,
    proxy: dict[str, str] | None = None,
    revoke: AuthServer | None = None,
) -> dict[str, Any]:
    """Run ``harness/mcp1_agents_client.py``; ``proxy`` replaces the proxy settings, and
    with ``revoke`` every grant at that server is revoked after the first call."""
    assert MCP1.exists(), f"{MCP1} is missing: run scripts/bootstrap, which creates it"
    command = [str(MCP1), "-m", "harness.mcp1_agents_client", framework, url, str(home)]
    command.append(str(ROTATIONS))
    if revoke is not None:
        command.append(f"{revoke.issuer.rstrip('/')}/__admin/revoke-all")
    env = dict(os.environ)
    if proxy is not None:
        for name in PROXY_VARIABLES:
            env.pop(name, None)
        env.update(proxy)
    finished = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=50,  # under pytest's own 120 s per test, which may run it twice
        cwd=ROOT,
        env=env,
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    output = finished.stdout + finished.stderr
    assert not any(secret in output for secret in secrets_seen()), "a secret in the output"
    report: dict[str, Any] = json.loads(finished.stdout.strip().splitlines()[-1])
    assert report["mcp"].startswith("1."), report
    return report


@pytest.mark.parametrize("framework", MCP1_FRAMEWORKS)
def test_on_mcp1_calls_across_rotations_with_one_refresh_each(
    framework: str, auth: AuthServer, server: McpServer, store: FileStore, tmp_path: Path
) -> None:
    first = login(auth, server.url, store).access_token
    auth.reset_stats()
    report = run_on_mcp1(framework, server.url, tmp_path)
    assert_one_refresh_per_rotation(report, auth, server, store, first)


@pytest.mark.parametrize("framework", MCP1_FRAMEWORKS)
def test_on_mcp1_a_401_is_recovered_and_a_missing_login_reported(
    framework: str, auth: AuthServer, server: McpServer, store: FileStore, tmp_path: Path
) -> None:
    first = login(auth, server.url, store).access_token
    auth.reset_stats()
    server.fail_next("POST")  # the first request, with the stored token, is refused
    report = run_on_mcp1(framework, server.url, tmp_path)
    assert "error" not in report, report
    assert report["echo"] == [f"call {n}" for n in range(ROTATIONS + 1)]
    assert [s.token for s in server.seen() if s.status == 401] == [first]
    stats = auth.stats()
    assert (stats["refresh_success"], stats["replays"], stats["code_success"]) == (
        ROTATIONS + 1,
        0,
        0,
    )

    empty = tmp_path / "nobody"
    empty.mkdir()
    missing = run_on_mcp1(framework, server.url, empty)
    # langchain-mcp-adapters raises ours, in an exception group; the OpenAI Agents SDK's
    # connect() loses it (it logs a line and raises a bare CancelledError).
    if framework == "langchain":
        assert missing["error"] == "LoginRequired", missing
    else:
        assert (missing["raised"], missing["error"]) == ("CancelledError", None), missing
    assert missing["keeper"] == "LoginRequired", missing


@pytest.mark.parametrize("framework", MCP1_FRAMEWORKS)
def test_on_mcp1_a_grant_revoked_mid_session_says_to_log_in_again(
    framework: str, auth: AuthServer, server: McpServer, store: FileStore, tmp_path: Path
) -> None:
    login(auth, server.url, store)
    auth.reset_stats()
    report = run_on_mcp1(framework, server.url, tmp_path, revoke=auth)
    # langchain-mcp-adapters raises ours, in an exception group; the OpenAI Agents SDK's
    # call_tool ends in a bare CancelledError. The Keeper says what to do either way.
    if framework == "langchain":
        assert report["error"] == "ReauthenticationRequired", report
    else:
        assert (report["raised"], report["error"]) == ("CancelledError", None), report
    assert report["keeper"] == "ReauthenticationRequired", report
    assert refresh_errors(auth) == ["invalid_grant"]
    stats = auth.stats()
    assert (stats["refresh_success"], stats["replays"], stats["code_success"]) == (0, 0, 0)


# A proxy setting no request can use: only a client made by grantkeeper refuses it, typed
# (ServerConfigError), before sending anything, so these show that each example's framework
# really makes its clients with grantkeeper's factory (or fastmcp_client), not only its auth.
UNUSABLE_PROXY = {"HTTP_PROXY": "ftp://proxy.example:21"}


@pytest.mark.parametrize("framework", ["pydantic-ai", "openai-agents"])
def test_the_examples_make_their_clients_the_way_grantkeeper_does(
    framework: str, keeper: Keeper, server: McpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in UNUSABLE_PROXY.items():
        monkeypatch.setenv(name, value)

    async def go() -> None:
        async with FRAMEWORKS[framework](server.url, keeper):
            pass

    with pytest.raises(Exception) as caught:
        anyio.run(go)
    assert "ServerConfigError" in exception_types(caught.value), caught.value
    assert server.seen() == []


@pytest.mark.parametrize("framework", MCP1_FRAMEWORKS)
def test_on_mcp1_the_examples_make_their_clients_the_way_grantkeeper_does(
    framework: str, auth: AuthServer, server: McpServer, store: FileStore, tmp_path: Path
) -> None:
    login(auth, server.url, store)
    report = run_on_mcp1(framework, server.url, tmp_path, proxy=UNUSABLE_PROXY)
    assert "ServerConfigError" in report["inside"], report
    assert server.seen() == []


def test_fastmcp_transports_take_the_client_factory(keeper: Keeper, server: McpServer) -> None:
    # fastmcp calls a factory with follow_redirects too (pydantic-ai's MCPToolset(url, ...)
    # hands its transport one when given an http_client).
    from fastmcp import Client
    from fastmcp.client.transports import StreamableHttpTransport

    made: list[dict[str, Any]] = []

    def factory(**options: Any) -> Any:
        made.append(options)
        return httpx2_client_factory(**options)

    transport = StreamableHttpTransport(
        server.url,
        auth=httpx2_auth(server.url, keeper=keeper),
        httpx_client_factory=cast(Any, factory),
    )

    async def go() -> list[str]:
        async with Client(transport) as client:
            return [tool.name for tool in await client.list_tools()]

    assert "echo" in anyio.run(go)
    assert [options.get("follow_redirects") for options in made] == [True]
    assert all(s.token for s in server.seen() if s.method == "POST")


def readme_examples() -> dict[str, str]:
    """Each ``<!-- examples/x.py -->`` marker of the README and the code block after it."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    pattern = re.compile(r"<!-- (examples/\w+\.py) -->\n```python\n(.*?)```", re.DOTALL)
    return {name: code for name, code in pattern.findall(text)}


def test_the_readme_shows_each_example_as_its_test_runs_it() -> None:
    shown = readme_examples()
    assert sorted(shown) == [f"examples/{p.name}" for p in EXAMPLES]
    for path in EXAMPLES:
        assert shown[f"examples/{path.name}"] == path.read_text(encoding="utf-8"), path.name
