"""The README's first command: what grantkeeper guarantees, and what it prevents.

Everything runs for real on loopback: oidc-provider as the authorization server (rotating
refresh tokens, reuse detection on: a replayed refresh token revokes the grant) and an MCP
server built with ``mcp``. Four parts, each judged by the servers' own counters:

1. one login shared by a fleet: processes whose threads all ask for the credential at the
   same instant, round after round, while the token expires or a server rejects it;
2. the same kind of fleet calling an MCP tool through grantkeeper and through the ``mcp``
   SDK's own ``OAuthClientProvider``, side by side: refreshes, rotations, replays and forced
   browser logins (:mod:`harness.demo_compare`);
3. the CLI a user types: ``login``, ``status``, ``token``, ``call``, at 80 columns
   (:mod:`harness.demo_cli`);
4. an MCP tool call before and after the access token really expired.

    python -m harness.demo [--processes 8] [--threads 4] [--rounds 6] [--seconds 12]
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
from harness.demo_compare import KINDS, Size, compare, held
from harness.fleet import run_fleet
from harness.real_login import log_in

RESOURCE = "http://127.0.0.1:9/mcp"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--threads", type=int, default=4, help="threads per process")
    parser.add_argument("--rounds", type=int, default=6, help="rotations to go through")
    parser.add_argument(
        "--seconds", type=float, default=12.0, help="length of the side-by-side fleet run"
    )
    parser.add_argument("--no-mcp", action="store_true", help="only the first part")
    args = parser.parse_args(argv)
    console = Console()
    # The servers and httpx log every request at INFO; the tables say what matters.
    for name in ("", "mcp", "httpx", "httpx2", "uvicorn", "uvicorn.access", "grantkeeper"):
        logging.getLogger(name).setLevel(logging.WARNING)
    parts = [fleet_part(console, args)]
    if not args.no_mcp:
        parts.append(compare_part(console, Size(seconds=args.seconds)))
        parts.append(cli_part(console))
        parts.append(mcp_part(console))
    if all(parts):
        console.print("\n[green]demo passed[/]: every guarantee above held against real servers")
        return 0
    console.print("\n[red]demo FAILED[/]: see the part marked FAILED above")
    return 1


def fleet_part(console: Console, args: argparse.Namespace) -> bool:
    """Part 1: one login shared by a fleet of processes through several rotations."""
    console.rule("1. one login shared by a fleet")
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
    for error in report.errors[:10]:
        console.print(f"[red]error[/] {error}")
    return verdict(
        console,
        ok,
        "one refresh per rotation, no refresh token replayed, every caller holds a token the "
        "server accepts",
        "the guarantees above did not hold",
    )


def compare_part(console: Console, size: Size) -> bool:
    """Part 2: the same fleet through grantkeeper and through the mcp SDK's provider."""
    console.rule("2. the same fleet through grantkeeper and through the mcp SDK")
    with console.status(
        f"{size.processes} processes × {size.tasks} MCP sessions, a tool call every "
        f"{size.pace:g} s for {size.seconds:g} s, access tokens live {size.ttl} s; "
        "once per client"
    ):
        outcomes = compare(size)
    table = Table(
        title=f"{size.processes} processes sharing one login, {size.seconds:g} s, "
        f"tokens live {size.ttl} s"
    )
    table.add_column("client", no_wrap=True, min_width=len("grantkeeper"))
    for column in ("calls", "failed", "refreshes", "rotations", "replays", "forced logins"):
        table.add_column(column, justify="right")
    for kind in KINDS:
        o = outcomes[kind]
        table.add_row(
            kind,
            str(o.calls),
            str(o.failed + o.crashed),
            str(o.refresh_calls),
            str(o.rotations),
            str(o.replays),
            str(o.reauths),
        )
    console.print(table)
    console.print(
        "calls: MCP tool calls; refreshes: refresh requests the authorization server saw; "
        "rotations: refresh tokens it rotated; replays: spent refresh tokens presented again "
        "(each revokes the grant); forced logins: browser logins a client started."
    )
    sdk = outcomes["mcp SDK"]
    console.print(
        "The SDK keeps no expiry or token endpoint across a restart and has no lock between "
        "processes, so every process refreshes on its own or, after a 401, asks for a new "
        f"browser login: {sdk.reauths} here, each one a person interrupted in real use "
        "(the harness clicked approve). "
        "grantkeeper's processes share one refresh per rotation through the store's lock."
    )
    return verdict(
        console,
        held(outcomes["grantkeeper"]),
        "grantkeeper refreshed once per rotation, replayed nothing and forced no login",
        f"grantkeeper's fleet did not hold: {outcomes['grantkeeper']}",
    )


def cli_part(console: Console) -> bool:
    """Part 3: the commands a user types, at 80 columns."""
    from rich.markup import escape

    from harness.demo_cli import walk_through

    console.rule("3. the CLI a user types (GRANTKEEPER_HOME is a temporary directory)")
    with console.status("grantkeeper login, status, token, call against the real servers"):
        steps = walk_through()
    for step in steps:
        console.print(f"[bold]$ {escape(step.command)}[/]")
        console.print(escape(step.output), highlight=False, soft_wrap=True)
    return verdict(
        console,
        len(steps) == 4 and all(step.exit_code == 0 for step in steps),
        "each command did what it says, with no prompt after login",
        f"{escape(steps[-1].command)} exited {steps[-1].exit_code}",
    )


def mcp_part(console: Console) -> bool:
    """Part 4: log in to a real MCP server, call a tool, let the token expire, call again."""
    from harness.mcp_demo import expiry_demo

    console.rule("4. an MCP tool call across a real expiry")
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
    return verdict(
        console,
        seen.token_changed and seen.refreshes == 1 and seen.replays == 0 and seen.status == "oauth",
        "the expired token was refreshed silently, once",
        "the MCP call did not recover as promised",
    )


def verdict(console: Console, ok: bool, held_text: str, failed_text: str) -> bool:
    """Print a part's verdict, judged by the servers' counters; return it."""
    console.print(f"[green]ok[/]: {held_text}" if ok else f"[red]FAILED[/]: {failed_text}")
    return ok


if __name__ == "__main__":
    sys.exit(main())
