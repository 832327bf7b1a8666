"""Workers that share nothing but the PostgreSQL store: one refresh per rotation, no replay.

The PostgreSQL store keeps no file anywhere, and each worker gets a GRANTKEEPER_HOME of
its own besides, so only the database's rows and advisory locks can coordinate them.
It runs against the in-process fake token endpoint for speed, and against the real
oidc-provider, whose counters prove one refresh per rotation and no reuse.
"""

from __future__ import annotations

import functools
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from grantkeeper import CredentialKey, Keeper, PostgresStore
from grantkeeper.testing import sample_record
from harness.authserver import AuthServer
from harness.fake_provider import FakeProvider
from harness.fleet import run_fleet
from harness.postgres import PostgresCluster
from harness.real_login import log_in
from tests.helpers import KEY

pytestmark = pytest.mark.slow


def worker_store(dsn: str, schema: str, homes: str) -> PostgresStore:
    """Each worker process: a home directory of its own, and the shared database."""
    os.environ["GRANTKEEPER_HOME"] = os.path.join(homes, str(os.getpid()))
    return PostgresStore(dsn, schema=schema)


def test_fleet_shares_only_postgresql(
    cluster: PostgresCluster, served_provider: FakeProvider, tmp_path: Path
) -> None:
    schema = f"fleet_{uuid.uuid4().hex[:10]}"
    access, refresh = served_provider.issue()
    seed = PostgresStore(cluster.dsn, schema=schema)
    seed.write(
        KEY,
        sample_record(access, refresh, now=datetime.now(UTC), token_endpoint=served_provider.url),
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
    assert served_provider.refresh_calls == served_provider.rotations == 6
    assert served_provider.replays == 0
    seed.close()


def test_fleet_shares_only_postgresql_against_the_real_authorization_server(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    resource = "http://127.0.0.1:9/mcp"
    key = CredentialKey.for_server(resource, "pg-fleet")
    schema = f"fleet_{uuid.uuid4().hex[:10]}"
    seed = PostgresStore(cluster.dsn, schema=schema)
    with AuthServer(resources=[resource]) as server:
        log_in(server, seed, key, resource=resource)
        server.reset_stats()
        rounds = 6
        report = run_fleet(
            functools.partial(worker_store, cluster.dsn, schema, str(tmp_path)),
            key,
            processes=8,
            threads=4,
            rounds=rounds,
        )
        stats = server.stats()
        assert report.errors == []  # every call succeeded
        assert report.requests == 8 * 4 * rounds
        assert [len(tokens) for tokens in report.tokens_per_round] == [1] * rounds
        assert stats["refresh_success"] == rounds  # provider refreshes == rotations
        assert stats["replays"] == 0 and stats["refresh_errors"] == []
        assert all(server.is_active(t) for tokens in report.tokens_per_round for t in tokens)
    stored = seed.read(key)
    assert stored is not None and stored.record.access_token in report.tokens_per_round[-1]
    seed.close()


def test_a_lost_connection_after_the_answer_keeps_b_and_never_replays_a(
    cluster: PostgresCluster,
) -> None:
    resource = "http://127.0.0.1:9/mcp"
    key = CredentialKey.for_server(resource, "pg-lost-write")
    store = PostgresStore(cluster.dsn, schema=f"lost_{uuid.uuid4().hex[:10]}")

    # Once, after the provider answered: the database drops the connection the write will
    # use. The advisory lock lives on a connection of its own, which stays up.
    cut_data_connection = cluster.end_sessions_once(
        "after_provider",
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'grantkeeper' AND pid NOT IN "
        "(SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)",
    )

    with AuthServer(resources=[resource]) as server:
        a = log_in(server, store, key, resource=resource)
        now = [datetime.now(UTC)]
        with Keeper(store, key, clock=lambda: now[0], checkpoint=cut_data_connection) as keeper:
            assert keeper.access_token() == a.access_token
            now[0] = datetime(2100, 1, 1, tzinfo=UTC)
            b = keeper.credential()
            assert keeper.persistence_pending and server.is_active(b.access_token)
            assert keeper.access_token() == b.access_token  # B serves from memory
            with Keeper(store, key, clock=lambda: now[0]) as sibling:
                # A is in the store, and it is spent: a Keeper of this process shares the
                # holder's B and stores it on a new connection, never spending A.
                assert sibling.credential().access_token == b.access_token
                assert not sibling.persistence_pending and not keeper.persistence_pending
            now[0] = datetime(2101, 1, 1, tzinfo=UTC)
            c = keeper.credential()  # B is stored: C is refreshed from it
            assert not keeper.persistence_pending
        stats = server.stats()
        assert stats["refresh_success"] == 2 and stats["replays"] == 0
        assert server.is_active(c.access_token)
    stored = store.read(key)
    assert stored is not None and stored.record.access_token == c.access_token
    store.close()
