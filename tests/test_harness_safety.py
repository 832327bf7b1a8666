"""The harness cleans up after itself and leaves the machine's own settings alone.

The suite runs as root on a machine without swap: a host agent that outlives its test keeps
its network namespace and PostgreSQL sessions, a postmaster nobody stops keeps its memory,
and an agent that set the hostname outside its own UTS namespace would rename the machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from harness import hosts as hosts_module
from harness.children import children_of, kill_process, process_start, wait_gone
from harness.hosts import (
    RUN_DIR,
    HostAgent,
    HostNetwork,
    choose_subnet,
    sweep_stale,
    unavailable_reason,
)
from harness.postgres import STOP_TIMEOUT, PostgresCluster, find_bin
from tests.helpers import ROOT

RESOURCE = "http://127.0.0.1:9/mcp"


# -- the host agent's hostname -------------------------------------------------------------


def _agent(*arguments: str) -> subprocess.CompletedProcess[str]:
    """Run ``harness.host_agent`` right here: no unshare, so no UTS namespace of its own."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-m", "harness.host_agent", "keeper", "--hostname", "gk-not-this-one"]
        + ["--dsn", "postgresql://nobody@127.0.0.1:9/postgres", "--schema", "s"]
        + ["--key-url", RESOURCE, *arguments],
        cwd=ROOT,
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def hostname() -> Iterator[str]:
    """The machine's hostname, given back should a refusal under test fail to refuse."""
    before = socket.gethostname()
    try:
        yield before
    finally:
        if socket.gethostname() != before and os.geteuid() == 0:
            socket.sethostname(before)


def test_the_host_agent_refuses_to_set_the_hostname_in_the_machines_uts_namespace(
    hostname: str,
) -> None:
    result = _agent("--outer-uts", os.readlink("/proc/self/ns/uts"))
    assert result.returncode != 0
    assert "refusing to set the hostname" in result.stderr
    assert socket.gethostname() == hostname


def test_the_host_agent_needs_to_be_told_the_outer_uts_namespace(hostname: str) -> None:
    result = _agent()
    assert result.returncode == 2 and "--outer-uts" in result.stderr
    assert socket.gethostname() == hostname


# -- the hosts' subnet ---------------------------------------------------------------------


def test_the_subnet_skips_what_an_interface_a_route_or_a_nameserver_overlaps() -> None:
    candidates = [
        IPv4Network("10.201.7.0/24"),  # inside a routed /16
        IPv4Network("10.202.3.0/24"),  # holds the nameserver
        IPv4Network("10.203.4.0/24"),  # an interface's network
        IPv4Network("10.204.5.0/24"),
    ]
    chosen = choose_subnet(
        addresses=[IPv4Network("10.203.4.0/24")],
        routes=[IPv4Network("10.201.0.0/16")],
        nameservers=[IPv4Address("10.202.3.53")],
        candidates=candidates,
    )
    assert chosen == IPv4Network("10.204.5.0/24")


def test_the_subnet_search_is_bounded_and_says_why_it_gave_up() -> None:
    with pytest.raises(RuntimeError, match=r"after 3 tries.*10\.250\.0\.53"):
        choose_subnet(
            addresses=[],
            routes=[IPv4Network("10.0.0.0/8")],
            nameservers=[IPv4Address("10.250.0.53")],
            candidates=[IPv4Network(f"10.20{n}.0.0/24") for n in range(3)],
        )


@pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))
def test_the_default_route_claims_no_subnet() -> None:
    assert all(network.prefixlen > 0 for network in hosts_module._routed_networks())
    assert hosts_module._free_subnet().prefixlen == 24


# -- hosts: agents and namespaces ----------------------------------------------------------

needs_hosts = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


@pytest.fixture
def network() -> Iterator[HostNetwork]:
    net = HostNetwork(hosts=1)
    try:
        yield net.start()
    finally:
        net.close()


def _spawn(network: HostNetwork, tmp_path: Path) -> tuple[HostAgent, tuple[int, int]]:
    agent = network.spawn(
        0,
        "safety-1",
        tmp_path / "home",
        "keeper",
        "--key-url",
        RESOURCE,
        schema="safety",
        dsn=f"postgresql://nobody@{network.gateway}:9/postgres",  # never connected to
    )
    try:
        assert agent.call("identity")["hostname"] == "safety-1"
        found = agent.agent()
        assert found is not None
        with open(f"/proc/{agent.process.pid}/comm", encoding="ascii") as comm:
            assert comm.read().strip() == "unshare"  # ip netns exec execs: it is unshare
    except BaseException:
        agent.close(grace=1)
        raise
    return agent, found


@needs_hosts
def test_closing_a_hung_host_leaves_no_agent_and_no_namespace(tmp_path: Path) -> None:
    network = HostNetwork(hosts=1)
    agent: tuple[int, int] | None = None
    try:
        network.start()
        host, agent = _spawn(network, tmp_path)
        os.kill(agent[0], signal.SIGSTOP)  # hung: it will not read "quit"
        host.close(grace=1)
        assert host.process.returncode is not None
        assert process_start(agent[0]) is None or process_start(agent[0]) != agent[1]
        network.close()
        assert network.namespaces[0] not in _namespaces()
        assert f"gk{network.tag}" not in _links()
        assert not (RUN_DIR / f"{network.tag}.json").exists()
    finally:
        if agent is not None:
            kill_process(*agent)
        network.close()


@needs_hosts
def test_a_host_that_quits_leaves_no_agent(network: HostNetwork, tmp_path: Path) -> None:
    host, agent = _spawn(network, tmp_path)
    try:
        host.close()
        assert host.process.returncode == 0
        assert wait_gone(*agent, 0)
    finally:
        kill_process(*agent)


