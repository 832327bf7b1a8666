"""A fleet across hosts: in-flight notes from elsewhere are leased, never guessed dead.

The first tests need no privileges: notes written under another host identity (boot id
plus pid namespace), in a file store and in PostgreSQL. The rest run workers as separate
hosts for real (``harness/hosts.py``): network namespaces on a bridge, each worker in its
own UTS and pid namespace with its own GRANTKEEPER_HOME, PostgreSQL and the real
oidc-provider reachable only over the bridge. They need root, as CI has.
"""

from __future__ import annotations

import os
import queue
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest

from grantkeeper import (
    Credential,
    CredentialKey,
    FileStore,
    Keeper,
    LockLost,
    PersistencePending,
    PostgresStore,
)
from grantkeeper._liveness import host_identity
from grantkeeper._record import RefreshIntent, record_from_json, record_to_json
from grantkeeper.testing import sample_record
from harness.authserver import AuthServer
from harness.fake_provider import FakeProvider
from harness.hosts import GatedProxy, HostAgent, HostNetwork, fleet_rounds, unavailable_reason
from harness.postgres import PostgresCluster
from harness.real_login import log_in, reroute
from tests.helpers import KEY, T0, StepClock, StoreWrapper

LEASE = timedelta(seconds=60)


# -- host identity and leases, in one process ---------------------------------------------


def test_a_note_keeps_its_lease_and_host_through_json_and_old_notes_load() -> None:
    record = sample_record("at-1", "rt-1", now=T0)
    fingerprint = record.refresh_fingerprint
    assert fingerprint is not None
    intent = RefreshIntent(
        fingerprint, 7, "box", T0, holder="h", host_id="boot/42", lease_until=T0 + LEASE
    )
    noted = record.replace(intent=intent)
    assert record_from_json(record_to_json(noted)) == noted
    legacy = record_to_json(noted)
    del legacy["intent"]["host_id"], legacy["intent"]["lease_until"]
    loaded = record_from_json(legacy).intent
    assert loaded is not None and (loaded.host_id, loaded.lease_until) == ("", None)


def _noted_elsewhere(store: FileStore | PostgresStore, provider: FakeProvider) -> None:
    """A credential whose refresh is in flight on another host with the same hostname and
    the same pid as ours (two containers of one pod): only the lease tells it is live."""
    access, refresh = provider.issue()
    record = sample_record(access, refresh, now=T0 - timedelta(hours=2))  # expired at T0
    fingerprint = record.refresh_fingerprint
    assert fingerprint is not None
    intent = RefreshIntent(
        fingerprint,
        os.getpid(),
        socket.gethostname(),
        T0,
        holder="the-other-container",
        host_id="another-boot/4026531836",
        lease_until=T0 + LEASE,
    )
    store.write(KEY, record.replace(intent=intent), expected_version=None)


def test_a_note_from_another_host_is_live_until_its_lease_expires(
    tmp_path: Path, provider: FakeProvider
) -> None:
    store = FileStore(tmp_path)
    _noted_elsewhere(store, provider)
    clock = StepClock(T0 + LEASE - timedelta(seconds=1))  # only a refresh could serve
    http = httpx.Client(transport=provider.transport())
    keeper = Keeper(store, KEY, http_client=http, clock=clock)
    with pytest.raises(PersistencePending):
        keeper.credential()
    assert provider.refresh_calls == 0  # A was not spent again
    clock.now = T0 + LEASE  # the lease ran out: the outcome is unknown (one guarded retry)
    keeper.credential()
    assert provider.refresh_calls == 1
    stored = store.read(KEY)
    assert stored is not None and stored.record.intent is None


