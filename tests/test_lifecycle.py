"""The lifecycle rules of issue 12, in process: outages, the stale window, tokens without a
lifetime, identity, a guarded re-read on invalid_grant, and answers that must never be lost.

Against the in-process provider with rotation and reuse detection; the same guarantees run
against the real oidc-provider in ``test_outages.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from grantkeeper import (
    AccountChanged,
    Credential,
    Keeper,
    ProviderUnavailable,
    ReauthenticationRequired,
    RefreshOutcomeUnknown,
    UnsupportedTokenType,
    auth_status,
)
from grantkeeper._rescue_copies import RESCUE_DIR_ENV
from grantkeeper._rules import status_verdict
from grantkeeper._servers import ServerConfig
from grantkeeper._status import AuthState
from grantkeeper.testing import sample_record
from tests.helpers import KEY, T0, World


def _refused(form: dict[str, str]) -> httpx.Response:
    raise httpx.ConnectError("connection refused")


def _gateway(status: int) -> Callable[[dict[str, str]], httpx.Response]:
    def fault(form: dict[str, str]) -> httpx.Response:
        return httpx.Response(status, headers={"Retry-After": "1"}, text="bad gateway")

    return fault


# -- only a definitive answer ends a grant --------------------------------------------------


@pytest.mark.parametrize(
    "faults",
    [
        pytest.param([_gateway(503)] * 6 + [_gateway(500)] * 6, id="503-then-500"),
        pytest.param([_refused] * 10, id="refused"),
        pytest.param([_gateway(502), _gateway(504), _refused, _gateway(500)] * 3, id="mixed"),
    ],
)
def test_an_outage_of_any_length_leaves_the_grant_alive(
    world: World, faults: list[Callable[[dict[str, str]], httpx.Response]]
) -> None:
    # The 12 s gateway blip that used to mark the record dead after one retry.
    a = world.login()
    keeper = world.keeper()
    keeper.access_token()
    world.provider.faults += faults
    world.clock.advance(3600)  # expired: callers must wait for a refresh
    failures = 0
    while world.provider.faults:
        with pytest.raises((ProviderUnavailable, RefreshOutcomeUnknown)) as info:
            keeper.credential()
        assert info.value.retryable
        failures += 1
        record = world.stored()
        assert record.reauth_reason is None and record.access_token == a.access_token
        assert record.intent is not None and record.intent.retry_at is not None
        status = auth_status(ServerConfig(url=KEY.server_url), world.store.inner, clock=world.clock)
        assert status.state is AuthState.OAUTH and "retrying" in status.detail
        world.clock.advance((record.intent.retry_at - world.clock()).total_seconds())
    assert failures == len(faults)
    fresh = keeper.credential()
    assert fresh.access_token != a.access_token and world.stored() == fresh
    assert world.provider.replays == 0 and world.provider.refresh_calls == 1


def test_an_unknown_outcome_that_was_processed_ends_only_on_the_providers_word(
    world: World,
) -> None:
    world.login()
    keeper = world.keeper()
    keeper.access_token()

    def processed_then_lost(form: dict[str, str]) -> httpx.Response:
        world.provider.handle(form)
        return httpx.Response(502)

    world.provider.faults += [processed_then_lost, _gateway(500), _gateway(503)]
    world.clock.advance(3600)
    for _ in range(3):
        with pytest.raises((ProviderUnavailable, RefreshOutcomeUnknown)):
            keeper.credential()
        world.clock.advance(60)
    with pytest.raises(ReauthenticationRequired, match="invalid_grant"):
        keeper.credential()
    assert world.stored().reauth_reason is not None
    assert world.provider.replays == 1  # the only one: the provider's word ends it


# -- the stale window ---------------------------------------------------------------------


def test_the_stale_window_serves_the_valid_token_while_the_provider_hangs(world: World) -> None:
    a = world.login()
    keeper = world.keeper()
    keeper.access_token()
    entered, release = threading.Event(), threading.Event()

    def hang(form: dict[str, str]) -> None:
        entered.set()
        release.wait(60)
        raise httpx.ReadTimeout("timed out")

    world.provider.faults.append(hang)
    world.clock.advance(3600 - 30)  # stale, still valid
    assert keeper.access_token() == a.access_token  # at once, and a refresh starts ahead
    assert entered.wait(30)
    for _ in range(50):  # while the provider hangs, requests never wait
        assert keeper.access_token(timeout=0) == a.access_token
    # A second process (nothing in memory) is served the stored valid token too.
    assert world.keeper().access_token(timeout=30) == a.access_token
    release.set()
    assert keeper.settle(30)
    # The failed refresh ahead failed no request, and the token keeps serving.
    assert keeper.access_token(timeout=0) == a.access_token
    assert world.stored().intent is not None and world.stored().intent.state == "unknown"  # type: ignore[union-attr]
    world.clock.advance(20)  # past the backoff, still valid: the next refresh ahead succeeds
    keeper.access_token()
    assert keeper.settle(30)
    assert keeper.access_token() != a.access_token
    assert world.provider.replays == 0


REFUSING_WINDOW = 6.0
"""Seconds of the stale window the refusing-provider tests walk through, in 0.1 s steps."""

ONE_SCHEDULE = 3
"""Provider calls one backoff schedule makes in :data:`REFUSING_WINDOW`: at 0 s, then after
1 s and 2 s more (the next falls due at 7 s). Three Keepers that each backed off alone
would make 9; without any backoff, one per request: about 360."""


def _refusing(calls: list[str]) -> Callable[[dict[str, str]], httpx.Response]:
    def fault(form: dict[str, str]) -> httpx.Response:
        calls.append(form.get("grant_type", ""))
        return httpx.Response(400, json={"error": "invalid_request"})

    return fault


def walk_the_stale_window(world: World, keepers: list[Keeper], served: str) -> None:
    """Every Keeper is asked twice per 0.1 s step; each is served ``served`` at once."""
    for _ in range(round(REFUSING_WINDOW / 0.1)):
        for keeper in keepers:
            for _ in range(2):
                assert keeper.access_token(timeout=0) == served
            assert keeper.settle(30)  # a refresh ahead it started has ended
        world.clock.advance(0.1)


def test_a_refusing_provider_in_the_stale_window_costs_one_call_per_backoff_step(
    world: World,
) -> None:
    """A refusal spends nothing and fails no request while the token is valid, but the
    same request would be refused again: it backs off, and the note it leaves binds every
    Keeper sharing the record, so the fleet follows one backoff schedule."""
    a = world.login()
    keepers = [world.keeper() for _ in range(3)]
    for keeper in keepers:
        assert keeper.access_token() == a.access_token
    calls: list[str] = []
    world.provider.faults.extend([_refusing(calls)] * 1000)
    world.clock.advance(3600 - 30)  # stale, still valid for the whole walk
    walk_the_stale_window(world, keepers, a.access_token)
    assert len(calls) == ONE_SCHEDULE, calls
    note = world.stored().intent
    assert note is not None and note.state == "unavailable" and note.refused
    assert note.attempts == ONE_SCHEDULE and world.stored().reauth_reason is None
    needs_login, detail = status_verdict(world.stored(), now=world.clock())
    assert not needs_login and "refusing" in detail
    # The provider accepts again: the next step after the backoff refreshes, once.
    world.provider.faults.clear()
    world.clock.advance(10)
    keepers[0].access_token()
    assert keepers[0].settle(30)
    assert keepers[0].access_token() != a.access_token and world.stored().intent is None
    assert world.provider.rotations == 1 and world.provider.replays == 0


def test_a_failure_that_leaves_no_note_backs_off_in_the_process(world: World) -> None:
    """A store that takes no write (not even the intent note) leaves nothing to bind the
    fleet: each process backs off by itself, instead of a transaction per request."""
    a = world.login()
    keeper = world.keeper()
    assert keeper.access_token() == a.access_token
    world.store.fail_writes = lambda record: True
    world.clock.advance(3600 - 30)
    world.store.calls.clear()
    walk_the_stale_window(world, [keeper], a.access_token)
    assert world.store.calls.count("lock") == ONE_SCHEDULE, world.store.calls
    assert world.provider.refresh_calls == 0  # no note, no spending


def answer_altered(world: World, **changes: object) -> Callable[[dict[str, str]], httpx.Response]:
    """A fault: the provider's own answer (it rotates, or refuses), with ``changes``."""

    def fault(form: dict[str, str]) -> httpx.Response:
        status, body = world.provider.handle(form)
        return httpx.Response(status, json={**body, **changes})

    return fault


