"""Two mcp-remote habits (issue 39): ``${VAR}`` in header values, read from the environment
when a request is made, and ``grantkeeper proxy --ignore-tool GLOB``.

The proxy runs as a desktop host runs it (``tests.test_proxy.host``: ``mcp``'s stdio client
spawns the command) against the harness's real ``mcp`` server, which records what reached
it: each request's bearer token, its ``Mcp-*`` headers and its JSON-RPC message.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest
from click.testing import CliRunner
from mcp.shared.exceptions import MCPError

from grantkeeper import ServerConfig, ServerConfigError, load_servers, save_server
from grantkeeper._cli import cli
from grantkeeper._proxy.streamable_http import Proxy
from grantkeeper._redact import scrub_known
from grantkeeper._servers import expand_headers
from harness.mcp_server import McpServer, Seen
from tests.test_proxy import CALL_TIMEOUT, ROOT, environment, host, proxy_args, text_of
from tests.test_proxy_relay import (
    CALLED,
    URL,
    HostOut,
    Upstream,
    answer_to,
    lister,
    misdeclared,
    modern,
    send,
    tool,
)

TOKEN = "quirk-bearer-7Hq2xV9pL4mN8rT1"
"""What ``$GK_QUIRK_TOKEN`` holds: a credential, so it must never be written anywhere."""
TENANT = "tenant-Zk3w9QpR5s"


@pytest.fixture
def public() -> Iterator[McpServer]:
    """The real MCP server without OAuth: the proxy serves it as it is, and the server
    still records the bearer token and ``Mcp-*`` headers each request carried."""
    with McpServer(auth_server=None) as running:
        yield running


def probe(seen: Seen) -> bool:
    """Whether ``seen`` is discovery's unauthenticated probe (``_offers_no_oauth``)."""
    return seen.message is not None and seen.message.get("method") == "server/discover"


def posted_tokens(seen: list[Seen]) -> set[str | None]:
    return {s.token for s in seen if s.method == "POST" and not probe(s)}


# -- ${VAR} in header values ----------------------------------------------------------------


def test_expansion_reads_the_environment_once_and_only_braced_names() -> None:
    environ = {"TOKEN": "abc$def${HOME}", "EMPTY": ""}
    headers = {
        "Authorization": "Bearer ${TOKEN}",
        "X-Literal": "$TOKEN and $${TOKEN} and ${",
        "Accept": "application/json",
    }
    secrets: list[str] = []
    assert expand_headers(headers, environ, secrets=secrets) == {
        "Authorization": "Bearer abc$def${HOME}",  # what it holds is not expanded again
        "X-Literal": "$TOKEN and ${TOKEN} and ${",
        "Accept": "application/json",
    }
    assert secrets == ["abc$def${HOME}", "Bearer abc$def${HOME}"]
    assert "abc$def${HOME}" not in scrub_known("echoed: abc$def${HOME}")  # remembered
    with pytest.raises(ServerConfigError) as unset:
        expand_headers({"X-Api-Key": "${NOT_SET_ANYWHERE}"}, environ, server="api")
    assert str(unset.value) == (
        "header 'X-Api-Key' of server 'api' takes ${NOT_SET_ANYWHERE} from the environment, "
        "which is not set (or empty)"
    )
    with pytest.raises(ServerConfigError, match=r"\$\{EMPTY\}"):
        expand_headers({"X-Api-Key": "${EMPTY}"}, environ)
    with pytest.raises(ServerConfigError, match="does not name an environment variable") as bad:
        expand_headers({"X-Api-Key": "${sk-pasted-secret-9f8e}"}, environ)
    assert "sk-pasted" not in str(bad.value)
    with pytest.raises(ServerConfigError, match="cannot carry") as split:
        expand_headers({"X-Api-Key": "${TWO}"}, {"TWO": "line-one\r\nX-Evil: line-two"})
    assert "line-one" not in str(split.value)


def test_a_configured_header_variable_reaches_the_server_and_never_the_log(
    public: McpServer, home: Path
) -> None:
    save_server(
        ServerConfig(
            public.url,
            name="quirky",
            headers={"Authorization": "Bearer ${GK_QUIRK_TOKEN}", "X-Tenant": "${GK_TENANT}"},
        )
    )
    errlog, log_file = home.parent / "proxy.err", home.parent / "proxy.log"
    env = environment(home, GK_QUIRK_TOKEN=TOKEN, GK_TENANT=TENANT)

    async def run() -> str:
        extra = ("-vv", "--log-file", str(log_file))
        async with host("quirky", home, *extra, env=env, errlog=errlog) as session:
            await session.initialize()
            return text_of(await session.call_tool("echo", {"text": "expanded"}))

    assert asyncio.run(run()) == "expanded"
    assert posted_tokens(public.seen()) == {TOKEN}  # the value, not the ${VAR} text
    written = errlog.read_text() + log_file.read_text()
    assert "proxy.start" in written and "Authorization" in written  # names are logged
    assert TOKEN not in written and TENANT not in written
    # The file still holds the reference, never what it expanded to.
    text = (home / "servers.json").read_text()
    assert "Bearer ${GK_QUIRK_TOKEN}" in text and TOKEN not in text


