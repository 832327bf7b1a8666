"""P7's side-by-side: the same fleet of stdio bridges through ``grantkeeper proxy`` and
through ``mcp-remote`` 0.15.1 (npm, pinned in harness/mcp_remote), on the real servers.

The scenario, the same for both bridges, each on fresh servers and a fresh private home:
nothing stored; one instance logs in (the fake browser plays the user) and answers a call;
then N instances for one server, short-lived access tokens with rotation and reuse
detection at the real oidc-provider, one ``echo`` call every ``pace`` seconds each, for
``seconds``. Counted:

- forced browser logins: windows the fake browser was asked to open after the first login;
- replays: refresh tokens presented twice, as the authorization server counted them;
- failed calls: calls that raised or answered an error;
- dead instances: bridges whose session ended before the end (``initialize`` failed, or the
  process went away mid-run, which the host sees as a closed connection).

The browser is played by ``harness.fake_browser``. ``grantkeeper proxy`` opens it through
Python's ``webbrowser`` (``$BROWSER``); ``mcp-remote`` through the ``open`` npm package,
which on Linux runs its bundled ``xdg-open`` (it honours ``$BROWSER`` on a desktop-less
machine) or the one on ``PATH``: a fake ``xdg-open`` first on ``PATH``, also named by
``$BROWSER``, answers either way. Every URL is loopback; mcp-remote's callback is pinned
to ``127.0.0.1`` (``--host``) so the fake browser never resolves ``localhost``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED

from harness.authserver import AuthServer
from harness.mcp_server import McpServer

ROOT = Path(__file__).resolve().parent.parent
MCP_REMOTE_DIR = ROOT / "harness" / "mcp_remote"
MCP_REMOTE = MCP_REMOTE_DIR / "node_modules" / "mcp-remote" / "dist" / "proxy.js"
MCP_REMOTE_VERSION = "0.15.1"
READ_TIMEOUT = 60.0
"""Seconds a host waits for one answer before it counts the call as failed."""

Params = Callable[[str, Path], StdioServerParameters]
"""A bridge's command for a server URL and a run directory (its private home and browser)."""


@dataclass
class FleetOutcome:
    """What one bridge's run saw."""

    first_login_windows: int
    """Browser windows the first instance opened with nothing stored (expected: 1)."""
    calls: int
    failed_calls: int
    dead_instances: int
    forced_logins: int
    """Browser windows opened during the fleet run."""
    logins_completed: int
    """Authorization codes the AS exchanged during the fleet run."""
    replays: int
    refreshes: int
    refresh_errors: int


def _browser(run: Path) -> dict[str, str]:
    """A fake ``xdg-open`` in ``run/bin`` playing the user, and the environment naming it."""
    bin_dir = run / "bin"
    bin_dir.mkdir(exist_ok=True)
    opener = bin_dir / "xdg-open"
    opener.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m harness.fake_browser "$1"\n')
    opener.chmod(0o755)
    return {
        "BROWSER": str(opener),
        "PATH": os.pathsep.join([str(bin_dir), os.environ.get("PATH", os.defpath)]),
        "FAKE_BROWSER_LOG": str(run / "browser.log"),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }


def grantkeeper_params(url: str, run: Path) -> StdioServerParameters:
    env = {**_browser(run), "GRANTKEEPER_HOME": str(run / "home"), "GRANTKEEPER_STORE": "file"}
    args = ["-m", "grantkeeper", "proxy", url, "--ping-interval", "0"]
    return StdioServerParameters(command=sys.executable, args=args, env=env, cwd=ROOT)


