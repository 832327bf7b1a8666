"""The refresh transaction against an in-process provider with rotation and reuse detection."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import timedelta

import httpx
import pytest

from grantkeeper import (
    AccountChanged,
    ClientRegistrationInvalid,
    Credential,
    DeadlineExceeded,
    Keeper,
    LockTimeout,
    LoginRequired,
    MalformedResponse,
    PersistencePending,
    ProviderUnavailable,
    ReauthenticationRequired,
    RefreshOutcomeUnknown,
    ServerRejectsToken,
    Store,
    Stored,
    StoreUnavailable,
)
from grantkeeper._record import CredentialKey
from grantkeeper._stores.base import HeldLock
from grantkeeper.testing import sample_record
from harness.fake_provider import FakeProvider
from tests.helpers import KEY, T0, StoreWrapper, World


def test_healthy_path_does_no_store_lock_or_network_io(world: World) -> None:
    world.login()
    keeper = world.keeper()
    first = keeper.access_token()
    world.store.calls.clear()
    for _ in range(1000):
        assert keeper.access_token() == first
    world.clock.advance(3000)  # still outside the refresh margin
    assert keeper.access_token() == first
    assert world.store.calls == []
    assert world.provider.refresh_calls == 0


def test_stale_token_is_refreshed_once_before_expiry_and_persisted(world: World) -> None:
    old = world.login().access_token
    keeper = world.keeper()
    keeper.access_token()
    world.clock.advance(3600 - 30)  # inside the 60 s margin, not yet expired
    # Still valid: served at once, while one background transaction refreshes ahead.
    assert keeper.credential().access_token == old
    assert keeper.settle(10)
    new = keeper.credential()
    assert new.access_token != old
    assert world.provider.refresh_calls == 1
    assert world.stored() == new
    assert new.intent is None
    assert new.expires_at == world.clock() + (new.expires_at - new.obtained_at)  # type: ignore[operator]
    assert world.provider.is_active(new.access_token)


def test_a_peers_refresh_is_adopted_without_queueing_for_the_lock(world: World) -> None:
    world.login()
    first, second = world.keeper(), world.keeper()
    first.access_token(), second.access_token()
    world.clock.advance(3600 - 30)  # both stale
    first.credential()
    assert first.settle(10)
    renewed = first.credential()
    world.store.calls.clear()
    second.credential()  # its stale token, at once; the refresh ahead adopts the peer's
    assert second.settle(10)
    assert second.credential() == renewed
    assert world.store.calls == ["read"]  # no lock: nothing was spent
    assert world.provider.refresh_calls == 1


def test_a_stale_store_still_takes_the_lock_before_spending(world: World) -> None:
    world.login()
    keeper = world.keeper()
    keeper.access_token()
    world.clock.advance(3600 - 30)
    world.store.calls.clear()
    keeper.credential()
    assert keeper.settle(10)
    assert world.store.calls[:3] == ["read", "lock", "read"]
    assert world.provider.refresh_calls == 1


def test_threads_and_sibling_keepers_share_one_refresh(world: World) -> None:
    world.login()
    keepers = [world.keeper() for _ in range(3)]
    for keeper in keepers:
        keeper.access_token()
    world.clock.advance(3600)
    barrier = threading.Barrier(12)
    tokens: list[str] = []

    def worker(keeper: Keeper) -> None:
        barrier.wait()
        tokens.append(keeper.access_token())

    threads = [threading.Thread(target=worker, args=(keepers[i % 3],)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert world.provider.refresh_calls == 1
    assert world.provider.replays == 0
    assert len(set(tokens)) == 1
    assert world.provider.is_active(tokens[0])


def test_threads_of_one_keeper_share_one_flight(world: World) -> None:
    """Every thread of one Keeper that needs a refresh joins the one transaction in
    flight: one lock, one read under it, one provider call, for all of them. The flight is
    held at its lock until every caller has asked, so none of them can have come late."""
    callers = 12
    asked = threading.Semaphore(0)

    def hold_until_all_asked(stage: str) -> None:
        if stage == "locked":
            for _ in range(callers):
                assert asked.acquire(timeout=30), "a caller never asked"

    world.login()
    keeper = world.keeper(checkpoint=hold_until_all_asked)
    keeper.access_token()
    world.clock.advance(3600)  # expired: every caller must wait for the refresh
    world.store.calls.clear()
    barrier = threading.Barrier(callers)
    tokens: list[str] = []

    def worker() -> None:
        barrier.wait(30)
        asked.release()  # about to ask: the flight cannot end before every caller asked
        tokens.append(keeper.access_token(timeout=30))

    threads = [threading.Thread(target=worker) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(tokens) == callers and len(set(tokens)) == 1
    assert world.store.calls.count("lock") == 1
    assert world.store.calls.count("read") == 2  # one before the lock, one under it
    assert world.provider.refresh_calls == 1 and world.provider.replays == 0


class _BusyWatchedStore(StoreWrapper):
    """A store whose lock a peer always holds, and whose watch says what ``heard`` says."""

    def __init__(self, inner: Store, heard: Callable[[], bool]) -> None:
        super().__init__(inner)
        self.heard = heard
        self.reads = 0
        self.watches = 0

    def read(self, key: CredentialKey) -> Stored | None:
        self.reads += 1
        return super().read(key)

    def lock(
        self, key: CredentialKey, *, timeout: float = 60.0
    ) -> AbstractContextManager[HeldLock | None]:
        if timeout == 0:
            raise LockTimeout("held by a peer", key=str(key))
        return super().lock(key, timeout=timeout)

    def wait_for_change(self, key: CredentialKey, version: int | None, timeout: float) -> bool:
        self.watches += 1
        return self.heard()


def test_a_waiter_woken_without_a_new_record_does_not_spin(world: World) -> None:
    """A notice that overstates the record (a stray NOTIFY, a version restored by hand)
    wakes the waiter, which finds nothing new: it waits out its slice, never asks again at
    once, and gives up at its lock timeout with nothing spent."""
    world.login()
    store = _BusyWatchedStore(world.store.inner, heard=lambda: True)
    keeper = world.keeper(store, lock_timeout=1.0)
    keeper.access_token()
    world.clock.advance(3600)
    with pytest.raises(LockTimeout):
        keeper.access_token(timeout=30)
    # A spinning waiter reads thousands of times a second; one that waits, a few times.
    assert 2 <= store.reads <= 20
    assert world.provider.refresh_calls == 0


def test_a_watch_that_fails_queues_for_the_lock_instead(world: World) -> None:
    def unreachable() -> bool:
        raise StoreUnavailable("injected: the LISTEN session could not be opened")

    world.login()
    store = _BusyWatchedStore(world.store.inner, heard=unreachable)
    keeper = world.keeper(store)
    keeper.access_token()
    world.clock.advance(3600)
    renewed = keeper.access_token(timeout=30)  # queued for the lock, then refreshed
    assert store.watches == 1
    assert world.provider.refresh_calls == 1 and world.provider.is_active(renewed)


def test_401_forces_one_refresh_and_late_401s_for_the_old_token_adopt_the_new(
    world: World,
) -> None:
    old = world.login().access_token
    first, second = world.keeper(), world.keeper()
    assert first.access_token() == old and second.access_token() == old
    new = first.credential(rejected=old).access_token
    assert new != old and world.provider.refresh_calls == 1
    # A delayed 401 for the old token, in the same keeper and in a sibling that still
    # holds the old one: both retry with the new token and spend nothing.
    assert first.credential(rejected=old).access_token == new
    assert second.credential(rejected=old).access_token == new
    assert world.provider.refresh_calls == 1
    # A 401 for the new token right away: the server rejects what a refresh just got it,
    # so no second refresh within the rejection interval.
    with pytest.raises(ServerRejectsToken) as info:
        second.credential(rejected=new)
    assert info.value.server == KEY.server_url and world.provider.refresh_calls == 1
    # Later, a 401 for the new token is a new rejection: exactly one more refresh.
    world.clock.advance(61)
    newer = second.credential(rejected=new).access_token
    assert newer not in (old, new) and world.provider.refresh_calls == 2
    assert world.provider.replays == 0


def test_response_omitting_refresh_token_and_scope_carries_them_forward(world: World) -> None:
    world.login()
    world.store.inner.write(
        KEY, world.stored().replace(scope="mcp offline_access"), expected_version=1
    )
    world.provider.omit_refresh_token = True
    world.provider.expires_in = "120"  # providers send strings too
    keeper = world.keeper()
    before = keeper.credential()
    world.clock.advance(3600)
    after = keeper.credential()
    assert after.refresh_token == before.refresh_token
    assert after.scope == "mcp offline_access"
    assert after.expires_at is not None
    assert (after.expires_at - world.clock.now).total_seconds() == 120


def test_peer_refresh_is_adopted_without_a_provider_call(world: World) -> None:
    world.login()
    mine, peer = world.keeper(), world.keeper()
    mine.access_token()
    peer.access_token()
    world.clock.advance(3600)
    refreshed = peer.access_token()
    assert mine.access_token() == refreshed
    assert world.provider.refresh_calls == 1


def test_persistence_failure_keeps_serving_b_never_replays_a_and_heals(world: World) -> None:
    spent_a = world.login().access_token
    keeper = world.keeper()
    keeper.access_token()
    # The intent note can be written, the provider's answer cannot (disk filled meanwhile).
    world.store.fail_writes = lambda record: record.intent is None
    world.clock.advance(3600 - 30)
    keeper.credential()
    assert keeper.settle(10)
    b = keeper.credential()
    assert b.access_token != spent_a
    assert keeper.persistence_pending
    assert world.provider.refresh_calls == 1
    spent = world.stored()
    assert spent.intent is not None and spent.intent.state == "in_flight"
    # B serves from memory.
    world.store.calls.clear()
    assert keeper.access_token() == b.access_token
    assert world.store.calls == []
    # A sibling keeper of this process sees the live holder's note: it serves A's
    # still-valid access token, and its refresh ahead shares the holder's B instead of
    # spending A, so it serves B once A expires.
    sibling = world.keeper()
    assert sibling.credential().access_token == spent_a
    assert sibling.settle(10)
    assert world.provider.refresh_calls == 1
    world.clock.advance(30)
    assert sibling.credential().access_token == b.access_token
    assert sibling.persistence_pending
    # B goes stale: the write is retried, fails, and B (still valid) keeps serving.
    world.clock.advance(3600 - 60)
    assert keeper.access_token() == b.access_token
    assert keeper.settle(10)
    assert keeper.access_token() == b.access_token
    # B expires with the store still broken: fail closed, never reinstall or spend A.
    world.clock.advance(60)
    with pytest.raises(PersistencePending):
        keeper.credential()
    assert world.provider.refresh_calls == 1
    # The store heals: B is written first, then refreshed normally; A was never replayed.
    world.store.fail_writes = lambda record: False
    c = keeper.credential()
    assert not keeper.persistence_pending
    assert world.provider.refresh_calls == 2
    assert world.provider.replays == 0
    assert world.stored() == c
    assert world.provider.is_active(c.access_token)


def test_pending_b_yields_to_a_changed_store(world: World) -> None:
    world.login()
    keeper, _ = world.refuse_b()
    world.store.fail_writes = lambda record: False
    # A new login (same account) replaces the record: the keeper adopts it.
    world.clock.advance(1800)
    relogin = world.login().access_token
    world.clock.advance(1800 - 30)  # B is stale, the new login is not
    keeper.access_token()  # B, still valid; the refresh ahead finds the new login
    assert keeper.settle(10)
    assert keeper.access_token() == relogin
    assert not keeper.persistence_pending


def test_intent_write_failure_spends_nothing(world: World) -> None:
    world.login()
    keeper = world.keeper()
    keeper.access_token()
    world.store.fail_writes = lambda record: True
    world.clock.advance(3600)
    with pytest.raises(Exception) as info:
        keeper.credential()
    assert type(info.value).__name__ == "StoreUnavailable"
    assert world.provider.refresh_calls == 0


def _timeout_after_processing(provider: FakeProvider) -> object:
    def fault(form: dict[str, str]) -> httpx.Response:
        provider.handle(form)  # the server rotates, but the answer is lost
        raise httpx.ReadTimeout("timed out")

    return fault


def _timeout_before_processing(form: dict[str, str]) -> httpx.Response:
    raise httpx.ReadTimeout("timed out")


def test_timeout_leaves_a_durable_unknown_outcome_and_one_serialized_retry_succeeds(
    world: World,
) -> None:
    a = world.login().access_token
    keeper = world.keeper()
    keeper.access_token()
    world.provider.faults.append(_timeout_before_processing)
    world.clock.advance(3600)
    with pytest.raises(RefreshOutcomeUnknown):
        keeper.credential()
    stored = world.stored()
    assert stored.access_token == a  # durable credentials preserved
    assert stored.intent is not None and stored.intent.state == "unknown"
    assert stored.intent.retry_at is not None and stored.intent.retry_at > world.clock()
    with world.store.inner.lock(KEY, timeout=0):  # the lock was released
        pass
    # Until the backoff ends, callers get the typed retryable error, and nothing is spent.
    with pytest.raises(RefreshOutcomeUnknown) as info:
        keeper.credential()
    assert info.value.retryable and world.provider.refresh_calls == 0  # never processed
    world.clock.advance(2)
    fresh = keeper.credential()
    assert fresh.access_token != a and world.stored() == fresh
    assert world.provider.replays == 0


def test_lost_answer_then_retry_rejected_requires_reauthentication_without_looping(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.login()
    keeper = world.keeper()
    keeper.access_token()
    world.provider.faults.append(_timeout_after_processing(world.provider))  # type: ignore[arg-type]
    world.clock.advance(3600)
    with pytest.raises(RefreshOutcomeUnknown):
        keeper.credential()
    caplog.set_level("WARNING", logger="grantkeeper")
    world.clock.advance(2)  # past the backoff
    with pytest.raises(ReauthenticationRequired, match="outcome was lost"):
        keeper.credential()
    assert "refresh.outcome_unknown" in caplog.text
    calls = world.provider.refresh_calls
    for _ in range(3):
        with pytest.raises(ReauthenticationRequired):
            world.keeper().credential()
    assert world.provider.refresh_calls == calls  # no loop: marked dead durably
    assert world.stored().reauth_reason is not None


def test_repeated_unknown_outcomes_never_end_the_grant(world: World) -> None:
    # Five lost answers in a row (a gateway failing for a while): each retry is serialized
    # and backed off, none ends the grant, and the provider's first real answer is kept.
    a = world.login().access_token
    keeper = world.keeper()
    keeper.access_token()
    world.provider.faults += [_timeout_before_processing] * 5
    world.clock.advance(3600)
    waits = []
    for _ in range(5):
        with pytest.raises(RefreshOutcomeUnknown):
            keeper.credential()
        intent = world.stored().intent
        assert intent is not None and intent.state == "unknown" and intent.retry_at is not None
        assert world.stored().reauth_reason is None
        waits.append((intent.retry_at - world.clock()).total_seconds())
        world.clock.advance(waits[-1])
    assert waits == sorted(waits) and waits[0] < waits[-1]  # backoff grows
    fresh = keeper.credential()
    assert fresh.access_token != a and world.stored() == fresh
    # The faults answered before the provider processed anything.
    assert world.provider.refresh_calls == 1 and world.provider.replays == 0


def test_connection_refused_is_retryable_and_clears_the_note(world: World) -> None:
    a = world.login().access_token
    keeper = world.keeper()
    keeper.access_token()

    def refused(form: dict[str, str]) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    world.provider.faults.append(refused)
    world.clock.advance(3600)
    with pytest.raises(ProviderUnavailable) as info:
        keeper.credential()
    assert info.value.retryable and not info.value.sent
    # Nothing was spent: the note says the provider is unavailable, not that A may be spent.
    intent = world.stored().intent
    assert intent is not None and intent.state == "unavailable"
    assert world.stored().access_token == a
    world.clock.advance(2)
    assert keeper.access_token() != a
    assert world.stored().intent is None


def test_429_carries_retry_after(world: World) -> None:
    world.login()
    keeper = world.keeper()
    keeper.access_token()
    world.provider.faults.append(
        lambda form: httpx.Response(429, headers={"Retry-After": "7"}, json={"error": "slow"})
    )
    world.clock.advance(3600)
    with pytest.raises(ProviderUnavailable) as info:
        keeper.credential()
    assert info.value.retry_after == 7.0
    intent = world.stored().intent
    assert intent is not None and intent.state == "unavailable"
    assert intent.retry_at == world.clock() + timedelta(seconds=7)  # Retry-After honoured


@pytest.mark.parametrize("status", [400, 401])
def test_invalid_grant_marks_the_record_dead_for_every_process(world: World, status: int) -> None:
    world.provider.invalid_grant_status = status
    world.login()
    keeper = world.keeper()
    keeper.access_token()
    world.provider.grants[0].revoked = True  # revoked at the server
    world.clock.advance(3600)
    with pytest.raises(ReauthenticationRequired) as info:
        keeper.credential()
    assert info.value.requires_reauthentication and not info.value.retryable
    assert "invalid_grant" in (world.stored().reauth_reason or "")
    calls = world.provider.refresh_calls
    with pytest.raises(ReauthenticationRequired):
        world.keeper().credential()
    assert world.provider.refresh_calls == calls
    # A new login replaces the dead record and is adopted.
    fresh = world.login().access_token
    assert world.keeper().access_token() == fresh


def test_invalid_client_says_the_registration_is_gone(world: World) -> None:
    world.login()
    keeper = world.keeper()
    keeper.access_token()
    world.provider.faults.append(lambda form: httpx.Response(401, json={"error": "invalid_client"}))
    world.clock.advance(3600)
    with pytest.raises(ClientRegistrationInvalid, match="no longer accepts this client") as info:
        keeper.credential()
    assert info.value.requires_login
    assert "client registration" in (world.stored().reauth_reason or "")


def test_malformed_200_leaves_outcome_unknown(world: World) -> None:
    world.login()
    keeper = world.keeper()
    keeper.access_token()
    world.provider.faults.append(lambda form: httpx.Response(200, content=b"<html>oops"))
    world.clock.advance(3600)
    with pytest.raises(MalformedResponse):
        keeper.credential()
    intent = world.stored().intent
    assert intent is not None and intent.state == "unknown"


def _blocking(release: threading.Event, entered: threading.Event) -> object:
    def fault(form: dict[str, str]) -> None:
        entered.set()
        release.wait(30)
        return None  # then answer normally

    return fault


def _held_refresh(world: World) -> tuple[Keeper, threading.Event, threading.Event]:
    """A logged-in Keeper whose next refresh (due now) is held at the provider: ``entered``
    is set once it is, and the provider answers once ``release`` is set."""
    world.login()
    keeper = world.keeper()
    keeper.access_token()
    release, entered = threading.Event(), threading.Event()
    world.provider.faults.append(_blocking(release, entered))  # type: ignore[arg-type]
    world.clock.advance(3600)
    return keeper, release, entered


def test_sync_deadline_stops_the_wait_not_the_refresh(world: World) -> None:
    keeper, release, entered = _held_refresh(world)
    waiter = threading.Thread(
        target=lambda: pytest.raises(DeadlineExceeded, keeper.credential, timeout=0.01)
    )
    waiter.start()
    assert entered.wait(10)
    waiter.join()
    release.set()
    fresh = keeper.credential(timeout=10)
    keeper.close()
    assert world.provider.refresh_calls == 1
    assert world.stored() == fresh


def _joined_only(keeper: Keeper, result: Credential) -> list[int]:
    """Make every transaction ``keeper``'s callers join one that another caller started
    and that ended with ``result`` (each began before the caller's reason to wait)."""
    joins: list[int] = []

    def join(
        rejected: str | None, *, background: bool = False
    ) -> tuple[concurrent.futures.Future[Credential], bool]:
        joins.append(1)
        future: concurrent.futures.Future[Credential] = concurrent.futures.Future()
        future.set_result(result)
        return future, False

    keeper._join = join  # type: ignore[method-assign]
    return joins


@pytest.mark.parametrize("why", ["rejected", "expired"])
def test_a_caller_that_only_joins_transactions_ending_with_a_dead_token_gets_a_typed_error(
    world: World, why: str
) -> None:
    a = world.login().access_token
    keeper = world.keeper()
    served = keeper.credential()
    assert served.access_token == a
    if why == "expired":
        world.clock.advance(3600)
    rejected = a if why == "rejected" else None
    joins = _joined_only(keeper, served)
    with pytest.raises(DeadlineExceeded) as info:
        keeper.credential(rejected=rejected)
    assert info.value.retryable and a not in str(info.value)
    with pytest.raises(DeadlineExceeded):
        asyncio.run(keeper.acredential(rejected=rejected))
    assert len(joins) == 6  # three each, then the typed error: never the dead token


def test_cancelled_async_caller_does_not_cancel_the_refresh(world: World) -> None:
    keeper, release, entered = _held_refresh(world)

    async def scenario() -> str:
        task = asyncio.create_task(keeper.acredential())
        await asyncio.to_thread(entered.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        return (await keeper.acredential()).access_token

    token = asyncio.run(scenario())
    assert world.provider.refresh_calls == 1
    assert world.stored().access_token == token


def test_account_change_is_never_adopted_silently(world: World) -> None:
    world.login(subject="alice")
    keeper = world.keeper()
    keeper.access_token()
    world.login(subject="bob")
    world.clock.advance(3600 - 30)
    alice = keeper.credential()  # alice's token is still valid; the refresh ahead refuses bob
    assert alice.subject == "alice" and keeper.settle(10)
    world.clock.advance(30)
    with pytest.raises(AccountChanged):
        keeper.credential()
    # A new lifecycle takes bob's credential.
    assert world.keeper().credential().subject == "bob"


def test_logout_is_adopted(world: World) -> None:
    world.login()
    keeper = world.keeper()
    keeper.access_token()
    world.store.inner.delete(KEY)
    world.clock.advance(3600)
    with pytest.raises(LoginRequired) as info:
        keeper.credential()
    assert info.value.requires_login
    assert world.provider.refresh_calls == 0


def test_legacy_record_without_absolute_expiry_is_refreshed_on_first_use(world: World) -> None:
    access, refresh = world.provider.issue()
    legacy = sample_record(access, refresh, now=T0).replace(expires_at=None, obtained_at=None)
    world.store.inner.write(KEY, legacy, expected_version=None)
    keeper = world.keeper()
    assert keeper.credential().access_token == access  # may still work: served at once
    assert keeper.settle(10)
    fresh = keeper.credential()
    assert fresh.expires_at is not None and fresh.access_token != access
    assert world.provider.refresh_calls == 1


def test_expired_without_refresh_token_requires_reauthentication(world: World) -> None:
    access, _ = world.provider.issue()
    world.store.inner.write(
        KEY, sample_record(access, None, now=world.clock()), expected_version=None
    )
    keeper = world.keeper()
    assert keeper.access_token() == access
    world.clock.advance(3600)
    with pytest.raises(ReauthenticationRequired, match="no refresh token"):
        keeper.credential()
