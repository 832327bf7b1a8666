"""``grantkeeper doctor`` and ``grantkeeper store migrate``: store health, and moving stores.

Exit codes: 0 all is well; 1 a problem was found (or a credential was not moved);
2 bad usage or an unknown store.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import click

from .._auto_store import AutoStore
from .._errors import GrantkeeperError, LockTimeout, StoreError
from .._file_store import FileStore
from .._keyring_store import KeyringStore
from .._postgres_store import PostgresStore
from .._record import CredentialKey
from .._store import Store
from ._output import print_json, print_table, store_label
from ._policy import (
    EXIT_ERROR,
    EXIT_OK,
    handle_errors,
    importable,
    json_option,
    open_store_for,
    store_option,
    verbose_option,
)

DEFAULT_MIGRATE_LOCK_TIMEOUT = 30.0
"""Seconds ``migrate`` waits for each credential's lock: one refresh takes at most ~30 s."""


def _open(spec: str | None, option: str = "--store") -> Store:
    return open_store_for(spec, option=option)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class CredentialReport:
    key: str
    server_url: str
    profile: str | None
    store: str | None
    found_in: list[str]
    drift: bool
    version: int | None
    lock: str
    problem: str | None = None


@dataclass
class Report:
    store: str
    checks: list[Check] = field(default_factory=list)
    credentials: list[CredentialReport] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return all(c.ok for c in self.checks) and not any(
            c.drift or c.problem for c in self.credentials
        )


def _lock_state(store: Store, key: CredentialKey) -> str:
    try:
        with store.lock(key, timeout=0):
            return "free"
    except LockTimeout:
        return "held (a refresh or login may be running)"
    except StoreError as exc:
        return f"error: {exc.message}"


def _permission_checks(files: FileStore) -> list[Check]:
    checks = []
    for path in (files.home, files.directory):
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            checks.append(Check(f"permissions {path}", True, "not created yet"))
            continue
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISLNK(info.st_mode):
            checks.append(Check(f"permissions {path}", False, "is a symlink"))
        elif info.st_uid != os.getuid():
            checks.append(Check(f"permissions {path}", False, "owned by another user"))
        elif mode & 0o077:
            checks.append(
                Check(f"permissions {path}", False, f"mode {mode:o}; run: chmod 700 {path}")
            )
        else:
            checks.append(Check(f"permissions {path}", True, f"mode {mode:o}"))
    try:
        problems = files.problems()
    except StoreError as exc:
        problems = [exc.message]
    checks.append(
        Check("credential files", not problems, "; ".join(problems) or "all readable and private")
    )
    return checks


def _keyring_check(keyring: KeyringStore) -> Check:
    if keyring.available():
        return Check("keyring", True, f"available ({keyring.backend_name()})")
    if not importable("keyring"):
        # A plain install has no keyring package: say how to get one, not just "unavailable".
        return Check(
            "keyring",
            True,
            "not installed: Auto mode stores new credentials in files; for the OS keyring "
            "run: pip install 'grantkeeper[keyring]'",
        )
    return Check("keyring", True, "unavailable: Auto mode stores new credentials in files")


def _servers_check() -> Check:
    from .._servers import loose_permissions, servers_file

    problem = loose_permissions()
    if problem is not None:
        return Check("servers file", False, problem)
    path = servers_file()
    return Check("servers file", True, f"{path}: private" if path.exists() else "none yet")


def diagnose(store: Store) -> Report:
    """Everything ``doctor`` reports about ``store``."""
    report = Report(store=repr(store))
    if isinstance(store, AutoStore | FileStore | KeyringStore):
        files = store.file if isinstance(store, AutoStore) else FileStore(store.home)
        report.checks.extend(_permission_checks(files))
    if isinstance(store, AutoStore | KeyringStore):
        keyring = store.keyring if isinstance(store, AutoStore) else store
        report.checks.append(_keyring_check(keyring))
    if isinstance(store, PostgresStore):
        report.checks.append(
            Check("encryption at rest", True, "on" if store.encrypted else "off (records in plain)")
        )
    try:
        if isinstance(store, AutoStore):
            entries: list[tuple[CredentialKey, str | None, list[str], bool]] = [
                (p.key, p.placed, list(p.found_in), p.drift) for p in store.placements()
            ]
        else:
            entries = [(k, store.name, [store.name], False) for k in store.keys()]
        report.checks.append(Check("store reachable", True, store.name))
    except StoreError as exc:
        report.checks.append(Check("store reachable", False, exc.message))
        return report
    for key, placed, found_in, drift in entries:
        entry = CredentialReport(
            str(key), key.server_url, key.profile, placed, found_in, drift, None, "unknown"
        )
        try:
            stored = store.read(key)
            entry.version = stored.version if stored else None
        except GrantkeeperError as exc:
            entry.problem = str(exc)
        entry.lock = _lock_state(store, key)
        report.credentials.append(entry)
    return report


