"""A forwarding HTTP proxy on loopback, as a company runs one, that records what passes.

Clients reach it through ``HTTP_PROXY`` / ``HTTPS_PROXY``: an ``http://`` URL arrives as an
absolute-form request (``GET http://host:port/path HTTP/1.1``), which is forwarded and its
answer relayed; an ``https://`` one as ``CONNECT host:port``, answered ``200`` and then
tunnelled byte for byte (a tunnel off loopback is refused, 403, and still listed).
:attr:`ForwardProxy.seen` lists each, in order, as
``(method, target)``: the URL for a forwarded request, ``host:port`` for a tunnel, so a test
can count the requests of each phase. :attr:`ForwardProxy.authorizations` keeps the
``Authorization`` header of every forwarded request (``None`` when absent), so a test can
tell that nothing was added from ``.netrc``.

Each forwarded request gets a connection of its own upstream, with ``Connection: close``
both ways: the client opens a new connection for its next request, and an event stream
(MCP's SSE) is relayed for as long as it lasts. Only loopback targets are served (anything
else answers 403); connections, header sizes and idle times are bounded.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from types import TracebackType
from urllib.parse import urlsplit

HOST = "127.0.0.1"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_CONNECTIONS = 256
"""Sockets open at once, client and upstream ones together."""
MAX_HEAD = 64 * 1024
"""Bytes in a request's or response's head."""
IDLE_TIMEOUT = 60.0
"""Seconds a relayed connection may carry nothing before the proxy closes it."""


class ForwardProxy:
    """``with ForwardProxy() as proxy:`` then ``HTTP_PROXY=proxy.url``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.authorizations: list[str | None] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._open: set[socket.socket] = set()
        self._stopping = threading.Event()
        self.url = ""

    def __enter__(self) -> ForwardProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, 0))
        listener.listen(64)
        self._listener = listener
        self.url = f"http://{HOST}:{listener.getsockname()[1]}"
        accepting = threading.Thread(target=self._accept, name="forward-proxy", daemon=True)
        accepting.start()
        self._threads.append(accepting)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            # Client and upstream sockets alike: a thread waiting on either wakes at once.
            for sock in list(self._open):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=10.0)

    def targets(self, method: str | None = None) -> list[str]:
        """The targets seen, of ``method`` only if given."""
        with self._lock:
            return [target for m, target in self.seen if method is None or m == method]

    def paths(self) -> list[str]:
        """``METHOD /path`` of each forwarded request (tunnels left out)."""
        with self._lock:
            return [f"{m} {urlsplit(t).path}" for m, t in self.seen if m != "CONNECT"]

    # -- serving ---------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if len(self._open) >= MAX_CONNECTIONS:
                    client.close()
                    continue
                self._open.add(client)
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            client.settimeout(IDLE_TIMEOUT)
            head, rest = _read_head(client)
            if head is None:
                return
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ", 2)
            headers = [line for line in lines[1:] if line]
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                with self._lock:
                    self.seen.append(("CONNECT", target))  # refused ones too
                if host.strip("[]") not in LOOPBACK:
                    client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                    return
                upstream = self._connect(host.strip("[]"), int(port))
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if rest:
                    upstream.sendall(rest)
                self._pipe(client, upstream)
                return
            url = urlsplit(target)
            if url.scheme != "http" or url.hostname not in LOOPBACK:
                client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            authorization = next(
                (
                    h.split(":", 1)[1].strip()
                    for h in headers
                    if h.lower().startswith("authorization:")
                ),
                None,
            )
            with self._lock:
                self.seen.append((method, target))
                self.authorizations.append(authorization)
            kept = [
                h
                for h in headers
                if h.split(":", 1)[0].strip().lower()
                not in ("connection", "proxy-connection", "proxy-authorization", "keep-alive")
            ]
            origin_form = url.path or "/"
            if url.query:
                origin_form += f"?{url.query}"
            upstream_head = "\r\n".join(
                [f"{method} {origin_form} {version}", *kept, "Connection: close", "", ""]
            ).encode("latin-1")
            upstream = self._connect(url.hostname, url.port or 80)
            upstream.sendall(upstream_head + rest)
            self._relay_answer(client, upstream)
        except (OSError, ValueError):
            return
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
            with self._lock:
                self._open.discard(client)
                if upstream is not None:
                    self._open.discard(upstream)

    def _connect(self, host: str, port: int) -> socket.socket:
        upstream = socket.create_connection((host, port), timeout=10.0)
        with self._lock:
            self._open.add(upstream)
        return upstream

    def _relay_answer(self, client: socket.socket, upstream: socket.socket) -> None:
        """Relay the upstream's answer with ``Connection: close`` in its head, then the rest
        of the exchange (a request body still coming, an event stream) until either side
        closes."""
        upstream.settimeout(IDLE_TIMEOUT)
        # The request body may still be arriving while the answer's head is awaited.
        head, rest = _read_head(upstream, also=client)
        if head is None:
            return
        lines = [
            line
            for line in head.decode("latin-1").split("\r\n")
            if line and line.split(":", 1)[0].strip().lower() not in ("connection", "keep-alive")
        ]
        client.sendall("\r\n".join([*lines, "Connection: close", "", ""]).encode("latin-1") + rest)
        self._pipe(client, upstream)

    def _pipe(self, one: socket.socket, other: socket.socket) -> None:
        peers = {one: other, other: one}
        while not self._stopping.is_set():
            readable, _, _ = select.select(list(peers), [], [], IDLE_TIMEOUT)
            if not readable:
                return
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                peers[sock].sendall(data)


def _read_head(
    sock: socket.socket, also: socket.socket | None = None
) -> tuple[bytes | None, bytes]:
    """Read up to the blank line ending a head: ``(head, bytes after it)``, or ``None`` when
    the peer closed first. Bytes arriving from ``also`` meanwhile are passed on to ``sock``."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > MAX_HEAD:
            return None, b""
        sources = [sock] if also is None else [sock, also]
        readable, _, _ = select.select(sources, [], [], IDLE_TIMEOUT)
        if not readable:
            return None, b""
        if also is not None and also in readable:
            data = also.recv(65536)
            if data:
                sock.sendall(data)
            else:
                also = None  # the client is done sending
            if sock not in readable:
                continue
        data = sock.recv(65536)
        if not data:
            return None, b""
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return head, rest
