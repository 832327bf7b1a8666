"""Workers that share nothing but the PostgreSQL store: one refresh per rotation, no replay.

The PostgreSQL store keeps no file anywhere, and each worker gets a GRANTKEEPER_HOME of
its own besides, so only the database's rows and advisory locks can coordinate them.
This runs against the in-process fake token endpoint; the oidc-provider run comes with
its harness.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from grantkeeper import PostgresStore
from harness.fake_provider import FakeProvider
from harness.fleet import run_fleet
from harness.postgres import PostgresCluster
from tests.helpers import KEY, make_record

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    with PostgresCluster() as running:
        yield running


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    fake = FakeProvider()
    fake.serve()
    yield fake
    fake.close()


def worker_store(dsn: str, schema: str, homes: str) -> PostgresStore:
    """Each worker process: a home directory of its own, and the shared database."""
    os.environ["GRANTKEEPER_HOME"] = os.path.join(homes, str(os.getpid()))
    return PostgresStore(dsn, schema=schema)


def test_fleet_shares_only_postgresql(
    cluster: PostgresCluster, provider: FakeProvider, tmp_path: Path
) -> None:
    schema = f"fleet_{uuid.uuid4().hex[:10]}"
    access, refresh = provider.issue()
    seed = PostgresStore(cluster.dsn, schema=schema)
    seed.write(
        KEY,
        make_record(access, refresh, now=datetime.now(UTC), token_endpoint=provider.url),
        expected_version=None,
    )
    report = run_fleet(
        functools.partial(worker_store, cluster.dsn, schema, str(tmp_path)),
        KEY,
        processes=6,
        threads=4,
        rounds=6,
    )
    assert report.errors == []
    assert report.requests == 6 * 4 * 6
    assert [len(tokens) for tokens in report.tokens_per_round] == [1] * 6
    assert provider.refresh_calls == provider.rotations == 6
    assert provider.replays == 0
    seed.close()