def test_a_dpop_token_is_kept_and_rotates_but_is_never_sent_as_bearer(world: World) -> None:
    """A 200 with ``token_type: DPoP`` spent A: its refresh token is B's, and throwing the
    answer away would replay A. It is stored; requests get a typed error, not a token
    that fails at the server; the next refresh spends B, never A."""
    a = world.login()
    keeper = world.keeper()
    assert keeper.access_token() == a.access_token

    world.provider.faults.append(answer_altered(world, token_type="DPoP"))
    world.clock.advance(3600 + 1)  # expired: the caller waits for the refresh
    with pytest.raises(UnsupportedTokenType) as raised:
        keeper.credential(timeout=30)
    assert raised.value.token_type == "DPoP" and not raised.value.retryable
    stored = world.stored()
    assert stored.token_type == "DPoP" and stored.refresh_token != a.refresh_token
    assert stored.intent is None and world.provider.rotations == 1
    needs_login, detail = status_verdict(stored, now=world.clock())
    assert needs_login and "Bearer" in detail
    with pytest.raises(UnsupportedTokenType):
        world.keeper().credential(timeout=30)  # another process: from the store, no refresh
    world.clock.advance(3600 + 1)  # B expires: the next refresh spends B's refresh token
    assert keeper.credential(timeout=30).token_type == "Bearer"
    assert world.provider.rotations == 2 and world.provider.replays == 0


