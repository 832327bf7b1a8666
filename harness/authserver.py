"""A real authorization server for tests: oidc-provider 9 on loopback, driven from Python.

The Node side lives in ``harness/oidc`` (``server.mjs``, pinned by ``package-lock.json``).
Install it once with ``npm ci --prefix harness/oidc``.

With a ``state_dir`` the server keeps its keys, clients, grants, tokens and counters there,
and :meth:`AuthServer.restart` stops it and starts it again on the same port and state: an
outage a client must ride out, not a new server that knows no one.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import os
import secrets
import select
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx

from harness import remember_secret

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
SERVER_SCRIPT = OIDC_DIR / "server.mjs"
NODE_MODULES = OIDC_DIR / "node_modules"

START_TIMEOUT = 120.0
"""Seconds to wait for the server's JSON line before giving up."""

STOP_TIMEOUT = 5.0
"""Seconds to wait after SIGTERM before SIGKILL."""

MAX_HOPS = 20
"""Redirects ``approve`` follows before it gives up."""

_STDERR_TAIL_LINES = 60

XAA_IDP_CLIENT = ("xaa-idp-client", "xaa-idp-secret")
"""The application's client at an IdP started with ``cross_app_idp=True``."""
XAA_IDP_REDIRECT = "http://127.0.0.1/xaa-idp-callback"
XAA_APP_CLIENT = ("xaa-app", "xaa-app-secret")
"""The same application's client at an AS started with ``trust_idp=...``."""
WIF_CLIENT = "wif-workload"
"""The public client a workload presents its own JWT as, at an AS started with
``trust_workload=...``."""


