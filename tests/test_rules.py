"""The lifecycle rules of ``_rules``, stepped by hand: the provider outcome table row by
row, then hypothesis over records, intents, clocks and outcomes for the invariants every
decision must keep."""

from __future__ import annotations

import dataclasses
from collections.abc import Container
from datetime import timedelta

import pytest
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
from grantkeeper._record import CLIENT_CREDENTIALS
from grantkeeper._rules import (
    BACKOFF_CAP,
    MAX_RETRY_AFTER,
    Action,
    Context,
    Note,
    after_provider_error,
    backoff,
    decide,
    fallback,
    holder_alive,
    note_verdict,
    pending_servable,
    rescue_dropped,
    serve_from_memory,
    status_verdict,
)
from grantkeeper.testing import sample_record
from tests.helpers import T0

pytestmark = pytest.mark.portable  # needs no Linux-only server

A = sample_record("at-A-0123456789abcdef", "rt-A-0123456789abcdef", now=T0)


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
@given(records, contexts, st.booleans())
def test_status_says_a_login_is_needed_exactly_when_the_transaction_would_need_one(
    record: Credential, ctx: Context, machine: bool
) -> None:
    # Status reads the store alone: no 401, and a dead holder (it cannot see liveness).
    ctx = dataclasses.replace(ctx, rejected=None)
    if machine:  # renewed by asking again, which spends nothing
        record = record.replace(grant=CLIENT_CREDENTIALS)
    needs_login, detail = status_verdict(
        record, now=ctx.now, retry_unknown_outcome=ctx.retry_unknown_outcome
    )
    decision = decide(record, ctx, key="k", holder_alive=False)
    error = decision.error
    person = error is not None and (error.requires_login or error.requires_reauthentication)
    assert needs_login == person, (decision, detail)
    if needs_login:
        assert detail


# -- what a note means, for the transaction and for status alike ---------------------------

MACHINE = A.replace(refresh_token=None, grant=CLIENT_CREDENTIALS)
"""A client-credentials credential: renewed by asking again, which spends nothing."""


@pytest.mark.parametrize("retry", [True, False])
@pytest.mark.parametrize("state", ["answered", "unknown", "in_flight"])
def test_status_asks_no_login_for_a_client_credentials_renewal_the_keeper_would_make(
    state: str, retry: bool
) -> None:
    intent = note(token_fingerprint=MACHINE.refresh_fingerprint, state=state)
    record = MACHINE.replace(intent=intent)
    expired = Context(
        now=T0 + timedelta(hours=2), pid=1, host="h", holder="me", retry_unknown_outcome=retry
    )
    assert decide(record, expired, key="k").action is Action.REFRESH
    needs_login, detail = status_verdict(record, now=expired.now, retry_unknown_outcome=retry)
    assert not needs_login, detail


def test_a_note_forbids_a_renewal_only_where_it_would_spend_a_token_twice() -> None:
    def verdict(record: Credential, state: str, retry: bool = True) -> Note:
        noted = record.replace(
            intent=note(token_fingerprint=record.refresh_fingerprint, state=state)
        )
        return note_verdict(noted, retry_unknown_outcome=retry)

    assert note_verdict(A) is Note.CLEAR
    assert verdict(A, "answered") is Note.SPENT
    assert verdict(A, "unavailable") is Note.CLEAR
    assert verdict(A, "unknown") is verdict(A, "in_flight") is Note.UNKNOWN
    assert verdict(A, "unknown", retry=False) is Note.UNKNOWN_REFUSED
    assert verdict(A, "in_flight", retry=False) is Note.UNKNOWN_REFUSED
    for state in ("answered", "unknown", "in_flight"):
        assert verdict(MACHINE, state, retry=False) is Note.CLEAR
    stale_note = A.replace(intent=note(token_fingerprint="another token", state="answered"))
    assert note_verdict(stale_note) is Note.CLEAR  # it is about a token no longer held


# -- who may still hold an answer ----------------------------------------------------------


def alive(
    intent: RefreshIntent | None,
    *,
    elapsed: float = 0,
    siblings: Container[str] = (),
    running: Container[int] = (),
) -> tuple[bool, list[int]]:
    """``holder_alive`` as process 1, Keeper "me", on host "h" of boot "boot/1":
    ``(its answer, the pids it probed)``."""
    probed: list[int] = []

    def pid_alive(pid: int) -> bool:
        probed.append(pid)
        return pid in running

    answer = holder_alive(
        intent,
        now=T0 + timedelta(seconds=elapsed),
        pid=1,
        holder="me",
        host_id="boot/1",
        host="h",
        sibling_alive=lambda holder: holder in siblings,
        pid_alive=pid_alive,
    )
    return answer, probed


def test_no_note_has_no_holder() -> None:
    assert alive(None, running=(7,)) == (False, [])


def test_a_writer_on_this_host_is_probed_by_its_pid() -> None:
    here = note(pid=7, host_id="boot/1")
    assert alive(here, running=(7,)) == (True, [7])
    assert alive(here) == (False, [7])
    # Before host identities a note named only its hostname.
    assert alive(note(pid=7, host="h"), running=(7,)) == (True, [7])


def test_a_writer_in_this_process_is_alive_only_as_another_live_keeper() -> None:
    ours = note(pid=1, host_id="boot/1", holder="me")
    sibling = note(pid=1, host_id="boot/1", holder="peer")
    assert alive(ours, siblings=("me", "peer"), running=(1,)) == (False, [])
    assert alive(sibling, siblings=("peer",), running=(1,)) == (True, [])
    assert alive(sibling, siblings=(), running=(1,)) == (False, [])


def test_a_writer_elsewhere_is_alive_while_in_flight_with_its_lease_running() -> None:
    lease = T0 + timedelta(seconds=30)
    elsewhere = note(pid=7, host_id="boot/2", lease_until=lease)
    assert alive(elsewhere, running=(7,)) == (True, [])
    assert alive(elsewhere, elapsed=30, running=(7,)) == (False, [])
    assert alive(dataclasses.replace(elsewhere, lease_until=None), running=(7,)) == (False, [])
    assert alive(dataclasses.replace(elsewhere, state="unknown"), running=(7,)) == (False, [])
    # Same hostname, another boot or pid namespace: its pid means nothing here.
    assert alive(note(pid=7, host="h", host_id="boot/2"), running=(7,)) == (False, [])


# -- a credential the store would not take --------------------------------------------------


def test_a_pending_credential_serves_while_valid_and_not_rejected() -> None:
    assert pending_servable(A, Context(now=T0))
    assert pending_servable(A, Context(now=T0 + timedelta(seconds=3590)))  # in its margin
    assert not pending_servable(A, Context(now=T0 + timedelta(seconds=3600)))
    assert not pending_servable(A, Context(now=T0, rejected=A.access_token))
    assert pending_servable(A, Context(now=T0, rejected="at-OTHER"))


def test_a_rescue_copy_is_dropped_for_a_dead_record_or_another_account() -> None:
    spent = A.replace(access_token="at-spent")
    assert not rescue_dropped(spent, A, known=None)
    assert not rescue_dropped(spent, A, known=A)
    assert rescue_dropped(spent.replace(reauth_reason="invalid_grant"), A, known=A)
    assert rescue_dropped(spent, A.replace(subject="mallory"), known=A)
    assert rescue_dropped(spent, A.replace(resource="https://other.test/mcp"), known=A)
