"""The recovery hook: when only a person can help, one new login, then the request goes on.

Without a hook, the typed errors stay (``LoginRequired``, ``ReauthenticationRequired``,
``InsufficientScope``). With one (``Keeper(recover=login_recovery(...))``), a needed login,
a dead grant and ``insufficient_scope`` each get exactly one login, shared by concurrent
callers; a step-up asks for the union of the held and required scopes and keeps the client
registration. Against the real oidc-provider and a real MCP server last.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from grantkeeper import (
    AccountChanged,
    AuthenticationRequired,
    CredentialKey,
    FileStore,
    GrantkeeperError,
    InsufficientScope,
    Keeper,
    LoginFailed,
    LoginRequired,
    ReauthenticationRequired,
    login_recovery,
)
from grantkeeper._keeper import _login_lock
from grantkeeper._rules import Context, recovered, recovery_need
from grantkeeper.mcp import connect
from grantkeeper.testing import sample_record
from harness.authserver import AuthServer
from harness.fake_provider import FakeProvider
from harness.mcp_server import McpServer
from harness.real_login import REDIRECT_URI
from tests.helpers import KEY, T0, StepClock

# Login locks live under GRANTKEEPER_HOME: every test here has its own.
pytestmark = pytest.mark.usefixtures("home")


def test_a_step_up_asks_for_the_union_of_held_and_required_scopes() -> None:
    held = sample_record("a", "r", now=T0).replace(scope="openid mcp")
    need = recovery_need(InsufficientScope("403", scope="mcp mcp:write"), held)
    assert isinstance(need, InsufficientScope) and need.scope == "openid mcp mcp:write"
    assert recovery_need(LoginRequired("nothing"), None) is not None
    assert recovery_need(AccountChanged("bob"), held) is None  # no login fixes that


def test_a_login_elsewhere_answers_a_need_only_with_what_it_asked_for() -> None:
    ctx, key = Context(now=T0), str(KEY)
    held = sample_record("a", "r", now=T0).replace(scope="mcp")
    other = sample_record("b", "s", now=T0).replace(scope="mcp")
    stepped = other.replace(scope="mcp mcp:write")
    need = InsufficientScope("403", scope="mcp mcp:write")
    sent = held.access_token
    assert not recovered(need, held, sent, ctx, key)  # the record that failed
    assert not recovered(need, other, sent, ctx, key)  # renewed, but without the scope
    assert recovered(need, stepped, sent, ctx, key)
    assert recovered(LoginRequired("nothing stored"), other, None, ctx, key)
    assert not recovered(LoginRequired("nothing stored"), None, None, ctx, key)
    dead = other.replace(reauth_reason="invalid_grant")
    assert not recovered(ReauthenticationRequired("dead"), dead, None, ctx, key)
    expired = sample_record("c", None, now=T0, lifetime=-1)  # no refresh token: a person again
    assert not recovered(ReauthenticationRequired("dead"), expired, None, ctx, key)


class Logins:
    """A recovery hook that logs in with the fake provider, counting its calls."""

    def __init__(self, store: FileStore, provider: FakeProvider, clock: StepClock) -> None:
        self.store, self.provider, self.clock = store, provider, clock
        self.needs: list[AuthenticationRequired] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, need: AuthenticationRequired) -> None:
        self.needs.append(need)
        self.entered.set()
        assert self.release.wait(30)
        access, refresh = self.provider.issue()
        record = sample_record(access, refresh, now=self.clock()).replace(scope=need_scope(need))
        current = self.store.read(KEY)
        self.store.write(KEY, record, expected_version=current.version if current else None)


def need_scope(need: AuthenticationRequired) -> str | None:
    return need.scope if isinstance(need, InsufficientScope) else "mcp"


def keeper_with(store: FileStore, provider: FakeProvider, hook: Any, clock: StepClock) -> Keeper:
    http = httpx.Client(transport=provider.transport())
    return Keeper(store, KEY, http_client=http, clock=clock, recover=hook)


def test_without_a_hook_the_typed_errors_stay(tmp_path: Path, provider: FakeProvider) -> None:
    keeper = keeper_with(FileStore(tmp_path), provider, None, StepClock())
    with pytest.raises(LoginRequired):
        keeper.credential()
    with pytest.raises(InsufficientScope):
        keeper.recover(InsufficientScope("403", scope="mcp:write"))


def test_concurrent_callers_with_nothing_stored_share_one_login(
    tmp_path: Path, provider: FakeProvider
) -> None:
    store, clock = FileStore(tmp_path), StepClock()
    logins = Logins(store, provider, clock)
    logins.release.clear()
    keeper = keeper_with(store, provider, logins, clock)
    tokens: list[str] = []
    threads = [
        threading.Thread(target=lambda: tokens.append(keeper.access_token())) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    assert logins.entered.wait(30)
    logins.release.set()
    for thread in threads:
        thread.join(60)
    assert len(logins.needs) == 1 and isinstance(logins.needs[0], LoginRequired)
    assert len(tokens) == 8 and len(set(tokens)) == 1


def test_a_dead_grant_gets_one_login_and_an_account_change_none(
    tmp_path: Path, provider: FakeProvider
) -> None:
    store, clock = FileStore(tmp_path), StepClock()
    logins = Logins(store, provider, clock)
    logins(LoginRequired("first login"))
    keeper = keeper_with(store, provider, logins, clock)
    first = keeper.access_token()
    provider.grants[0].revoked = True
    clock.advance(3600)
    renewed = keeper.access_token()  # invalid_grant, then one login through the hook
    assert renewed != first and isinstance(logins.needs[-1], ReauthenticationRequired)
    assert len(logins.needs) == 2
    record = store.read(KEY)
    assert record is not None
    store.write(KEY, record.record.replace(subject="bob"), expected_version=record.version)
    clock.advance(3600)
    with pytest.raises(AccountChanged):
        keeper.credential()
    assert len(logins.needs) == 2


def test_a_step_up_against_the_real_servers(tmp_path: Path) -> None:
    with AuthServer(access_ttl=60) as auth, McpServer(auth_server=auth) as server:
        store = FileStore(tmp_path)
        key = CredentialKey.for_server(server.url)
        hook = login_recovery(
            server.url,
            store=store,
            authorize=lambda url: auth.approve(url, REDIRECT_URI),
            redirect_uri=REDIRECT_URI,
        )
        keeper = Keeper(store, key, recover=hook)

        async def go() -> tuple[Any, Any]:
            async with connect(server.url, keeper=keeper) as session:
                first = await session.call_tool("add", {"a": 1, "b": 2})  # the first login
                server.fail_next("POST", status=403, scope="mcp:write")
                second = await session.call_tool("add", {"a": 2, "b": 3})  # a step-up
                return first.structured_content, second.structured_content

        try:
            first, second = asyncio.run(go())
        finally:
            keeper.close()
        assert (first or {}).get("result") == 3 and (second or {}).get("result") == 5
        stored = store.read(key)
        assert stored is not None and stored.record.scope is not None
        granted = stored.record.scope.split()
        assert "mcp:write" in granted and "mcp" in granted  # the union: nothing lost
        stats = auth.stats()
        assert stats["code_success"] == 2  # one login, one step-up
        assert stats["registrations"] == 1  # the step-up kept the client registration
        assert stats["replays"] == 0


@pytest.fixture
def waiting() -> Iterator[threading.Event]:
    """Set once a recovery waits for another process's login."""
    seen = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("recovery.waiting"):
                seen.set()

    handler = Watch()
    logging.getLogger("grantkeeper").addHandler(handler)
    try:
        yield seen
    finally:
        logging.getLogger("grantkeeper").removeHandler(handler)


