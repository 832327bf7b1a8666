"""The lifecycle rules of ``_rules``, stepped by hand: the provider outcome table row by
row, then hypothesis over records, intents, clocks and outcomes for the invariants every
decision must keep."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from grantkeeper import (
    Credential,
    ProviderUnavailable,
    ReauthenticationRequired,
    RefreshIntent,
    RefreshOutcomeUnknown,
)
from grantkeeper._freshness import Freshness, freshness
from grantkeeper._rules import (
    BACKOFF_CAP,
    MAX_RETRY_AFTER,
    Action,
    Context,
    after_provider_error,
    backoff,
    decide,
    fallback,
    serve_from_memory,
    status_verdict,
)
from tests.helpers import T0, make_record

A = make_record("at-A-0123456789abcdef", "rt-A-0123456789abcdef")


def note(**changes: object) -> RefreshIntent:
    base = RefreshIntent(A.refresh_fingerprint or "", 7, "h", T0, 1, "in_flight", "peer")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


# -- the outcome table (row by row in tests/test_outcome_table.py) ----------------------------


def test_a_not_sent_retry_of_an_unknown_outcome_stays_unknown() -> None:
    noted = A.replace(intent=note(attempts=2))
    error = ProviderUnavailable("refused", sent=False)
    plan = after_provider_error(error, noted, Context(now=T0), key="k", was_unknown=True)
    assert plan.write is not None and plan.write.intent is not None
    assert plan.write.intent.state == "unknown"


def test_backoff_doubles_is_capped_and_honours_retry_after() -> None:
    waits = [backoff(n) for n in range(1, 10)]
    assert waits == sorted(waits) and waits[0] == timedelta(seconds=1)
    assert max(waits) == BACKOFF_CAP
    assert backoff(1, retry_after=30) == timedelta(seconds=30)
    assert backoff(1, retry_after=10**9) == MAX_RETRY_AFTER


# -- invariants over every state -----------------------------------------------------------

intents = st.one_of(
    st.none(),
    st.builds(
        note,
        state=st.sampled_from(["in_flight", "unknown", "unavailable", "answered"]),
        attempts=st.integers(1, 50),
        retry_at=st.one_of(
            st.none(), st.integers(-600, 7200).map(lambda s: T0 + timedelta(seconds=s))
        ),
        holder=st.sampled_from(["peer", "me"]),
        pid=st.sampled_from([7, 1]),
    ),
)
records = st.builds(
    lambda lifetime, refresh, intent, dead: A.replace(
        expires_at=None if lifetime is None else T0 + timedelta(seconds=lifetime),
        obtained_at=T0,
        refresh_token=A.refresh_token if refresh else None,
        intent=intent,
        reauth_reason="dead" if dead else None,
    ),
    st.one_of(st.none(), st.integers(1, 7200)),
    st.booleans(),
    intents,
    st.booleans(),
)
contexts = st.builds(
    lambda elapsed, rejected, retry: Context(
        now=T0 + timedelta(seconds=elapsed),
        pid=1,
        host="h",
        holder="me",
        rejected=rejected,
        retry_unknown_outcome=retry,
    ),
    st.integers(0, 8000),
    st.sampled_from([None, A.access_token, "at-OTHER"]),
    st.booleans(),
)


def _spendable_intent(record: Credential, ctx: Context, alive: bool) -> bool:
    intent = record.intent
    if intent is None:
        return True
    if intent.state == "answered":
        return False
    if intent.retry_at is not None and ctx.now < intent.retry_at:
        return False
    ours = (intent.pid, intent.holder) == (ctx.pid, ctx.holder)
    if intent.state == "in_flight" and alive and not ours:
        return False
    unknown = intent.state in ("in_flight", "unknown")
    return not (unknown and not ctx.retry_unknown_outcome)


@settings(max_examples=3000, deadline=None)
@given(records, contexts, st.booleans())
def test_no_decision_spends_what_it_must_not(record: Credential, ctx: Context, alive: bool) -> None:
    decision = decide(record, ctx, key="k", holder_alive=alive)
    state = freshness(record, ctx.now)
    rejected = record.access_token == ctx.rejected
    if decision.action is Action.REFRESH:
        assert record.refresh_token and not record.reauth_reason
        assert _spendable_intent(record, ctx, alive)
        assert state is not Freshness.FRESH or rejected
        assert decision.intent is not None and decision.intent.state == "in_flight"
        previous = record.intent.attempts if record.intent else 0
        assert decision.intent.attempts == previous + 1
    elif decision.action is Action.ADOPT:
        assert decision.record is record and not record.reauth_reason
        assert state is not Freshness.EXPIRED and not rejected  # never serves a dead token
    else:
        assert decision.error is not None
        if decision.mark:  # only an unknown outcome the policy will not retry
            assert not ctx.retry_unknown_outcome and record.intent is not None


@settings(max_examples=2000, deadline=None)
@given(records, contexts)
def test_memory_never_serves_an_expired_or_rejected_token(record: Credential, ctx: Context) -> None:
    served, ahead = serve_from_memory(record, ctx)
    state = freshness(record, ctx.now)
    if served is not None:
        assert state is not Freshness.EXPIRED and record.access_token != ctx.rejected
    if ahead:
        assert served is not None and state is Freshness.STALE and record.refresh_token


@settings(max_examples=2000, deadline=None)
@given(records, contexts)
def test_a_fallback_serves_only_a_valid_token_and_never_after_a_definitive_answer(
    record: Credential, ctx: Context
) -> None:
    for error in (
        ProviderUnavailable("503"),
        RefreshOutcomeUnknown("500"),
        ReauthenticationRequired("invalid_grant"),
    ):
        served = fallback(record, error, ctx, "k")
        if served is not None:
            assert not isinstance(error, ReauthenticationRequired)
            assert freshness(record, ctx.now) is not Freshness.EXPIRED
            assert record.access_token != ctx.rejected and not record.reauth_reason


@settings(max_examples=3000, deadline=None)
@given(records, contexts)
def test_status_says_a_login_is_needed_exactly_when_the_transaction_would_need_one(
    record: Credential, ctx: Context
) -> None:
    # Status reads the store alone: no 401, and a dead holder (it cannot see liveness).
    ctx = dataclasses.replace(ctx, rejected=None)
    needs_login, detail = status_verdict(
        record, now=ctx.now, retry_unknown_outcome=ctx.retry_unknown_outcome
    )
    decision = decide(record, ctx, key="k", holder_alive=False)
    error = decision.error
    person = error is not None and (error.requires_login or error.requires_reauthentication)
    assert needs_login == person, (decision, detail)
    if needs_login:
        assert detail
