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
import logging
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
    parser.add_argument("--no-mcp", action="store_true", help="skip the MCP tool-call part")
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
        return 0 if args.no_mcp else mcp_part(console)
    for error in report.errors[:10]:
        console.print(f"[red]error[/] {error}")
    console.print("[red]FAILED[/]: the guarantees above did not hold")
    return 1


def mcp_part(console: Console) -> int:
    """Log in to a real MCP server, call a tool, let the token expire, call again."""
    from harness.mcp_demo import expiry_demo

    # The MCP server and httpx log every request at INFO; the table says what matters.
    for name in ("", "mcp", "httpx", "httpx2", "uvicorn", "uvicorn.access", "grantkeeper"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with console.status("MCP: log in, call a tool, wait for the token to expire, call again"):
        seen = expiry_demo()
    table = Table(title="an MCP tool call before and after the access token expired")
    for column in ("call before", "call after", "waited", "refreshes", "replays", "status"):
        table.add_column(column)
    table.add_row(
        seen.first,
        seen.second,
        f"{seen.waited_s} s",
        str(seen.refreshes),
        str(seen.replays),
        seen.status,
    )
    console.print(table)
    if seen.token_changed and seen.refreshes == 1 and seen.replays == 0 and seen.status == "oauth":
        console.print("[green]ok[/]: the expired token was refreshed silently, once")
        return 0
    console.print("[red]FAILED[/]: the MCP call did not recover as promised")
    return 1


if __name__ == "__main__":
    sys.exit(main())
