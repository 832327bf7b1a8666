"""The host config line as the README writes it, from a built wheel: ``grantkeeper[mcp]``
installed in a clean virtualenv (what ``uvx --from 'grantkeeper[mcp]'`` does), its
``grantkeeper proxy`` spawned by ``mcp``'s stdio client like a desktop host would."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import venv
from pathlib import Path

import mcp_types as types
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from grantkeeper import FileStore
from harness.authserver import AuthServer
from harness.mcp_demo import login
from harness.mcp_server import McpServer
from tests.helpers import ROOT

pytestmark = pytest.mark.realserver

PIP_TIMEOUT = 600


def _run(*args: str | Path, cwd: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GRANTKEEPER_STORE")}
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=PIP_TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done.stdout


@pytest.mark.timeout(PIP_TIMEOUT)
def test_the_wheel_with_the_mcp_extra_serves_a_desktop_host(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__"))
    builder = tmp_path / "build-venv"
    venv.EnvBuilder(with_pip=True).create(builder)
    dist = tmp_path / "dist"
    _run(builder / "bin" / "python", "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, source)
    [wheel] = dist.glob("grantkeeper-*.whl")
    clean = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(clean)
    pip: list[str | Path] = [clean / "bin" / "python", "-m", "pip", "install", "-q"]
    _run(*pip, "-c", ROOT / "constraints.txt", f"{wheel}[mcp]")
    command = clean / "bin" / "grantkeeper"
    home = tmp_path / "home"

    async def host(url: str) -> str:
        params = StdioServerParameters(
            command=str(command),
            args=["proxy", url],
            env={"GRANTKEEPER_HOME": str(home), "GRANTKEEPER_STORE": "file"},
        )
        with (tmp_path / "proxy.err").open("w") as errlog:  # noqa: ASYNC230
            async with (
                stdio_client(params, errlog=errlog) as (read, write),
                ClientSession(read, write, read_timeout_seconds=60) as session,
            ):
                await session.initialize()
                result = await session.call_tool("echo", {"text": "from the wheel"})
        content = result.content[0]
        assert isinstance(content, types.TextContent)
        return content.text

    with AuthServer(access_ttl=60) as auth, McpServer(auth_server=auth) as server:
        login(auth, server.url, FileStore(home))
        assert asyncio.run(host(server.url)) == "from the wheel"
    # The proxy ran from the venv, not from this checkout.
    assert str(ROOT) not in _run(clean / "bin" / "python", "-c",
                                 "import grantkeeper; print(grantkeeper.__file__)")  # fmt: skip