def test_an_answer_with_only_a_refresh_token_is_kept_and_b_is_spent_next(world: World) -> None:
    """A 2xx whose access token is unusable still carries B's refresh token, and A is spent:
    B is stored expired, and the next refresh spends B, never A."""
    a = world.login()
    keeper = world.keeper()
    assert keeper.access_token() == a.access_token

    world.provider.faults.append(answer_altered(world, access_token="not usable"))
    world.clock.advance(3600 + 1)
    served = keeper.credential(timeout=30)  # one transaction stores B, the next spends it
    assert world.provider.is_active(served.access_token)
    assert world.provider.rotations == 2 and world.provider.replays == 0
    assert world.stored().access_token == served.access_token


def test_a_busy_lock_or_unwritable_store_in_the_stale_window_fails_no_request(
    world: World,
) -> None:
    a = world.login()
    world.clock.advance(3600 - 30)
    world.store.fail_writes = lambda record: True  # not even the intent note can be written
    for _ in range(3):
        keeper = world.keeper()
        assert keeper.credential(timeout=30).access_token == a.access_token
        assert keeper.settle(30)
    with world.store.inner.lock(KEY, timeout=5):  # a peer holds the lock for long
        keeper = world.keeper(lock_timeout=0.2)
        assert keeper.credential(timeout=30).access_token == a.access_token
    assert world.provider.refresh_calls == 0


# -- tokens without a lifetime ---------------------------------------------------------


def test_a_token_without_expires_in_is_used_until_rejected(world: World) -> None:
    world.login(expires_at=None)
    world.provider.expires_in = None
    keeper = world.keeper()
    first = keeper.access_token()
    for step in range(100):
        world.clock.advance(3600 * step)
        assert keeper.access_token() == first
    assert keeper.settle(5) and world.provider.refresh_calls == 0
    renewed = keeper.credential(rejected=first)
    assert renewed.access_token != first and renewed.expires_at is None
    assert world.provider.refresh_calls == 1
    for _ in range(100):
        assert keeper.access_token() == renewed.access_token
    assert world.provider.refresh_calls == 1


def test_default_lifetime_is_assumed_when_the_provider_gives_none(world: World) -> None:
    world.login(expires_at=None)
    keeper = world.keeper(default_lifetime=timedelta(minutes=10))
    first = keeper.access_token()
    world.clock.advance(600)
    assert keeper.access_token() != first
    assert world.provider.refresh_calls == 1


# -- identity ---------------------------------------------------------------------------


def test_a_lifecycle_without_a_subject_learns_it_once_then_refuses_another(
    world: World,
) -> None:
    world.login(subject=None)  # a legacy record: no subject
    keeper = world.keeper()
    keeper.access_token()
    world.login(subject="alice")  # a login that names the account: adopted, once
    world.clock.advance(3600)
    assert keeper.credential().subject == "alice"
    world.login(subject="bob")  # now another account: never adopted silently
    world.clock.advance(3600)
    with pytest.raises(AccountChanged):
        keeper.credential()


def test_a_lifecycle_without_an_issuer_adopts_a_login_that_has_one(world: World) -> None:
    world.login(issuer=None)
    keeper = world.keeper()
    keeper.access_token()
    world.clock.advance(3600)
    relogin = world.login()  # same account, now with its issuer
    assert keeper.access_token() == relogin.access_token
    world.login(issuer="https://other.test")
    world.clock.advance(3600)
    with pytest.raises(AccountChanged):
        keeper.credential()


# -- invalid_grant gets one guarded re-read -------------------------------------------------