def test_a_header_option_variable_reaches_the_server(public: McpServer, home: Path) -> None:
    env = environment(home, GK_TENANT=TENANT)
    header = "Mcp-Quirk-Tenant: ${GK_TENANT}"  # Mcp-* headers are what the server records

    async def run() -> str:
        async with host(public.url, home, "--header", header, env=env) as session:
            await session.initialize()
            return text_of(await session.call_tool("echo", {"text": "from --header"}))

    assert asyncio.run(run()) == "from --header"
    # All but the discovery probe, which carries no configured header by design (it also
    # goes to the authorization server, another origin).
    relayed = [s for s in public.seen() if s.method == "POST" and not probe(s)]
    assert {s.message["method"] for s in relayed if s.message} >= {"initialize", "tools/call"}
    assert {s.mcp_headers.get("mcp-quirk-tenant") for s in relayed} == {TENANT}


def test_an_unset_variable_stops_the_proxy_naming_it_without_any_value(
    public: McpServer, home: Path
) -> None:
    save_server(
        ServerConfig(
            public.url,
            name="quirky",
            headers={"X-Tenant": "${GK_TENANT}", "Authorization": "Bearer ${GK_UNSET_TOKEN}"},
        )
    )
    done = subprocess.run(
        [sys.executable, *proxy_args("quirky", "-vv")],
        env=environment(home, GK_TENANT=TENANT),
        cwd=ROOT,
        input=b"",
        capture_output=True,
        timeout=CALL_TIMEOUT,
    )
    assert done.returncode == 1 and done.stdout == b""
    [line] = done.stderr.decode().strip().splitlines()
    assert "${GK_UNSET_TOKEN}" in line and "'Authorization'" in line and "not set" in line
    assert TENANT not in line
    assert public.seen() == []  # nothing was sent without it