def mcp_remote_params(url: str, run: Path) -> StdioServerParameters:
    """mcp-remote with its defaults but the callback host, and its own ``HOME``, so
    ``~/.mcp-auth`` is private to the run. The host's environment is not passed on (the
    SDK adds only HOME, PATH and the like, overridden here): no ``DISPLAY``, no
    ``MCP_REMOTE_CONFIG_DIR``."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not on PATH; mcp-remote needs Node.js")
    if not MCP_REMOTE.is_file():
        raise RuntimeError(
            f"{MCP_REMOTE} is missing: run scripts/bootstrap (npm ci in harness/mcp_remote)"
        )
    env = {**_browser(run), "HOME": str(run / "home")}
    args = [str(MCP_REMOTE), url, "--host", "127.0.0.1"]
    return StdioServerParameters(command=node, args=args, env=env, cwd=run)


@contextlib.asynccontextmanager
async def _host(params: StdioServerParameters, errlog: Path) -> AsyncIterator[ClientSession]:
    with errlog.open("a") as err:  # noqa: ASYNC230
        async with (
            stdio_client(params, errlog=err) as (read, write),
            ClientSession(read, write, read_timeout_seconds=READ_TIMEOUT) as session,
        ):
            await session.initialize()
            yield session


def _windows(run: Path) -> int:
    log = run / "browser.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


async def _instances(
    params: StdioServerParameters, run: Path, *, count: int, seconds: float, pace: float
) -> dict[str, int]:
    outcome = {"calls": 0, "failed": 0, "dead": 0}
    deadline = time.monotonic() + seconds

    async def one(index: int) -> None:
        try:
            async with _host(params, run / f"stderr-{index}.log") as host:
                while time.monotonic() < deadline:
                    outcome["calls"] += 1
                    try:
                        result = await host.call_tool("echo", {"text": "fleet"})
                    except MCPError as exc:
                        outcome["failed"] += 1
                        if exc.error.code == CONNECTION_CLOSED:
                            raise  # the bridge went away: the instance is dead
                    else:
                        if result.is_error:
                            outcome["failed"] += 1
                    await asyncio.sleep(pace)  # a host's steady pace, not synchronisation
        except Exception:
            outcome["dead"] += 1

    await asyncio.gather(*(one(i) for i in range(count)))
    return outcome


def run_fleet(params: Params, *, count: int, seconds: float, ttl: int, pace: float) -> FleetOutcome:
    """The scenario on fresh servers for one bridge."""
    with (
        tempfile.TemporaryDirectory(prefix="gk-bench-bridge-") as scratch,
        AuthServer(access_ttl=ttl) as auth,
        McpServer(auth_server=auth) as server,
    ):
        run = Path(scratch)
        (run / "home").mkdir(mode=0o700)
        command = params(server.url, run)

        async def first_login() -> None:
            async with _host(command, run / "stderr-first.log") as host:
                result = await host.call_tool("echo", {"text": "first"})
                if result.is_error:
                    raise RuntimeError(f"the first call failed: {result.content}")

        asyncio.run(first_login())
        first_windows = _windows(run)
        (run / "browser.log").unlink(missing_ok=True)
        auth.reset_stats()
        counts = asyncio.run(_instances(command, run, count=count, seconds=seconds, pace=pace))
        stats: dict[str, Any] = auth.stats()
        return FleetOutcome(
            first_login_windows=first_windows,
            calls=counts["calls"],
            failed_calls=counts["failed"],
            dead_instances=counts["dead"],
            forced_logins=_windows(run),
            logins_completed=int(stats["code_success"]),
            replays=int(stats["replays"]),
            refreshes=int(stats["refresh_success"]),
            refresh_errors=len(stats["refresh_errors"]),
        )


def rows(
    ours: list[FleetOutcome], theirs: list[FleetOutcome] | None, *, count: int, seconds: float
) -> list[list[str]]:
    """The fleet's rows, one column per bridge (``–`` where mcp-remote was not run); each
    cell is the median over the runs, with the range (and the per-run values) when they
    differ, since a bridge's failures come in some runs and not others."""

    def cell(runs: list[FleetOutcome], pick: Callable[[FleetOutcome], int]) -> str:
        values = [pick(run) for run in runs]
        median = statistics.median(values)
        shown = f"{median:g}"
        if min(values) != max(values):
            shown += f" ({min(values)}–{max(values)}; runs: {', '.join(map(str, values))})"
        return shown

    def cells(label: str, pick: Callable[[FleetOutcome], int]) -> list[str]:
        return [label, cell(ours, pick), "–" if theirs is None else cell(theirs, pick)]

    return [
        cells("fleet: browser windows for the first login (nothing stored)", _first),
        cells(f"fleet: calls by {count} instances in {seconds:g} s", lambda o: o.calls),
        cells("fleet: forced browser logins", lambda o: o.forced_logins),
        cells("fleet: logins completed at the AS", lambda o: o.logins_completed),
        cells("fleet: refresh tokens replayed", lambda o: o.replays),
        cells("fleet: failed calls", lambda o: o.failed_calls),
        cells("fleet: dead instances (ended before the end)", lambda o: o.dead_instances),
        cells("fleet: refreshes granted (= rotations)", lambda o: o.refreshes),
        cells("fleet: refreshes refused by the AS", lambda o: o.refresh_errors),
    ]


def _first(outcome: FleetOutcome) -> int:
    return outcome.first_login_windows


def mcp_remote_available() -> str | None:
    """Why mcp-remote cannot run here (no node/npm), or None."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not on PATH" if missing else None
