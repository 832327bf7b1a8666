"""The README's first command: many processes share one login through several rotations.

It starts the real oidc-provider on loopback (rotation and reuse detection on), logs in once
through grantkeeper into a throwaway file store, then runs a fleet of processes whose threads
all ask for the credential at the same instant, round after round, while the token expires or
a server rejects it. The server's own counters say how many refreshes it saw and whether any
refresh token was replayed.

    python -m harness.demo [--processes 8] [--threads 4] [--rounds 6]
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from grantkeeper import CredentialKey, FileStore
from harness.authserver import AuthServer
from harness.fleet import run_fleet
from harness.real_login import log_in

RESOURCE = "http://127.0.0.1:9/mcp"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--threads", type=int, default=4, help="threads per process")
    parser.add_argument("--rounds", type=int, default=6, help="rotations to go through")
    args = parser.parse_args(argv)
    console = Console()
    key = CredentialKey.for_server(RESOURCE)

    with tempfile.TemporaryDirectory(prefix="grantkeeper-demo-") as home:
        with console.status("starting the authorization server (oidc-provider)"):
            server = AuthServer(resources=[RESOURCE]).start()
        try:
            console.print(f"authorization server  {server.issuer}")
            credential = log_in(server, FileStore(home), key, resource=RESOURCE)
            console.print(f"logged in             {credential!r}")
            console.print(f"file store            {Path(home) / 'credentials'}")
            server.reset_stats()
            with console.status(
                f"{args.processes} processes × {args.threads} threads, {args.rounds} rounds"
            ):
                report = run_fleet(
                    functools.partial(FileStore, home),
                    key,
                    processes=args.processes,
                    threads=args.threads,
                    rounds=args.rounds,
                )
            stats = server.stats()
            accepted = all(server.is_active(t) for ts in report.tokens_per_round for t in ts)
        finally:
            server.stop()

    rotations = report.distinct_tokens  # each rotation hands out one new access token
    table = Table(title="one login shared by a fleet, against a real authorization server")
    for column in ("processes", "requests", "provider refreshes", "rotations", "replays"):
        table.add_column(column, justify="right")
    table.add_column("errors", justify="right")
    table.add_row(
        str(report.processes),
        str(report.requests),
        str(stats["refresh_success"]),
        str(rotations),
        str(stats["replays"]),
        str(len(report.errors)),
    )
    console.print(table)
    ok = (
        not report.errors
        and stats["replays"] == 0
        and stats["refresh_success"] == rotations == args.rounds
        and all(len(tokens) == 1 for tokens in report.tokens_per_round)
        and accepted
    )
    if ok:
        console.print(
            "[green]ok[/]: one refresh per rotation, no refresh token replayed, every caller "
            "holds a token the server accepts"
        )
        return 0
    for error in report.errors[:10]:
        console.print(f"[red]error[/] {error}")
    console.print("[red]FAILED[/]: the guarantees above did not hold")
    return 1


if __name__ == "__main__":
    sys.exit(main())
