"""A loopback HTTP proxy that breaks on command: the outages a token endpoint really has.

Put it in front of the test authorization server and let the server announce the proxy as
its issuer, so every client reaches the server through it::

    with FaultProxy() as proxy, AuthServer(issuer=proxy.url) as server:
        proxy.upstream = server.port
        ...                                   # log in: everything passes through
        proxy.set_mode(Mode.REFUSE)           # nothing can connect from now on
        proxy.set_mode(Mode.PASS)             # back

Modes, one at a time, switched from the test at any moment (:meth:`FaultProxy.set_mode`)
or on the arrival of a chosen request (:meth:`FaultProxy.arm`):

- ``PASS``: forward each request to the upstream and relay its answer (502 if the upstream
  cannot be reached, as a gateway answers).
- ``REFUSE``: the listening socket is closed; connecting fails, nothing is sent.
- ``RESET``: connections are accepted and reset at once, before anything is read.
- ``UNAVAILABLE``: answer ``503`` with ``Retry-After: 1`` (a gateway or a provider under load).
- ``SERVER_ERROR``: answer ``500`` with ``{"error": "server_error"}``.
- ``INVALID_REQUEST``: answer ``400`` with ``{"error": "invalid_request", ...}``: a provider
  refusing the request itself. Unlike ``invalid_grant`` it ends no grant and spends no
  token, so it is what a client must ride out with its valid token, backing off.
- ``HANG``: read the request and never answer; the connection is closed, unanswered, when
  the mode changes (or after :data:`MAX_HANG`).

The answering faults (``UNAVAILABLE``, ``SERVER_ERROR``, ``INVALID_REQUEST``, ``HANG``) hit
only requests whose path is in ``paths`` (every path when ``paths`` is ``None``); other
requests pass through.
``REFUSE`` and ``RESET`` act on connections, before any path is known.

No fault cuts an exchange already forwarded: its answer is relayed. A refresh the server
processed but whose answer the proxy dropped would make the client's retry a replay, and
that is a different failure from the outage under test. Switching to ``REFUSE`` or ``RESET``
closes idle keep-alive connections at once, so no client keeps talking through one; a
request caught arriving on one then was never forwarded.

Everything is bounded (connections, header and body sizes, hang and idle times) and on
127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import enum
import http.client
import json
import os
import select
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO

HOST = "127.0.0.1"

MAX_CONNECTIONS = 256
"""Client connections open at once; more are closed at accept. A fleet of 8 processes
needs a few dozen."""

MAX_LINE = 16 * 1024
"""Bytes in a request line or one header line."""

MAX_HEADERS = 100
"""Header lines in one request."""

MAX_BODY = 1024 * 1024
"""Bytes in a request or response body: a token exchange is a few kilobytes."""

IDLE_TIMEOUT = 60.0
"""Seconds a client connection may sit idle between requests before the proxy closes it."""

MAX_HANG = 120.0
"""Seconds a request may hang in ``HANG`` mode when nobody switches the mode back."""

UPSTREAM_TIMEOUT = 30.0
"""Seconds for the upstream to answer one forwarded request."""

SWITCH_TIMEOUT = 10.0
"""Seconds :meth:`FaultProxy.set_mode` waits for the listener to open or close."""

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
    }
)


class Mode(enum.Enum):
    """What the proxy does with the next connection or request."""

    PASS = "pass"
    REFUSE = "refuse"
    RESET = "reset"
    UNAVAILABLE = "unavailable"
    SERVER_ERROR = "server_error"
    INVALID_REQUEST = "invalid_request"
    HANG = "hang"


_CONNECTION_FAULTS = frozenset({Mode.REFUSE, Mode.RESET})

_INVALID_REQUEST = {
    "error": "invalid_request",
    "error_description": "the fault proxy refuses this request (Mode.INVALID_REQUEST)",
}
"""The ``INVALID_REQUEST`` answer: an RFC 6749 §5.2 error that is not about the grant."""


@dataclass(frozen=True)
class Request:
    """One request as the proxy read it."""

    method: str
    path: str
    """The path without the query."""
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), if any."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


def is_refresh(request: Request) -> bool:
    """Whether ``request`` is a refresh token grant (for :meth:`FaultProxy.arm`)."""
    return request.method == "POST" and b"grant_type=refresh_token" in request.body


class ProxyError(RuntimeError):
    """The proxy could not do what the test asked (bind, switch, reach its upstream)."""


class _BadRequest(Exception):
    pass


@dataclass(eq=False)  # hashed by identity: kept in a set
class _Connection:
    sock: socket.socket
    lock: threading.Lock = field(default_factory=threading.Lock)
    busy: bool = False
    closing: bool = False

    def close_if_idle(self) -> None:
        """Close at once when between requests; otherwise after the current answer."""
        with self.lock:
            self.closing = True
            if not self.busy:
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_RDWR)


@dataclass
class _Armed:
    mode: Mode
    when: Callable[[Request], bool]


class FaultProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 whose behaviour the test switches at run time."""

    def __init__(
        self,
        upstream: int | None = None,
        *,
        port: int = 0,
        paths: Iterable[str] | None = None,
    ) -> None:
        """``upstream``: the port on 127.0.0.1 to forward to (settable later, before the
        first request). ``paths``: the paths the answering faults hit (``None``: all)."""
        self.upstream = upstream
        self.paths = frozenset(paths) if paths is not None else None
        self._requested_port = port
        self.port = 0
        self._mode = Mode.PASS
        self._armed: _Armed | None = None
        self._state = threading.Condition()
        self._listener: socket.socket | None = None
        self._listening = False
        self._connections: set[_Connection] = set()
        self._threads: set[threading.Thread] = set()
        self._wake_r, self._wake_w = os.pipe()
        self._closed = False
        self._accept_thread: threading.Thread | None = None
        self._error: ProxyError | None = None
        #: Set when the request :meth:`arm` waits for arrives and the mode switches.
        self.triggered = threading.Event()
        #: What happened to each request, by (path, mode applied): PASS means forwarded.
        self.counts: Counter[tuple[str, Mode]] = Counter()
        #: Connections refused at accept: reset in RESET mode, or over the limit.
        self.resets = 0

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The proxy's origin, ``http://127.0.0.1:PORT``."""
        if not self.port:
            raise ProxyError("the proxy is not started")
        return f"http://{HOST}:{self.port}"

    def start(self) -> FaultProxy:
        """Bind the listener and start accepting."""
        if self._accept_thread is not None:
            raise ProxyError("the proxy is already started")
        self._listener = self._bind(self._requested_port)
        self.port = self._listener.getsockname()[1]
        self._listening = True
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="fault-proxy-accept", daemon=True
        )
        self._accept_thread.start()
        return self

    def close(self) -> None:
        """Stop accepting, close every connection and wait (bounded) for the threads."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            self._state.notify_all()
            connections = list(self._connections)
        self._wake()
        for connection in connections:
            connection.close_if_idle()
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_RDWR)
        if self._accept_thread is not None:
            self._accept_thread.join(SWITCH_TIMEOUT)
        with self._state:
            threads = list(self._threads)
        for thread in threads:
            thread.join(SWITCH_TIMEOUT)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- control ------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        """The mode in force."""
        return self._mode

    def set_mode(self, mode: Mode) -> None:
        """Switch to ``mode`` now. Returns once the listener is closed (``REFUSE``) or open
        again (any other mode), so the next connection attempt sees the new mode."""
        with self._state:
            self._armed = None
            self._switch(mode)
        self._await_listener(mode is not Mode.REFUSE)
        if mode in _CONNECTION_FAULTS:
            self._await_connections_closed()

    def arm(self, mode: Mode, when: Callable[[Request], bool] = is_refresh) -> None:
        """Switch to ``mode`` as the next request matching ``when`` arrives; that request
        is the first to get it. :attr:`triggered` is set then. (``REFUSE`` and ``RESET``
        close the listener or reset connections from that moment; the request itself,
        already read, is dropped unanswered and was never forwarded.)"""
        with self._state:
            self.triggered.clear()
            self._armed = _Armed(mode, when)

    def wait_for(self, path: str, mode: Mode, count: int = 1, timeout: float = 30.0) -> bool:
        """Wait until ``count`` requests for ``path`` got ``mode`` (a hung one counts as it
        arrives); return whether they did within ``timeout``."""
        with self._state:
            return self._state.wait_for(lambda: self.counts[(path, mode)] >= count, timeout)

    def _switch(self, mode: Mode) -> None:
        # Under self._state.
        self._mode = mode
        self._state.notify_all()
        if mode in _CONNECTION_FAULTS:
            for connection in self._connections:
                connection.close_if_idle()
        self._wake()

    def _await_connections_closed(self) -> None:
        # A connection that was answering as the mode switched closes only once its
        # answer is out; a client that reused it meanwhile would see a reset, not the
        # fault under test. So the switch returns once every connection is closed.
        with self._state:
            if not self._state.wait_for(
                lambda: not self._connections or self._closed, SWITCH_TIMEOUT
            ):
                raise ProxyError(
                    f"{len(self._connections)} connection(s) still open "
                    f"{SWITCH_TIMEOUT:g} s after the switch to {self._mode.value}"
                )

    def _await_listener(self, listening: bool) -> None:
        with self._state:
            if not self._state.wait_for(
                lambda: self._listening == listening or self._closed, SWITCH_TIMEOUT
            ):
                raise ProxyError(
                    f"the listener did not {'open' if listening else 'close'} "
                    f"within {SWITCH_TIMEOUT:g} s: {self._error}"
                )

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    # -- accepting ----------------------------------------------------------------------

    @staticmethod
    def _bind(port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            sock.close()
            raise ProxyError(f"cannot bind {HOST}:{port}: {exc}") from exc
        sock.listen(128)
        return sock

    def _reconcile_listener(self) -> None:
        """Open or close the listener to match the mode. Only the accept thread does this,
        so no thread ever waits on a socket another one closed."""
        with self._state:
            want = self._mode is not Mode.REFUSE and not self._closed
            if want == (self._listener is not None):
                return
        if want:
            sock = self._bind(self.port)
        else:
            assert self._listener is not None
            self._listener.close()
            sock = None
        with self._state:
            self._listener = sock
            self._listening = sock is not None
            self._state.notify_all()

    def _accept_loop(self) -> None:
        try:
            while not self._closed:
                try:
                    self._reconcile_listener()
                except ProxyError as exc:  # retried each turn; set_mode reports it
                    self._error = exc
                listener = self._listener
                watched = [self._wake_r] + ([listener] if listener is not None else [])
                ready, _, _ = select.select(watched, [], [], 1.0)
                if self._wake_r in ready:
                    os.read(self._wake_r, 4096)
                if listener is None or listener not in ready:
                    continue
                try:
                    sock, _ = listener.accept()
                except OSError:
                    continue
                self._admit(sock)
        finally:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            with self._state:
                self._listening = False
                self._state.notify_all()

    def _admit(self, sock: socket.socket) -> None:
        with self._state:
            refuse = self._mode is Mode.RESET or len(self._connections) >= MAX_CONNECTIONS
            if refuse:
                self.resets += 1
            else:
                connection = _Connection(sock)
                self._connections.add(connection)
        if refuse:
            _reset(sock)
            return
        thread = threading.Thread(
            target=self._serve, args=(connection,), name="fault-proxy-conn", daemon=True
        )
        with self._state:
            self._threads.add(thread)
        thread.start()

    # -- one client connection ----------------------------------------------------------

    def _serve(self, connection: _Connection) -> None:
        sock = connection.sock
        try:
            sock.settimeout(IDLE_TIMEOUT)
            reader = sock.makefile("rb")
            while True:
                try:
                    request = _read_request(reader)
                except _BadRequest as exc:
                    _answer(sock, 400, "Bad Request", {"error": str(exc)}, keep_alive=False)
                    return
                except OSError:
                    return
                if request is None:
                    return
                with connection.lock:
                    if connection.closing:
                        return  # the mode changed as it arrived: never forwarded
                    connection.busy = True
                keep_alive = self._handle(sock, request)
                with connection.lock:
                    connection.busy = False
                    if connection.closing or not keep_alive:
                        return
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            with self._state:
                self._connections.discard(connection)
                self._threads.discard(threading.current_thread())
                self._state.notify_all()

    def _mode_for(self, request: Request) -> Mode:
        with self._state:
            armed = self._armed
            if armed is not None and armed.when(request):
                self._armed = None
                self._switch(armed.mode)
                self.triggered.set()
            mode = self._mode
            if mode not in _CONNECTION_FAULTS and self.paths is not None:
                if request.path not in self.paths:
                    mode = Mode.PASS
            self.counts[(request.path, mode)] += 1
            self._state.notify_all()
            return mode

    def _handle(self, sock: socket.socket, request: Request) -> bool:
        """Answer one request; return whether the connection may carry another."""
        mode = self._mode_for(request)
        keep_alive = _wants_keep_alive(request)
        if mode in _CONNECTION_FAULTS:
            return False  # read but never forwarded: drop it unanswered
        if mode is Mode.UNAVAILABLE:
            _answer(
                sock,
                503,
                "Service Unavailable",
                {"error": "temporarily_unavailable"},
                keep_alive=keep_alive,
                extra=[("Retry-After", "1")],
            )
            return keep_alive
        if mode is Mode.SERVER_ERROR:
            _answer(sock, 500, "Internal Server Error", {"error": "server_error"}, keep_alive)
            return keep_alive
        if mode is Mode.INVALID_REQUEST:
            _answer(sock, 400, "Bad Request", _INVALID_REQUEST, keep_alive)
            return keep_alive
        if mode is Mode.HANG:
            with self._state:
                self._state.wait_for(lambda: self._mode is not Mode.HANG or self._closed, MAX_HANG)
            return False
        self._forward(sock, request, keep_alive)
        return keep_alive

    def _forward(self, sock: socket.socket, request: Request, keep_alive: bool) -> None:
        if self.upstream is None:
            _answer(sock, 502, "Bad Gateway", {"error": "the proxy has no upstream"}, keep_alive)
            return
        upstream = http.client.HTTPConnection(HOST, self.upstream, timeout=UPSTREAM_TIMEOUT)
        try:
            upstream.putrequest(
                request.method, request.target, skip_host=True, skip_accept_encoding=True
            )
            for name, value in request.headers:
                if name.lower() not in _HOP_BY_HOP:
                    upstream.putheader(name, value)
            upstream.putheader("Content-Length", str(len(request.body)))
            upstream.putheader("Connection", "close")
            upstream.endheaders(request.body)
            response = upstream.getresponse()
            body = response.read(MAX_BODY + 1)
            if len(body) > MAX_BODY:
                raise ProxyError(f"the upstream answered more than {MAX_BODY} bytes")
            headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
            _send(sock, response.status, response.reason, headers, body, keep_alive)
        except (OSError, http.client.HTTPException) as exc:
            _answer(
                sock, 502, "Bad Gateway", {"error": f"upstream: {type(exc).__name__}"}, keep_alive
            )
        finally:
            upstream.close()


# -- HTTP/1.1 framing ----------------------------------------------------------------------


def _read_request(reader: IO[bytes]) -> Request | None:
    """Read one request; ``None`` when the client closed the connection between requests."""
    line = reader.readline(MAX_LINE + 1)
    while line in (b"\r\n", b"\n"):  # tolerated before a request line (RFC 9112 §2.2)
        line = reader.readline(MAX_LINE + 1)
    if not line:
        return None
    if len(line) > MAX_LINE or not line.endswith(b"\n"):
        raise _BadRequest("request line too long")
    parts = line.decode("latin-1").strip().split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _BadRequest("malformed request line")
    method, target, version = parts
    headers: list[tuple[str, str]] = []
    while True:
        raw = reader.readline(MAX_LINE + 1)
        if not raw:
            raise _BadRequest("connection closed inside the headers")
        if raw in (b"\r\n", b"\n"):
            break
        if len(raw) > MAX_LINE or len(headers) >= MAX_HEADERS:
            raise _BadRequest("headers too large")
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest("malformed header line")
        headers.append((name, value.strip()))
    lowered = {name.lower(): value for name, value in headers}
    if "transfer-encoding" in lowered:
        raise _BadRequest("chunked request bodies are not supported")
    try:
        length = int(lowered.get("content-length", "0"))
    except ValueError:
        raise _BadRequest("bad Content-Length") from None
    if length < 0 or length > MAX_BODY:
        raise _BadRequest("body too large")
    body = reader.read(length) if length else b""
    if len(body) != length:
        raise _BadRequest("connection closed inside the body")
    path = target.split("?", 1)[0]
    return Request(method, path, target, version, headers, body)


def _wants_keep_alive(request: Request) -> bool:
    connection = (request.header("connection") or "").lower()
    if request.version == "HTTP/1.0":
        return connection == "keep-alive"
    return connection != "close"


def _send(
    sock: socket.socket,
    status: int,
    reason: str,
    headers: list[tuple[str, str]],
    body: bytes,
    keep_alive: bool,
) -> None:
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append(f"Content-Length: {len(body)}")
    lines.append(f"Connection: {'keep-alive' if keep_alive else 'close'}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    with contextlib.suppress(OSError):
        sock.sendall(head + body)


def _answer(
    sock: socket.socket,
    status: int,
    reason: str,
    payload: dict[str, str],
    keep_alive: bool,
    extra: list[tuple[str, str]] | None = None,
) -> None:
    headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
    _send(sock, status, reason, headers + (extra or []), json.dumps(payload).encode(), keep_alive)


def _reset(sock: socket.socket) -> None:
    """Close with an RST rather than a FIN: linger on, timeout zero."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