def _print_report(report: Report, label: str) -> None:
    click.echo(f"store: {label}")
    print_table(
        ("check", "ok", "detail"),
        [(check.name, "yes" if check.ok else "NO", check.detail) for check in report.checks],
        title="health",
        styles={"ok": {"NO": "red"}},
    )
    print_table(
        ("credential", "store", "found in", "version", "lock", "problem"),
        [
            (
                c.key,
                c.store or "-",
                ", ".join(c.found_in) or "-",
                str(c.version or "-"),
                c.lock,
                c.problem or ("drift: run grantkeeper store migrate" if c.drift else "-"),
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
    report = diagnose(store)
    report.checks.append(_servers_check())
    label = store_label(store)
    if as_json:
        print_json({"healthy": report.healthy, **asdict(report), "store": label})
    else:
        _print_report(report, label)
    raise click.exceptions.Exit(EXIT_OK if report.healthy else EXIT_ERROR)


# -- migrate ------------------------------------------------------------------------------


def _share_lock(source: Store, target: Store) -> bool:
    """Whether both stores use the same file lock, so taking both would wait on ourselves."""
    local = (AutoStore, FileStore, KeyringStore)
    if not (isinstance(source, local) and isinstance(target, local)):
        return False
    return source.home == target.home


@contextlib.contextmanager
def _locked(source: Store, target: Store, key: CredentialKey, timeout: float) -> Iterator[None]:
    with source.lock(key, timeout=timeout):
        if _share_lock(source, target):
            yield
        else:
            with target.lock(key, timeout=timeout):
                yield


def _concrete(source: Store, key: CredentialKey) -> Store:
    """The store that really holds ``key`` (Auto mode resolves to keyring or file)."""
    if isinstance(source, AutoStore):
        source.read(key)  # places an unplaced credential where it is
        placed = source.placement(key)
        if placed is not None:
            return source.backend(placed)
    return source


def migrate_one(source: Store, target: Store, key: CredentialKey, timeout: float) -> str:
    """Move ``key`` under its lock(s); return what happened."""
    with _locked(source, target, key, timeout):
        holder = _concrete(source, key)
        if holder.name == target.name and not isinstance(target, PostgresStore):
            return "already there"
        stored = holder.read(key)
        if stored is None:
            return "gone"
        existing = target.read(key)
        if existing is None:
            target.write(key, stored.record, expected_version=None)
        elif existing.record != stored.record:
            return "conflict: the target holds a different record; left both in place"
        if isinstance(source, AutoStore):
            where = target.name if target.name in ("keyring", "file") else None
            source.place(key, where, replace=True)  # type: ignore[arg-type]
        holder.delete(key, expected_version=stored.version)
        return "moved"


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
    results: list[dict[str, Any]] = []
    try:
        keys = source.keys()
    except StoreError as exc:
        raise click.ClickException(exc.message) from None
    for key in keys:
        try:
            outcome = migrate_one(source, target, key, lock_timeout)
        except GrantkeeperError as exc:
            outcome = f"failed: {exc}"
        results.append({"key": str(key), "result": outcome})
    ok = all(r["result"] in ("moved", "already there", "gone") for r in results)
    if as_json:
        click.echo(
            json.dumps({"from": store_label(source), "to": store_label(target), "results": results})
        )
    else:
        print_table(
            ("credential", "result"),
            [(r["key"], r["result"]) for r in results],
            title=f"{store_label(source)} -> {store_label(target)}",
        )
    raise click.exceptions.Exit(EXIT_OK if ok else EXIT_ERROR)


COMMANDS: list[click.Command] = [doctor, store]
"""The commands this module adds to ``grantkeeper``'s CLI."""