def test_a_host_with_a_valid_token_serves_it_while_a_peer_elsewhere_is_in_flight(
    tmp_path: Path, provider: FakeProvider
) -> None:
    store = FileStore(tmp_path)
    access, refresh = provider.issue()
    store.write(KEY, sample_record(access, refresh, now=T0), expected_version=None)
    clock = StepClock()
    keeper = Keeper(
        store, KEY, http_client=httpx.Client(transport=provider.transport()), clock=clock
    )
    assert keeper.access_token() == access
    stored = store.read(KEY)
    assert stored is not None and stored.record.refresh_fingerprint is not None
    intent = RefreshIntent(
        stored.record.refresh_fingerprint,
        os.getpid(),
        socket.gethostname(),
        T0,
        holder="elsewhere",
        host_id="another-boot/1",
        lease_until=T0 + timedelta(hours=2),
    )
    store.write(KEY, stored.record.replace(intent=intent), expected_version=stored.version)
    clock.advance(3600 - 30)  # stale (a refresh is due) but still valid
    assert keeper.access_token() == access
    assert provider.refresh_calls == 0
    clock.advance(60)  # expired: nothing valid to serve, and A must not be spent
    with pytest.raises(PersistencePending):
        keeper.credential()
    assert provider.refresh_calls == 0


def test_a_lock_lost_before_the_spend_spends_nothing(tmp_path: Path) -> None:
    provider = FakeProvider()
    with PostgresCluster() as cluster:
        store = PostgresStore(cluster.dsn, schema=f"lost_{uuid.uuid4().hex[:10]}")
        access, refresh = provider.issue()
        original = sample_record(access, refresh, now=T0)
        store.write(KEY, original, expected_version=None)

        # After the note, before the spend: the lock's session ends (a failover, a
        # pg_terminate_backend, an idle timeout), and a peer may take the lock now.
        cut_lock_session = cluster.end_sessions_once(
            "before_provider", "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        )

        clock = StepClock()
        clock.advance(3600)
        http = httpx.Client(transport=provider.transport())
        keeper = Keeper(store, KEY, http_client=http, clock=clock, checkpoint=cut_lock_session)
        with pytest.raises(LockLost):
            keeper.credential()
        assert provider.refresh_calls == 0
        stored = store.read(KEY)
        assert stored is not None and stored.record == original  # the note was withdrawn
        assert keeper.credential().access_token != access  # the next transaction refreshes
        assert provider.refresh_calls == 1 and provider.replays == 0
        store.close()


class LeaseWatch(StoreWrapper):
    """A file store that reports each lease it writes, so a test can wait for renewals."""

    def __init__(self, inner: FileStore) -> None:
        super().__init__(inner)
        self.leases: queue.Queue[datetime] = queue.Queue()

    def write(self, key: CredentialKey, record: Credential, *, expected_version: int | None) -> int:
        version = self.inner.write(key, record, expected_version=expected_version)
        if record.intent is not None and record.intent.lease_until is not None:
            self.leases.put(record.intent.lease_until)
        return version


def test_the_lease_is_renewed_while_the_provider_call_runs(
    tmp_path: Path, provider: FakeProvider
) -> None:
    store = LeaseWatch(FileStore(tmp_path))
    access, refresh = provider.issue()
    store.write(KEY, sample_record(access, refresh, now=T0), expected_version=None)
    clock = StepClock()
    clock.advance(3600)
    leases: list[datetime] = []

    def slow_provider(form: dict[str, str]) -> None:
        # The call lasts until the note's lease has been renewed twice; time moves meanwhile.
        for _ in range(3):
            leases.append(store.leases.get(timeout=60))
            clock.advance(10)
        return None

    provider.faults.append(slow_provider)
    http = httpx.Client(transport=provider.transport())
    keeper = Keeper(store, KEY, http_client=http, clock=clock, lease=timedelta(seconds=0.3))
    keeper.credential()
    assert leases[1] > leases[0] and leases[2] > leases[1]  # renewed, each time later
    assert provider.refresh_calls == 1
    stored = store.read(KEY)
    assert stored is not None and stored.record.intent is None


# -- separate hosts for real ---------------------------------------------------------------

needs_hosts = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))

RESOURCE = "http://127.0.0.1:9/mcp"


@pytest.fixture(scope="module")
def network() -> Iterator[HostNetwork]:
    if unavailable_reason() is not None:
        pytest.skip(str(unavailable_reason()))
    net = HostNetwork(hosts=4)
    try:
        net.start()
        yield net
    finally:
        net.close()


