"""A 2025-era-only MCP server for tests: ``mcp`` 1.x's FastMCP, run in ``.venv-mcp1``.

``mcp`` 1.x and 2.x cannot share an environment, and ``mcp`` 1.x knows nothing of protocol
2026-07-28: no ``server/discover``, a session only after ``initialize``. The suite runs this
file with ``.venv-mcp1/bin/python`` and talks to it from the main environment.

    python harness/mcp1_server.py

It serves streamable HTTP on 127.0.0.1, on a port the OS chose, without auth, with one
tool, ``echo(text)``. Its stdout is a report, one JSON object a line: first
``{"url": ...}`` once it accepts connections (the readiness signal), then one
``{"seen": ...}`` per HTTP request it answered (method, status, the JSON-RPC methods of the
body, the session id and the ``Mcp-*`` headers sent). It exits when its stdin closes or on
SIGTERM.

From the main environment, :class:`Mcp1Server` runs it:

    with Mcp1Server() as server:
        ... server.url ... server.seen() ... server.wait_for(predicate) ...
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv-mcp1" / "bin" / "python"
"""The second environment's interpreter (``scripts/bootstrap`` builds it)."""

TIMEOUT = 60.0
"""Bounds every wait: for the readiness line, for what a test expects, for the exit."""

SESSION_HEADER = "mcp-session-id"


# -- the server, in .venv-mcp1 ------------------------------------------------------------


class _Report:
    """Writes the report lines to stdout, one whole line at a time."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._lock = threading.Lock()

    def write(self, line: dict[str, Any]) -> None:
        with self._lock:
            self._out.write(json.dumps(line) + "\n")
            self._out.flush()


def _rpc_methods(body: bytes) -> list[str]:
    try:
        parsed = json.loads(body) if body.strip() else None
    except ValueError:
        return []
    messages = parsed if isinstance(parsed, list) else [parsed]
    return [m["method"] for m in messages if isinstance(m, dict) and "method" in m]


def _recorded(app: Any, report: _Report) -> Any:
    """``app``, reporting each HTTP request it answers (the body is read first, then
    handed to the app as it came)."""

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        body = b""
        more = scope["method"] == "POST"
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        status = 0

        def record() -> None:
            seen = {
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "rpc": _rpc_methods(body),
                "session_id": headers.get(SESSION_HEADER),
                "mcp_headers": {k: v for k, v in headers.items() if k.startswith("mcp-")},
            }
            report.write({"seen": seen})

        async def recording_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                record()  # when the answer starts: an event stream may stay open for long
            await send(message)

        try:
            await app(scope, replay, recording_send)
        finally:
            if not status:
                record()  # no answer at all

    return recording


def echo(text: str) -> str:
    """Return ``text``."""
    return text


def serve() -> None:
    """Run the server until stdin closes or SIGTERM (``.venv-mcp1`` only)."""
    import uvicorn

    # Imported by name: the main environment's ``mcp`` 2.x has no FastMCP, and mypy reads
    # this file with that one.
    fastmcp = importlib.import_module("mcp.server.fastmcp")
    server = fastmcp.FastMCP("grantkeeper-mcp1-test", host="127.0.0.1")
    server.add_tool(echo)

    report = _Report(sys.stdout)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    app = _recorded(server.streamable_http_app(), report)

    class Announcing(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if not self.should_exit:
                report.write({"url": url})  # listening now: the readiness signal

    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", ws="none", timeout_graceful_shutdown=5
    )
    running = Announcing(config)

    def stop_when_stdin_closes() -> None:
        sys.stdin.buffer.read()  # until EOF: whoever started us is gone or done
        running.should_exit = True

    threading.Thread(target=stop_when_stdin_closes, daemon=True).start()
    asyncio.run(running.serve(sockets=[sock]))  # uvicorn turns SIGTERM into should_exit


# -- the handle, in the main environment --------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Seen:
    """One HTTP request the server answered."""

    method: str
    path: str
    status: int
    rpc: list[str]
    """The JSON-RPC methods of the body (none for a response or a GET)."""
    session_id: str | None
    mcp_headers: dict[str, str]
    """The request's ``Mcp-*`` headers, names lowercase."""


class Mcp1Server:
    """Runs ``harness/mcp1_server.py`` in ``.venv-mcp1`` for as long as the ``with`` lasts.

    The process has a session of its own; on the way out it is asked to stop (SIGTERM),
    then killed if it does not, and always reaped.
    """

    url: str

    def __init__(self, python: Path = PYTHON) -> None:
        self.python = python
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._condition = threading.Condition()
        self._seen: list[Seen] = []
        self._url: str | None = None
        self._ended = False
        #: The server's stderr, kept for failure messages (deleted when closed).
        self._errors: IO[bytes] = tempfile.NamedTemporaryFile(prefix="mcp1-server-", suffix=".err")

    def __enter__(self) -> Mcp1Server:
        if not self.python.exists():
            raise RuntimeError(f"{self.python} is missing: run scripts/bootstrap, which builds it")
        process = subprocess.Popen(
            [str(self.python), str(Path(__file__).resolve())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            text=True,
            cwd=ROOT,
            start_new_session=True,
        )
        self._process = process
        try:
            self._reader = threading.Thread(target=self._read, daemon=True, name="mcp1-report")
            self._reader.start()
            with self._condition:
                ready = self._condition.wait_for(lambda: self._url or self._ended, TIMEOUT)
            if not ready or self._url is None:
                raise RuntimeError(
                    f"the mcp 1.x server did not start within {TIMEOUT} s: {self.stderr()}"
                )
            self.url = self._url
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        try:
            for line in self._process.stdout:
                try:
                    report = json.loads(line)
                except ValueError:
                    continue  # not ours: the report is JSON lines only
                with self._condition:
                    if "url" in report:
                        self._url = report["url"]
                    elif "seen" in report:
                        self._seen.append(Seen(**report["seen"]))
                    self._condition.notify_all()
        finally:
            with self._condition:
                self._ended = True
                self._condition.notify_all()

    def _stop(self) -> None:
        process = self._process
        if process is None:
            return
        try:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()  # the polite way: it exits when stdin closes
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=TIMEOUT)
        finally:
            if self._reader is not None:
                self._reader.join(timeout=TIMEOUT)
            if process.stdout is not None:
                process.stdout.close()
            self._errors.close()
            self._process = None

    def stderr(self) -> str:
        """What the server wrote to stderr so far (its last 4000 characters)."""
        self._errors.flush()
        with open(self._errors.name, encoding="utf-8", errors="replace") as errors:
            return errors.read()[-4000:]

    def seen(self) -> list[Seen]:
        """Every request answered so far, oldest first."""
        with self._condition:
            return list(self._seen)

    def wait_for(
        self, predicate: Callable[[list[Seen]], bool], timeout: float = TIMEOUT
    ) -> list[Seen]:
        """Block until ``predicate(seen)`` holds; raise ``TimeoutError`` (with the server's
        stderr) after ``timeout``."""
        with self._condition:
            if not self._condition.wait_for(lambda: predicate(self._seen), timeout):
                raise TimeoutError(
                    f"the mcp 1.x server never saw what the test waited for: {self.stderr()}"
                )
            return list(self._seen)


if __name__ == "__main__":
    serve()
