"""A scripted token endpoint on a real loopback socket, for faults a mock transport cannot
play: answers that echo what they were sent, and answers that trickle in."""

from __future__ import annotations

import http.server
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Received:
    """One request as the endpoint saw it."""

    headers: dict[str, str]
    form: dict[str, str]


Answer = Callable[[Received, http.server.BaseHTTPRequestHandler], None]
"""Writes the whole HTTP answer to the handler for a received request."""


@contextmanager
def loopback_endpoint(answer: Answer) -> Iterator[str]:
    """Serve ``answer`` on a free loopback port; yield the token endpoint URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length", "0"))
            form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
            received = Received({k.lower(): v for k, v in self.headers.items()}, form)
            try:
                answer(received, self)
            except OSError:
                pass  # the client hung up mid-answer, as a deadline makes it do

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/token"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def send(
    handler: http.server.BaseHTTPRequestHandler,
    status: int,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> None:
    """Write a complete answer."""
    handler.send_response(status)
    for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
    handler.wfile.flush()