@pytest.fixture(scope="module")
def bridged_cluster(network: HostNetwork) -> Iterator[PostgresCluster]:
    # Reachable only on the bridge: the hosts have no other way to the database.
    with PostgresCluster(listen=network.gateway, allow=network.cidr) as running:
        yield running


class Hosts:
    """Agents started by a test, all stopped when it ends."""

    def __init__(self, network: HostNetwork, cluster: PostgresCluster, root: Path) -> None:
        self.network, self.cluster, self.root = network, cluster, root
        self.schema = f"hosts_{uuid.uuid4().hex[:10]}"
        self.agents: list[HostAgent] = []

    def keeper(self, host: int, hostname: str, *, key: CredentialKey) -> HostAgent:
        agent = self.network.spawn(
            host,
            hostname,
            self.root / f"home-{len(self.agents)}",
            "keeper",
            "--key-url",
            key.server_url,
            "--key-profile",
            key.profile or "",
            schema=self.schema,
            dsn=self.cluster.dsn,
        )
        self.agents.append(agent)
        return agent

    def close(self) -> None:
        for agent in self.agents:
            agent.close()
        self.network.unexpose_all()


@pytest.fixture
def hosts(
    network: HostNetwork, bridged_cluster: PostgresCluster, tmp_path: Path
) -> Iterator[Hosts]:
    made = Hosts(network, bridged_cluster, tmp_path)
    try:
        yield made
    finally:
        made.close()


def _terminate(cluster: PostgresCluster, address: str, *, lock: bool) -> int:
    """End ``address``'s lock sessions (``lock``) or its data sessions; return how many."""
    holds = "IN" if lock else "NOT IN"
    with psycopg.connect(cluster.dsn, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'grantkeeper' AND client_addr = %s::inet "
            f"AND pid {holds} (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)",
            (address,),
        ).fetchall()
    return len(rows)


@needs_hosts
def test_each_host_has_its_own_identity_and_reaches_only_the_bridge(hosts: Hosts) -> None:
    key = CredentialKey.for_server(RESOURCE, "identity")
    one, two = hosts.keeper(0, "host-1", key=key), hosts.keeper(1, "host-2", key=key)
    first, second = one.call("identity"), two.call("identity")
    assert (first["hostname"], second["hostname"]) == ("host-1", "host-2")
    assert first["host_id"] != second["host_id"] != host_identity()
    assert first["host_id"].split("/")[0] == host_identity().split("/")[0]  # one kernel


@needs_hosts
@pytest.mark.parametrize(
    "names",
    [("host-1", "host-2"), ("pod", "pod")],
    ids=["two-hosts", "two-containers-one-hostname"],
)
def test_a_cut_data_connection_after_the_answer_never_makes_another_host_spend_a(
    hosts: Hosts, names: tuple[str, str]
) -> None:
    # "pod": two containers with one hostname, each its own pid namespace (the holder is pid
    # 1 in its own, like its peer): a live holder must be seen as live there too.
    key = CredentialKey.for_server(RESOURCE, f"cut-data-{names[0]}")
    with AuthServer(resources=[RESOURCE], access_ttl=600) as server:
        hosts.network.expose(server.port)
        seed = PostgresStore(hosts.cluster.dsn, schema=hosts.schema)
        a = log_in(server, seed, key, resource=RESOURCE)
        one, two = hosts.keeper(0, names[0], key=key), hosts.keeper(1, names[1], key=key)
        first, second = one.call("identity"), two.call("identity")
        assert first["host_id"] != second["host_id"] and first["pid"] == second["pid"] == 1
        assert one.call("credential")["token"] == two.call("credential")["token"] == a.access_token
        server.reset_stats()
        for agent in (one, two):
            agent.call("clock", offset=3600)  # A is expired everywhere

        one.call("pause_at", stage="after_provider")
        asked = one.send("credential")
        one.wait(event="paused")
        # The provider answered host 1 with B; now its data connection dies, so B's write
        # fails. Its lock session stays up.
        assert _terminate(hosts.cluster, hosts.network.addresses[0], lock=False) >= 1
        one.call("resume")
        answer = one.wait(id=asked)
        assert answer["ok"] and answer["pending"], answer
        b = answer["token"]

        refused = two.call("credential")
        assert not refused["ok"] and refused["error"] == "PersistencePending", refused
        assert server.stats()["refresh_success"] == 1  # host 2 did not spend A

        for agent in (one, two):
            agent.call("clock", offset=3600 + 600)  # B is expired too: host 1 heals, refreshes
        c = one.call("credential")
        assert c["ok"] and not c["pending"] and c["token"] != b, c
        assert two.call("credential")["token"] == c["token"]
        stats = server.stats()
        assert stats["refresh_success"] == 2 and stats["replays"] == 0
        assert stats["refresh_errors"] == [] and stats["code_success"] == 0  # no re-login
        assert server.is_active(c["token"])
        seed.close()