class AuthServer:
    """A running oidc-provider on loopback, started from harness/oidc."""

    issuer: str
    port: int

    def __init__(
        self,
        *,
        access_ttl: int = 60,
        token_format: str = "opaque",
        resources: Sequence[str] = (),
        port: int = 0,
        state_dir: Path | None = None,
        omit_expires_in: bool = False,
        issuer: str | None = None,
        cross_app_idp: bool = False,
        trust_idp: str | None = None,
        pushed_requests: str = "offered",
        dpop: str = "off",
        trust_workload: tuple[str, Path] | None = None,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        """``state_dir``: an existing directory for state that survives :meth:`restart`.
        ``omit_expires_in``: token responses carry no ``expires_in`` (the tokens still
        expire at the server after ``access_ttl``). ``issuer``: the issuer URL to announce
        instead of the server's own, for a proxy in front of it (see
        ``harness/fault_proxy.py``); the admin calls here always go to the server itself.
        Cross-app access: ``cross_app_idp`` plays the enterprise IdP (RFC 8693 token
        exchange of an ID token for an ID-JAG, see :meth:`sign_in`); ``trust_idp`` (an
        IdP's issuer) plays the MCP server's AS taking that IdP's ID-JAGs (RFC 7523).
        ``pushed_requests``: ``"offered"`` (oidc-provider's default), ``"required"`` or
        ``"off"``, for pushed authorization requests (RFC 9126). ``dpop``: ``"off"`` (Bearer
        tokens; oidc-provider's own default is on), ``"on"`` or ``"nonce"`` (every proof
        must carry a server nonce), for DPoP (RFC 9449). ``trust_workload``: ``(issuer,
        jwks_file)``: workload identity federation, client :data:`WIF_CLIENT` trades a
        JWT from ``issuer`` signed (RS256) by a key in ``jwks_file``, read at every request
        (stats ``workload_assertions``: each received JWT's ``jti``). ``tls``: ``(chain,
        key, ca)`` PEM files: the server speaks HTTPS with that certificate chain and key
        (a private CA's, e.g. from ``trustme``) and the harness's own calls trust ``ca``."""
        if dpop not in ("off", "on", "nonce"):
            raise ValueError(f"dpop must be off, on or nonce: {dpop!r}")
        if token_format not in ("opaque", "jwt"):
            raise ValueError(f"token_format must be 'opaque' or 'jwt', not {token_format!r}")
        if access_ttl <= 0:
            raise ValueError("access_ttl must be positive")
        if pushed_requests not in ("offered", "required", "off"):
            raise ValueError(
                f"pushed_requests must be offered, required or off: {pushed_requests!r}"
            )
        if state_dir is not None and not Path(state_dir).is_dir():
            raise ValueError(f"state_dir must be an existing directory, not {state_dir}")
        self.access_ttl = access_ttl
        self.token_format = token_format
        self.resources: tuple[str, ...] = tuple(resources)
        self.requested_port = port
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.omit_expires_in = omit_expires_in
        self.issuer_override = issuer
        self.cross_app_idp = cross_app_idp
        self.trust_idp = trust_idp
        self.pushed_requests = pushed_requests
        self.dpop = dpop
        self.trust_workload = trust_workload
        self.tls = tls
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
        self._stderr_thread: threading.Thread | None = None
        self._http: httpx.Client | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> AuthServer:
        """Spawn node and wait (bounded) for the line announcing the issuer."""
        if self._process is not None:
            raise RuntimeError("AuthServer already started")
        if not NODE_MODULES.is_dir():
            raise RuntimeError(
                f"{NODE_MODULES} is missing: run `npm ci --prefix harness/oidc` "
                "(from the repository root) to install oidc-provider"
            )
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not on PATH; the oidc harness needs Node.js 20 or later")

        command = [
            node,
            str(SERVER_SCRIPT),
            "--port",
            str(self.requested_port),
            "--access-ttl",
            str(self.access_ttl),
            "--format",
            self.token_format,
        ]
        for resource in self.resources:
            command += ["--resource-url", resource]
        if self.state_dir is not None:
            command += ["--state-dir", str(self.state_dir)]
        if self.omit_expires_in:
            command.append("--omit-expires-in")
        if self.issuer_override is not None:
            command += ["--issuer", self.issuer_override]
        if self.cross_app_idp:
            command.append("--cross-app-idp")
        if self.trust_idp is not None:
            command += ["--trust-idp", self.trust_idp]
        if self.pushed_requests == "off":
            command.append("--no-par")
        elif self.pushed_requests == "required":
            command.append("--require-par")
        command += ["--dpop", self.dpop]
        if self.trust_workload is not None:
            issuer, jwks = self.trust_workload
            command += ["--trust-workload", issuer, "--workload-jwks", str(jwks)]
        if self.tls is not None:
            command += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]

        self._stderr_tail.clear()
        process = subprocess.Popen(
            command,
            cwd=OIDC_DIR,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "NO_COLOR": "1"},
        )
        self._process = process
        assert process.stderr is not None and process.stdout is not None
        self._stderr_thread = threading.Thread(
            target=self._drain_stderr, args=(process.stderr,), name="oidc-stderr", daemon=True
        )
        self._stderr_thread.start()

        try:
            announcement = self._read_announcement(process, process.stdout)
        except BaseException:
            self.stop()
            raise
        self.issuer = str(announcement["issuer"])
        self.port = int(announcement["port"])
        self._http = httpx.Client(
            base_url=self.origin, timeout=10.0, trust_env=False, verify=self.verify
        )
        return self

    @property
    def origin(self) -> str:
        """Where the server itself listens (the issuer, unless a proxy stands in front)."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What the harness's own clients trust: the private CA when the server has one."""
        return ssl.create_default_context(cafile=self.tls[2]) if self.tls else True

    def restart(self, *, downtime: float = 0.0) -> AuthServer:
        """Stop the server (letting requests in progress finish), stay down ``downtime``
        seconds (the length of the outage under test), and start it again on the same port
        with the same state. Needs a ``state_dir``: without one the new process would know
        no client, grant or token of the old one."""
        if self.state_dir is None:
            raise RuntimeError("restart needs a state_dir; without one every grant is lost")
        if downtime < 0:
            raise ValueError("downtime must not be negative")
        port = self.port
        self.stop()
        threading.Event().wait(downtime)
        self.requested_port = port
        return self.start()

    def _read_announcement(self, process: subprocess.Popen[bytes], stdout: IO[bytes]) -> Any:
        deadline = time.monotonic() + START_TIMEOUT
        buffer = b""
        fd = stdout.fileno()
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(
                    f"oidc server did not start within {START_TIMEOUT:.0f}s\n{self.stderr_tail()}"
                )
            ready, _, _ = select.select([fd], [], [], min(remaining, 0.2))
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    process.wait(timeout=STOP_TIMEOUT)
                    self._join_stderr()
                    raise RuntimeError(
                        f"oidc server exited with code {process.returncode} before it was "
                        f"ready\n{self.stderr_tail()}"
                    )
                buffer += chunk
            elif process.poll() is not None:
                self._join_stderr()
                raise RuntimeError(
                    f"oidc server exited with code {process.returncode} before it was ready\n"
                    f"{self.stderr_tail()}"
                )
        line = buffer.split(b"\n", 1)[0]
        try:
            announcement = json.loads(line)
        except ValueError as exc:
            raise RuntimeError(
                f"oidc server printed {line!r} instead of its JSON line\n{self.stderr_tail()}"
            ) from exc
        if not isinstance(announcement, dict) or "issuer" not in announcement:
            raise RuntimeError(f"oidc server printed unexpected JSON {announcement!r}")
        return announcement

    def _drain_stderr(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self._stderr_tail.append(raw.decode("utf-8", "replace").rstrip("\n"))
        stream.close()

    def _join_stderr(self) -> None:
        if self._stderr_thread is not None:
            self._stderr_thread.join(timeout=STOP_TIMEOUT)

    def stderr_tail(self) -> str:
        """The last lines the server wrote to stderr (its log)."""
        return "\n".join(self._stderr_tail)

    def stop(self) -> None:
        """Terminate the server, killing it if it lingers. Safe to call more than once."""
        if self._http is not None:
            self._http.close()
            self._http = None
        process = self._process
        if process is None:
            return
        self._process = None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
        if process.stdout is not None:
            process.stdout.close()
        self._join_stderr()

    @property
    def running(self) -> bool:
        """Whether the node process is alive."""
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> AuthServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- admin endpoints ------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        if self._http is None:
            raise RuntimeError("AuthServer is not running; call start() first")
        return self._http

    def _admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self._client().request(method, f"/__admin/{path}", json=body)
        if response.status_code != 200:
            raise RuntimeError(
                f"admin {method} {path} answered {response.status_code}: {response.text}"
            )
        return response.json()

    def stats(self) -> dict[str, Any]:
        """Counters: refresh_success, code_success, refresh_errors, code_errors, replays,
        grant_revoked, admin_revoked, registrations; and issued_at, the wall-clock time
        (ms since the epoch) of each token grant."""
        result: dict[str, Any] = self._admin("GET", "stats")
        return result

    def reset_stats(self) -> None:
        """Zero every counter."""
        self._admin("POST", "reset-stats")

    def restart_forgetting(self) -> AuthServer:
        """Stop the server and start it again on the same port knowing nothing: no client,
        grant or token of the old process (an authorization server that lost its state).
        Without a ``state_dir`` it never had any to keep; with one, it is emptied."""
        port = self.port
        self.stop()
        if self.state_dir is not None:
            for entry in self.state_dir.iterdir():
                if entry.is_file() and not entry.is_symlink():
                    entry.unlink()
        self.requested_port = port
        return self.start()

    def set_account(self, account: str) -> None:
        """Make later logins (later ``approve`` calls) sign in as ``account``."""
        self._admin("POST", "account", {"account": account})

    def revoke_all(self) -> None:
        """Revoke every grant at the server, with every token issued under it."""
        self._admin("POST", "revoke-all")

    # -- the browser ----------------------------------------------------------------------

    def approve(self, authorize_url: str, redirect_uri: str | None = None) -> str:
        """Play the browser (see :func:`play_browser`) against this server."""
        self._client()  # fail early if not running
        try:
            return play_browser(authorize_url, redirect_uri, verify=self.verify)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.stderr_tail()}") from None

    def sign_in(self) -> str:
        """Sign the current account in at this IdP (``cross_app_idp``) as the application's
        client: the OIDC code flow with PKCE through :func:`play_browser`. Returns the ID
        token, as the application would hold it after its enterprise login."""
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        query = urlencode(
            {
                "response_type": "code",
                "client_id": XAA_IDP_CLIENT[0],
                "redirect_uri": XAA_IDP_REDIRECT,
                "scope": "openid",
                "state": secrets.token_urlsafe(16),
                "code_challenge": challenge.rstrip(b"=").decode(),
                "code_challenge_method": "S256",
            }
        )
        callback = self.approve(f"{self.issuer}/auth?{query}", XAA_IDP_REDIRECT)
        code = parse_qs(urlsplit(callback).query)["code"][0]
        response = self._client().post(
            "/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": XAA_IDP_REDIRECT,
                "code_verifier": verifier,
            },
            auth=XAA_IDP_CLIENT,
        )
        if response.status_code != 200:
            raise RuntimeError(f"IdP sign-in answered {response.status_code}: {response.text}")
        id_token: str = response.json()["id_token"]
        remember_secret(id_token)
        remember_secret(response.json().get("access_token"))
        return id_token

    # -- the resource server's view -------------------------------------------------------

    def introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662 introspection as the static ``introspector`` client sees it."""
        response = self._client().post(
            "/token/introspection",
            data={"token": token},
            auth=("introspector", "introspector-secret"),
        )
        if response.status_code != 200:
            raise RuntimeError(f"introspection answered {response.status_code}")
        result: dict[str, Any] = response.json()
        return result

    def is_active(self, token: str) -> bool:
        """Whether the server would accept ``token`` right now."""
        return self.introspect(token).get("active") is True


def play_browser(
    authorize_url: str, redirect_uri: str | None = None, *, verify: ssl.SSLContext | bool = True
) -> str:
    """Play the browser: GET authorize_url with a cookie-keeping httpx.Client, follow 302/303
    redirects (including the /interaction/ pages, which auto-approve) until a Location starts
    with redirect_uri; return that full callback URL WITHOUT requesting it. Bounded number of
    hops; raise RuntimeError otherwise. Needs no :class:`AuthServer` object, so a process
    that only knows the authorization URL (a benchmark worker) can use it too.

    The URL of a pushed request (RFC 9126) names no redirect URI: by default the callback is
    the authorization URL's own ``redirect_uri``, else the first redirect that leaves the
    authorization server's origin."""
    if redirect_uri is None:
        redirect_uri = parse_qs(urlsplit(authorize_url).query).get("redirect_uri", [None])[0]
    server = urlsplit(authorize_url)[:2]
    url = authorize_url
    with httpx.Client(
        timeout=10.0, trust_env=False, follow_redirects=False, verify=verify
    ) as browser:
        for _ in range(MAX_HOPS):
            response = browser.get(url)
            if response.status_code not in (301, 302, 303, 307, 308):
                raise RuntimeError(
                    f"authorization stopped at {url} with {response.status_code}: "
                    f"{response.text[:500]}"
                )
            header: str | None = response.headers.get("location")
            if not header:
                raise RuntimeError(f"{response.status_code} from {url} without a Location")
            location = urljoin(url, header)
            leaves = urlsplit(location)[:2] != server
            if location.startswith(redirect_uri) if redirect_uri else leaves:
                for code in parse_qs(urlsplit(location).query).get("code", []):
                    remember_secret(code)
                return location
            url = location
    raise RuntimeError(f"no redirect to {redirect_uri} within {MAX_HOPS} hops (last: {url})")
