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
that no interface address, route or nameserver of the machine overlaps. Everything is
removed on :meth:`HostNetwork.close`; what a killed run left behind (its names are
registered under :data:`RUN_DIR` before they are made) is removed by the next run's
:meth:`HostNetwork.start`, once the run that made it is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import queue
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from harness.children import KILL_TIMEOUT, children_of, kill_process, process_start, wait_gone

REPLY_TIMEOUT = 120.0
"""Seconds any reply from an agent may take: a hung host fails the test instead of hanging it."""

REPO = Path(__file__).resolve().parent.parent

QUIT_TIMEOUT = 30.0
"""Seconds an agent may take to quit when asked before it is killed: a worker finishing its
call, not a hung host."""

SUBNET_ATTEMPTS = 200
"""Random /24s of 10.200-250.x tried before giving up: plenty unless the machine's routes
claim that whole range."""

RUN_DIR = Path("/run/grantkeeper-tests")
"""Where each :class:`HostNetwork` registers its names and its owner before making them, so
that a later run can remove what a killed run left (``/run`` is gone at reboot, as they are)."""


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


def choose_subnet(
    *,
    addresses: Sequence[ipaddress.IPv4Network],
    routes: Sequence[ipaddress.IPv4Network],
    nameservers: Sequence[ipaddress.IPv4Address],
    candidates: Iterable[ipaddress.IPv4Network],
) -> ipaddress.IPv4Network:
    """The first of ``candidates`` that overlaps no interface network, route or nameserver.

    A bridge on a routed network would take that network's traffic from the machine (a
    nameserver inside it would stop answering); one on an interface's network would clash
    with it. Pure, so the choice is tested without touching the machine.
    """
    taken = [
        *addresses,
        *routes,
        *(ipaddress.IPv4Network(server) for server in nameservers),
    ]
    tried = 0
    for candidate in candidates:
        tried += 1
        if not any(candidate.overlaps(network) for network in taken):
            return candidate
    raise RuntimeError(
        f"no free 10.x.y.0/24 subnet for the test hosts after {tried} tries: each overlapped "
        f"an interface network ({len(addresses)}), a route ({len(routes)}) or a nameserver "
        f"({', '.join(map(str, nameservers)) or 'none'}); see `ip -4 route show table all`"
    )


def _random_subnets(count: int) -> Iterator[ipaddress.IPv4Network]:
    for _ in range(count):
        yield ipaddress.IPv4Network(f"10.{random.randint(200, 250)}.{random.randint(0, 255)}.0/24")


def _interface_networks() -> list[ipaddress.IPv4Network]:
    used = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return [
        ipaddress.IPv4Interface(word).network
        for line in used.splitlines()
        for word in line.split()
        if "/" in word and word[0].isdigit()
    ]