def test_a_login_keeps_the_reference_and_tools_expand_it(
    public: McpServer, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_server(ServerConfig(public.url, name="quirky", headers={"Mcp-Quirk": "${GK_TENANT}"}))
    login = CliRunner().invoke(cli, ["login", "quirky", "--with-token"], input=f"{TOKEN}\n")
    assert login.exit_code == 0, login.stderr  # a login saves the entry again
    [saved] = load_servers()
    assert saved.headers == {"Mcp-Quirk": "${GK_TENANT}"} and saved.bearer_token == TOKEN
    assert TENANT not in (home / "servers.json").read_text()

    unset = CliRunner().invoke(cli, ["tools", "quirky"])
    assert unset.exit_code == 1 and "${GK_TENANT}" in unset.stderr and "Mcp-Quirk" in unset.stderr
    assert public.seen() == []

    monkeypatch.setenv("GK_TENANT", TENANT)
    listed = CliRunner().invoke(cli, ["tools", "quirky"])
    assert listed.exit_code == 0 and "echo\t" in listed.stdout, listed.stderr
    posts = [s for s in public.seen() if s.method == "POST"]
    assert posts and {s.mcp_headers.get("mcp-quirk") for s in posts} == {TENANT}
    assert posted_tokens(public.seen()) == {TOKEN}
    assert TENANT not in (home / "servers.json").read_text()


# -- --ignore-tool --------------------------------------------------------------------------

IGNORE = ("--ignore-tool", "ec*", "--ignore-tool", "sl?w", "--ignore-tool", "ADD")
"""Hides ``echo`` and ``slow``; ``add`` stays (globs are case-sensitive)."""


def calls_of(seen: list[Seen], tool: str) -> list[Seen]:
    return [
        s
        for s in seen
        if s.message is not None
        and s.message.get("method") == "tools/call"
        and (s.message.get("params") or {}).get("name") == tool
    ]


@pytest.mark.parametrize(
    ("served", "transport"),
    [
        pytest.param({}, ("--transport", "streamable-http"), id="streamable-http-event-streams"),
        pytest.param({"json_response": True}, (), id="streamable-http-json-by-default"),
        pytest.param({"transport": "sse"}, ("--transport", "sse"), id="http-sse"),
    ],
)
def test_ignored_tools_are_hidden_and_their_calls_refused_here(
    served: dict[str, Any], transport: tuple[str, ...], home: Path
) -> None:
    with McpServer(auth_server=None, **served) as server:

        async def run() -> tuple[list[str], MCPError, types.CallToolResult]:
            async with host(server.url, home, *IGNORE, *transport) as session:
                await session.initialize()
                listed = await session.list_tools()
                with pytest.raises(MCPError) as refused:
                    await session.call_tool("echo", {"text": "hidden"})
                added = await session.call_tool("add", {"a": 2, "b": 3})
                return [t.name for t in listed.tools], refused.value, added

        names, refused, added = asyncio.run(run())
        seen = server.seen()
    assert "echo" not in names and "slow" not in names
    assert {"add", "whoami", "routed"} <= set(names)
    assert refused.code == -32602 and "'echo'" in refused.error.message
    assert "--ignore-tool" in refused.error.message
    assert calls_of(seen, "echo") == []  # answered by the proxy, never sent
    assert len(calls_of(seen, "add")) == 1
    assert not added.is_error and text_of(added) == "5"


def test_a_2026_era_listing_drops_ignored_tools_besides_misdeclared_ones() -> None:
    """At 2026-07-28 the proxy already rewrites ``tools/list`` (SEP-2243); ``--ignore-tool``
    applies on top of it, and a refused call never reaches the server's HTTP side."""
    tools = [tool("deploy", region="Region"), misdeclared("broken"), tool("delete_all")]
    upstream = Upstream(lister({None: (tools, None)}), sse=True)

    async def run() -> HostOut:
        out = HostOut()
        async with httpx2.AsyncClient(transport=httpx2.MockTransport(upstream)) as http:
            proxy = Proxy(
                ServerConfig(URL),
                http=http,
                out=out,
                keeper=None,
                ping_interval=0,
                ignore_tools=["delete_*"],
            )
            try:
                await send(proxy, modern(1, "tools/list"))
                await send(proxy, modern(2, "tools/call", name="delete_all", arguments={}))
                await send(
                    proxy, modern(3, "tools/call", name="deploy", arguments={"region": "eu"})
                )
            finally:
                await proxy.close()
        return out

    out = asyncio.run(run())
    assert [t["name"] for t in answer_to(out, 1)["result"]["tools"]] == ["deploy"]
    assert answer_to(out, 2)["error"]["code"] == -32602
    assert answer_to(out, 3)["result"]["content"] == CALLED["content"]
    assert upstream.methods() == ["tools/list", "tools/call"]
    assert upstream.param_headers("tools/call") == [{"mcp-param-region": "eu"}]


def test_a_batch_from_the_host_never_carries_an_ignored_call_upstream() -> None:
    """A JSON-RPC batch goes upstream as one POST, as the host sent it, but without the
    calls to ignored tools: each is answered here as when sent alone, and a batch of
    nothing else is not sent at all."""
    upstream = Upstream(lister({None: ([tool("deploy"), tool("delete_all")], None)}))

    def call(request_id: Any, name: str) -> dict[str, Any]:
        params = {"name": name, "arguments": {}}
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": "tools/call", "params": params}
        return message if request_id is None else {**message, "id": request_id}

    progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {}}
    mixed = [call(1, "deploy"), call(2, "delete_all"), progress, call(None, "delete_all")]
    ignored_only = [call(3, "delete_everything")]

    async def run() -> HostOut:
        out = HostOut()
        async with httpx2.AsyncClient(transport=httpx2.MockTransport(upstream)) as http:
            proxy = Proxy(
                ServerConfig(URL),
                http=http,
                out=out,
                keeper=None,
                ping_interval=0,
                ignore_tools=["delete_*"],
            )
            try:
                for batch in (mixed, ignored_only):
                    async with asyncio.timeout(CALL_TIMEOUT):
                        await proxy._from_host(json.dumps(batch).encode())
                        await asyncio.gather(*proxy._tasks)
            finally:
                await proxy.close()
        return out

    out = asyncio.run(run())
    assert [message for message, _ in upstream.received] == [[call(1, "deploy"), progress]]
    for request_id, name in ((2, "delete_all"), (3, "delete_everything")):
        refused = answer_to(out, request_id)["error"]
        assert refused["code"] == -32602 and f"'{name}'" in refused["message"]
        assert "--ignore-tool" in refused["message"]
    assert len(out.messages()) == 2  # the refusals; a notification is never answered
