"""Separate hosts on one machine: network namespaces joined to a bridge, for fleet tests.

Each host is a network namespace with one veth into a bridge of the root namespace. The
bridge's address (:attr:`HostNetwork.gateway`) is where the hosts reach the test's
services, and only over their veths: PostgreSQL listens there; HTTP services (oidc-provider,
a gating proxy) stay on the root namespace's loopback and are relayed (:class:`TcpRelay`),
because grantkeeper speaks plain HTTP to loopback only. Each worker on a host also runs
in its own UTS (hostname) and pid namespace (``unshare --uts --pid --fork --mount-proc``),
with its own ``GRANTKEEPER_HOME``: the hosts share nothing but the network to the services.
Needs root and iproute2 + util-linux.

Only addresses of the bridge and namespaces made here are used, in a /24 of 10.0.0.0/8
that no interface of the machine has. Everything is removed on :meth:`HostNetwork.close`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import queue
import random
import secrets
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

REPLY_TIMEOUT = 120.0
"""Seconds any reply from an agent may take: a hung host fails the test instead of hanging it."""

REPO = Path(__file__).resolve().parent.parent


def unavailable_reason() -> str | None:
    """Why namespaced hosts cannot run here, or ``None`` when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs the suite as root)"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: scripts/bootstrap installs iproute2 and util-linux"
    return None


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")


def _free_subnet() -> ipaddress.IPv4Network:
    used = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    networks = [
        ipaddress.ip_interface(word).network
        for line in used.splitlines()
        for word in line.split()
        if "/" in word and word[0].isdigit()
    ]
    for _ in range(100):
        candidate = ipaddress.IPv4Network(
            f"10.{random.randint(200, 250)}.{random.randint(0, 255)}.0/24"
        )
        if not any(candidate.overlaps(network) for network in networks):
            return candidate
    raise RuntimeError("no free 10.x.y.0/24 subnet for the test hosts")


