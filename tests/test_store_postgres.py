"""The PostgreSQL store against a real server that this module starts on loopback."""

from __future__ import annotations

import base64
import contextlib
import functools
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from grantkeeper import (
    LockLost,
    LockTimeout,
    PostgresStore,
    SessionLocksUnsupported,
    StoreConfigError,
    StoreCorrupt,
    StoreUnavailable,
)
from grantkeeper._stores.admin import diagnose_store as diagnose
from grantkeeper._stores.postgresql import SCHEMA_VERSION, TCP_USER_TIMEOUT_MS
from grantkeeper._stores.sealing import KEY_ENV, Sealer
from grantkeeper.testing import KEY, OTHER, StoreContract, StoreFactory, sample_record
from harness.pgbouncer import PgBouncer
from harness.postgres import PostgresCluster, _free_port


@pytest.fixture
def schema() -> str:
    """A schema of this test's own, so tests never see each other's rows or locks."""
    return f"gk_{uuid.uuid4().hex[:12]}"


def random_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


class TestPostgresStore(StoreContract):
    @pytest.fixture
    def store_factory(
        self, cluster: PostgresCluster, schema: str, monkeypatch: pytest.MonkeyPatch
    ) -> StoreFactory:
        monkeypatch.delenv(KEY_ENV, raising=False)
        return functools.partial(PostgresStore, cluster.dsn, schema=schema)


class TestEncryptedPostgresStore(StoreContract):
    @pytest.fixture
    def store_factory(
        self, cluster: PostgresCluster, schema: str, monkeypatch: pytest.MonkeyPatch
    ) -> StoreFactory:
        # Spawned children inherit the environment, and with it the key.
        monkeypatch.setenv(KEY_ENV, random_key())
        return functools.partial(PostgresStore, cluster.dsn, schema=schema)


def raw_rows(cluster: PostgresCluster, schema: str) -> list[tuple[str, bytes, str | None]]:
    with psycopg.connect(cluster.dsn) as conn:
        rows = conn.execute(f"SELECT key_id, record, sealed_with FROM {schema}.credentials")
        return [(k, bytes(r), s) for k, r, s in rows.fetchall()]


def test_creates_its_schema_with_timestamps(cluster: PostgresCluster, schema: str) -> None:
    store = PostgresStore(cluster.dsn, schema=schema)
    store.write(KEY, sample_record(), expected_version=None)
    with psycopg.connect(cluster.dsn) as conn:
        version = conn.execute(f"SELECT max(version) FROM {schema}.schema_version").fetchone()
        row = conn.execute(
            f"SELECT version, created_at <= updated_at FROM {schema}.credentials"
        ).fetchone()
    assert version == (SCHEMA_VERSION,)
    assert row == (1, True)
    # A second store (another worker) migrates nothing twice.
    assert PostgresStore(cluster.dsn, schema=schema).read(KEY) is not None


def test_a_schema_from_a_newer_grantkeeper_is_refused(
    cluster: PostgresCluster, schema: str
) -> None:
    PostgresStore(cluster.dsn, schema=schema).keys()
    with psycopg.connect(cluster.dsn) as conn:
        conn.execute(f"INSERT INTO {schema}.schema_version VALUES (99)")
    with pytest.raises(StoreConfigError, match="newer grantkeeper"):
        PostgresStore(cluster.dsn, schema=schema).read(KEY)


