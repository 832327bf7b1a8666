"""``doctor`` and ``store migrate``, driven through click's runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from grantkeeper import (
    AuthState,
    AutoStore,
    CredentialKey,
    FileStore,
    KeyringStore,
    PostgresStore,
    ServerConfig,
    StoreConfigError,
    auth_status,
    diagnose_store,
    migrate_store,
)
from grantkeeper._cli._stores import COMMANDS, doctor, store
from grantkeeper.testing import MemoryKeyring, sample_record
from harness.postgres import PostgresCluster

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="real Secret Service on Linux"
)


@pytest.fixture(autouse=True)
def default_store(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """These commands run on the default store (auto), unless a test names another."""
    monkeypatch.delenv("GRANTKEEPER_STORE", raising=False)


@pytest.fixture
def key() -> Iterator[CredentialKey]:
    """A server of this test's own: the CI keyring is shared by the whole run."""
    made = CredentialKey.for_server(f"https://{uuid.uuid4().hex[:10]}.example.test/mcp")
    yield made


def run(command: click.Command, *args: str) -> tuple[int, Any]:
    result = CliRunner().invoke(command, [*args, "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, json.loads(result.output)


def test_commands_are_exported() -> None:
    assert {c.name for c in COMMANDS} == {"doctor", "store"}


def made_by_grantkeeper(home: Path) -> Path:
    """``home``, gone again: the store makes it, private, and doctor checks the mode it
    gave it (the suite's ``home`` fixture makes one 0700 itself)."""
    home.rmdir()
    return home


def test_doctor_reports_a_healthy_file_store(home: Path, key: CredentialKey) -> None:
    FileStore(made_by_grantkeeper(home)).write(
        key, sample_record("doctor-secret-token"), expected_version=None
    )
    code, report = run(doctor, "--store", "file")
    assert code == 0 and report["healthy"]
    [credential] = report["credentials"]
    assert credential["key"] == str(key)
    assert (credential["store"], credential["version"], credential["lock"]) == ("file", 1, "free")
    assert "doctor-secret" not in json.dumps(report)
    human = CliRunner().invoke(doctor, ["--store", "file"])
    assert human.exit_code == 0 and key.server_url[:20] in human.output


def test_doctor_flags_loose_permissions_with_the_fix(home: Path, key: CredentialKey) -> None:
    FileStore(home).write(key, sample_record(), expected_version=None)
    (home / "credentials").chmod(0o755)
    code, report = run(doctor, "--store", "file")
    assert code == 1 and not report["healthy"]
    bad = [c for c in report["checks"] if not c["ok"]]
    assert any("chmod 700" in c["detail"] for c in bad)


def test_doctor_shows_a_held_lock(home: Path, key: CredentialKey) -> None:
    files = FileStore(home)
    files.write(key, sample_record(), expected_version=None)
    with files.lock(key):
        code, report = run(doctor, "--store", "file")
    assert code == 0
    assert report["credentials"][0]["lock"].startswith("held")


@linux_only
def test_doctor_reports_placements_and_drift(home: Path, key: CredentialKey) -> None:
    AutoStore(made_by_grantkeeper(home)).write(key, sample_record(), expected_version=None)
    code, report = run(doctor)
    assert code == 0
    assert any(c["name"] == "keyring" and "available" in c["detail"] for c in report["checks"])
    assert report["credentials"][0]["store"] == "keyring"
    FileStore(home).write(key, sample_record("stray"), expected_version=None)
    code, report = run(doctor)
    assert code == 1
    [credential] = report["credentials"]
    assert credential["drift"] and credential["found_in"] == ["keyring", "file"]
    # On a terminal the fix is one whole line under the table, named by its credential.
    from harness.terminal import run_on_terminal

    drawn, code = run_on_terminal(
        [sys.executable, "-m", "grantkeeper", "doctor"], {**os.environ, "NO_COLOR": "1"}
    )
    lines = drawn.replace("\r\n", "\n").splitlines()
    assert code == 1 and f"{key}: run grantkeeper store migrate" in lines, drawn
    KeyringStore(home).delete(key)


def test_doctor_reports_an_unreachable_database(home: Path) -> None:
    code, report = run(doctor, "--store", "postgresql://worker:hunter2@127.0.0.1:1/db")
    assert code == 1
    assert any(c["name"] == "store reachable" and not c["ok"] for c in report["checks"])
    assert "hunter2" not in json.dumps(report)


def test_an_unknown_store_is_a_usage_error(home: Path) -> None:
    result = CliRunner().invoke(doctor, ["--store", "floppy"])
    assert result.exit_code == 2 and "use auto, file, keyring" in result.output


@linux_only
def test_migrate_file_to_keyring_and_auto_follows(home: Path, key: CredentialKey) -> None:
    record = sample_record("migrated-token")
    auto = AutoStore(home, keyring=KeyringStore(home, backend=MemoryKeyring(locked=True)))
    auto.write(key, record, expected_version=None)  # keyring locked: placed in the file
    assert auto.placement(key) == "file"
    code, report = run(store, "migrate", "--to", "keyring")
    assert code == 0 and report["results"] == [{"key": str(key), "result": "moved"}]
    assert FileStore(home).keys() == []
    stored = KeyringStore(home).read(key)
    assert stored is not None and stored.record == record
    assert AutoStore(home).placement(key) == "keyring"
    # Running it again finds nothing left to move.
    code, report = run(store, "migrate", "--to", "keyring")
    assert code == 0
    KeyringStore(home).delete(key)


def test_migrate_waits_for_the_lock_and_reports_a_timeout(home: Path, key: CredentialKey) -> None:
    files = FileStore(home)
    files.write(key, sample_record(), expected_version=None)
    with files.lock(key):
        code, report = run(
            store, "migrate", "--store", "file", "--to", "keyring", "--lock-timeout", "0.1"
        )
    assert code == 1
    assert report["results"][0]["result"].startswith("failed: the lock of")
    assert files.keys() == [key]


def test_migrate_to_postgresql_and_back(home: Path, key: CredentialKey) -> None:
    record = sample_record("fleet-token")
    FileStore(home).write(key, record, expected_version=None)
    with PostgresCluster() as cluster:
        code, report = run(store, "migrate", "--store", "file", "--to", cluster.dsn)
        assert code == 0 and report["results"][0]["result"] == "moved"
        pg = PostgresStore(cluster.dsn)
        stored = pg.read(key)
        assert stored is not None and stored.record == record
        assert FileStore(home).keys() == []
        code, report = run(store, "migrate", "--store", cluster.dsn, "--to", "file")
        assert code == 0
        pg.close()
    stored = FileStore(home).read(key)
    assert stored is not None and stored.record == record


def test_migrate_refuses_to_overwrite_a_different_record(home: Path, key: CredentialKey) -> None:
    FileStore(home).write(key, sample_record("in-file"), expected_version=None)
    keyring = KeyringStore(home)
    if not keyring.available():
        pytest.skip("needs a keyring")
    keyring.write(key, sample_record("in-keyring"), expected_version=None)
    code, report = run(store, "migrate", "--store", "file", "--to", "keyring")
    assert code == 1 and report["results"][0]["result"].startswith("conflict")
    assert FileStore(home).keys() == [key]
    keyring.delete(key)


# -- migrate keeps the placements true, both ways -----------------------------------------

NO_KEYRING = {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}


def grantkeeper(home: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, Any]:
    """Run the real ``grantkeeper`` command, as a user would, and parse its JSON."""
    result = subprocess.run(
        [sys.executable, "-m", "grantkeeper", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GRANTKEEPER_HOME": str(home), **(env or {})},
    )
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def status_of_key(home: Path, key: CredentialKey, env: dict[str, str] | None = None) -> str:
    code, rows = grantkeeper(home, "status", env=env)
    [row] = [r for r in rows if r["url"] == key.server_url]
    assert (code == 0) == (row["state"] == "oauth"), rows
    return str(row["state"])


@linux_only
@pytest.mark.parametrize(
    ("source", "token"),
    [
        (["--store", "keyring"], "keyring-to-file"),
        # The exact path: no --store (Auto), the credential placed in the keyring.
        ([], "auto-to-file"),
    ],
    ids=["keyring", "default-auto-store"],
)
def test_migrate_from_the_keyring_to_file_moves_the_placement_too(
    home: Path, key: CredentialKey, source: list[str], token: str
) -> None:
    AutoStore(home).write(key, sample_record(token), expected_version=None)
    assert AutoStore(home).placement(key) == "keyring"
    code, report = grantkeeper(home, "store", "migrate", *source, "--to", "file")
    assert code == 0 and report["results"] == [{"key": str(key), "result": "moved"}]
    assert AutoStore(home).placement(key) == "file"
    assert KeyringStore(home).read(key) is None
    # The credential is in the file, and status finds it there with or without a keyring.
    assert status_of_key(home, key) == "oauth"
    assert status_of_key(home, key, env=NO_KEYRING) == "oauth"


@linux_only
def test_migrate_file_to_keyring_moves_the_placement_too(home: Path, key: CredentialKey) -> None:
    auto = AutoStore(home, keyring=KeyringStore(home, backend=MemoryKeyring(locked=True)))
    auto.write(key, sample_record("file-to-keyring"), expected_version=None)
    assert auto.placement(key) == "file"
    code, report = grantkeeper(home, "store", "migrate", "--store", "file", "--to", "keyring")
    assert code == 0 and report["results"] == [{"key": str(key), "result": "moved"}]
    assert AutoStore(home).placement(key) == "keyring"
    assert FileStore(home).keys() == []
    assert status_of_key(home, key) == "oauth"
    KeyringStore(home).delete(key)


@linux_only
def test_the_library_migration_keeps_auto_mode_following_the_credential(
    home: Path, key: CredentialKey
) -> None:
    service = f"grantkeeper-test-{uuid.uuid4().hex[:12]}"
    keyring = KeyringStore(home, service=service)
    with_keyring = AutoStore(home, keyring=keyring)
    without_keyring = AutoStore(
        home, keyring=KeyringStore(home, backend=MemoryKeyring(locked=True))
    )
    server = ServerConfig(key.server_url)
    with_keyring.write(key, sample_record("library-migrated"), expected_version=None)

    [result] = migrate_store(keyring, FileStore(home))
    assert (result.key, result.outcome, result.ok) == (key, "moved", True)
    for auto in (with_keyring, without_keyring, AutoStore(home, keyring=keyring)):
        assert auth_status(server, auto).state is AuthState.OAUTH
    assert with_keyring.placement(key) == "file"

    [result] = migrate_store(FileStore(home), keyring)
    assert result.outcome == "moved"
    assert with_keyring.placement(key) == "keyring"
    assert auth_status(server, AutoStore(home, keyring=keyring)).state is AuthState.OAUTH
    assert FileStore(home).keys() == []
    keyring.delete(key)


def test_migrating_to_postgresql_forgets_the_local_placement(
    home: Path, key: CredentialKey
) -> None:
    FileStore(home).write(key, sample_record("to-the-fleet"), expected_version=None)
    auto = AutoStore(home, keyring=KeyringStore(home, backend=MemoryKeyring(locked=True)))
    assert auto.read(key) is not None and auto.placement(key) == "file"
    with PostgresCluster() as cluster:
        pg = PostgresStore(cluster.dsn)
        try:
            [result] = migrate_store(FileStore(home), pg)
            assert result.outcome == "moved"
            assert auto.placement(key) is None
            [back] = migrate_store(pg, FileStore(home))
            assert back.outcome == "moved" and auto.placement(key) == "file"
        finally:
            pg.close()


def test_migrate_refuses_auto_mode_as_the_target(home: Path) -> None:
    with pytest.raises(StoreConfigError, match="concrete target"):
        migrate_store(FileStore(home), AutoStore(home))


def test_diagnosis_is_a_library_function(home: Path, key: CredentialKey) -> None:
    FileStore(home).write(key, sample_record("diagnosed-secret"), expected_version=None)
    report = diagnose_store(FileStore(home))
    assert report.healthy
    [credential] = report.credentials
    assert (credential.key, credential.version, credential.lock) == (str(key), 1, "free")
    assert "diagnosed-secret" not in repr(report)
