"""``doctor`` and ``store migrate``, driven through click's runner."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from grantkeeper import AutoStore, CredentialKey, FileStore, KeyringStore, PostgresStore
from grantkeeper._cli._stores import COMMANDS, doctor, store
from grantkeeper.testing import sample_record
from harness.postgres import PostgresCluster

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="real Secret Service on Linux"
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GRANTKEEPER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GRANTKEEPER_STORE", raising=False)
    monkeypatch.delenv("GRANTKEEPER_STORE_KEY", raising=False)
    return tmp_path / "home"


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


def test_doctor_reports_a_healthy_file_store(home: Path, key: CredentialKey) -> None:
    FileStore(home).write(key, sample_record("doctor-secret-token"), expected_version=None)
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
    AutoStore(home).write(key, sample_record(), expected_version=None)
    code, report = run(doctor)
    assert code == 0
    assert any(c["name"] == "keyring" and "available" in c["detail"] for c in report["checks"])
    assert report["credentials"][0]["store"] == "keyring"
    FileStore(home).write(key, sample_record("stray"), expected_version=None)
    code, report = run(doctor)
    assert code == 1
    [credential] = report["credentials"]
    assert credential["drift"] and credential["found_in"] == ["keyring", "file"]
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
    auto = AutoStore(home, keyring=KeyringStore(home, backend=_Locked()))
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


class _Locked:
    def get_password(self, service: str, username: str) -> str | None:
        raise RuntimeError("locked")

    def set_password(self, service: str, username: str, password: str) -> None:
        raise RuntimeError("locked")

    def delete_password(self, service: str, username: str) -> None:
        raise RuntimeError("locked")