def _routed_networks() -> list[ipaddress.IPv4Network]:
    listed = subprocess.run(
        ["ip", "-j", "-4", "route", "show", "table", "all"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    networks = []
    for route in json.loads(listed or "[]"):
        destination = route.get("dst", "default")
        if destination == "default":
            continue  # the fallback for every address claims none of them
        network = ipaddress.ip_network(destination, strict=False)
        if isinstance(network, ipaddress.IPv4Network) and network.prefixlen > 0:
            networks.append(network)
    return networks


def _nameservers(path: Path = Path("/etc/resolv.conf")) -> list[ipaddress.IPv4Address]:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    servers = []
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            with contextlib.suppress(ValueError):  # IPv6 and scoped addresses cannot clash
                servers.append(ipaddress.IPv4Address(words[1]))
    return servers


def _free_subnet() -> ipaddress.IPv4Network:
    return choose_subnet(
        addresses=_interface_networks(),
        routes=_routed_networks(),
        nameservers=_nameservers(),
        candidates=_random_subnets(SUBNET_ATTEMPTS),
    )


# -- what a killed run left behind -----------------------------------------------------------


def _boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
        return handle.read().strip()


def _owner() -> dict[str, Any]:
    """This process, as a registry entry names it: the pid alone could be reused."""
    return {
        "pid": os.getpid(),
        "start": process_start(os.getpid()),
        "boot": _boot_id(),
        "pid_namespace": os.stat("/proc/self/ns/pid").st_ino,
    }


def _owner_gone(entry: dict[str, Any]) -> bool:
    if entry.get("boot") != _boot_id():
        return True  # the machine rebooted since: its processes are all gone
    if entry.get("pid_namespace") != os.stat("/proc/self/ns/pid").st_ino:
        return False  # its pid means another process here: no telling, so leave it be
    return process_start(int(entry["pid"])) != entry.get("start")


@contextlib.contextmanager
def _registry_lock(run_dir: Path) -> Iterator[None]:
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(run_dir / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # two runs starting at once sweep one at a time
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ours(kind: str, name: str) -> bool:
    """Whether a registered name has the shape :class:`HostNetwork` gives its names (a
    damaged entry must not remove anything else)."""
    if kind == "netns":
        return name.startswith("gk-") and "/" not in name
    return name.startswith("gk") and len(name) <= 15 and name.isalnum()


def _remove(kind: str, name: str) -> str | None:
    """Remove one namespace or link; the error, unless it was already gone."""
    command = ["ip", "netns", "del", name] if kind == "netns" else ["ip", "link", "del", name]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if result.returncode != 0 and "Cannot find" not in result.stderr:
        return result.stderr.strip()
    return None


def _kill_inside(namespace: str) -> None:
    """Kill what still runs in a stale namespace: a worker of the killed run, holding its
    PostgreSQL sessions and the namespace itself."""
    listed = subprocess.run(
        ["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=30
    ).stdout
    for word in listed.split():
        start = process_start(int(word))
        if start is not None:
            kill_process(int(word), start)
            wait_gone(int(word), start, KILL_TIMEOUT)


def sweep_stale(run_dir: Path = RUN_DIR) -> list[str]:
    """Remove the namespaces and links registered by runs whose process is gone; return
    their names. Only registered names go: whatever else is named ``gk*`` may be a live run
    of an older harness."""
    removed: list[str] = []
    with _registry_lock(run_dir):
        for path in sorted(run_dir.glob("*.json")):
            try:
                entry = json.loads(path.read_text(encoding="utf-8"))
                gone = isinstance(entry, dict) and _owner_gone(entry)
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not a registry entry of ours
            if not gone:
                continue
            errors = []
            for kind, names in (
                ("netns", entry.get("namespaces")),
                ("link", entry.get("links")),
            ):
                for name in names if isinstance(names, list) else []:
                    if not isinstance(name, str) or not _ours(kind, name):
                        continue
                    if kind == "netns":
                        _kill_inside(name)
                    error = _remove(kind, name)
                    if error is None:
                        removed.append(name)
                    else:
                        errors.append(error)
            if not errors:  # else the next run tries again
                path.unlink(missing_ok=True)
    return removed


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
        self._registration = RUN_DIR / f"{self.tag}.json"

    @property
    def cidr(self) -> str:
        """The hosts' network, for PostgreSQL's pg_hba."""
        return str(self.subnet)

    def start(self) -> HostNetwork:
        sweep_stale()
        try:
            self._register()
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

    def _register(self) -> None:
        """Name this network's namespaces and links, and this process as their owner, before
        any is made: should this run be killed, the next removes them (:func:`sweep_stale`)."""
        entry = {
            **_owner(),
            "namespaces": self.namespaces,
            "links": [self._bridge, *self._veths],
        }
        with _registry_lock(RUN_DIR):
            partial = self._registration.with_suffix(".partial")
            partial.write_text(json.dumps(entry), encoding="utf-8")
            partial.replace(self._registration)  # a sweep never reads half an entry

    def expose(self, port: int) -> None:
        """Make the root namespace's ``127.0.0.1:port`` reachable from every host at its own
        ``127.0.0.1:port`` (agents started after this relay it), through the bridge."""
        self._relays.append(TcpRelay((self.gateway, port), ("127.0.0.1", port)))
        self.exposed.append(port)

    def cut(self, host: int) -> None:
        """Cut ``host`` (0-based) off the bridge: from now on its packets go nowhere, and
        nothing tells either end (no reset, no unreachable): a network that vanished."""
        _run("ip", "link", "set", self._veths[host], "down")

    def restore(self, host: int) -> None:
        """Join ``host`` to the bridge again after :meth:`cut`."""
        _run("ip", "link", "set", self._veths[host], "up")

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
            error = _remove(kind, name)
            if error is not None:
                errors.append(error)
        self._created.clear()
        if errors:  # the registration stays: a later run's sweep tries again
            raise RuntimeError(f"cleaning up test hosts failed: {errors}")
        self._registration.unlink(missing_ok=True)

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
            # Without this, killing unshare leaves the agent it forked (and the agent's pid
            # namespace, netns and PostgreSQL sessions) running.
            "--kill-child",
            "--mount-proc",
            "--",
            sys.executable,
            "-m",
            "harness.host_agent",
            "--hostname",
            hostname,
            # The agent refuses to set a hostname in this UTS namespace: should unshare not
            # have given it its own, it would rename the machine.
            "--outer-uts",
            os.readlink("/proc/self/ns/uts"),
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
            # Its own session: a signal to the test run's process group does not reach it
            # half way, and close() ends it alone (``ip netns exec`` execs, so this is unshare).
            start_new_session=True,
        )
        return cls(process)

    # Each reader closes its own stream at its end: closing it from another thread while
    # a readline waits there blocks that thread, for good if the agent never exits.

    def _read(self, stream: IO[bytes]) -> None:
        with stream:
            for raw in iter(stream.readline, b""):
                try:
                    self._lines.put(json.loads(raw))
                except ValueError:
                    self._stderr.append(raw.decode("utf-8", "replace"))
        self._lines.put(None)

    def _drain(self, stream: IO[bytes]) -> None:
        with stream:
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

    def agent(self) -> tuple[int, int] | None:
        """The agent process unshare forked, as (pid, start time), while unshare runs."""
        if self.process.poll() is not None:
            return None
        for pid in children_of(self.process.pid):
            start = process_start(pid)
            if start is not None:
                return pid, start
        return None

    def close(self, grace: float = QUIT_TIMEOUT) -> None:
        """Stop the agent (its pid namespace, and every worker in it, goes with it): ask it to
        quit, and after ``grace`` seconds kill unshare, then the agent if it outlived it."""
        agent = self.agent()  # now, while it is still unshare's child and can be told apart
        try:
            if self.process.poll() is None:
                try:
                    self.send("quit")
                    self.process.wait(timeout=grace)
                except (OSError, ValueError, subprocess.TimeoutExpired):
                    # Signal unshare only: --kill-child takes the agent along.
                    self.process.send_signal(signal.SIGCONT)
                    self.process.kill()
                    self.process.wait(timeout=KILL_TIMEOUT)
            # The pid namespace's processes are gone once its init, the agent, is.
            if agent is not None and not wait_gone(*agent, KILL_TIMEOUT):
                kill_process(*agent)  # it outlived unshare: --kill-child did not reach it
                if not wait_gone(*agent, KILL_TIMEOUT):
                    raise RuntimeError(f"the host agent {agent[0]} survived SIGKILL")
        finally:
            if self.process.stdin is not None:
                with contextlib.suppress(OSError):  # a pipe the agent left: nothing to flush
                    self.process.stdin.close()

    def __enter__(self) -> HostAgent:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def fleet_rounds(
    agents: Sequence[HostAgent], rounds: int
) -> tuple[list[set[str]], list[dict[str, Any]]]:
    """Play ``rounds`` rounds of fleet-mode agents, each started on every host at once.

    A round starts when every host has said its processes are at the round's gate (loaded,
    warmed, the previous round reported); a host told to go before that would run the
    round with fewer peers, or while others still set up. Returns the tokens every host's
    callers ended each round with, and each host's report.
    """
    per_round: list[set[str]] = []
    for number in range(rounds):
        for agent in agents:
            agent.wait(gate=number)
        for agent in agents:
            agent.send("go")
        seen: set[str] = set()
        for agent in agents:
            seen.update(agent.wait(round=number)["tokens"])
        per_round.append(seen)
    return per_round, [agent.wait()["report"] for agent in agents]


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
            self._relay(client, upstream)

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        """Pump both ways until both ends are done (a subclass may pump otherwise)."""
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
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._server.close()
