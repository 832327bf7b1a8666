"""The proxy's relay in-process: :class:`Proxy` against a scripted MCP server (httpx2's
``MockTransport``), the host's side a list of the lines the proxy writes.

Each test feeds the host's messages to the proxy one by one and waits for the request each
started, so what the server received and what the host read are complete when it asserts.
A request task that dies fails the test with its exception, instead of leaving the host
waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2
import pytest

from grantkeeper._proxy.stdio import ProtocolOut
from grantkeeper._proxy.streamable_http import VERSION_META_KEY, Proxy
from grantkeeper._servers import ServerConfig

URL = "https://mcp.example.test/mcp"
WAIT = 30.0
"""Bounds every wait: a relay that never answers fails the test instead of hanging it."""

INVALID_PARAMS = -32602
SECRET = "sk-live-4f9a7c1e2b"
"""Looks like a credential: whatever the proxy refuses to send must not echo it."""

Answer = Callable[[dict[str, Any]], tuple[int, Any]]


class HostOut(ProtocolOut):
    """:class:`ProtocolOut` as the host sees it: every line the proxy writes, kept."""

    def __init__(self) -> None:
        super().__init__(-1)
        self.lines: list[bytes] = []

    def write(self, line: bytes) -> None:
        assert b"\n" not in line, "one message per line"
        self.lines.append(line)

    def close(self) -> None:
        self.closed = True

    def messages(self) -> list[Any]:
        """What the host parses: each line must be UTF-8 JSON."""
        return [json.loads(line.decode("utf-8")) for line in self.lines]


class Upstream:
    """A streamable-HTTP MCP server scripted by ``answer`` (message -> status, body), sent
    as JSON or, for a 200, as an event stream; it keeps every message POSTed to it."""

    def __init__(self, answer: Answer, *, sse: bool = False) -> None:
        self.answer = answer
        self.sse = sse
        self.received: list[tuple[Any, httpx2.Headers]] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        assert request.method == "POST"
        message = json.loads(request.content)
        self.received.append((message, request.headers))
        if not (isinstance(message, dict) and "id" in message and "method" in message):
            return httpx2.Response(202)
        status, body = self.answer(message)
        text = json.dumps(body)  # escapes what is not ASCII, lone surrogates included
        if self.sse and status == 200:
            stream = f"event: message\ndata: {text}\n\n".encode()
            return httpx2.Response(
                200, content=stream, headers={"content-type": "text/event-stream"}
            )
        return httpx2.Response(
            status, content=text.encode(), headers={"content-type": "application/json"}
        )

    def methods(self) -> list[Any]:
        return [message.get("method") for message, _ in self.received]

    def param_headers(self, method: str) -> list[dict[str, str]]:
        """The ``Mcp-Param-*`` headers of each ``method`` request received, in order."""
        return [
            {k.lower(): v for k, v in headers.items() if k.lower().startswith("mcp-param-")}
            for message, headers in self.received
            if message.get("method") == method
        ]


@contextlib.asynccontextmanager
async def proxy_to(upstream: Upstream) -> AsyncIterator[tuple[Proxy, HostOut]]:
    out = HostOut()
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(upstream)) as http:
        proxy = Proxy(ServerConfig(URL), http=http, out=out, keeper=None, ping_interval=0)
        try:
            yield proxy, out
        finally:
            await proxy.close()


async def send(proxy: Proxy, message: dict[str, Any]) -> None:
    """The host writes ``message``; wait until the proxy is done with it (a request task
    that raised re-raises here)."""
    line = json.dumps(message).encode()  # as a host escapes: "\ud800" stays JSON text
    async with asyncio.timeout(WAIT):
        # Not a task of its own: the request task it starts must still be in ``_tasks``
        # (not done and discarded, its exception with it) when they are gathered.
        await proxy._from_host(line)
        await asyncio.gather(*proxy._tasks)


def answer_to(out: HostOut, request_id: Any) -> dict[str, Any]:
    (answer,) = [m for m in out.messages() if m.get("id") == request_id]
    assert isinstance(answer, dict)
    return answer


def modern(request_id: Any, method: str, **params: Any) -> dict[str, Any]:
    """A 2026-era request: the protocol version in ``params._meta``."""
    meta = {VERSION_META_KEY: "2026-07-28"}
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": method,
        "params": {**params, "_meta": meta},
    }


def result(message: dict[str, Any], value: Any) -> tuple[int, dict[str, Any]]:
    return 200, {"jsonrpc": "2.0", "id": message["id"], "result": value}


def tool(name: str, **designated: str) -> dict[str, Any]:
    """A tool whose ``designated`` properties (property -> header token) go into headers."""
    properties = {
        prop: {"type": "string", "x-mcp-header": token} for prop, token in designated.items()
    }
    return {"name": name, "inputSchema": {"type": "object", "properties": properties}}


def misdeclared(name: str) -> dict[str, Any]:
    """A tool the spec has clients drop: ``x-mcp-header`` on a number."""
    properties = {"score": {"type": "number", "x-mcp-header": "Score"}}
    return {"name": name, "inputSchema": {"type": "object", "properties": properties}}


CALLED = {"content": [{"type": "text", "text": "done"}]}


def lister(pages: dict[str | None, tuple[list[Any], str | None]]) -> Answer:
    """Answers ``tools/list`` from ``pages`` (cursor -> tools, next cursor), calls with
    :data:`CALLED`."""

    def answer(message: dict[str, Any]) -> tuple[int, Any]:
        if message["method"] != "tools/list":
            return result(message, CALLED)
        tools, next_cursor = pages[message["params"].get("cursor")]
        listing: dict[str, Any] = {"tools": tools}
        if next_cursor is not None:
            listing["nextCursor"] = next_cursor
        return result(message, listing)

    return answer


# -- what a listing teaches ------------------------------------------------------------------


def test_a_paged_listing_teaches_each_pages_headers_and_a_new_listing_starts_over() -> None:
    pages: dict[str | None, tuple[list[Any], str | None]] = {
        None: ([tool("deploy", region="Region"), tool("scale", zone="Zone")], "page-2"),
        "page-2": ([tool("resize", flavor="Flavor")], None),
    }
    upstream = Upstream(lister(pages))
    calls = [("deploy", {"region": "eu"}), ("scale", {"zone": "b"}), ("resize", {"flavor": "xl"})]

    async def run() -> None:
        async with proxy_to(upstream) as (proxy, _):
            await send(proxy, modern(1, "tools/list"))
            await send(proxy, modern(2, "tools/list", cursor="page-2"))
            for n, (name, arguments) in enumerate(calls):
                await send(proxy, modern(10 + n, "tools/call", name=name, arguments=arguments))
            pages.clear()
            pages[None] = ([tool("resize", flavor="Flavor")], None)
            await send(proxy, modern(3, "tools/list"))
            for n, (name, arguments) in enumerate(calls):
                await send(proxy, modern(20 + n, "tools/call", name=name, arguments=arguments))

    asyncio.run(run())
    assert upstream.param_headers("tools/call") == [
        {"mcp-param-region": "eu"},
        {"mcp-param-zone": "b"},
        {"mcp-param-flavor": "xl"},
        {},  # the new listing no longer has deploy nor scale: nothing is left of theirs
        {},
        {"mcp-param-flavor": "xl"},
    ]


def test_tools_without_a_usable_name_or_schema_pass_to_the_host_untouched() -> None:
    served = [
        {"name": "listless", "inputSchema": ["not", "a", "schema"]},
        {"name": "stringly", "inputSchema": "object"},
        {"name": 7, "inputSchema": {"type": "object"}},
        {"inputSchema": {"type": "object"}},
        "not a tool",
        tool("deploy", region="Region"),
    ]
    upstream = Upstream(lister({None: (served, None)}))

    async def run() -> HostOut:
        async with proxy_to(upstream) as (proxy, out):
            await send(proxy, modern(1, "tools/list"))
            await send(proxy, modern(2, "tools/call", name="listless", arguments={"region": "x"}))
            await send(proxy, modern(3, "tools/call", name="deploy", arguments={"region": "eu"}))
            return out

    out = asyncio.run(run())
    assert answer_to(out, 1)["result"] == {"tools": served, "resultType": "complete"}
    assert upstream.param_headers("tools/call") == [{}, {"mcp-param-region": "eu"}]


@pytest.mark.parametrize(
    ("sse", "status"), [(False, 200), (True, 200), (False, 400)], ids=["json", "sse", "json-400"]
)
def test_a_listing_answered_with_an_error_passes_through_and_forgets_nothing(
    sse: bool, status: int
) -> None:
    error = {"code": -32603, "message": "listing failed", "data": {"retry": True}}
    listed = {"tools": [tool("deploy", region="Region")]}
    listings = iter([listed, None])

    def answer(message: dict[str, Any]) -> tuple[int, Any]:
        if message["method"] == "tools/list" and (value := next(listings)) is not None:
            return result(message, value)
        if message["method"] == "tools/list":
            return status, {"jsonrpc": "2.0", "id": message["id"], "error": error}
        return result(message, CALLED)

    upstream = Upstream(answer, sse=sse)

    async def run() -> HostOut:
        async with proxy_to(upstream) as (proxy, out):
            await send(proxy, modern(1, "tools/list"))
            await send(proxy, modern(2, "tools/list"))
            await send(proxy, modern(3, "tools/call", name="deploy", arguments={"region": "eu"}))
            return out

    out = asyncio.run(run())
    assert [m["id"] for m in out.messages()] == [1, 2, 3]
    assert answer_to(out, 2) == {"jsonrpc": "2.0", "id": 2, "error": error}
    assert upstream.param_headers("tools/call") == [{"mcp-param-region": "eu"}]


# -- what HTTP cannot carry (finding 1) ----------------------------------------------------


UNSENDABLE = {
    "designated-argument": (
        modern(5, "tools/call", name="deploy", arguments={"region": SECRET + "\ud800"}),
        True,
    ),
    "tool-name": (modern(5, "tools/call", name=SECRET + "\ud800", arguments={}), True),
    "prompt-name": (modern(5, "prompts/get", name="\ud800" + SECRET), True),
    "method": (modern(5, "tools/cäll", name="deploy", arguments={}), False),
    "version": (
        {
            "jsonrpc": "2.0",
            "id": 5,
            "method": "tools/list",
            "params": {"_meta": {VERSION_META_KEY: "2026-07-28é"}},
        },
        False,
    ),
}


@pytest.mark.parametrize("case", UNSENDABLE)
def test_a_request_http_cannot_carry_is_answered_and_never_sent(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    request, secret = UNSENDABLE[case]
    caplog.set_level(logging.DEBUG, logger="grantkeeper.proxy")
    upstream = Upstream(lister({None: ([tool("deploy", region="Region")], None)}))

    async def run() -> HostOut:
        async with proxy_to(upstream) as (proxy, out):
            await send(proxy, modern(1, "tools/list"))
            await send(proxy, request)
            await send(proxy, modern(6, "tools/call", name="deploy", arguments={"region": "eu"}))
            return out

    out = asyncio.run(run())
    assert upstream.methods() == ["tools/list", "tools/call"]  # the refused one never left
    assert upstream.param_headers("tools/call") == [{"mcp-param-region": "eu"}]
    error = answer_to(out, 5)["error"]
    assert error["code"] == INVALID_PARAMS
    assert error["data"]["proxy"] == "grantkeeper"
    assert "HTTP" in error["message"]
    assert answer_to(out, 6)["result"] == {**CALLED, "resultType": "complete"}  # relay goes on
    assert any(r.levelno == logging.WARNING and "HTTP" in r.getMessage() for r in caplog.records)
    if secret:
        assert not any(SECRET.encode() in line for line in out.lines)
        assert SECRET not in caplog.text
        assert not any(SECRET in repr(r.args) for r in caplog.records)


def test_a_notification_http_cannot_carry_is_dropped_and_the_relay_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notification = {
        "jsonrpc": "2.0",
        "method": "notifications/prögress",
        "params": {"_meta": {VERSION_META_KEY: "2026-07-28"}},
    }
    upstream = Upstream(lister({None: ([], None)}))

    async def run() -> HostOut:
        async with proxy_to(upstream) as (proxy, out):
            await send(proxy, notification)
            await send(proxy, modern(1, "tools/list"))
            return out

    out = asyncio.run(run())
    assert upstream.methods() == ["tools/list"]
    listed = {"tools": [], "resultType": "complete"}
    assert out.messages() == [{"jsonrpc": "2.0", "id": 1, "result": listed}]
    assert any(r.levelno == logging.WARNING and "HTTP" in r.getMessage() for r in caplog.records)


# -- lone surrogates in the JSON (finding 2) ------------------------------------------------


@pytest.mark.parametrize("sse", [False, True], ids=["json", "sse"])
def test_a_listing_with_a_lone_surrogate_reaches_the_host_as_json_without_its_dropped_tool(
    sse: bool,
) -> None:
    odd = {"name": "odd", "description": "half a pair: \ud800", "inputSchema": {"type": "object"}}
    served = [misdeclared("scored"), odd]
    upstream = Upstream(lister({None: (served, None)}), sse=sse)

    async def run() -> HostOut:
        async with proxy_to(upstream) as (proxy, out):
            await send(proxy, modern(1, "tools/list"))
            return out

    out = asyncio.run(run())
    (line,) = out.lines
    line.decode("utf-8")  # what the host reads is UTF-8 (strict) ...
    assert json.loads(line)["result"]["tools"] == [odd]  # ... and JSON, the text intact


def test_a_host_argument_with_a_lone_surrogate_goes_upstream_as_json() -> None:
    upstream = Upstream(lambda message: result(message, CALLED))
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
    call["params"] = {"name": "echo", "arguments": {"text": "\udfff"}}

    async def run() -> HostOut:
        async with proxy_to(upstream) as (proxy, out):
            await send(proxy, call)
            return out

    out = asyncio.run(run())
    ((received, _),) = upstream.received
    assert received == call
    assert answer_to(out, 1)["result"] == CALLED


# -- an older server's errors (finding 3) ---------------------------------------------------


def test_an_error_a_server_sent_under_its_own_id_answers_the_request() -> None:
    """``mcp`` 1.x refuses a 2026-era ``server/discover`` with HTTP 400 and an error whose
    id is "server-error": the host gets that error, as the answer to its request."""
    error = {"code": -32600, "message": "Bad Request: Unsupported protocol version: 2026-07-28"}

    def answer(message: dict[str, Any]) -> tuple[int, Any]:
        return 400, {"jsonrpc": "2.0", "id": "server-error", "error": error}

    upstream = Upstream(answer)

    async def run() -> HostOut:
        async with proxy_to(upstream) as (proxy, out):
            await send(proxy, modern(1, "server/discover"))
            return out

    out = asyncio.run(run())
    assert out.messages() == [{"jsonrpc": "2.0", "id": 1, "error": error}]


# -- results a strict host would refuse ----------------------------------------------------


@pytest.mark.parametrize("sse", [False, True], ids=["json", "event-stream"])
def test_a_2026_era_result_without_result_type_reaches_the_host_as_complete(sse: bool) -> None:
    """SEP-2322: at 2026-07-28 a missing ``resultType`` means ``complete``. The proxy writes
    it out, so a strict host (the ``mcp`` SDK's client, 2.3.0, refuses the result otherwise)
    gets what the server meant; a 2025-era answer, or a result that says its type, passes as
    it came."""
    content = {"content": [{"type": "text", "text": "done"}]}
    asked = {**content, "resultType": "input_required"}

    def answer(message: dict[str, Any]) -> tuple[int, Any]:
        if message["params"].get("name") == "asks":
            return result(message, asked)
        return result(message, {"tools": []} if message["method"] == "tools/list" else content)

    upstream = Upstream(answer, sse=sse)
    legacy = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "t"}}

    async def run() -> HostOut:
        async with proxy_to(upstream) as (proxy, out):
            await send(proxy, modern(1, "tools/call", name="t"))
            await send(proxy, modern(2, "tools/call", name="asks"))
            await send(proxy, legacy)
            await send(proxy, modern(4, "tools/list"))
            await send(proxy, modern(5, "prompts/get", name="p"))
            return out

    out = asyncio.run(run())
    assert answer_to(out, 1)["result"] == {**content, "resultType": "complete"}
    assert answer_to(out, 2)["result"] == asked
    assert answer_to(out, 3)["result"] == content
    assert answer_to(out, 4)["result"] == {"tools": [], "resultType": "complete"}
    assert answer_to(out, 5)["result"] == {**content, "resultType": "complete"}


def test_a_host_line_nested_past_any_real_message_is_a_parse_error() -> None:
    upstream = Upstream(lambda message: result(message, {}))
    line = b"[" * 200_000 + b"]" * 200_000

    async def run() -> HostOut:
        async with proxy_to(upstream) as (proxy, out):
            async with asyncio.timeout(WAIT):
                await proxy._from_host(line)
            await send(proxy, modern(1, "tools/list"))
            return out

    out = asyncio.run(run())
    assert out.messages()[0]["error"]["code"] == -32700
    assert answer_to(out, 1)["result"] == {"resultType": "complete"}
    assert upstream.methods() == ["tools/list"]


def test_the_proxy_wants_mcp_2_beside_httpx2(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 2026-07-28 header rules come from ``mcp`` 2.x: without it (or with 1.x) the proxy
    names the extra at start instead of failing the first 2026-era request."""
    import importlib.metadata

    from grantkeeper._cli._proxy import _has_mcp_extra

    assert _has_mcp_extra()
    real = importlib.metadata.version

    def version(name: str) -> str:
        return "1.30.0" if name == "mcp" else real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert not _has_mcp_extra()


def test_whatever_breaks_relaying_a_request_still_answers_the_host() -> None:
    """An answer nested deep enough to parse but not to encode again (``json.dumps`` runs a
    few frames deeper than ``json.loads``): the host gets an error, not silence."""
    import sys

    depth = sys.getrecursionlimit() - 60
    nested: Any = "done"
    for _ in range(depth):
        nested = [nested]

    def answer(message: dict[str, Any]) -> tuple[int, Any]:
        if message["method"] == "tools/call":
            return result(message, {"content": [], "structuredContent": {"deep": nested}})
        return result(message, {"tools": []})

    upstream = Upstream(answer)

    async def run() -> HostOut:
        async with proxy_to(upstream) as (proxy, out):
            for _ in range(3):  # one of these depths lands between the two limits
                await send(proxy, {"jsonrpc": "2.0", "id": 1, "method": "tools/call"})
            await send(proxy, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
            return out

    out = asyncio.run(run())
    assert all(b'"id":1' in line for line in out.lines[:3])
    assert answer_to(out, 2)["result"] == {"tools": []}
