"""grantkeeper across MCP protocol eras: the 2025 era (``initialize``, a session id) and
2026-07-28 (stateless: ``server/discover``, the version in every request's ``_meta`` and in
``MCP-Protocol-Version``/``Mcp-Method`` headers).

Two servers, neither protected (nothing is stored, and neither offers OAuth, so neither
way in asks for a login): ``harness.mcp1_server``, ``mcp`` 1.x in ``.venv-mcp1``, which
speaks only the 2025 era; and ``harness.mcp_server.McpServer``, the ``mcp`` 2.3 server,
which speaks both. Two ways in: ``grantkeeper proxy`` (spawned over stdio by a host of
either era) and ``grantkeeper.mcp.connect``. What is proved, from what the host got and
from what each server saw on the wire:

- a 2026-era host that probes (``mode="auto"``) reaches the 2025-only server through the
  proxy: the probe fails, the host falls back to ``initialize``, its calls work;
- a 2025-era host works through the proxy with either server, in a session, without any
  2026 header;
- a 2026-era host through the proxy to the 2026-capable server is stateless on the wire:
  no session id anywhere, every request carries ``MCP-Protocol-Version: 2026-07-28`` and
  ``Mcp-Method``;
- ``connect(mode="auto")`` falls back on the 2025-only server and negotiates 2026-07-28 with
  the 2026-capable one.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import anyio
import pytest
from mcp.client.client import Client
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from grantkeeper import FileStore
from grantkeeper.mcp import connect
from harness.mcp1_server import Mcp1Server
from harness.mcp1_server import Seen as Mcp1Seen
from harness.mcp_server import McpServer
from tests.test_proxy import (
    CALL_TIMEOUT,
    ROOT,
    browser_windows,
    environment,
    proxy_args,
    text_of,
)

pytestmark = pytest.mark.realserver

MODERN = "2026-07-28"
VERSION_HEADER = "mcp-protocol-version"
METHOD_HEADER = "mcp-method"


@pytest.fixture
def mcp1() -> Iterator[Mcp1Server]:
    """The 2025-only server (``mcp`` 1.x), unprotected."""
    with Mcp1Server() as running:
        yield running


@pytest.fixture
def mcp2() -> Iterator[McpServer]:
    """The dual-era server (``mcp`` 2.3), unprotected."""
    with McpServer(auth_server=None) as running:
        yield running


def proxy_params(url: str, home: Path) -> StdioServerParameters:
    # -v: the proxy logs that it serves the server without OAuth (nothing stored, none offered).
    return StdioServerParameters(
        command=sys.executable, args=proxy_args(url, "-v"), env=environment(home), cwd=str(ROOT)
    )


def errlog_of(home: Path) -> Path:
    return home.parent / "proxy.err"


@contextlib.asynccontextmanager
async def modern_host(url: str, home: Path, mode: str) -> AsyncIterator[Client]:
    """A 2026-era desktop host: ``mcp.Client`` over the proxy it spawned, in ``mode``."""
    with errlog_of(home).open("w") as errlog:  # noqa: ASYNC230 (a local file, opened once)
        async with Client(
            stdio_client(proxy_params(url, home), errlog=errlog),
            mode=mode,
            read_timeout_seconds=CALL_TIMEOUT,
        ) as client:
            yield client


@contextlib.asynccontextmanager
async def legacy_host(url: str, home: Path) -> AsyncIterator[ClientSession]:
    """A 2025-era desktop host: a ``ClientSession`` that opens with ``initialize``."""
    with errlog_of(home).open("w") as errlog:  # noqa: ASYNC230 (a local file, opened once)
        async with (
            stdio_client(proxy_params(url, home), errlog=errlog) as (read, write),
            ClientSession(read, write, read_timeout_seconds=CALL_TIMEOUT) as session,
        ):
            await session.initialize()
            yield session


def served_without_oauth(home: Path) -> None:
    """The proxy took the no-OAuth path: said so, stored nothing, opened no browser."""
    assert "proxy.no_oauth" in errlog_of(home).read_text()
    assert FileStore(home).keys() == []
    assert browser_windows(home) == []


class _Request(Protocol):
    @property
    def path(self) -> str: ...


R = TypeVar("R", bound=_Request)


def from_the_host(seen: list[R]) -> list[R]:
    """What the host's session sent: what came after the proxy's own OAuth discovery (an
    unauthenticated probe, then the metadata it looks for, before it serves the host)."""
    lookups = [i for i, s in enumerate(seen) if s.path.startswith("/.well-known/")]
    assert lookups, "the proxy looked for no OAuth metadata before serving"
    return seen[lookups[-1] + 1 :]


def ended(seen: Sequence[Mcp1Seen]) -> bool:
    return any(s.method == "DELETE" for s in seen)


# -- through grantkeeper proxy ------------------------------------------------------------


def test_a_probing_2026_era_host_falls_back_to_initialize_through_the_proxy_on_a_2025_only_server(
    mcp1: Mcp1Server, home: Path
) -> None:
    async def run() -> tuple[str, str]:
        with anyio.fail_after(CALL_TIMEOUT):
            async with modern_host(mcp1.url, home, "auto") as client:
                echoed = text_of(await client.call_tool("echo", {"text": "fell back"}))
                return echoed, client.protocol_version

    echoed, version = asyncio.run(run())
    assert echoed == "fell back"
    assert version in HANDSHAKE_PROTOCOL_VERSIONS  # the host settled on the 2025 era
    host = from_the_host(mcp1.wait_for(ended))  # the proxy ended the session with the host
    probe, initialize, *rest = host
    assert (probe.rpc, probe.status) == (["server/discover"], 400)  # refused, relayed
    assert (initialize.rpc, initialize.status) == (["initialize"], 200)  # the fallback
    assert initialize.session_id is None
    (session,) = {s.session_id for s in rest}
    assert session is not None  # every later request named the session it opened
    (call,) = [s for s in rest if "tools/call" in s.rpc]
    assert call.status == 200 and call.mcp_headers.get(VERSION_HEADER) == version
    assert not any(METHOD_HEADER in s.mcp_headers for s in rest)  # 2025 requests, as sent
    served_without_oauth(home)


def test_a_2025_era_host_calls_through_the_proxy_on_a_2025_only_server(
    mcp1: Mcp1Server, home: Path
) -> None:
    async def run() -> str:
        with anyio.fail_after(CALL_TIMEOUT):
            async with legacy_host(mcp1.url, home) as session:
                return text_of(await session.call_tool("echo", {"text": "2025 to 2025"}))

    assert asyncio.run(run()) == "2025 to 2025"
    initialize, *rest = from_the_host(mcp1.wait_for(ended))
    assert (initialize.rpc, initialize.session_id) == (["initialize"], None)  # no probe
    (session,) = {s.session_id for s in rest}
    assert session is not None
    assert any("tools/call" in s.rpc for s in rest)
    assert all(s.status < 400 for s in rest)
    assert not any(METHOD_HEADER in s.mcp_headers for s in rest)
    served_without_oauth(home)


def test_a_2025_era_host_calls_through_the_proxy_on_a_dual_era_server_in_a_session(
    mcp2: McpServer, home: Path
) -> None:
    async def run() -> tuple[str, str]:
        with anyio.fail_after(CALL_TIMEOUT):
            async with legacy_host(mcp2.url, home) as session:
                initialized = session.initialize_result
                assert initialized is not None
                echoed = text_of(await session.call_tool("echo", {"text": "2025 to 2026"}))
                return echoed, initialized.protocol_version

    echoed, version = asyncio.run(run())
    assert echoed == "2025 to 2026"
    assert version in HANDSHAKE_PROTOCOL_VERSIONS  # the server took the 2025 era too
    initialize, *rest = from_the_host(mcp2.seen())
    assert (initialize.method, initialize.session_id) == ("POST", None)
    assert initialize.mcp_headers == {}  # the negotiation itself carries no version
    (session,) = {s.session_id for s in rest}
    assert session is not None
    assert all(s.status < 400 for s in rest)
    assert all(s.mcp_headers.get(VERSION_HEADER) == version for s in rest)
    assert not any(METHOD_HEADER in s.mcp_headers for s in rest)
    assert rest[-1].method == "DELETE"  # the session ended with the host
    served_without_oauth(home)


@pytest.mark.parametrize("mode", ["auto", MODERN])
def test_a_2026_era_host_through_the_proxy_is_stateless_with_the_2026_headers(
    mcp2: McpServer, home: Path, mode: str
) -> None:
    async def run() -> tuple[str, str]:
        with anyio.fail_after(CALL_TIMEOUT):
            async with modern_host(mcp2.url, home, mode) as client:
                echoed = text_of(await client.call_tool("echo", {"text": "2026 to 2026"}))
                return echoed, client.protocol_version

    assert asyncio.run(run()) == ("2026 to 2026", MODERN)
    seen = mcp2.seen()
    assert all(s.session_id is None for s in seen)  # no session, ever
    host = from_the_host(seen)
    # Nothing but POSTs: no event stream to listen on, no session to DELETE.
    assert host and all(s.method == "POST" and s.status == 200 for s in host)
    assert all(s.mcp_headers.get(VERSION_HEADER) == MODERN for s in host)
    methods = [s.mcp_headers.get(METHOD_HEADER) for s in host]
    assert None not in methods and "initialize" not in methods
    assert ("server/discover" in methods) == (mode == "auto")  # a pinned host never probes
    (call,) = [s for s in host if s.mcp_headers[METHOD_HEADER] == "tools/call"]
    assert call.mcp_headers.get("mcp-name") == "echo"
    served_without_oauth(home)


# -- through grantkeeper.mcp.connect ------------------------------------------------------


def test_connect_auto_falls_back_to_initialize_on_a_2025_only_server(mcp1: Mcp1Server) -> None:
    async def run() -> tuple[str, str]:
        with anyio.fail_after(CALL_TIMEOUT):
            async with connect(mcp1.url, mode="auto") as session:
                echoed = text_of(await session.call_tool("echo", {"text": "library"}))
                return echoed, session.client.protocol_version

    echoed, version = asyncio.run(run())
    assert echoed == "library"
    assert version in HANDSHAKE_PROTOCOL_VERSIONS
    probe, initialize, *rest = mcp1.wait_for(ended)  # no keeper: no OAuth discovery either
    assert (probe.rpc, probe.status) == (["server/discover"], 400)
    assert (initialize.rpc, initialize.status, initialize.session_id) == (["initialize"], 200, None)
    (session,) = {s.session_id for s in rest}
    assert session is not None
    (call,) = [s for s in rest if "tools/call" in s.rpc]
    assert call.status == 200


def test_connect_auto_negotiates_2026_with_a_dual_era_server_without_a_session(
    mcp2: McpServer,
) -> None:
    async def run() -> tuple[str, str]:
        with anyio.fail_after(CALL_TIMEOUT):
            async with connect(mcp2.url, mode="auto") as session:
                echoed = text_of(await session.call_tool("echo", {"text": "library"}))
                return echoed, session.client.protocol_version

    assert asyncio.run(run()) == ("library", MODERN)
    seen = mcp2.seen()
    assert seen and all(s.method == "POST" and s.status == 200 for s in seen)
    assert all(s.session_id is None for s in seen)
    assert all(s.mcp_headers.get(VERSION_HEADER) == MODERN for s in seen)
    methods = [s.mcp_headers.get(METHOD_HEADER) for s in seen]
    assert methods[0] == "server/discover" and "tools/call" in methods
    assert None not in methods and "initialize" not in methods
