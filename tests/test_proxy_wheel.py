"""The host config lines as the README writes them, from a built wheel, each spawned by
``mcp``'s stdio client like a desktop host: Claude Desktop's ``uvx --from grantkeeper[mcp]
grantkeeper proxy URL``, and ``grantkeeper proxy URL`` from ``grantkeeper[mcp]`` installed
with pip in a clean virtualenv (a pipx or hand-made install)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterator
from contextlib import contextmanager
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
"""Seconds for one pip or uv install from PyPI, and for a whole test that makes one."""
HOST_TIMEOUT = 300
"""Seconds the host waits for each answer: uvx resolves and downloads grantkeeper[mcp]'s
dependencies from PyPI before the proxy can answer ``initialize``."""
NETWORK_VARIABLES = (
    "SSL_CERT_FILE", "SSL_CERT_DIR", "ALL_PROXY", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
    "all_proxy", "http_proxy", "https_proxy", "no_proxy",
)  # fmt: skip
"""What uv needs to reach PyPI through a proxy or a private CA: mcp's stdio client passes on
only HOME, PATH and a few more, as a desktop host would."""


def _run(*args: str | Path, cwd: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GRANTKEEPER_STORE")}
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=PIP_TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build grantkeeper's wheel once for the module, from a copy of the sources, so no build
    artefact lands in the checkout."""
    tmp_path = tmp_path_factory.mktemp("wheel")
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
    [built] = dist.glob("grantkeeper-*.whl")
    return built


@contextmanager
def _logged_in_server(home: Path) -> Iterator[str]:
    """Start the real authorization and MCP servers, log in into a file store in ``home``,
    and yield the MCP server's URL."""
    with AuthServer(access_ttl=60) as auth, McpServer(auth_server=auth) as server:
        login(auth, server.url, FileStore(home))
        yield server.url


async def _host(params: StdioServerParameters, errlog: Path) -> tuple[set[str], str]:
    """Initialise, list the tools and call ``echo`` as a desktop host does; return the tool
    names and echo's answer."""
    with errlog.open("w") as err:  # noqa: ASYNC230
        async with (
            stdio_client(params, errlog=err) as (read, write),
            ClientSession(read, write, read_timeout_seconds=HOST_TIMEOUT) as session,
        ):
            await session.initialize()
            tools = await session.list_tools()
            result = await session.call_tool("echo", {"text": "from the wheel"})
    assert not result.is_error, result
    content = result.content[0]
    assert isinstance(content, types.TextContent)
    return {tool.name for tool in tools.tools}, content.text


def _serve(params: StdioServerParameters, errlog: Path) -> tuple[set[str], str]:
    """Run :func:`_host`; on failure, show what the proxy (and uvx) wrote on stderr."""
    try:
        return asyncio.run(_host(params, errlog))
    except BaseException:
        print(f"stderr of {params.command}:\n{errlog.read_text()[-4000:]}")
        raise


@pytest.mark.timeout(PIP_TIMEOUT)
def test_the_wheel_with_the_mcp_extra_serves_a_desktop_host(wheel: Path, tmp_path: Path) -> None:
    """The installed-command line (``"command": "grantkeeper"``): pip's resolver, the console
    script, and a proxy that imports grantkeeper from the venv, not from this checkout."""
    clean = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(clean)
    pip: list[str | Path] = [clean / "bin" / "python", "-m", "pip", "install", "-q"]
    _run(*pip, "-c", ROOT / "constraints.txt", f"{wheel}[mcp]")
    home = tmp_path / "home"
    with _logged_in_server(home) as url:
        params = StdioServerParameters(
            command=str(clean / "bin" / "grantkeeper"),
            args=["proxy", url],
            env={"GRANTKEEPER_HOME": str(home), "GRANTKEEPER_STORE": "file"},
        )
        names, answer = _serve(params, tmp_path / "proxy.err")
    assert "echo" in names and answer == "from the wheel"
    # The proxy ran from the venv, not from this checkout.
    assert str(ROOT) not in _run(clean / "bin" / "python", "-c",
                                 "import grantkeeper; print(grantkeeper.__file__)")  # fmt: skip


@pytest.mark.timeout(PIP_TIMEOUT)
def test_uvx_runs_the_proxy_as_claude_desktops_config_line_does(
    wheel: Path, tmp_path: Path
) -> None:
    """Claude Desktop's line, word for word but for the wheel's path: ``uvx --from
    grantkeeper[mcp] grantkeeper proxy URL``. uv's settings come from the environment, so the
    arguments stay the line's: the pinned versions (UV_CONSTRAINT), this interpreter rather
    than a downloaded one, and a cache, tool directory and no config files of the user's."""
    uvx = Path(sys.executable).parent / "uvx"
    assert uvx.exists(), "uv is a dev dependency: pip install -c constraints.txt uv"
    home = tmp_path / "home"
    env = {
        "GRANTKEEPER_HOME": str(home),
        "GRANTKEEPER_STORE": "file",
        "UV_CONSTRAINT": str(ROOT / "constraints.txt"),
        "UV_PYTHON": sys.executable,
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
        "UV_TOOL_DIR": str(tmp_path / "uv-tools"),
        "UV_NO_CONFIG": "1",
        "UV_NO_PROGRESS": "1",
    } | {name: os.environ[name] for name in NETWORK_VARIABLES if name in os.environ}
    with _logged_in_server(home) as url:
        params = StdioServerParameters(
            command=str(uvx),
            args=["--from", f"{wheel}[mcp]", "grantkeeper", "proxy", url],
            env=env,
            cwd=tmp_path,  # not the checkout, whose pyproject.toml and src/ uv must not see
        )
        names, answer = _serve(params, tmp_path / "uvx.err")
    assert "echo" in names and answer == "from the wheel"