def test_a_login_another_process_stores_meanwhile_is_adopted_not_repeated(
    tmp_path: Path, provider: FakeProvider, home: Path, waiting: threading.Event
) -> None:
    store, clock = FileStore(tmp_path / "store"), StepClock()
    logins = Logins(store, provider, clock)
    keeper = keeper_with(store, provider, logins, clock)
    peer_holds, peer_done = threading.Event(), threading.Event()

    def peer() -> None:
        # Another process's login: the lock is a flock, so another descriptor is a peer.
        with _login_lock(KEY, 30.0):
            peer_holds.set()
            assert waiting.wait(30)
            access, refresh = provider.issue()
            store.write(KEY, sample_record(access, refresh, now=clock()), expected_version=None)
        peer_done.set()

    thread = threading.Thread(target=peer)
    thread.start()
    try:
        assert peer_holds.wait(30)
        token = keeper.access_token()
    finally:
        thread.join(30)
    assert peer_done.is_set()
    assert logins.needs == []  # no second person asked
    stored = store.read(KEY)
    assert stored is not None and token == stored.record.access_token


def test_callers_waiting_for_a_login_that_failed_do_not_start_another(
    tmp_path: Path, provider: FakeProvider, home: Path
) -> None:
    store, clock = FileStore(tmp_path / "store"), StepClock()
    calls: list[AuthenticationRequired] = []
    entered, release = threading.Event(), threading.Event()

    def closed_the_browser(need: AuthenticationRequired) -> None:
        calls.append(need)
        entered.set()
        assert release.wait(30)
        raise LoginFailed("no redirect reached the listener")

    keeper = keeper_with(store, provider, closed_the_browser, clock)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            keeper.access_token()
        except GrantkeeperError as exc:
            errors.append(exc)

    arrived = threading.Condition()
    waiters: list[int] = []

    class Queue:
        """The Keeper's one-recovery-at-a-time lock, counting who queued for it."""

        def __init__(self) -> None:
            self.lock = threading.Lock()

        def __enter__(self) -> None:
            with arrived:
                waiters.append(1)
                arrived.notify_all()
            self.lock.acquire()

        def __exit__(self, *exc_info: object) -> None:
            self.lock.release()

    keeper._recovering = Queue()  # type: ignore[assignment]
    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        assert entered.wait(30)
        # All four failed while the login ran: three wait for it rather than start their own.
        with arrived:
            assert arrived.wait_for(lambda: len(waiters) == 4, 30)
    finally:
        release.set()
        for thread in threads:
            thread.join(60)
    assert len(errors) == 4
    assert len(calls) == 1
    assert sum(isinstance(e, LoginFailed) for e in errors) == 1  # the others: not logged in


def test_a_late_403_for_the_token_a_step_up_replaced_asks_no_second_login(
    tmp_path: Path, provider: FakeProvider
) -> None:
    store, clock = FileStore(tmp_path / "store"), StepClock()
    logins = Logins(store, provider, clock)
    logins(LoginRequired("first login"))
    keeper = keeper_with(store, provider, logins, clock)
    first = keeper.access_token()
    need = InsufficientScope("403", scope="mcp:write")
    stepped = keeper.recover(need, rejected=first)
    # Another request sent with the first token gets its 403 only now: the step-up
    # stored since answers it.
    late = keeper.recover(need, rejected=first)
    assert late.access_token == stepped.access_token != first
    assert len(logins.needs) == 2  # the first login, and one step-up
    assert set((stepped.scope or "").split()) == {"mcp", "mcp:write"}


def test_a_wait_bound_covers_the_refresh_not_a_persons_login(
    tmp_path: Path, provider: FakeProvider
) -> None:
    store, clock = FileStore(tmp_path / "store"), StepClock()
    logins = Logins(store, provider, clock)
    logins.release.clear()
    keeper = keeper_with(store, provider, logins, clock)
    bound = 5.0  # generous: only the store read and the decision must fit in it

    async def person() -> None:
        assert await asyncio.to_thread(logins.entered.wait, 30)
        # The person is slower than the bound (a wall-clock wait is the point here).
        await asyncio.sleep(bound + 0.5)
        logins.release.set()

    async def go() -> str:
        slow = asyncio.create_task(person())
        try:
            return (await keeper.acredential(timeout=bound)).access_token
        finally:
            logins.release.set()
            await slow

    token = asyncio.run(go())
    stored = store.read(KEY)
    assert stored is not None and token == stored.record.access_token
    assert len(logins.needs) == 1