def _lock_freed(cluster: PostgresCluster, address: str, within: float = 90.0) -> bool:
    """Whether the server ends ``address``'s advisory lock sessions within ``within`` s."""
    deadline = time.monotonic() + within
    with psycopg.connect(cluster.dsn, autocommit=True) as admin:
        while True:
            held = admin.execute(
                "SELECT count(*) FROM pg_locks JOIN pg_stat_activity USING (pid) "
                "WHERE locktype = 'advisory' AND granted AND client_addr = %s::inet",
                (address,),
            ).fetchone()
            if held is not None and held[0] == 0:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)  # polling the server's own state, which no event announces


@needs_hosts
def test_a_write_on_a_cut_network_gives_up_within_the_tcp_user_timeout(hosts: Hosts) -> None:
    # Host 1's network vanishes after the provider answered: B's write is sent into the void.
    # The kernel would retransmit it for ~15 minutes (keepalives do not probe a connection
    # with data in flight), holding the store's mutex; tcp_user_timeout ends it in 25 s, B is
    # served pending, and stored once the network is back.
    key = CredentialKey.for_server(RESOURCE, "cut-network")
    with AuthServer(resources=[RESOURCE], access_ttl=600) as server:
        hosts.network.expose(server.port)
        seed = PostgresStore(hosts.cluster.dsn, schema=hosts.schema)
        a = log_in(server, seed, key, resource=RESOURCE)
        one = hosts.keeper(0, "host-1", key=key)
        assert one.call("credential")["token"] == a.access_token
        server.reset_stats()
        one.call("clock", offset=3600)  # A is expired
        one.call("pause_at", stage="before_write")
        asked = one.send("credential")
        one.wait(event="paused")
        hosts.network.cut(0)
        try:
            one.call("resume")
            # Within the agent's reply bound (120 s): the write's 25 s, then the lock
            # connection's unlock, which meets the same cut network.
            answer = one.wait(id=asked)
            # The server noticed the vanished holder too (its own keepalives on the lock
            # session): the lock is free, though nothing reached it to release it.
            assert _lock_freed(hosts.cluster, hosts.network.addresses[0])
        finally:
            hosts.network.restore(0)
        assert answer["ok"] and answer["pending"], answer
        b = answer["token"]
        assert server.is_active(b)
        stored = seed.read(key)
        assert stored is not None and stored.record.access_token == a.access_token

        one.call("clock", offset=3600 + 600)  # B expired too: B is stored, then refreshed
        c = one.call("credential")
        assert c["ok"] and not c["pending"] and c["token"] != b, c
        stats = server.stats()
        assert stats["refresh_success"] == 2 and stats["replays"] == 0, stats
        final = seed.read(key)
        assert final is not None and final.record.access_token == c["token"]
        seed.close()


