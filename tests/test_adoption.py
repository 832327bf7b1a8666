"""Waiters adopt the moment the holder commits, without taking the lock in turn.

Processes whose token has expired find the credential's lock held (here by the test, in
the holder's place, for as long as the test says) and wait. The "holder" then writes a
renewed record and keeps the lock: every waiter must come back with the new token while
the lock is still held, so none of them can have taken it, spent a refresh token or
queued behind another. Shown on the file store, on PostgreSQL (NOTIFY/LISTEN) and on
PostgreSQL through a session-pooling PgBouncer.
"""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.synchronize
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from grantkeeper import Credential, FileStore, Keeper, PostgresStore, Store
from grantkeeper.testing import sample_record
from harness.children import reap
from harness.pgbouncer import PgBouncer
from harness.postgres import PostgresCluster
from tests.helpers import KEY

WAIT = 60.0
"""Upper bound on every wait for another process: a hung child fails the test, not CI."""

WAITERS = 4
"""Processes waiting for the holder at once: more than the two cores CI has."""

NOWHERE = "http://127.0.0.1:9/token"
"""The token endpoint of the expired record: nothing listens, so a waiter that tried to
spend the refresh token would fail instead of coming back with the renewed one."""

StoreFactory = Callable[[], Store]


def _waiter(
    factory: StoreFactory,
    waiting: multiprocessing.synchronize.Event,
    answer: Connection,
) -> None:
    """Ask for a credential whose token expired; report the one served and whether an HTTP
    client was made for it (a refresh would need one; adopting must not), or the error."""
    os.setsid()  # its own session: reap() signals it, and nothing else

    def checkpoint(stage: str) -> None:
        if stage == "lock_wait":
            waiting.set()  # read the expired record unlocked, found the lock held

    keeper = Keeper(factory(), KEY, checkpoint=checkpoint)
    try:
        token = keeper.access_token(timeout=WAIT)
        answer.send(("token", token, keeper._http is not None))
    except Exception as exc:  # reported to the parent, which fails the test
        answer.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        keeper.close()
        answer.close()


def expired() -> Credential:
    now = datetime.now(UTC)
    return sample_record(
        "expired-access-token",
        "spendable-refresh-token",
        now=now - timedelta(hours=2),
        token_endpoint=NOWHERE,
    )


def renewed() -> Credential:
    return sample_record("renewed-access-token", "renewed-refresh-token", now=datetime.now(UTC))


def waiters_adopt_while_the_lock_is_held(factory: StoreFactory) -> None:
    store = factory()
    store.write(KEY, expired(), expected_version=None)
    context = multiprocessing.get_context("spawn")
    children: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    with store.lock(KEY, timeout=WAIT):  # the holder, mid-refresh
        try:
            waiting = []
            for _ in range(WAITERS):
                ready = context.Event()
                mine, theirs = context.Pipe(duplex=False)
                process = context.Process(target=_waiter, args=(factory, ready, theirs))
                process.start()
                theirs.close()
                children.append((process, mine))
                waiting.append(ready)
            for ready in waiting:
                assert ready.wait(WAIT), "a waiter never reached the lock"
            stored = store.read(KEY)
            assert stored is not None
            # The holder commits B, and keeps the lock.
            store.write(KEY, renewed(), expected_version=stored.version)
            answers = []
            for _, mine in children:
                assert mine.poll(WAIT), "a waiter did not adopt while the lock was held"
                answers.append(mine.recv())
            assert answers == [("token", "renewed-access-token", False)] * WAITERS
        finally:
            for child, mine in children:
                mine.close()
                child.join(WAIT)
                reap(child, timeout=WAIT)
    assert [child.exitcode for child, _ in children] == [0] * WAITERS
    final = store.read(KEY)
    assert final is not None and final.record.access_token == "renewed-access-token"
    assert final.version == 2  # nobody wrote after the holder: nothing was spent


def test_on_the_file_store(tmp_path: Path) -> None:
    waiters_adopt_while_the_lock_is_held(functools.partial(FileStore, tmp_path))


@pytest.fixture
def schema() -> str:
    return f"adopt_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def postgres_store(cluster: PostgresCluster, schema: str) -> Iterator[StoreFactory]:
    yield functools.partial(PostgresStore, cluster.dsn, schema=schema)


@pytest.mark.slow
def test_on_postgresql_by_notify(postgres_store: StoreFactory) -> None:
    waiters_adopt_while_the_lock_is_held(postgres_store)


@pytest.mark.slow
def test_on_postgresql_through_a_session_pooling_pgbouncer(
    cluster: PostgresCluster, schema: str
) -> None:
    with PgBouncer(cluster, pool_mode="session") as bouncer:
        waiters_adopt_while_the_lock_is_held(
            functools.partial(PostgresStore, bouncer.dsn, schema=schema)
        )