def test_invalid_grant_adopts_a_replacement_written_meanwhile(world: World) -> None:
    world.login()
    keeper = world.keeper()
    keeper.access_token()
    replacement: list[Credential] = []

    def relogin_then_reject(form: dict[str, str]) -> httpx.Response:
        # A login elsewhere replaces the record (a store without our lock, or a peer on a
        # host whose lock lapsed) while the provider rejects the old grant.
        replacement.append(world.login())
        return httpx.Response(400, json={"error": "invalid_grant"})

    world.provider.faults.append(relogin_then_reject)
    world.clock.advance(3600)
    served = keeper.credential()
    assert served.access_token == replacement[0].access_token
    assert world.stored().reauth_reason is None


# -- never lose an answer that spent A ---------------------------------------------------------


def test_any_failure_after_the_answer_keeps_b_pending(world: World) -> None:
    world.login()
    keeper = world.keeper()
    keeper.access_token()

    class Boom(Exception):
        pass

    inner_write = world.store.write

    def write(key: object, record: Credential, *, expected_version: int | None) -> int:
        if record.intent is None:
            raise Boom("not a StoreError")
        return inner_write(key, record, expected_version=expected_version)  # type: ignore[arg-type]

    world.store.write = write  # type: ignore[method-assign]
    world.clock.advance(3600)
    b = keeper.credential()
    assert keeper.persistence_pending and world.provider.is_active(b.access_token)
    world.store.write = inner_write  # type: ignore[method-assign]
    keeper.close()  # the pending write is retried on close
    assert world.stored() == b and world.provider.replays == 0


def test_b_the_store_refuses_through_close_is_rescued_and_adopted(world: World) -> None:
    world.login()
    keeper, b = world.refuse_b()
    keeper.close()  # the store still refuses: a rescue copy is kept
    assert world.stored().access_token != b.access_token
    assert list((world.store.inner.directory.parent.parent / "rescue").glob("*.json"))  # type: ignore[attr-defined]
    world.store.fail_writes = lambda record: False
    # The next lifecycle adopts B under the lock before anything else; A is never replayed.
    assert world.keeper().access_token() == b.access_token
    assert world.stored() == b
    assert world.provider.replays == 0 and world.provider.refresh_calls == 1
    assert not list((world.store.inner.directory.parent.parent / "rescue").glob("*.json"))  # type: ignore[attr-defined]


def test_with_no_place_for_b_the_note_says_answered_and_a_is_never_retried(
    world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("grantkeeper._rescue_copies.save", lambda *args, **kw: None)
    world.login()
    keeper, _ = world.refuse_b()  # B cannot be stored
    keeper.close()
    intent = world.stored().intent
    assert intent is not None and intent.state == "answered"
    world.store.fail_writes = lambda record: False
    with pytest.raises(ReauthenticationRequired, match="spent"):
        world.keeper().credential()
    status = auth_status(ServerConfig(url=KEY.server_url), world.store.inner, clock=world.clock)
    assert status.state is AuthState.REAUTHENTICATION_REQUIRED
    assert world.provider.replays == 0 and world.provider.refresh_calls == 1


_EXITING_HOLDER = """
import sys
from pathlib import Path
import httpx
from grantkeeper import FileStore, Keeper
from harness.fake_provider import FakeProvider
from tests.helpers import KEY, CountingStore

url = sys.argv[1]
store = CountingStore(FileStore(Path(sys.argv[2])))
store.fail_writes = lambda record: record.intent is None
keeper = Keeper(store, KEY, http_client=httpx.Client())
token = keeper.access_token()
store.fail_writes = lambda record: True
print(token)
# No close(): the interpreter exits holding the unstored answer.
"""


def test_a_process_exiting_with_an_unstored_b_leaves_a_rescue(world: World, tmp_path: Path) -> None:
    url = world.provider.serve()
    try:
        access, refresh = world.provider.issue()
        # Obtained at T0: long expired in real time.
        old = sample_record(access, refresh, token_endpoint=url, now=T0)
        world.store.inner.write(KEY, old, expected_version=None)
        env = {
            **os.environ,
            RESCUE_DIR_ENV: str(tmp_path / "rescue"),
            "PYTHONPATH": os.pathsep.join(sys.path),
        }
        done = subprocess.run(
            [sys.executable, "-c", _EXITING_HOLDER, url, str(tmp_path / "store")],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=True,
        )
        b = done.stdout.strip()
        assert b and b != access
        with Keeper(world.store.inner, KEY, http_client=httpx.Client()) as next_process:
            assert next_process.access_token() == b
        assert world.provider.replays == 0 and world.provider.refresh_calls == 1
    finally:
        world.provider.close()
