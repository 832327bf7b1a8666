"""The loopback redirect listener of a native-app login (RFC 8252 §7.3).

It binds 127.0.0.1 only (never all interfaces), on an ephemeral port unless one is
configured, and serves exactly one path. The redirect URI names ``127.0.0.1`` unless
``localhost`` is asked for, for providers that register only such redirects. The first
request to that path is the answer: later ones get "already used", so a replayed or
forged redirect cannot swap the code. Other paths get 404 and are not consumed. A
``Host`` other than our own loopback names is refused, which defeats DNS rebinding from a
web page. Requests are never logged: their query strings carry authorization codes.
"""

from __future__ import annotations

import errno
import hmac
import html
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

from .._errors import CallbackTimeout, CallbackUnavailable

DEFAULT_CALLBACK_TIMEOUT = 300.0
"""Seconds to wait for the browser: long enough to sign in with a second factor."""

DEFAULT_PATH = "/callback"

DEFAULT_HOST = "127.0.0.1"
"""The numeric loopback name RFC 8252 §8.3 recommends for the redirect URI."""
CALLBACK_HOSTS = (DEFAULT_HOST, "localhost")
"""The names a redirect URI may give the listener; it binds 127.0.0.1 for either."""
_BIND_ADDRESS = "127.0.0.1"

_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>grantkeeper</title></head>
<body style="font-family: sans-serif; margin: 4em"><h1>{title}</h1><p>{detail}</p></body></html>
"""


class CallbackServer:
    """Wait for one authorization redirect on ``http://<host>:<port><path>``.

    ``host`` is the name the redirect URI gives: ``"127.0.0.1"`` or ``"localhost"``; the
    socket is bound to 127.0.0.1 either way. Use as a context manager: entering binds
    (raising :class:`CallbackUnavailable` if the port is taken); :meth:`wait` returns the
    full callback URL; leaving closes the socket.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        path: str = DEFAULT_PATH,
        expected_state: str | None = None,
        host: str = DEFAULT_HOST,
    ) -> None:
        if not path.startswith("/"):
            raise ValueError("the callback path must start with '/'")
        if host not in CALLBACK_HOSTS:
            raise ValueError(f"the callback host must be one of {', '.join(CALLBACK_HOSTS)}")
        self.path = path
        self.host = host
        self.expected_state = expected_state
        self._requested_port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._result: str | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> CallbackServer:
        owner = self

        class Handler(_Handler):
            callback = owner

        try:
            # Threaded, so a connection that never sends a request cannot hold up the redirect.
            # A "localhost" redirect is served from 127.0.0.1 too, never all interfaces:
            # localhost resolves to 127.0.0.1 first almost everywhere, and browsers map
            # localhost to loopback themselves, so the redirect arrives here; binding ::1 or
            # resolving the name would add nothing but a second socket to keep private.
            self._server = ThreadingHTTPServer((_BIND_ADDRESS, self._requested_port), Handler)
            self._server.daemon_threads = True
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CallbackUnavailable(
                    f"port {self._requested_port} on {_BIND_ADDRESS} is already in use; "
                    "choose another callback port or let grantkeeper pick one"
                ) from None
            raise CallbackUnavailable(
                f"cannot listen on {_BIND_ADDRESS}:{self._requested_port} ({exc.strerror})"
            ) from None
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="grantkeeper callback",
            daemon=True,
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop listening. Safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def port(self) -> int:
        """The port bound (the ephemeral one chosen, when 0 was asked)."""
        if self._server is None:
            raise RuntimeError("the callback server is not listening")
        return int(self._server.server_address[1])

    @property
    def redirect_uri(self) -> str:
        """The ``redirect_uri`` to register and send: numeric loopback, as RFC 8252 §8.3 says,
        unless ``localhost`` was asked for (a provider that registers only that name)."""
        return f"http://{self.host}:{self.port}{self.path}"

    # -- the answer ---------------------------------------------------------------------

    def deliver(self, url: str) -> bool:
        """Accept ``url`` as the callback unless one arrived already; return whether it won.

        The listener calls this for a browser's request; ``--manual`` calls it with a
        pasted URL. Either way the first one wins and the rest are refused.
        """
        with self._lock:
            if self._done.is_set():
                return False
            self._result = url
            self._done.set()
            return True

    def rearm(self, expected_state: str | None) -> None:
        """Wait for the redirect of a new authorization request (a retried login)."""
        with self._lock:
            self._done.clear()
            self._result = None
            self.expected_state = expected_state

    @property
    def used(self) -> bool:
        """Whether a callback has arrived."""
        return self._done.is_set()

    def wait(self, timeout: float | None = DEFAULT_CALLBACK_TIMEOUT) -> str:
        """Block until the callback arrives; return its full URL."""
        if not self._done.wait(timeout):
            raise CallbackTimeout(
                f"no authorization redirect arrived within {timeout:g} s; run login again"
            )
        assert self._result is not None
        return self._result

    def verdict(self, query: str) -> tuple[bool, str]:
        """What to tell the browser about a callback query: (ok, detail). Pure, no secrets.

        The authoritative checks happen in the login itself; this only picks the page.
        """
        params = parse_qs(query, keep_blank_values=True)
        error = params.get("error", [""])[0]
        if error:
            return False, f"The authorization server answered: {error[:100]}."
        state = params.get("state", [""])[0]
        if self.expected_state is not None and not hmac.compare_digest(
            state.encode(), self.expected_state.encode()
        ):
            return False, "This redirect does not belong to the login that is waiting."
        if not params.get("code", [""])[0]:
            return False, "The redirect carries no authorization code."
        return True, "You are logged in. You can close this tab and return to the terminal."


class _Handler(BaseHTTPRequestHandler):
    callback: CallbackServer
    server_version = "grantkeeper"
    sys_version = ""

    def log_message(self, format: str, *args: object) -> None:
        """Never log: request lines carry authorization codes."""

    def _page(self, status: int, title: str, detail: str) -> None:
        body = _PAGE.format(title=html.escape(title), detail=html.escape(detail)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        # The page must not pass the code on to anything it might link to.
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        self.wfile.write(body)

    def _host_ok(self) -> bool:
        # Either loopback name, whichever the redirect URI gives: neither can be a rebound
        # DNS name, which is all this check is for.
        port = self.callback.port
        return self.headers.get("Host", "") in tuple(f"{h}:{port}" for h in CALLBACK_HOSTS)

    def do_GET(self) -> None:
        if not self._host_ok():
            self._page(400, "Bad request", "Unexpected Host header.")
            return
        target = urlsplit(self.path)
        if target.path != self.callback.path:
            self._page(404, "Not found", "This is grantkeeper's login listener.")
            return
        ok, detail = self.callback.verdict(target.query)
        if not self.callback.deliver(f"{self.callback.redirect_uri}?{target.query}"):
            self._page(409, "Already used", "This login already received its redirect.")
            return
        self._page(200 if ok else 400, "Login complete" if ok else "Login failed", detail)

    def _refuse(self) -> None:
        self._page(405, "Method not allowed", "Only GET is served.")

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse
