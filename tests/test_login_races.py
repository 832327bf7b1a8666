"""Login and logout race refreshes in other processes, against the real authorization server.

The processes are synchronised with events at the Keeper's checkpoints and logout's, never
with sleeps: each test forces the interleaving it is about.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import multiprocessing.synchronize
import os
import threading
from pathlib import Path
from typing import Any, TypeAlias

import pytest

from grantkeeper import CredentialKey, FileStore, Keeper, LoginRequired, LogoutResult, logout
from harness import remember_secret
from harness.authserver import AuthServer
from harness.resource_server import ResourceServer
from tests.helpers import reap
from tests.login_helpers import FAR_FUTURE, do_login, introspect

pytestmark = [pytest.mark.realserver, pytest.mark.slow]


WAIT = 60.0
"""Upper bound on every wait: a hung process fails the test instead of hanging it."""

Event = multiprocessing.synchronize.Event
Results: TypeAlias = "multiprocessing.queues.Queue[tuple[str, str]]"


def _refresh_then_retry(
    home: Path, url: str, events: tuple[Event, Event, Event], out: Results
) -> None:
    """Refresh, pausing just before the provider call until told to go; later try again."""
    os.setsid()  # its own session: reap() signals it, and nothing else
    in_refresh, go, again = events

    def checkpoint(stage: str) -> None:
        if stage == "before_provider":
            in_refresh.set()
            go.wait(WAIT)

    keeper = Keeper(
        FileStore(home),
        CredentialKey.for_server(url),
        clock=lambda: FAR_FUTURE,
        checkpoint=checkpoint,
    )
    try:
        token = keeper.credential().access_token
    except Exception as exc:
        out.put(("error", type(exc).__name__))
        return
    out.put(("refreshed", token))
    again.wait(WAIT)
    try:
        keeper.credential(rejected=token)
        out.put(("resurrected", ""))
    except LoginRequired:
        out.put(("login_required", ""))
    finally:
        keeper.close()


def test_logout_during_a_refresh_in_another_process_stays_logged_out(
    auth_server: AuthServer, resource: ResourceServer, home: Path
) -> None:
    record = do_login(auth_server, resource, home)
    key = CredentialKey.for_server(resource.url)
    before = auth_server.stats()
    context = multiprocessing.get_context("spawn")
    events = (context.Event(), context.Event(), context.Event())
    in_refresh, go, again = events
    out: Results = context.Queue()
    process = context.Process(target=_refresh_then_retry, args=(home, resource.url, events, out))
    process.start()
    try:
        assert in_refresh.wait(WAIT), "the refresh never reached the provider call"
        result: dict[str, LogoutResult] = {}

        def release_at_lock_wait(stage: str) -> None:
            if stage == "lock_wait":
                go.set()

        def run_logout() -> None:
            # Let the refresh proceed only once logout is about to wait for the lock it holds.
            result["logout"] = logout(FileStore(home), key, checkpoint=release_at_lock_wait)

        thread = threading.Thread(target=run_logout)
        thread.start()
        thread.join(WAIT)
        kind, refreshed = out.get(timeout=WAIT)
        assert kind == "refreshed", refreshed
        remember_secret(refreshed)
        assert refreshed != record.access_token

        # Logout waited for the refresh, then deleted and revoked what it wrote.
        done = result["logout"]
        assert done.removed and done.revoked == ("refresh_token", "access_token")
        assert FileStore(home).read(key) is None
        assert introspect(auth_server, refreshed)["active"] is False

        # The refreshing process cannot bring the credential back.
        again.set()
        assert out.get(timeout=WAIT) == ("login_required", "")
        assert FileStore(home).read(key) is None
        process.join(WAIT)
        assert process.exitcode == 0
    finally:
        go.set()
        again.set()
        process.join(WAIT)
        reap(process)  # still running: SIGCONT, SIGKILL, a bounded wait
    after = auth_server.stats()
    assert after["refresh_success"] == before["refresh_success"] + 1
    assert after["replays"] == 0


def _hold_then_refresh(home: Path, url: str, events: tuple[Event, Event], out: Results) -> None:
    """Load the stored credential, wait, then ask again as if the server had rejected it."""
    os.setsid()  # its own session: reap() signals it, and nothing else
    loaded, go = events
    with Keeper(FileStore(home), CredentialKey.for_server(url)) as keeper:
        first = keeper.credential().access_token
        out.put(("loaded", first))
        loaded.set()
        go.wait(WAIT)
        try:
            out.put(("after", keeper.credential(rejected=first).access_token))
        except Exception as exc:
            out.put(("error", type(exc).__name__))


def test_a_process_holding_stale_tokens_adopts_a_new_login_without_spending_its_own(
    auth_server: AuthServer, resource: ResourceServer, home: Path
) -> None:
    old = do_login(auth_server, resource, home)
    context = multiprocessing.get_context("spawn")
    loaded, go = context.Event(), context.Event()
    out: Results = context.Queue()
    process = context.Process(
        target=_hold_then_refresh, args=(home, resource.url, (loaded, go), out)
    )
    process.start()
    try:
        assert loaded.wait(WAIT)
        assert out.get(timeout=WAIT) == ("loaded", old.access_token)
        before: dict[str, Any] = auth_server.stats()
        new = do_login(auth_server, resource, home)
        go.set()
        assert out.get(timeout=WAIT) == ("after", new.access_token)
        process.join(WAIT)
    finally:
        go.set()
        process.join(WAIT)
        reap(process)  # still running: SIGCONT, SIGKILL, a bounded wait
    assert auth_server.stats()["refresh_success"] == before["refresh_success"]
    # The old refresh token was never spent: the server still holds it as active.
    assert introspect(auth_server, old.refresh_token or "")["active"] is True
