"""The pure refresh decision, stepped case by case."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from grantkeeper import (
    AccountChanged,
    LoginRequired,
    PersistencePending,
    ReauthenticationRequired,
    RefreshIntent,
)
from grantkeeper._rules import Action, Context, decide, same_note
from grantkeeper.testing import sample_record
from tests.helpers import T0

pytestmark = pytest.mark.portable  # needs no Linux-only server

A = sample_record("at-A", "rt-A", now=T0)


def ctx(elapsed: float = 0, **kw: Any) -> Context:
    """What process 100 on host ``h``, holder ``me``, knows ``elapsed`` seconds after T0 (with
    a 60 s skew), with ``kw`` changed."""
    now = T0 + timedelta(seconds=elapsed)
    return replace(Context(now, timedelta(seconds=60), pid=100, host="h", holder="me"), **kw)


def test_nothing_stored_requires_login() -> None:
    decision = decide(None, ctx(), key="k")
    assert decision.action is Action.FAIL and isinstance(decision.error, LoginRequired)


def test_fresh_record_is_adopted() -> None:
    assert decide(A, ctx(), key="k").action is Action.ADOPT


def test_stale_record_is_refreshed_with_an_intent_naming_us() -> None:
    decision = decide(A, ctx(3590), key="k")
    assert decision.action is Action.REFRESH
    intent = decision.intent
    assert intent is not None
    assert (intent.pid, intent.host, intent.holder, intent.attempts) == (100, "h", "me", 1)
    assert intent.token_fingerprint == A.refresh_fingerprint


def test_rejected_current_token_is_refreshed_even_when_fresh() -> None:
    assert decide(A, ctx(rejected="at-A"), key="k").action is Action.REFRESH


def test_rejected_old_token_adopts_the_replacement() -> None:
    decision = decide(A, ctx(3590, rejected="at-OLD"), key="k")
    assert decision.action is Action.ADOPT


def test_marked_record_fails_closed() -> None:
    decision = decide(A.replace(reauth_reason="dead"), ctx(), key="k")
    assert isinstance(decision.error, ReauthenticationRequired)


@pytest.mark.parametrize(
    "stored",
    [A.replace(subject="bob"), A.replace(issuer="https://other.test"), A.replace(resource="r2")],
)
def test_another_identity_is_not_adopted(stored: object) -> None:
    decision = decide(stored, ctx(known=A), key="k")  # type: ignore[arg-type]
    assert isinstance(decision.error, AccountChanged)


def test_unknown_subject_does_not_count_as_another_account() -> None:
    assert decide(A.replace(subject=None), ctx(known=A), key="k").action is Action.ADOPT


def test_stale_without_refresh_token_is_used_until_expiry() -> None:
    record = A.replace(refresh_token=None)
    assert decide(record, ctx(3590), key="k").action is Action.ADOPT
    assert isinstance(decide(record, ctx(3600), key="k").error, ReauthenticationRequired)
    assert isinstance(decide(record, ctx(rejected="at-A"), key="k").error, ReauthenticationRequired)


def intent(**kw: Any) -> RefreshIntent:
    """A peer's note that it is spending A's refresh token: process 7 on host ``h``, holder
    ``peer``, started at T0, attempt 1, in flight; with ``kw`` changed."""
    fingerprint = A.refresh_fingerprint
    assert fingerprint is not None
    note = RefreshIntent(fingerprint, 7, "h", T0, 1, "in_flight", "peer")
    return replace(note, **kw)


def test_live_peer_holding_an_unstored_answer_blocks_spending() -> None:
    # Still valid: serve it, spend nothing. Expired: wait for the peer, spend nothing.
    valid = decide(A.replace(intent=intent()), ctx(3590), key="k", holder_alive=True)
    assert valid.action is Action.ADOPT
    expired = decide(A.replace(intent=intent()), ctx(3600), key="k", holder_alive=True)
    assert isinstance(expired.error, PersistencePending)


def test_dead_holder_means_unknown_outcome_and_one_retry() -> None:
    decision = decide(A.replace(intent=intent()), ctx(3590), key="k", holder_alive=False)
    assert decision.action is Action.REFRESH and decision.outcome_unknown
    assert decision.intent is not None and decision.intent.attempts == 2


def test_an_unknown_outcome_is_retried_again_however_often_it_was_lost() -> None:
    # A retry of a token whose first use may have been processed adds no risk: the
    # provider answers invalid_grant if it was, and that ends the grant. So an outage of
    # any length never ends the grant by itself.
    stored = A.replace(intent=intent(attempts=7, state="unknown", since=T0))
    decision = decide(stored, ctx(3600), key="k")
    assert decision.action is Action.REFRESH and decision.outcome_unknown
    assert decision.intent is not None and decision.intent.attempts == 8
    assert decision.intent.since == T0 and decision.mark is None


def test_without_the_retry_an_unknown_outcome_ends_the_grant() -> None:
    stored = A.replace(intent=intent(state="unknown"))
    decision = decide(stored, ctx(3590, retry_unknown_outcome=False), key="k")
    assert isinstance(decision.error, ReauthenticationRequired) and decision.mark


def test_intent_for_another_refresh_token_is_ignored() -> None:
    stored = A.replace(intent=intent(token_fingerprint="0" * 16, attempts=5))
    decision = decide(stored, ctx(3590), key="k")
    assert decision.action is Action.REFRESH and not decision.outcome_unknown


def test_a_note_with_only_its_lease_moved_on_is_the_same_note() -> None:
    # What a renewal whose reply was lost leaves in the store: still the holder's own note.
    noted = A.replace(intent=intent(lease_until=T0 + timedelta(seconds=60)))
    renewed = A.replace(intent=intent(lease_until=T0 + timedelta(seconds=80)))
    assert same_note(renewed, noted) and same_note(noted, noted)
    other_refresh = A.replace(intent=intent(started_at=T0 + timedelta(seconds=1)))
    other_holder = A.replace(intent=intent(holder="someone-else"))
    answered = A.replace(intent=intent(state="answered"))
    rewritten = A.replace(access_token="at-other", intent=intent())
    for changed in (other_refresh, other_holder, answered, rewritten, A):
        assert not same_note(changed, noted)
    assert not same_note(noted, A)  # no note to compare with
