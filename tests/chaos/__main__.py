"""Run crash chaos: ``scripts/chaos --injections 500`` (under a private keyring session).

Starts the real authorization server (oidc-provider), a loopback PostgreSQL cluster when
the postgresql store is asked for, and injects SIGKILLs into refreshes; prints one table
per store and policy, writes the figures as JSON, and exits 1 on any oracle violation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import uuid
from pathlib import Path

from harness.authserver import AuthServer
from tests.chaos.engine import Chaos, ChaosReport, StoreSpec, summary, temp_home


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__)
    parser.add_argument("--injections", type=int, default=500, help="per store and policy")
    parser.add_argument("--stores", default="file,postgresql,keyring")
    parser.add_argument(
        "--policy",
        choices=["no-retry", "retry", "both"],
        default="both",
        help="retry_unknown_outcome off, on, or a run of each",
    )
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    policies = {"no-retry": [False], "retry": [True], "both": [False, True]}[args.policy]
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    reports: list[ChaosReport] = []
    with contextlib.ExitStack() as stack:
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gk-chaos-")))
        server = stack.enter_context(AuthServer(access_ttl=3600))
        dsn = ""
        if "postgresql" in stores:
            from harness.postgres import PostgresCluster

            dsn = stack.enter_context(PostgresCluster()).dsn
        for kind in stores:
            for retry in policies:
                tag = f"{kind}-{'retry' if retry else 'noretry'}-{uuid.uuid4().hex[:8]}"
                spec = StoreSpec(
                    kind,
                    temp_home(base, tag),
                    dsn=dsn,
                    schema=f"chaos_{tag.replace('-', '_')}",
                    service=f"grantkeeper-chaos-{tag}",
                )
                chaos = Chaos(
                    server,
                    spec,
                    processes=args.processes,
                    retry_unknown_outcome=retry,
                    seed=args.seed,
                )
                try:
                    report = chaos.run(args.injections)
                finally:
                    chaos.close()
                print(report.table(), flush=True)
                for violation in report.violations:
                    print(f"  VIOLATION {violation}", flush=True)
                reports.append(report)
    figures = summary(reports)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures["totals"]))
    return 1 if any(r.violations for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