@needs_hosts
def test_killing_unshare_takes_the_agent_along(network: HostNetwork, tmp_path: Path) -> None:
    host, agent = _spawn(network, tmp_path)
    try:
        host.process.kill()  # what closing does to a host that does not quit
        host.process.wait(timeout=10)
        assert wait_gone(*agent, 10)  # --kill-child; close() is not needed for this
    finally:
        kill_process(*agent)
        host.close(grace=1)


def _make(namespace: str, bridge: str) -> None:
    for command in (
        ["ip", "netns", "add", namespace],
        ["ip", "link", "add", bridge, "type", "bridge"],
    ):
        subprocess.run(command, check=True, capture_output=True, timeout=30)


def _unmake(namespace: str, bridge: str) -> None:
    subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)
    subprocess.run(["ip", "link", "del", bridge], capture_output=True, timeout=30)


@needs_hosts
def test_a_dead_runs_namespaces_and_links_are_swept_and_a_live_runs_are_not() -> None:
    dead, live = HostNetwork(hosts=1), HostNetwork(hosts=1)
    # Registered as a killed run would have left them: the same pid as ours, but another
    # process (its start time differs), so the pid was reused and the owner is gone.
    owner = hosts_module._owner()
    entries = {dead: {**owner, "start": -1}, live: owner}
    try:
        RUN_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        for net, entry in entries.items():
            registered = {**entry, "namespaces": net.namespaces, "links": [net._bridge]}
            (RUN_DIR / f"{net.tag}.json").write_text(json.dumps(registered), encoding="utf-8")
            _make(net.namespaces[0], net._bridge)
        removed = sweep_stale()
        assert {dead.namespaces[0], dead._bridge} <= set(removed)
        assert dead.namespaces[0] not in _namespaces() and dead._bridge not in _links()
        assert not (RUN_DIR / f"{dead.tag}.json").exists()
        assert live.namespaces[0] in _namespaces() and live._bridge in _links()
        assert (RUN_DIR / f"{live.tag}.json").exists()
    finally:
        for net in entries:
            _unmake(net.namespaces[0], net._bridge)
            (RUN_DIR / f"{net.tag}.json").unlink(missing_ok=True)


# -- PostgreSQL ----------------------------------------------------------------------------


def _postgres_missing() -> str | None:
    try:
        find_bin("pg_ctl")
    except FileNotFoundError as missing:
        return str(missing)
    return None


needs_postgres = pytest.mark.skipif(
    _postgres_missing() is not None, reason=str(_postgres_missing())
)


def _family(postmaster: tuple[int, int]) -> list[tuple[int, int]]:
    """The postmaster and its children, as (pid, start time)."""
    return [postmaster] + [
        (pid, start)
        for pid in children_of(postmaster[0])
        if (start := process_start(pid)) is not None
    ]


def _kill_all(processes: list[tuple[int, int]]) -> None:
    """Whatever a failing test left: never a stopped server for the rest of the run."""
    for process in processes:
        kill_process(*process)


@needs_postgres
def test_stop_stops_a_stopped_postmaster_without_waiting_out_pg_ctl() -> None:
    cluster = PostgresCluster().start()
    postmaster = cluster.postmaster()
    assert postmaster is not None
    family = _family(postmaster)
    try:
        for pid, _ in family:
            os.kill(pid, signal.SIGSTOP)
        began = time.monotonic()
        cluster.stop()
        assert time.monotonic() - began < STOP_TIMEOUT
        assert all(wait_gone(*process, 0) for process in family)
        assert not cluster.directory.exists()
    finally:
        _kill_all(family)


@needs_postgres
def test_stop_kills_the_postmaster_and_its_children_when_pg_ctl_cannot_stop_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    segments_before = set(_shm_segments())
    cluster = PostgresCluster().start()
    postmaster = cluster.postmaster()
    assert postmaster is not None
    family = _family(postmaster)
    try:
        os.kill(postmaster[0], signal.SIGSTOP)
        real_run = cluster._run

        def pg_ctl_fails_to_stop(*command: str, timeout: float = 0) -> None:
            if "stop" in command:
                raise subprocess.TimeoutExpired(list(command), timeout)
            real_run(*command)

        monkeypatch.setattr(cluster, "_run", pg_ctl_fails_to_stop)
        cluster.stop()
        assert all(wait_gone(*process, 0) for process in family)
        # A killed postmaster cannot remove its dynamic shared memory: it lived in the
        # cluster's directory, which is gone, never in /dev/shm.
        assert not cluster.directory.exists()
        assert not set(_shm_segments()) - segments_before
    finally:
        _kill_all(family)


def _shm_segments() -> list[Path]:
    return list(Path("/dev/shm").glob("PostgreSQL.*"))


@needs_postgres
def test_a_start_that_fails_after_the_postmaster_started_stops_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = PostgresCluster()
    real_run = cluster._run
    started: list[tuple[int, int]] = []

    def start_then_fail(*command: str, timeout: float = 70) -> None:
        real_run(*command, timeout=timeout)
        if command[-1] == "start":
            postmaster = cluster.postmaster()
            assert postmaster is not None
            started.extend(_family(postmaster))
            raise KeyboardInterrupt  # interrupted once pg_ctl had started it

    monkeypatch.setattr(cluster, "_run", start_then_fail)
    try:
        with pytest.raises(KeyboardInterrupt):
            cluster.start()
        assert started and all(wait_gone(*process, 0) for process in started)
        assert not cluster.directory.exists()
    finally:
        _kill_all(started)
