"""The short crash-chaos run: one SIGKILL at every stage, every store, real server.

The full run (``scripts/chaos``, 500 injections per store and policy) uses the same
engine; see ``tests/chaos/engine.py`` for the oracle.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from harness.authserver import AuthServer
from harness.postgres import PostgresCluster
from tests.chaos.engine import ANSWERED, NOTED, STAGES, Chaos, ChaosReport, StoreSpec

pytestmark = [pytest.mark.slow, pytest.mark.realserver]


AUTH_SERVER = {"access_ttl": 3600}


def run(auth_server: AuthServer, spec: StoreSpec, *, retry: bool) -> ChaosReport:
    chaos = Chaos(auth_server, spec, processes=3, retry_unknown_outcome=retry, seed=11)
    try:
        return chaos.run(len(STAGES))
    finally:
        chaos.close()


def check(report: ChaosReport, *, spent_losses_only: bool) -> None:
    assert report.violations == []
    assert all(f.injections == 1 for f in report.stages.values())
    assert report.total.reported == report.total.losses  # never a silent loss
    lost = {stage for stage, f in report.stages.items() if f.losses}
    assert lost <= (ANSWERED if spent_losses_only else NOTED)
    # The kill points outside the unknown-outcome window cost nothing.
    assert not lost & {"lock_wait", "after_read", "after_write"}


def test_file_store_without_the_retry_never_replays(
    auth_server: AuthServer, tmp_path: Path
) -> None:
    report = run(auth_server, StoreSpec("file", str(tmp_path)), retry=False)
    check(report, spent_losses_only=False)
    assert report.total.replays == 0
    # With a strict-rotation server, every kill after the note loses the grant: reported.
    assert {s for s, f in report.stages.items() if f.losses} == NOTED


def test_file_store_with_the_retry_loses_only_spent_tokens(
    auth_server: AuthServer, tmp_path: Path
) -> None:
    report = run(auth_server, StoreSpec("file", str(tmp_path)), retry=True)
    check(report, spent_losses_only=True)
    # The one documented retry, and only after a lost answer: never a loop.
    assert report.total.replays == report.total.losses == len(ANSWERED)


def test_postgresql_store(auth_server: AuthServer, tmp_path: Path) -> None:
    with PostgresCluster() as cluster:
        spec = StoreSpec(
            "postgresql", str(tmp_path), dsn=cluster.dsn, schema=f"c{uuid.uuid4().hex[:10]}"
        )
        report = run(auth_server, spec, retry=False)
    check(report, spent_losses_only=False)
    assert report.total.replays == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Secret Service on Linux only")
def test_keyring_store(auth_server: AuthServer, tmp_path: Path) -> None:
    spec = StoreSpec("keyring", str(tmp_path), service=f"grantkeeper-chaos-{uuid.uuid4().hex}")
    report = run(auth_server, spec, retry=False)
    check(report, spent_losses_only=False)
    assert report.total.replays == 0