class HostNetwork:
    """``hosts`` network namespaces on a bridge; see the module docstring."""

    def __init__(self, hosts: int) -> None:
        self.tag = secrets.token_hex(3)
        self.subnet = _free_subnet()
        addresses = list(self.subnet.hosts())
        self.gateway = str(addresses[0])
        self.addresses = [str(addresses[10 + number]) for number in range(hosts)]
        self.namespaces = [f"gk-{self.tag}-h{number + 1}" for number in range(hosts)]
        self._bridge = f"gk{self.tag}br"
        self._veths = [f"gk{self.tag}v{number + 1}" for number in range(hosts)]
        self._created: list[tuple[str, str]] = []
        self._relays: list[TcpRelay] = []
        self.exposed: list[int] = []

    @property
    def cidr(self) -> str:
        """The hosts' network, for PostgreSQL's pg_hba."""
        return str(self.subnet)

    def start(self) -> HostNetwork:
        try:
            _run("ip", "link", "add", self._bridge, "type", "bridge")
            self._created.append(("link", self._bridge))
            _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self._bridge)
            _run("ip", "link", "set", self._bridge, "up")
            for namespace, veth, address in zip(
                self.namespaces, self._veths, self.addresses, strict=True
            ):
                _run("ip", "netns", "add", namespace)
                self._created.append(("netns", namespace))
                _run("ip", "link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
                self._created.append(("link", veth))
                _run("ip", "link", "set", f"{veth}p", "netns", namespace)
                _run("ip", "link", "set", veth, "master", self._bridge)
                _run("ip", "link", "set", veth, "up")
                inside = ("ip", "netns", "exec", namespace, "ip")
                _run(*inside, "addr", "add", f"{address}/24", "dev", f"{veth}p")
                _run(*inside, "link", "set", f"{veth}p", "up")
                _run(*inside, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def expose(self, port: int) -> None:
        """Make the root namespace's ``127.0.0.1:port`` reachable from every host at its own
        ``127.0.0.1:port`` (agents started after this relay it), through the bridge."""
        self._relays.append(TcpRelay((self.gateway, port), ("127.0.0.1", port)))
        self.exposed.append(port)

    def unexpose_all(self) -> None:
        """Stop relaying the ports :meth:`expose` opened."""
        for relay in self._relays:
            relay.close()
        self._relays.clear()
        self.exposed.clear()

    def close(self) -> None:
        """Remove every namespace and link made here (a namespace takes its veth end along)."""
        self.unexpose_all()
        errors = []
        for kind, name in reversed(self._created):
            command = (
                ["ip", "netns", "del", name] if kind == "netns" else ["ip", "link", "del", name]
            )
            result = subprocess.run(command, capture_output=True, text=True, timeout=30)
            if result.returncode != 0 and "Cannot find" not in result.stderr:
                errors.append(result.stderr.strip())
        self._created.clear()
        if errors:
            raise RuntimeError(f"cleaning up test hosts failed: {errors}")

    def __enter__(self) -> HostNetwork:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def spawn(
        self, host: int, hostname: str, home: Path, *arguments: str, schema: str, dsn: str
    ) -> HostAgent:
        """Start a ``harness.host_agent`` on ``host`` (0-based) as its own host."""
        relays = [f"--relay={self.gateway}:{port}" for port in self.exposed]
        return HostAgent.start(
            ["ip", "netns", "exec", self.namespaces[host]],
            hostname=hostname,
            home=home,
            arguments=[*arguments, "--dsn", dsn, "--schema", schema, *relays],
        )


class HostAgent:
    """A ``harness.host_agent`` process, spoken to in JSON lines over its stdin and stdout."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._held: list[dict[str, Any]] = []
        self._ids = iter(range(1, 1 << 30))
        self._stderr: list[str] = []
        assert process.stdout is not None and process.stderr is not None
        threading.Thread(target=self._read, args=(process.stdout,), daemon=True).start()
        threading.Thread(target=self._drain, args=(process.stderr,), daemon=True).start()

    @classmethod
    def start(
        cls, prefix: Sequence[str], *, hostname: str, home: Path, arguments: Sequence[str]
    ) -> HostAgent:
        """Run the agent under ``prefix`` (``ip netns exec NS`` or nothing) in new UTS and pid
        namespaces, with ``home`` as its ``GRANTKEEPER_HOME``."""
        home.mkdir(parents=True, exist_ok=True)
        command = [
            *prefix,
            "unshare",
            "--uts",
            "--pid",
            "--fork",
            "--mount-proc",
            "--",
            sys.executable,
            "-m",
            "harness.host_agent",
            "--hostname",
            hostname,
            *arguments,
        ]
        environment = {**os.environ, "GRANTKEEPER_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(REPO / "src"), str(REPO), environment.get("PYTHONPATH", "")]
        )
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment,
            cwd=REPO,
        )
        return cls(process)

    def _read(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            try:
                self._lines.put(json.loads(raw))
            except ValueError:
                self._stderr.append(raw.decode("utf-8", "replace"))
        self._lines.put(None)

    def _drain(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self._stderr.append(raw.decode("utf-8", "replace"))
            del self._stderr[:-80]

    def stderr_tail(self) -> str:
        """The agent's last lines of stderr (its logs and tracebacks)."""
        return "".join(self._stderr)

    def send(self, op: str, **fields: Any) -> int:
        """Send a command; return its id, which its reply carries."""
        number = next(self._ids)
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, "id": number, **fields}).encode() + b"\n")
        self.process.stdin.flush()
        return number

    def wait(self, **match: Any) -> dict[str, Any]:
        """The next line whose fields include ``match`` (other lines are kept for later)."""
        for index, line in enumerate(self._held):
            if match.items() <= line.items():
                return self._held.pop(index)
        while True:
            try:
                got = self._lines.get(timeout=REPLY_TIMEOUT)
            except queue.Empty:
                raise RuntimeError(f"no {match} from the agent\n{self.stderr_tail()}") from None
            if got is None:
                self._lines.put(None)  # stays closed for later waits
                raise RuntimeError(f"the agent exited before {match}\n{self.stderr_tail()}")
            if match.items() <= got.items():
                return got
            self._held.append(got)

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send a command and wait for its reply."""
        return self.wait(id=self.send(op, **fields))

    def close(self) -> None:
        """Stop the agent (its pid namespace, and every worker in it, goes with it)."""
        if self.process.poll() is None:
            try:
                self.send("quit")
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> HostAgent:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class GatedProxy:
    """An HTTP proxy in front of a token endpoint that can hold one refresh request.

    It listens on ``host`` (the bridge, so namespaced hosts reach it) and forwards to
    ``target``. After :meth:`hold`, the next refresh request sets :attr:`arrived` and waits
    until :meth:`release`: a provider call slowed for as long as the test needs, with no
    sleep. Later requests pass straight through.
    """

    def __init__(self, host: str, target: str) -> None:
        import http.server

        import httpx

        self.target = target.rstrip("/")
        self.arrived = threading.Event()
        self._armed = False
        self._mutex = threading.Lock()
        self._open = threading.Event()
        self._client = httpx.Client(timeout=REPLY_TIMEOUT, trust_env=False)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if b"grant_type=refresh_token" in body and proxy._take():
                    proxy.arrived.set()
                    proxy._open.wait(REPLY_TIMEOUT)
                headers = {
                    name: value
                    for name, value in self.headers.items()
                    if name.lower() not in ("host", "content-length", "connection")
                }
                answer = proxy._client.post(proxy.target + self.path, content=body, headers=headers)
                self.send_response(answer.status_code)
                for name, value in answer.headers.items():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _take(self) -> bool:
        with self._mutex:
            armed, self._armed = self._armed, False
            return armed

    def hold(self) -> None:
        """Hold the next refresh request at the gate."""
        self._open.clear()
        self.arrived.clear()
        with self._mutex:
            self._armed = True

    def release(self) -> None:
        """Let the held request through (and disarm the gate if nothing came)."""
        with self._mutex:
            self._armed = False
        self._open.set()

    def close(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._client.close()


class TcpRelay:
    """Forward TCP connections from ``listen`` to ``target``, byte for byte, both ways.

    grantkeeper speaks plain HTTP only to loopback, so services the hosts call over HTTP are
    relayed like sidecars: each host's own loopback port leads to the bridge (in the agent,
    see ``harness/host_agent.py``), and the bridge port leads to the root namespace's
    loopback (:meth:`HostNetwork.expose`). Every host then names a service by the same URL.
    """

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self._server = socket.create_server(listen)
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name=f"relay {listen}").start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=REPLY_TIMEOUT)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            pumps = [
                threading.Thread(target=self._pump, args=(source, sink), daemon=True)
                for source, sink in ((client, upstream), (upstream, client))
            ]
            for pump in pumps:
                pump.start()
            threading.Thread(
                target=self._close_after, args=(pumps, client, upstream), daemon=True
            ).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)  # pass the end of the stream on

    @staticmethod
    def _close_after(
        pumps: list[threading.Thread], client: socket.socket, upstream: socket.socket
    ) -> None:
        for pump in pumps:
            pump.join()
        client.close()
        upstream.close()

    def close(self) -> None:
        self._closed.set()
        self._server.close()
