"""The real ``mcp`` server of ``harness/mcp_server.py`` in a process of its own.

In the test suite the server runs on a thread of the test process; in a benchmark that
would make the server and the clients being measured share one interpreter lock, and the
server's work would count against whichever client is running.

    python -m benchmarks._server_process ISSUER   # prints the MCP URL; stops at end of stdin
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any


@contextlib.contextmanager
def mcp_server_process(issuer: str) -> Iterator[str]:
    """Start the server for the authorization server at ``issuer``; yield its MCP URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks._server_process", issuer],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url:
            raise RuntimeError("the MCP server process did not start")
        yield url
    finally:
        if process.stdin is not None:
            process.stdin.close()  # the child's cue to stop
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _serve(issuer: str) -> None:
    from harness.mcp_server import McpServer

    # McpServer reads only the issuer of its authorization server.
    auth: Any = SimpleNamespace(issuer=issuer)
    # The SDK logs its start and every request (and every introspection) at INFO to the
    # terminal; in a benchmark that is work no client asked for, and in the demo it is noise.
    logging.disable(logging.INFO)
    with McpServer(auth_server=auth) as server:
        print(server.url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    _serve(sys.argv[1])
