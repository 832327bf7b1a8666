"""P6: a fleet storm across hosts that share nothing but the database.

H hosts (``harness/hosts.py``: network namespaces on a bridge, each worker in its own UTS
and pid namespace with its own ``GRANTKEEPER_HOME``) run P processes × T threads each, on
one credential in PostgreSQL, through R rotations on the real oidc-provider. Each round
starts when every host is told ``go``, right after the access token expired everywhere.

From the authorization server: refresh calls and rotations (successful refreshes) and
replays. From each host: how long each caller waited for its credential (p50, p99), and
how its transactions got it (by the lock, or by adopting a peer's commit while waiting).
From the holders: how long each provider call took. The goal is one provider refresh per
rotation, no replay, and on every host a caller p99 within :data:`WAIT_RATIO_GOAL` of the
provider call's p99: every caller of a round holds a dead token, so the least any of them
can wait is one provider call, and all but the holder wait exactly for its commit.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._report import Section
from grantkeeper import CredentialKey, PostgresStore
from harness.authserver import AuthServer
from harness.hosts import HostAgent, HostNetwork, fleet_rounds, unavailable_reason
from harness.postgres import PostgresCluster
from harness.real_login import log_in

RESOURCE = "http://127.0.0.1:9/mcp"
"""The credential's resource; the fleet asks only for tokens, so nothing serves it."""

WAIT_RATIO_GOAL = 1.2
"""A caller's wait p99, on every host, over the provider call's p99 (the fleet's): the
physical limit of a caller whose token is dead is one provider call."""


@dataclass(frozen=True)
class Size:
    hosts: int
    processes: int
    threads: int
    rounds: int


FULL = Size(hosts=4, processes=4, threads=4, rounds=6)
SMOKE = Size(hosts=2, processes=1, threads=2, rounds=2)


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank ``fraction`` percentile of ``values`` (0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def storm(size: Size) -> dict[str, Any]:
    """One storm at ``size``; return the server's counts and each host's report."""
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"P6 needs namespaced hosts (root, ip, unshare): {reason}")
    key = CredentialKey.for_server(RESOURCE, "p6")
    schema = f"p6_{uuid.uuid4().hex[:10]}"
    with (
        tempfile.TemporaryDirectory(prefix="gk-p6-") as root,
        HostNetwork(hosts=size.hosts) as network,
        PostgresCluster(listen=network.gateway, allow=network.cidr) as cluster,
        AuthServer(resources=[RESOURCE]) as server,
    ):
        network.expose(server.port)
        seed = PostgresStore(cluster.dsn, schema=schema)
        agents: list[HostAgent] = []
        try:
            log_in(server, seed, key, resource=RESOURCE)
            server.reset_stats()
            for number in range(size.hosts):
                agents.append(
                    network.spawn(
                        number,
                        f"p6-host-{number + 1}",
                        Path(root) / f"host-{number}",
                        "fleet",
                        "--key-url",
                        key.server_url,
                        "--key-profile",
                        key.profile or "",
                        "--processes",
                        str(size.processes),
                        "--threads",
                        str(size.threads),
                        "--rounds",
                        str(size.rounds),
                        "--warm",
                        schema=schema,
                        dsn=cluster.dsn,
                    )
                )
            per_round, reports = fleet_rounds(agents, size.rounds)
            tokens_per_round = [len(seen) for seen in per_round]
            return {
                "stats": server.stats(),
                "reports": reports,
                "tokens_per_round": tokens_per_round,
            }
        finally:
            for agent in agents:
                agent.close()
            network.unexpose_all()
            seed.close()


def run(*, repeats: int = 1, size: Size = FULL) -> Section:
    """``repeats`` storms at ``size``, one table row per host per storm."""
    section = Section(
        "P6",
        f"fleet storm across {size.hosts} namespaced hosts "
        f"({size.processes} processes × {size.threads} threads each, {size.rounds} rotations)",
        f"provider refresh calls == rotations, 0 replays, and on every host a caller's wait "
        f"p99 ≤ {WAIT_RATIO_GOAL}× the provider call's p99",
        [
            "run",
            "host",
            "calls",
            "errors",
            "caller wait p50",
            "caller wait p99",
            "provider call p99 (fleet)",
            "ratio",
            "fleet CPU per round (median)",
            "transactions: locked / adopted waiting",
            "refresh calls",
            "rotations",
            "replays",
        ],
    )
    met = True
    for attempt in range(repeats):
        result = storm(size)
        stats = result["stats"]
        refreshes = int(stats["refresh_success"]) + len(stats["refresh_errors"])
        rotations = int(stats["refresh_success"])
        replays = int(stats["replays"])
        met = met and refreshes == rotations == size.rounds and replays == 0
        provider = [float(v) for r in result["reports"] for v in r["provider_calls"]]
        provider_p99 = percentile(provider, 0.99)
        cpu = [
            sum(per_host)
            for per_host in zip(*(r["cpu_per_round"] for r in result["reports"]), strict=True)
        ]
        cpu_median = statistics.median(cpu) if cpu else 0.0
        for number, report in enumerate(result["reports"]):
            calls = [float(v) for v in report["calls"]]
            p50, p99 = percentile(calls, 0.5), percentile(calls, 0.99)
            ratio = p99 / provider_p99 if provider_p99 else float("inf")
            met = met and ratio <= WAIT_RATIO_GOAL and not report["errors"]
            section.rows.append(
                [
                    str(attempt + 1),
                    str(number + 1),
                    str(report["requests"]),
                    str(len(report["errors"])),
                    f"{p50:.1f} ms",
                    f"{p99:.1f} ms",
                    f"{provider_p99:.1f} ms",
                    f"{ratio:.2f}×",
                    f"{cpu_median:.0f} ms",
                    f"{len(report['lock_waits'])} / {len(report['adopted_waiting'])}",
                    str(refreshes),
                    str(rotations),
                    str(replays),
                ]
            )
        met = met and result["tokens_per_round"] == [1] * size.rounds
    section.met = met
    section.notes.append(
        "Refresh calls, rotations and replays are the authorization server's counts for the "
        "whole fleet (repeated on each host's row). A caller's wait is the time from its "
        "call (released with every other caller of the fleet at once, its token dead) to "
        "its credential; the provider call's p99 is over every refresh the fleet made (one "
        "per rotation). Before the first round every process has what a long-lived one "
        "has (the trust store context its MCP client made, its lock and LISTEN sessions: "
        "harness/fleet.py _warm), and every round starts on every host at once, so every "
        "round is judged alike. Fleet CPU per round: the CPU time all of the "
        "fleet's processes spent in a round, summed (the database's and the provider's "
        f"excluded), the median of the rounds; on this machine's {os.cpu_count()} cores it "
        "takes at least that divided by the cores, and a waiter's wait includes its share. "
        "Transactions: those of the host that took the credential's lock, and those that "
        "adopted a peer's commit while waiting for it (never locked)."
    )
    return section


def smoke() -> Section:
    return run(repeats=1, size=SMOKE)