def test_records_are_plain_json_without_a_key(
    cluster: PostgresCluster, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    PostgresStore(cluster.dsn, schema=schema).write(
        KEY, sample_record("plain-visible-token"), expected_version=None
    )
    [(_, raw, sealed_with)] = raw_rows(cluster, schema)
    assert b"plain-visible-token" in raw and sealed_with is None


def test_encryption_at_rest(
    cluster: PostgresCluster, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, random_key())
    store = PostgresStore(cluster.dsn, schema=schema)
    assert store.encrypted
    store.write(KEY, sample_record("sealed-secret-token"), expected_version=None)
    store.write(OTHER, sample_record("other-secret-token"), expected_version=None)
    rows = raw_rows(cluster, schema)
    assert all(
        b"sealed-secret" not in raw and b"conformance-refresh" not in raw for _, raw, _ in rows
    )
    assert all(sealed_with for _, _, sealed_with in rows)

    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(StoreConfigError, match=KEY_ENV):
        PostgresStore(cluster.dsn, schema=schema).read(KEY)
    monkeypatch.setenv(KEY_ENV, random_key())
    with pytest.raises(StoreConfigError, match="another key"):
        PostgresStore(cluster.dsn, schema=schema).read(KEY)


def test_a_sealed_row_moved_to_another_credential_fails_closed(
    cluster: PostgresCluster, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, random_key())
    store = PostgresStore(cluster.dsn, schema=schema)
    store.write(KEY, sample_record("alice-token"), expected_version=None)
    store.write(OTHER, sample_record("bob-token"), expected_version=None)
    with psycopg.connect(cluster.dsn) as conn:
        conn.execute(
            f"UPDATE {schema}.credentials SET record = "
            f"(SELECT record FROM {schema}.credentials WHERE profile IS NULL) "
            "WHERE profile = 'work'"
        )
    with pytest.raises(StoreCorrupt, match="altered or moved"):
        store.read(OTHER)


def test_plain_rows_stay_readable_after_a_key_is_set(
    cluster: PostgresCluster, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    PostgresStore(cluster.dsn, schema=schema).write(KEY, sample_record(), expected_version=None)
    monkeypatch.setenv(KEY_ENV, random_key())
    store = PostgresStore(cluster.dsn, schema=schema)
    assert store.read(KEY) is not None
    store.write(KEY, sample_record("now-sealed-token"), expected_version=1)
    [(_, raw, sealed_with)] = raw_rows(cluster, schema)
    assert sealed_with and b"now-sealed-token" not in raw


def test_bad_keys_and_names_are_config_errors(cluster: PostgresCluster) -> None:
    with pytest.raises(StoreConfigError, match="32 bytes"):
        Sealer.from_text(base64.b64encode(b"short").decode())
    with pytest.raises(StoreConfigError, match="not base64"):
        Sealer.from_text("not base64 at all!")
    with pytest.raises(StoreConfigError, match="identifier"):
        PostgresStore(cluster.dsn, schema="Robert'); DROP TABLE students;--")
    with pytest.raises(StoreConfigError, match="malformed"):
        PostgresStore("postgresql://[::1")
    assert "k3y" not in repr(Sealer(b"k3y" * 10 + b"xx"))


def test_an_unreachable_server_is_a_typed_error_without_the_password(schema: str) -> None:
    dsn = f"postgresql://worker:hunter2-not-shown@127.0.0.1:{_free_port()}/fleet"
    store = PostgresStore(dsn, schema=schema)
    assert "hunter2" not in repr(store)
    for attempt in (
        lambda: store.read(KEY),
        lambda: store.keys(),
        lambda: store.lock(KEY).__enter__(),
    ):
        with pytest.raises(StoreUnavailable) as caught:
            attempt()
        assert "worker@127.0.0.1" in str(caught.value)
        assert "hunter2" not in str(caught.value)
        assert caught.value.retryable


def cut_grantkeeper_sessions(cluster: PostgresCluster, *, lock_holders_only: bool = False) -> None:
    """Terminate grantkeeper's server sessions (or only those holding an advisory lock)."""
    where = (
        "pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)"
        if lock_holders_only
        else "application_name = 'grantkeeper'"
    )
    with psycopg.connect(cluster.dsn, autocommit=True) as admin:
        admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {where}")


@contextlib.contextmanager
def two_stores(dsn: str, schema: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one schema, as two workers would have them; both closed at the end."""
    first, second = PostgresStore(dsn, schema=schema), PostgresStore(dsn, schema=schema)
    try:
        yield first, second
    finally:
        first.close()
        second.close()


@contextlib.contextmanager
def written_and_another(dsn: str, schema: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    """:func:`two_stores`, the first having written a sample record at :data:`KEY`."""
    with two_stores(dsn, schema) as (first, second):
        first.write(KEY, sample_record(), expected_version=None)
        yield first, second


def test_a_lost_connection_fails_one_call_then_heals(cluster: PostgresCluster, schema: str) -> None:
    store = PostgresStore(cluster.dsn, schema=schema)
    store.write(KEY, sample_record(), expected_version=None)
    cut_grantkeeper_sessions(cluster)
    with pytest.raises(StoreUnavailable):
        store.read(KEY)
    stored = store.read(KEY)
    assert stored is not None and stored.version == 1


def test_the_lock_goes_when_its_connection_is_cut(cluster: PostgresCluster, schema: str) -> None:
    # A worker whose connection the server (or network) drops loses the lock to the next.
    with two_stores(cluster.dsn, schema) as (first, second):
        with first.lock(KEY, timeout=5):
            with pytest.raises(LockTimeout), second.lock(KEY, timeout=0):
                pass
            cut_grantkeeper_sessions(cluster, lock_holders_only=True)
            with second.lock(KEY, timeout=30):
                pass


def _advisory_holders(cluster: PostgresCluster) -> list[int]:
    with psycopg.connect(cluster.dsn, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        ).fetchall()
    return [pid for (pid,) in rows]


def test_a_released_lock_frees_the_key_and_keeps_its_connection(
    cluster: PostgresCluster, schema: str
) -> None:
    with two_stores(cluster.dsn, schema) as (store, other):
        with store.lock(KEY, timeout=5):
            (first,) = _advisory_holders(cluster)
        assert _advisory_holders(cluster) == []
        with other.lock(KEY, timeout=0):  # released for real, not just on our side
            pass
        with store.lock(KEY, timeout=5):
            assert _advisory_holders(cluster) == [first]  # the same session, not a new one


def test_the_first_lock_takes_the_session_its_pooler_probe_opened(
    cluster: PostgresCluster, schema: str
) -> None:
    # Under a storm every connection a first lock makes is felt by the holder: the probe's
    # first session (nothing locked on it once the probe is done) is the one that locks.
    store = PostgresStore(cluster.dsn, schema=schema)
    store.write(KEY, sample_record(), expected_version=None)
    opened: list[psycopg.Connection[Any]] = []
    real_open = store._open

    def counting_open(*, for_lock: bool = False) -> psycopg.Connection[Any]:
        conn = real_open(for_lock=for_lock)
        if for_lock:
            opened.append(conn)
        return conn

    store._open = counting_open  # type: ignore[method-assign]
    with store.lock(KEY, timeout=5) as held:
        held.ensure_held()
        assert len(opened) == 2  # the probe's two, no third for the lock
        (locking,) = store._busy_lock_connections
        assert locking is opened[0] and opened[1].closed
        (holder,) = _advisory_holders(cluster)
        assert holder == locking.info.backend_pid  # the probe's lock was let go of
    with store.lock(KEY, timeout=5):
        assert len(opened) == 2
    store.close()


def test_a_kept_lock_connection_the_server_dropped_is_replaced(
    cluster: PostgresCluster, schema: str
) -> None:
    store = PostgresStore(cluster.dsn, schema=schema)
    with store.lock(KEY, timeout=5):
        pass
    cut_grantkeeper_sessions(cluster)
    with store.lock(KEY, timeout=5):
        assert len(_advisory_holders(cluster)) == 1
    with store.lock(OTHER, timeout=0):
        pass
    store.close()


# -- fencing: a holder that lost its lock can neither spend nor write ----------------------


def _fences(cluster: PostgresCluster, schema: str) -> list[int]:
    with psycopg.connect(cluster.dsn) as conn:
        return [f for (f,) in conn.execute(f"SELECT fence FROM {schema}.fences").fetchall()]


def test_every_acquisition_takes_a_higher_fence_stored_in_the_database(
    cluster: PostgresCluster, schema: str
) -> None:
    with two_stores(cluster.dsn, schema) as (one, two):
        seen = []
        for store in (one, two, one):
            with store.lock(KEY, timeout=5) as held:
                seen.append(held.fence)
                held.ensure_held()
        assert seen == [1, 2, 3]
        assert _fences(cluster, schema) == [3]
        with one.lock(OTHER, timeout=5) as held:
            assert held.fence == 1  # a counter per key


def test_a_lost_lock_is_noticed_on_its_own_session(cluster: PostgresCluster, schema: str) -> None:
    store = PostgresStore(cluster.dsn, schema=schema)
    with store.lock(KEY, timeout=5) as held:
        held.ensure_held()
        cut_grantkeeper_sessions(cluster, lock_holders_only=True)
        with pytest.raises(LockLost) as caught:
            held.ensure_held()
    assert caught.value.retryable
    store.close()


def test_a_holder_that_lost_its_lock_cannot_overwrite_a_newer_record(
    cluster: PostgresCluster, schema: str
) -> None:
    # The stale holder even re-read the record, so the version check alone would let it
    # through: only the fence, compared in the same UPDATE, refuses it.
    with written_and_another(cluster.dsn, schema) as (stale, newer):
        with stale.lock(KEY, timeout=5):
            cut_grantkeeper_sessions(cluster, lock_holders_only=True)
            with newer.lock(KEY, timeout=30):
                current = newer.read(KEY)
                assert current is not None
                newer.write(KEY, sample_record("newer"), expected_version=current.version)
            reread = stale.read(KEY)
            assert reread is not None
            with pytest.raises(LockLost):
                stale.write(KEY, sample_record("stale"), expected_version=reread.version)
            with pytest.raises(LockLost):
                stale.delete(KEY, expected_version=reread.version)
        kept = newer.read(KEY)
        assert kept is not None and kept.version == reread.version
        assert kept.record.access_token == sample_record("newer").access_token


def test_a_holder_whose_session_survived_still_writes_after_a_peer_only_looked(
    cluster: PostgresCluster, schema: str
) -> None:
    # Fencing refuses writes over *newer writes*, not over a peer that merely held the lock
    # and left the record alone: the holder's answer is authoritative and must be kept.
    with written_and_another(cluster.dsn, schema) as (holder, peer):
        with holder.lock(KEY, timeout=5):
            noted = holder.write(KEY, sample_record("noted"), expected_version=1)
            cut_grantkeeper_sessions(cluster, lock_holders_only=True)
            with peer.lock(KEY, timeout=30):
                assert peer.read(KEY) is not None
            assert holder.write(KEY, sample_record("answer"), expected_version=noted) == noted + 1


def test_lock_sessions_override_a_short_server_idle_timeout(cluster: PostgresCluster) -> None:
    # A DBA's idle_session_timeout shorter than a provider call would end the lock's session
    # mid-call; lock connections set their own (LOCK_IDLE_SESSION_TIMEOUT_MS).
    database = f"idle_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(cluster.dsn, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {database}")
        admin.execute(f"ALTER DATABASE {database} SET idle_session_timeout = '100ms'")
    dsn = cluster.dsn.rsplit("/", 1)[0] + f"/{database}"
    store = PostgresStore(dsn, schema="gk")
    idle = threading.Event()
    with store.lock(KEY, timeout=5) as held:
        # Idle on the lock session ten times longer than the server allows its sessions.
        idle.wait(1.0)
        held.ensure_held()
    store.close()


# -- refuse what cannot work: a pooler that does not keep sessions -------------------------


def test_a_transaction_pooling_pgbouncer_is_refused_with_the_fix(
    cluster: PostgresCluster, schema: str
) -> None:
    with PgBouncer(cluster, pool_mode="transaction") as bouncer:
        store = PostgresStore(bouncer.dsn, schema=schema)
        store.write(KEY, sample_record(), expected_version=None)  # plain statements work
        with pytest.raises(SessionLocksUnsupported) as caught, store.lock(KEY, timeout=5):
            pytest.fail("a lock was granted through a transaction-pooling PgBouncer")
        assert "pool_mode = session" in str(caught.value)
        assert isinstance(caught.value, StoreConfigError) and not caught.value.retryable
        assert store._idle_lock_connections == []  # the probe's sessions were not kept
        (check,) = [c for c in diagnose(store).checks if c.name == "session locks"]
        assert not check.ok and "pool_mode = session" in check.detail  # grantkeeper doctor
        store.close()
    plain = PostgresStore(cluster.dsn, schema=schema)
    (direct,) = [c for c in diagnose(plain).checks if c.name == "session locks"]
    assert direct.ok
    plain.close()


def test_a_session_pooling_pgbouncer_keeps_locks_and_fences(
    cluster: PostgresCluster, schema: str
) -> None:
    with PgBouncer(cluster, pool_mode="session") as bouncer:
        with two_stores(bouncer.dsn, schema) as (one, two):
            with one.lock(KEY, timeout=5) as held:
                held.ensure_held()
                with pytest.raises(LockTimeout), two.lock(KEY, timeout=0):
                    pass
            with two.lock(KEY, timeout=5) as again:
                assert again.fence == held.fence + 1


def test_every_connection_bounds_a_cut_network_unless_the_dsn_says_otherwise(
    cluster: PostgresCluster, schema: str
) -> None:
    # A statement on a cut network must not wait for the kernel's ~15 minutes of
    # retransmissions (tests/test_fleet_hosts.py cuts a host off for real): the data
    # connection, like each lock connection, gives up after tcp_user_timeout.
    store = PostgresStore(cluster.dsn, schema=schema)
    store.write(KEY, sample_record(), expected_version=None)
    with store.lock(KEY):
        connections = [store._conn, *store._busy_lock_connections]
        assert len(connections) == 2
        for conn in connections:
            assert conn is not None
            parameters = conn.info.get_parameters()
            assert parameters["tcp_user_timeout"] == str(TCP_USER_TIMEOUT_MS)
            assert parameters["keepalives_idle"] == "10"
    store.close()
    own = PostgresStore(f"{cluster.dsn}?tcp_user_timeout=60000&keepalives_idle=30", schema=schema)
    assert own.read(KEY) is not None
    assert own._conn is not None
    parameters = own._conn.info.get_parameters()
    assert (parameters["tcp_user_timeout"], parameters["keepalives_idle"]) == ("60000", "30")
    own.close()
