"""The demo's side-by-side: one small fleet, through grantkeeper and through the ``mcp`` SDK.

Both fleets are benchmark P3's refresh storm made small (``benchmarks/p3_refresh_storm.py``):
fresh servers, one login stored where each client keeps it, then worker processes calling an
MCP tool while access tokens expire every few seconds. The authorization server rotates
refresh tokens and revokes the grant on a replay; its own counters fill the table. The SDK
is used as its documentation shows, with ``OAuthClientProvider`` over a shared token file
(``benchmarks/_storm.py``), and the harness plays the browser whenever it asks for a login,
so every such login is counted instead of stopping the run.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.p3_refresh_storm import Outcome, storm

KINDS = ("grantkeeper", "mcp SDK")


@dataclass(frozen=True)
class Size:
    """How big the side-by-side fleet is."""

    processes: int = 3
    tasks: int = 2
    """MCP sessions per process."""
    seconds: float = 12.0
    ttl: int = 3
    """Seconds an access token lives."""
    pace: float = 0.5
    """Seconds between one session's calls."""


def compare(size: Size = Size()) -> dict[str, Outcome]:
    """Run the same fleet once per client kind, against fresh servers each time."""
    return {
        kind: storm(
            kind,
            processes=size.processes,
            tasks=size.tasks,
            seconds=size.seconds,
            ttl=size.ttl,
            pace=size.pace,
        )
        for kind in KINDS
    }


def held(outcome: Outcome) -> bool:
    """grantkeeper's promise for the fleet: one refresh per rotation, none replayed, no
    forced login, no failed call."""
    return (
        outcome.rotations > 0
        and outcome.refresh_calls == outcome.rotations
        and outcome.replays == 0
        and outcome.reauths == 0
        and outcome.failed == 0
        and outcome.crashed == 0
    )
