"""``grantkeeper doctor`` and ``grantkeeper store migrate``: store health, and moving stores.

Exit codes: 0 all is well; 1 a problem was found (or a credential was not moved);
2 bad usage or an unknown store.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ._errors import StoreError
from ._open_store import SPECS, open_store
from ._store import Store
from ._store_admin import (
    DEFAULT_MIGRATE_LOCK_TIMEOUT,
    StoreReport,
    diagnose_store,
    migrate_store,
)

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2

store_option = click.option(
    "--store",
    "spec",
    metavar="SPEC",
    default=None,
    help=f"Store to use: {SPECS}. Default: $GRANTKEEPER_STORE, else auto.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def _open(spec: str | None) -> Store:
    try:
        return open_store(spec)
    except StoreError as exc:
        raise click.UsageError(exc.message) from None


def _print_report(report: StoreReport, console: Console) -> None:
    console.print(f"store: {report.store}")
    checks = Table("check", "ok", "detail", title="health")
    for check in report.checks:
        checks.add_row(check.name, "yes" if check.ok else "[red]NO[/red]", check.detail)
    console.print(checks)
    creds = Table(
        "credential", "store", "found in", "version", "lock", "problem", title="credentials"
    )
    for c in report.credentials:
        problem = c.problem or ("[yellow]drift[/yellow]: run store migrate" if c.drift else "")
        creds.add_row(
            c.key,
            c.store or "-",
            ", ".join(c.found_in) or "-",
            str(c.version or "-"),
            c.lock,
            problem,
        )
    console.print(creds)


@click.command()
@store_option
@json_option
def doctor(spec: str | None, as_json: bool) -> None:
    """Check the store: where each credential lives, drift, locks, keyring, permissions."""
    report = diagnose_store(_open(spec))
    if as_json:
        click.echo(json.dumps({"healthy": report.healthy, **asdict(report)}, indent=2))
    else:
        _print_report(report, Console())
    raise SystemExit(EXIT_OK if report.healthy else EXIT_PROBLEM)


# -- migrate ------------------------------------------------------------------------------


@click.group()
def store() -> None:
    """Manage the credential store."""


@store.command()
@store_option
@click.option("--to", "to", metavar="SPEC", required=True, help="keyring, file or postgresql://...")
@click.option(
    "--lock-timeout",
    type=float,
    default=DEFAULT_MIGRATE_LOCK_TIMEOUT,
    show_default=True,
    help="Seconds to wait for each credential's lock.",
)
@json_option
def migrate(spec: str | None, to: str, lock_timeout: float, as_json: bool) -> None:
    """Move every credential to another store, each under its lock."""
    if to.strip().lower() == "auto":
        raise click.UsageError(
            "migrate --to needs a concrete store: keyring, file or postgresql://"
        )
    source, target = _open(spec), _open(to)
    if type(source) is type(target) and repr(source) == repr(target):
        raise click.UsageError("the source and target are the same store")
    try:
        moved = migrate_store(source, target, lock_timeout=lock_timeout)
    except StoreError as exc:
        raise click.ClickException(exc.message) from None
    results: list[dict[str, Any]] = [{"key": str(r.key), "result": str(r)} for r in moved]
    ok = all(r.ok for r in moved)
    if as_json:
        click.echo(json.dumps({"from": repr(source), "to": repr(target), "results": results}))
    else:
        table = Table("credential", "result", title=f"{source!r} -> {target!r}")
        for r in results:
            table.add_row(r["key"], r["result"])
        Console().print(table)
    raise SystemExit(EXIT_OK if ok else EXIT_PROBLEM)


COMMANDS: list[click.Command] = [doctor, store]
"""The commands this module adds to ``grantkeeper``'s CLI."""
