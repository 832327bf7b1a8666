"""One test host's worker, run by ``harness/hosts.py`` inside its own namespaces.

``python -m harness.host_agent --hostname NAME --outer-uts UTS --dsn DSN --schema S
--key-url URL [--relay GATEWAY:PORT]... MODE``

It sets its hostname, so it refuses to run unless it has a UTS namespace of its own: one
other than ``--outer-uts`` (what ``/proc/self/ns/uts`` reads where it was started from).

Each ``--relay`` makes this host's ``127.0.0.1:PORT`` lead to ``GATEWAY:PORT`` (a service
the test exposed on the bridge), so HTTP services keep their loopback URLs.

Commands arrive as JSON lines on stdin, answers leave as JSON lines on stdout, each with
the command's ``id``. Two modes:

``keeper``: one :class:`Keeper` on the PostgreSQL store, driven step by step:
  ``identity``; ``clock`` (``offset`` seconds added to the wall clock); ``pause_at``
  (``stage``: the next time the transaction reaches it, print ``{"event": "paused"}`` and
  wait for ``resume``); ``credential`` (``rejected``, answered when the call ends, so other
  commands are served meanwhile); ``quit``.

``fleet``: :func:`harness.fleet.run_fleet` with ``--processes``, ``--threads`` and
``--rounds`` (and ``--warm``); before each round it prints ``{"gate": n}`` (its processes
are at the round's start) and waits for a ``go`` command; the round's tokens are printed as
``{"round": n, "tokens": [...]}``, the whole report at the end as ``{"report": ...}``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import socket
import sys
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from grantkeeper import CredentialKey, GrantkeeperError, Keeper, PostgresStore
from grantkeeper._liveness import host_identity
from harness.fleet import run_fleet
from harness.hosts import TcpRelay

_print_lock = threading.Lock()


def say(**fields: Any) -> None:
    with _print_lock:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


def _store(dsn: str, schema: str) -> PostgresStore:
    return PostgresStore(dsn, schema=schema)


class Driven:
    """The ``keeper`` mode's state: a clock offset, a pause point, one Keeper."""

    def __init__(self, store: PostgresStore, key: CredentialKey) -> None:
        self.offset = 0.0
        self.pause_stage: str | None = None
        self.resume = threading.Event()
        self.keeper = Keeper(store, key, clock=self.now, checkpoint=self.checkpoint)

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset)

    def checkpoint(self, stage: str) -> None:
        if stage == self.pause_stage:
            self.pause_stage = None
            self.resume.clear()
            say(event="paused", stage=stage)
            self.resume.wait(120)

    def credential(self, number: int, rejected: str | None) -> None:
        try:
            credential = self.keeper.credential(rejected=rejected, timeout=120)
        except GrantkeeperError as exc:
            say(id=number, ok=False, error=type(exc).__name__, message=str(exc))
            return
        say(
            id=number,
            ok=True,
            token=credential.access_token,
            pending=self.keeper.persistence_pending,
        )


def keeper_mode(args: argparse.Namespace, key: CredentialKey) -> None:
    driven = Driven(_store(args.dsn, args.schema), key)
    for raw in sys.stdin:
        command = json.loads(raw)
        op, number = command["op"], command.get("id")
        if op == "quit":
            break
        if op == "identity":
            say(id=number, host_id=host_identity(), hostname=socket.gethostname(), pid=os.getpid())
        elif op == "clock":
            driven.offset = float(command["offset"])
            say(id=number, ok=True)
        elif op == "pause_at":
            driven.pause_stage = command["stage"]
            say(id=number, ok=True)
        elif op == "resume":
            driven.resume.set()
            say(id=number, ok=True)
        elif op == "credential":
            threading.Thread(
                target=driven.credential, args=(number, command.get("rejected"))
            ).start()
        else:
            say(id=number, ok=False, error="UnknownCommand", message=op)
    driven.keeper.close()


def fleet_mode(args: argparse.Namespace, key: CredentialKey) -> None:
    def gate(number: int) -> None:
        say(gate=number)  # every process is at the round's start: ready to be let go
        for raw in sys.stdin:
            command = json.loads(raw)
            if command["op"] == "go":
                return
        raise SystemExit("stdin closed before the round started")

    report = run_fleet(
        functools.partial(_store, args.dsn, args.schema),
        key,
        processes=args.processes,
        threads=args.threads,
        rounds=args.rounds,
        gate=gate,
        on_round=lambda number, tokens: say(round=number, tokens=sorted(tokens)),
        warm=args.warm,
    )
    say(
        report={
            "requests": report.requests,
            "errors": report.errors,
            "tokens_per_round": [sorted(tokens) for tokens in report.tokens_per_round],
            "lock_waits": report.lock_waits,
            "calls": report.calls,
            "provider_calls": report.provider_calls,
            "adopted_waiting": report.adopted_waiting,
            "cpu_per_round": report.cpu_per_round,
        }
    )
    for raw in sys.stdin:  # wait for quit, so the test reads everything first
        if json.loads(raw)["op"] == "quit":
            break


def refuse_a_shared_uts_namespace(outer: str) -> None:
    """Exit, before changing anything, unless this process has a UTS namespace of its own:
    ``sethostname`` in a shared one renames the machine (or container) for everyone.

    ``outer`` is the namespace of whoever started us through ``unshare --uts``. ``/proc/1``
    cannot stand in for it: under ``unshare --pid --mount-proc`` that is this very process.
    """
    own = os.readlink("/proc/self/ns/uts")
    shared = {outer}
    if os.getpid() != 1:  # not our own pid namespace's init: pid 1 is the machine's
        with contextlib.suppress(OSError):  # unreadable in some sandboxes: outer must do
            shared.add(os.readlink("/proc/1/ns/uts"))
    if own in shared:
        raise SystemExit(
            f"harness.host_agent: refusing to set the hostname to a test host's: this process "
            f"shares its UTS namespace ({own}) with the machine; start it through "
            "harness/hosts.py, which runs it under `unshare --uts`"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["keeper", "fleet"])
    parser.add_argument("--hostname", required=True)
    parser.add_argument("--outer-uts", required=True, metavar="UTS")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--key-url", required=True)
    parser.add_argument("--key-profile", default=None)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warm", action="store_true", help="see harness.fleet.run_fleet")
    parser.add_argument("--relay", action="append", default=[], metavar="GATEWAY:PORT")
    args = parser.parse_args()
    refuse_a_shared_uts_namespace(args.outer_uts)
    socket.sethostname(args.hostname)  # our own UTS namespace: no one else sees it
    for relay in args.relay:
        # This host's loopback port leads to the service the test exposed on the bridge.
        gateway, port = relay.rsplit(":", 1)
        TcpRelay(("127.0.0.1", int(port)), (gateway, int(port)))
    key = CredentialKey.for_server(args.key_url, args.key_profile)
    if args.mode == "keeper":
        keeper_mode(args, key)
    else:
        fleet_mode(args, key)


if __name__ == "__main__":
    main()
