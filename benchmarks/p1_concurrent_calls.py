"""P1: 32 concurrent slow MCP tool calls through one session, per way of authenticating.

The real ``mcp`` server's ``slow`` tool sleeps ~200 ms; 32 calls started together should
take about 200 ms in all. A credential layer that holds a lock across each request (the
``mcp`` SDK's ``OAuthClientProvider``, and fastmcp's ``OAuth``, which inherits it) runs them
one after another. Every peer holds the same fresh, really issued token, so no refresh
happens; what is measured is what authentication costs a concurrent workload.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx2

from benchmarks._measure import Spread, ratio
from benchmarks._peers import PEERS, Login, logged_in, peer_client
from benchmarks._report import Section

GOAL = 1.05
FLOOR = "static, tool returns at once"


async def _burst(client: Any, calls: int, ms: int) -> float:
    started = time.perf_counter()
    results = await asyncio.gather(*(client.call_tool("slow", {"ms": ms}) for _ in range(calls)))
    elapsed = time.perf_counter() - started
    failed = [result for result in results if result.is_error]
    if failed:
        raise RuntimeError(f"{len(failed)} of {calls} calls failed: {failed[0]}")
    return elapsed


async def _measure(login: Login, *, repeats: int, calls: int, ms: int) -> dict[str, Spread]:
    from mcp.client.client import Client
    from mcp.client.streamable_http import streamable_http_client

    samples: dict[str, list[float]] = {peer: [] for peer in (*PEERS, FLOOR)}
    async with contextlib.AsyncExitStack() as stack:
        sessions = {}
        for peer in PEERS:
            http = await stack.enter_async_context(
                peer_client(peer, login, limits=httpx2.Limits(max_connections=calls + 8))
            )
            client = await stack.enter_async_context(
                Client(streamable_http_client(login.url, http_client=http))
            )
            # Open the pool's connections outside the measurement.
            await _burst(client, calls, 1)
            sessions[peer] = client
        # Peers take turns within each repeat, so a noisy moment hurts all of them alike.
        for _ in range(repeats):
            for peer, client in sessions.items():
                samples[peer].append(await _burst(client, calls, ms))
            # The same burst with a tool that returns at once: the transport's own cost.
            samples[FLOOR].append(await _burst(sessions["static"], calls, 0))
    return {peer: Spread.of(values) for peer, values in samples.items()}


def run(*, repeats: int = 5, calls: int = 32, ms: int = 200) -> Section:
    section = Section(
        "P1",
        f"{calls} concurrent slow MCP tool calls (the server sleeps {ms} ms)",
        f"grantkeeper ≤ {GOAL}× the static bearer header",
        ["client", f"time for {calls} concurrent calls", "ratio to static bearer"],
    )
    with logged_in() as login:
        spreads = asyncio.run(_measure(login, repeats=repeats, calls=calls, ms=ms))
    static = spreads["static"]
    for peer, spread in spreads.items():
        section.rows.append([peer, spread.fmt(" ms", 1e3, 0), ratio(spread, static)])
    section.met = spreads["grantkeeper"].median <= GOAL * static.median
    section.notes.append(
        f"Median (min–max) over {repeats} repeats; one `mcp` 2.x session per client over "
        f"streamable HTTP, with a fresh token (no refresh happens). The ideal is {ms} ms "
        f"(all calls inside the tool at once) plus the last row: the same {calls} calls to a "
        "tool that returns at once, the `mcp` client's and server's own cost on this machine. "
        "Server: `harness/mcp_server.py` on loopback, "
        "in its own process, checking every token by introspection at the real oidc-provider."
    )
    return section


def smoke() -> Section:
    return run(repeats=1, calls=4, ms=10)