@needs_hosts
@pytest.mark.parametrize("newer_login", [False, True], ids=["peer-only-looks", "newer-login"])
def test_a_lock_session_ended_mid_call_spends_a_once_and_overwrites_nothing_newer(
    hosts: Hosts, newer_login: bool
) -> None:
    key = CredentialKey.for_server(RESOURCE, f"cut-lock-{newer_login}")
    with AuthServer(resources=[RESOURCE], access_ttl=600) as server:
        proxy = GatedProxy("127.0.0.1", server.issuer)
        hosts.network.expose(server.port)
        hosts.network.expose(int(proxy.url.rsplit(":", 1)[1]))
        try:
            seed = PostgresStore(hosts.cluster.dsn, schema=hosts.schema)
            login = log_in(server, seed, key, resource=RESOURCE)
            reroute(seed, key, server.issuer, to=proxy.url)
            one, two = hosts.keeper(0, "host-1", key=key), hosts.keeper(1, "host-2", key=key)
            for agent in (one, two):
                assert agent.call("credential")["token"] == login.access_token
            server.reset_stats()
            for agent in (one, two):
                agent.call("clock", offset=3600)

            proxy.hold()
            asked = one.send("credential")
            assert proxy.arrived.wait(60)  # host 1's refresh of A is in flight, held
            assert _terminate(hosts.cluster, hosts.network.addresses[0], lock=True) == 1
            refused = two.call("credential")  # host 2 takes the free lock...
            assert not refused["ok"] and refused["error"] == "PersistencePending", refused
            if newer_login:
                newer = log_in(server, seed, key, resource=RESOURCE)
            proxy.release()
            answer = one.wait(id=asked)
            assert answer["ok"], answer
            stats = server.stats()
            assert stats["replays"] == 0 and stats["refresh_success"] == 1
            final = seed.read(key)
            assert final is not None
            if newer_login:
                # Host 1's B must not replace the newer login's record; both hosts move to it.
                assert answer["pending"]
                assert final.record.access_token == newer.access_token
                for agent in (one, two):
                    agent.call("clock", offset=0)
                for agent, held in ((one, answer["token"]), (two, login.access_token)):
                    moved = agent.call("credential", rejected=held)
                    assert moved["token"] == newer.access_token, moved
            else:
                assert not answer["pending"] and final.record.access_token == answer["token"]
                assert two.call("credential")["token"] == answer["token"]
            assert server.stats()["replays"] == 0
            seed.close()
        finally:
            proxy.close()


@needs_hosts
def test_a_storm_across_four_hosts_refreshes_once_per_rotation(hosts: Hosts) -> None:
    hosts_count, processes, threads, rounds = 4, 4, 4, 6
    key = CredentialKey.for_server(RESOURCE, "storm")
    with AuthServer(resources=[RESOURCE]) as server:
        hosts.network.expose(server.port)
        seed = PostgresStore(hosts.cluster.dsn, schema=hosts.schema)
        log_in(server, seed, key, resource=RESOURCE)
        server.reset_stats()
        agents = [
            hosts.network.spawn(
                number,
                f"storm-{number + 1}",
                hosts.root / f"storm-{number}",
                "fleet",
                "--key-url",
                key.server_url,
                "--key-profile",
                key.profile or "",
                "--processes",
                str(processes),
                "--threads",
                str(threads),
                "--rounds",
                str(rounds),
                schema=hosts.schema,
                dsn=hosts.cluster.dsn,
            )
            for number in range(hosts_count)
        ]
        hosts.agents += agents
        per_round, reports = fleet_rounds(agents, rounds)
        stats = server.stats()
        errors = [error for report in reports for error in report["errors"]]
        requests = sum(report["requests"] for report in reports)
        print(
            f"\nP6 fleet storm across hosts: {hosts_count} hosts x {processes} processes x "
            f"{threads} threads, {rounds} rotations: {requests} calls, {len(errors)} errors, "
            f"{stats['refresh_success']} provider refreshes, {stats['replays']} replays"
        )
        for number, report in enumerate(reports):
            waits = sorted(report["lock_waits"])
            p50, p99 = (
                (waits[len(waits) // 2], waits[min(len(waits) - 1, len(waits) * 99 // 100)])
                if waits
                else (0.0, 0.0)
            )
            print(
                f"  host {number + 1}: {len(waits)} locked transactions, "
                f"lock wait p50 {p50:.1f} ms, p99 {p99:.1f} ms"
            )
        assert errors == []
        assert requests == hosts_count * processes * threads * rounds  # every call served
        assert [len(tokens) for tokens in per_round] == [1] * rounds
        assert stats["refresh_success"] == rounds  # provider refresh calls == rotations
        assert stats["replays"] == 0 and stats["refresh_errors"] == []
        seed.close()
