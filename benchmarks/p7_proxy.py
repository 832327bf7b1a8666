"""P7: ``grantkeeper proxy``, the stdio bridge desktop hosts start, on the real servers.

- tool-call latency through the proxy (``mcp``'s stdio client → proxy → server) against a
  direct ``mcp`` client session (the SDK's HTTP transport with grantkeeper's auth) on the
  same server: the pipe's cost;
- spawn to the ``initialize`` answer with a stored credential: what a host waits for;
- a fleet: N proxies for one credential with short-lived tokens, each calling a tool at a
  steady pace: forced logins, replayed refresh tokens, failed calls and dead instances, as
  the authorization server and the hosts counted them, side by side with ``mcp-remote``
  0.15.1 in the same scenario (see ``benchmarks/_bridge_fleet.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from benchmarks._bridge_fleet import (
    MCP_REMOTE_VERSION,
    grantkeeper_params,
    mcp_remote_params,
    rows,
    run_fleet,
)
from benchmarks._measure import Spread
from benchmarks._report import Section
from grantkeeper import CredentialKey, FileStore, Keeper
from grantkeeper.mcp import httpx2_auth
from harness.authserver import AuthServer
from harness.mcp_demo import login
from harness.mcp_server import INITIALIZE, McpServer

ROOT = Path(__file__).resolve().parent.parent
HTTP_TIMEOUT = httpx2.Timeout(30.0, read=300.0)
OVERHEAD_GOAL = 1e-3
START_GOAL = 1.0


def _env(home: str) -> dict[str, str]:
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    return {"GRANTKEEPER_HOME": home, "GRANTKEEPER_STORE": "file", "PYTHONPATH": path}


def _params(url: str, home: str) -> StdioServerParameters:
    args = ["-m", "grantkeeper", "proxy", url, "--ping-interval", "0"]
    return StdioServerParameters(command=sys.executable, args=args, env=_env(home), cwd=ROOT)


@contextlib.asynccontextmanager
async def _through_proxy(url: str, home: str) -> AsyncIterator[ClientSession]:
    with open(os.devnull, "w") as errlog:  # noqa: ASYNC230
        async with (
            stdio_client(_params(url, home), errlog=errlog) as (read, write),
            ClientSession(read, write, read_timeout_seconds=60) as session,
        ):
            await session.initialize()
            yield session


@contextlib.asynccontextmanager
async def _direct(url: str, keeper: Keeper) -> AsyncIterator[ClientSession]:
    """The same client session class as the host's, over the SDK's own HTTP transport with
    grantkeeper's auth: the only difference left is the proxy in between."""
    async with (
        httpx2.AsyncClient(auth=httpx2_auth(url, keeper=keeper), timeout=HTTP_TIMEOUT) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write, read_timeout_seconds=60) as session,
    ):
        await session.initialize()
        yield session


