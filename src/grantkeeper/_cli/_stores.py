"""``grantkeeper doctor`` and ``grantkeeper store migrate``: store health, and moving stores.

A thin layer over the library's :func:`~grantkeeper.diagnose_store` and
:func:`~grantkeeper.migrate_store`. Exit codes: 0 all is well; 1 a problem was found (or a
credential was not moved); 2 bad usage or an unknown store.
"""

from __future__ import annotations

from dataclasses import asdict

import click

from .._errors import GrantkeeperError, StoreError
from .._network import check_proxies, settings, tls_context
from .._servers import servers_file_check
from .._stores.admin import (
    DEFAULT_MIGRATE_LOCK_TIMEOUT,
    StoreCheck,
    StoreReport,
    diagnose_store,
    migrate_store,
)
from .._stores.base import Store
from ._output import ACTION, print_json, print_table, store_label
from ._policy import (
    EXIT_ERROR,
    EXIT_OK,
    handle_errors,
    json_option,
    open_store_for,
    store_option,
    verbose_option,
)


def _open(spec: str | None, option: str = "--store") -> Store:
    return open_store_for(spec, option=option)


def _split_fix(detail: str) -> tuple[str, str]:
    """A check's detail and the command that fixes it (``…; run: chmod 600 PATH``), apart:
    the command is printed whole under the table, where it can be copied, not wrapped in a
    cell."""
    text, found, command = detail.partition("; run: ")
    return (text, command) if found else (detail, "-")


def network_checks() -> list[StoreCheck]:
    """What every request goes through: the proxies (passwords hidden) and the trust store.
    An ``SSL_CERT_FILE`` that cannot be used fails the check, as it would fail each request."""
    found = settings()
    proxies = ", ".join(f"{scheme} via {url}" for scheme, url in found.proxies.items())
    if proxies and found.no_proxy:
        proxies += f"; direct: {found.no_proxy}"
    if found.loopback_proxied:
        proxies += "; loopback servers too: add localhost,127.0.0.1 to NO_PROXY"
    try:
        check_proxies()
    except GrantkeeperError as exc:
        checks = [StoreCheck("proxy", False, exc.message)]
    else:
        checks = [StoreCheck("proxy", True, proxies or "none (direct connections)")]
    try:
        tls_context()
    except GrantkeeperError as exc:
        checks.append(StoreCheck("trust store", False, exc.message))
    else:
        checks.append(StoreCheck("trust store", True, found.trust))
    return checks


def _print_report(report: StoreReport, label: str) -> None:
    click.echo(f"store: {label}")
    print_table(
        ("check", "ok", "detail", ACTION),
        [
            (check.name, "yes" if check.ok else "NO", *_split_fix(check.detail))
            for check in report.checks
        ],
        title="health",
        styles={"ok": {"NO": "red"}},
    )
    print_table(
        ("credential", "store", "found in", "version", "lock", "problem", ACTION),
        [
            (
                c.key,
                c.store or "-",
                ", ".join(c.found_in) or "-",
                str(c.version or "-"),
                c.lock,
                *_split_fix(
                    c.problem or ("drift; run: grantkeeper store migrate" if c.drift else "-")
                ),
            )
            for c in report.credentials
        ],
        title="credentials",
    )


@click.command(
    epilog="""\b
Examples:
  grantkeeper doctor
  grantkeeper doctor --store keyring --json
"""
)
@store_option
@json_option
@verbose_option
@handle_errors
def doctor(store_spec: str | None, as_json: bool) -> None:
    """Check the store: where each credential lives, drift, locks, keyring, permissions."""
    store = _open(store_spec)
    report = diagnose_store(store)
    report.checks.append(servers_file_check())
    report.checks.extend(network_checks())
    label = store_label(store)
    if as_json:
        print_json({"healthy": report.healthy, **asdict(report), "store": label})
    else:
        _print_report(report, label)
    raise click.exceptions.Exit(EXIT_OK if report.healthy else EXIT_ERROR)


# -- migrate ------------------------------------------------------------------------------


@click.group(
    epilog="""\b
Examples:
  grantkeeper store migrate --to keyring
"""
)
def store() -> None:
    """Manage the credential store."""


@store.command(
    epilog="""\b
Examples:
  grantkeeper store migrate --to keyring
  grantkeeper store migrate --store file --to postgresql://grantkeeper@db/grantkeeper
"""
)
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
@verbose_option
@handle_errors
def migrate(store_spec: str | None, to: str, lock_timeout: float, as_json: bool) -> None:
    """Move every credential to another store, each under its lock."""
    if to.strip().lower() == "auto":
        raise click.UsageError(
            "migrate --to needs a concrete store: keyring, file or postgresql://"
        )
    source, target = _open(store_spec), _open(to, option="--to")
    if type(source) is type(target) and repr(source) == repr(target):
        raise click.UsageError("the source and target are the same store")
    try:
        moved = migrate_store(source, target, lock_timeout=lock_timeout)
    except StoreError as exc:
        raise click.ClickException(exc.message) from None
    results = [{"key": str(r.key), "result": str(r)} for r in moved]
    if as_json:
        print_json({"from": store_label(source), "to": store_label(target), "results": results})
    else:
        print_table(
            ("credential", "result"),
            [(r["key"], r["result"]) for r in results],
            title=f"{store_label(source)} -> {store_label(target)}",
        )
    raise click.exceptions.Exit(EXIT_OK if all(r.ok for r in moved) else EXIT_ERROR)


COMMANDS: list[click.Command] = [doctor, store]
"""The commands this module adds to ``grantkeeper``'s CLI."""
