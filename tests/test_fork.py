"""A child forked while its parent's Keeper is mid-refresh starts clean.

Against the real oidc-provider with reuse detection on: the parent's refresh is inside
the provider call (the server has rotated, its answer is on the way) when the process
forks. The child inherits no transaction in flight (its thread did not come along, so
joining it would wait for nothing) and none of the parent's lock (a copy of the locked
``flock`` descriptor would keep the lock held after the parent lets go, and the child's
own ``flock`` would wait for itself). The child asks for a credential and gets the
parent's B as soon as the parent stores it; nothing is replayed.

A child forked from a process whose PostgreSQL store has sessions open never uses them:
it opens its own, and neither its queries nor its ``close()`` touch the parent's session
(a Terminate sent on the shared socket would end it, with any lock it holds).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import multiprocessing
import multiprocessing.connection
import os
import threading
import uuid
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import grantkeeper._keeper as keeper_module
from grantkeeper import CredentialKey, FileStore, Keeper, LockTimeout, PostgresStore
from grantkeeper._oauth.token_client import send_token_request as sent
from grantkeeper.testing import sample_record
from harness.authserver import AuthServer
from harness.postgres import PostgresCluster
from harness.real_login import age, log_in
from tests.helpers import reap

pytestmark = [pytest.mark.slow, pytest.mark.realserver]

RESOURCE = "http://127.0.0.1:9/mcp"
WAIT = 60.0
CHILD_DEADLINE = 20.0
"""The child's own bound on its question: the parent stores B within seconds."""


AUTH_SERVER = {"resources": [RESOURCE], "access_ttl": 3600}


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _ask_in_child(keeper: Keeper, report: multiprocessing.connection.Connection) -> None:
    os.setsid()  # its own session: the parent signals it, and nothing else
    try:
        token = keeper.credential(timeout=CHILD_DEADLINE).access_token
    except Exception as exc:  # noqa: BLE001 - the parent asserts on what it was
        report.send(("error", type(exc).__name__))
    else:
        report.send(("token", _digest(token)))


def test_a_child_forked_mid_refresh_starts_clean(
    auth_server: AuthServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = CredentialKey.for_server(RESOURCE, f"t{uuid.uuid4().hex[:8]}")
    store = FileStore(tmp_path / "home")
    log_in(auth_server, store, key, resource=RESOURCE)
    age(store, key, expires_in=-timedelta(hours=1))  # expired: refresh first
    auth_server.reset_stats()

    parent = os.getpid()
    in_call, release = threading.Event(), threading.Event()

    def send_and_hold(*args: Any, **kwargs: Any) -> Any:
        answer = sent(*args, **kwargs)
        if os.getpid() == parent:  # the server has rotated; its answer is on the way
            in_call.set()
            release.wait(WAIT)
        return answer

    monkeypatch.setattr(keeper_module, "send_token_request", send_and_hold)
    keeper = Keeper(store, key)
    context = multiprocessing.get_context("fork")
    received, report = context.Pipe(duplex=False)
    child = context.Process(target=_ask_in_child, args=(keeper, report), daemon=True)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        asked = pool.submit(keeper.credential)
        try:
            assert in_call.wait(WAIT), "the refresh never reached the provider"
            with warnings.catch_warnings():
                # Python 3.12+ warns about forking a process that runs threads: that is
                # the case under test.
                warnings.simplefilter("ignore", DeprecationWarning)
                child.start()
            release.set()
            b = asked.result(WAIT).access_token
            assert received.poll(WAIT), "the child never answered"
            outcome = received.recv()
        finally:
            release.set()
            reap(child)
            keeper.close()
    assert outcome == ("token", _digest(b))
    stats = auth_server.stats()
    assert stats["replays"] == 0, stats
    assert stats["refresh_success"] == 1, stats
    assert not stats["refresh_errors"], stats


def _use_the_store_in_child(
    store: PostgresStore, key: CredentialKey, report: multiprocessing.connection.Connection
) -> None:
    os.setsid()
    try:
        seen = store.read(key)
        session = store._conn.info.backend_pid if store._conn is not None else None
        try:
            with store.lock(key, timeout=1.0):
                locked = "took the lock the parent holds"
        except LockTimeout:
            locked = "waited"
        store.close()  # closes what the child opened, and nothing of the parent's
    except Exception as exc:  # noqa: BLE001 - the parent asserts on what it was
        report.send(("error", f"{type(exc).__name__}: {exc}"))
    else:
        report.send(("ok", seen is not None, session, locked))


def test_a_child_forked_with_postgresql_sessions_open_never_uses_them(tmp_path: Path) -> None:
    key = CredentialKey.for_server(RESOURCE)
    with PostgresCluster() as cluster:
        store = PostgresStore(cluster.dsn, schema=f"f{uuid.uuid4().hex[:10]}")
        try:
            now = datetime.now(UTC)
            record = sample_record("access-fork", "refresh-fork", now=now)
            store.write(key, record, expected_version=None)
            assert store._conn is not None
            parent_session = store._conn.info.backend_pid
            context = multiprocessing.get_context("fork")
            received, report = context.Pipe(duplex=False)
            with store.lock(key):  # held on a session of the parent's
                child = context.Process(
                    target=_use_the_store_in_child, args=(store, key, report), daemon=True
                )
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    child.start()
                try:
                    assert received.poll(WAIT), "the child never answered"
                    outcome = received.recv()
                finally:
                    reap(child)
                # The parent's lock session is intact: the lock is still held.
                other = PostgresStore(cluster.dsn, schema=store.schema)
                try:
                    with pytest.raises(LockTimeout), other.lock(key, timeout=0.5):
                        pass
                finally:
                    other.close()
            # And its data session too: same session, no reconnect, no error.
            assert store.read(key) is not None
            assert store._conn is not None and store._conn.info.backend_pid == parent_session
        finally:
            store.close()
    assert outcome[0] == "ok", outcome
    _, read, child_session, locked = outcome
    assert read and child_session != parent_session
    assert locked == "waited"
