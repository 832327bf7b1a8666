"""P5: cold start of ``grantkeeper token`` and ``grantkeeper headers`` on a fresh token,
against importing the SDK.

A shell script or an editor plugin runs ``grantkeeper token`` per request, and a host such as
Claude Code runs ``grantkeeper headers`` each time it connects; the cost is the interpreter
start plus what the command imports. The yardstick is the cheapest thing an SDK user pays for
OAuth: ``python -c "import mcp.client.auth"``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks._measure import Spread, ratio
from benchmarks._report import Section
from grantkeeper import CredentialKey, FileStore
from grantkeeper.testing import sample_record

SERVER = "https://mcp.example.com/mcp"
GRANTKEEPER = Path(sys.executable).with_name("grantkeeper")


def _wall(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def run(*, repeats: int = 5, runs: int = 10) -> Section:
    section = Section(
        "P5",
        "cold start of `grantkeeper token` and `grantkeeper headers` on a fresh token",
        "`grantkeeper token` and `grantkeeper headers` < `python -c 'import mcp.client.auth'` "
        "(ratio < 1)",
        ["command", "wall time", "ratio to the SDK import"],
    )
    with tempfile.TemporaryDirectory(prefix="gk-bench-") as home:
        now = datetime.now(UTC)
        record = sample_record(
            resource=SERVER, expires_at=now + timedelta(hours=10), obtained_at=now
        )
        FileStore(home).write(CredentialKey.for_server(SERVER), record, expected_version=None)
        env = {**os.environ, "GRANTKEEPER_HOME": home, "GRANTKEEPER_STORE": "file"}
        commands = {
            "grantkeeper token URL": [str(GRANTKEEPER), "token", SERVER],
            "grantkeeper headers URL": [str(GRANTKEEPER), "headers", SERVER],
            'python -c "import mcp.client.auth"': [sys.executable, "-c", "import mcp.client.auth"],
            'python -c "pass" (interpreter alone)': [sys.executable, "-c", "pass"],
        }
        for command in commands.values():  # warm the page cache, not the measurement
            _wall(command, env)
        spreads = {
            name: Spread.of(
                [sum(_wall(command, env) for _ in range(runs)) / runs for _ in range(repeats)]
            )
            for name, command in commands.items()
        }
    sdk = spreads['python -c "import mcp.client.auth"']
    for name, spread in spreads.items():
        section.rows.append([f"`{name}`", spread.fmt(" ms", 1e3, 0), ratio(spread, sdk)])
    section.met = all(
        spreads[command].median < sdk.median
        for command in ("grantkeeper token URL", "grantkeeper headers URL")
    )
    section.notes.append(
        f"Median (min–max) over {repeats} repeats of the mean of {runs} sequential runs."
    )
    return section


def smoke() -> Section:
    return run(repeats=1, runs=1)