async def _latencies(url: str, home: str, calls: int) -> tuple[list[float], list[float]]:
    direct: list[float] = []
    proxied: list[float] = []
    keeper = Keeper(FileStore(home), CredentialKey.for_server(url))
    async with _direct(url, keeper) as session, _through_proxy(url, home) as host:
        for _ in range(max(1, calls // 10)):  # warm both paths up
            await session.call_tool("echo", {"text": "warm"})
            await host.call_tool("echo", {"text": "warm"})
        for _ in range(calls):  # alternate, so a noisy moment hurts both alike
            started = time.perf_counter()
            await session.call_tool("echo", {"text": "x"})
            direct.append(time.perf_counter() - started)
            started = time.perf_counter()
            await host.call_tool("echo", {"text": "x"})
            proxied.append(time.perf_counter() - started)
    keeper.close()
    return direct, proxied


def _start_to_initialize(url: str, home: str) -> float:
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "grantkeeper", "proxy", url, "--ping-interval", "0"],
        env={**os.environ, **_env(home)},
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write((json.dumps(INITIALIZE) + "\n").encode())
    process.stdin.flush()
    answer = json.loads(process.stdout.readline())
    elapsed = time.perf_counter() - started
    process.stdin.close()
    process.wait(timeout=30)
    process.stdout.close()
    if "result" not in answer:
        raise RuntimeError(f"initialize failed: {answer.get('error')}")
    return elapsed


def run(
    *,
    repeats: int = 5,
    calls: int = 200,
    fleet: int = 8,
    fleet_seconds: float = 60.0,
    ttl: int = 4,
    pace: float = 2.0,
    mcp_remote: bool = True,
    fleet_runs: int | None = None,
) -> Section:
    """``fleet_runs``: how many times each bridge's fleet runs on fresh servers (default:
    ``repeats``, at most 5; each run takes ``fleet_seconds`` per bridge)."""
    fleet_runs = max(1, min(repeats, 5)) if fleet_runs is None else max(1, fleet_runs)
    section = Section(
        "P7",
        "`grantkeeper proxy`: the pipe's cost, its start, and a fleet of hosts",
        f"p50 overhead ≤ {OVERHEAD_GOAL * 1e3:g} ms per tool call, spawn to `initialize` ≤ "
        f"{START_GOAL:g} s; in the fleet 0 forced logins, 0 replays, 0 failed calls, "
        "0 dead instances",
        ["measure", "grantkeeper proxy", f"mcp-remote {MCP_REMOTE_VERSION}"],
    )
    with tempfile.TemporaryDirectory(prefix="gk-bench-") as home:
        with AuthServer(access_ttl=3600) as auth, McpServer(auth_server=auth) as server:
            login(auth, server.url, FileStore(home))
            direct, proxied = asyncio.run(_latencies(server.url, home, calls))
            starts = [_start_to_initialize(server.url, home) for _ in range(repeats)]
    p50_direct, p50_proxy = statistics.median(direct), statistics.median(proxied)
    overhead = p50_proxy - p50_direct
    start = Spread.of(starts)
    ours, theirs_runs = [], []
    for _ in range(fleet_runs):  # interleaved, so a quiet or busy spell hits both bridges
        ours.append(
            run_fleet(grantkeeper_params, count=fleet, seconds=fleet_seconds, ttl=ttl, pace=pace)
        )
        if mcp_remote:
            theirs_runs.append(
                run_fleet(mcp_remote_params, count=fleet, seconds=fleet_seconds, ttl=ttl, pace=pace)
            )
    theirs = theirs_runs if mcp_remote else None
    section.rows += [
        ["tool call, direct `mcp` client session (p50)", f"{p50_direct * 1e3:.2f} ms"],
        ["tool call through the proxy (p50)", f"{p50_proxy * 1e3:.2f} ms"],
        ["p50 overhead of the proxy", f"{overhead * 1e3:.2f} ms"],
        ["spawn to `initialize` answered, stored credential", start.fmt(" ms", 1e3, 0)],
    ]
    section.rows = [[*row, "–"] for row in section.rows]
    section.rows += rows(ours, theirs, count=fleet, seconds=fleet_seconds)
    section.met = (
        overhead <= OVERHEAD_GOAL
        and start.median <= START_GOAL
        and all(
            run.failed_calls == 0
            and run.dead_instances == 0
            and run.forced_logins == 0
            and run.replays == 0
            for run in ours
        )
    )
    section.notes.append(
        f"Latency: {calls} alternating `echo` calls on each path after a warm-up, same server "
        "(real `mcp` 2.3 server checking tokens by introspection, real oidc-provider). "
        f"Start: median (min–max) of {repeats} spawns of `python -m grantkeeper proxy` until "
        f"the `initialize` answer. Fleet: {fleet} proxies, {ttl} s access tokens, one call "
        f"every {pace:g} s each, {fleet_seconds:g} s, {fleet_runs} run(s) per bridge "
        "(median, with the range and each run's value where runs differ), each after one "
        "login by one instance with "
        "nothing stored; the same for `mcp-remote` (npm, pinned in harness/mcp_remote, run "
        "with its defaults but `--host 127.0.0.1` and a private `HOME`), each bridge on fresh "
        "servers. Browser windows counted by a fake browser (`$BROWSER` for the proxy, a fake "
        "`xdg-open` for mcp-remote), replays and refreshes by the authorization server. The "
        "goal is judged on grantkeeper's column only."
    )
    return section


def smoke(*, mcp_remote: bool = False) -> Section:
    """Tiny sizes; mcp-remote only when asked (tests/test_benchmarks_smoke.py does)."""
    return run(
        repeats=1, calls=5, fleet=2, fleet_seconds=3.0, ttl=2, pace=0.5, mcp_remote=mcp_remote
    )
