"""The auth policy, stepped by hand: every branch, with no client and no server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grantkeeper import (
    AuthenticationRequired,
    GrantkeeperError,
    InsufficientScope,
    LoginRequired,
    ReauthenticationRequired,
    RetryRequired,
)
from grantkeeper._http_auth.flow import (
    ACTIONABLE,
    Acquire,
    Flow,
    Recover,
    Reply,
    Send,
    anonymous_flow,
    oauth_flow,
    static_flow,
)

INVALID = 'Bearer error="invalid_token", resource_metadata="https://x.test/.well-known/oauth-protected-resource/mcp"'


def oauth(replayable: bool = True) -> Flow:
    return oauth_flow(replayable=replayable, key="https://x.test/mcp")


def sent_a(replayable: bool = True) -> Flow:
    """An OAuth flow that has acquired token A and sent the request with it."""
    flow = oauth(replayable)
    next(flow)
    flow.send("A")
    return flow


def finish(flow: Flow, answer: str | Reply) -> None:
    with pytest.raises(StopIteration):
        flow.send(answer)


def test_healthy_request_acquires_once_and_sends_once() -> None:
    flow = oauth()
    assert next(flow) == Acquire()
    assert flow.send("A") == Send("A")
    finish(flow, Reply(200))


def test_401_names_the_token_sent_and_retries_once_with_the_renewed_one() -> None:
    flow = sent_a()
    assert flow.send(Reply(401, (INVALID,))) == Acquire(rejected="A")
    assert flow.send("B") == Send("B")
    finish(flow, Reply(200))


def test_401_on_the_retry_requires_authentication_and_never_loops() -> None:
    flow = sent_a()
    flow.send(Reply(401, (INVALID,)))
    flow.send("B")
    # Only a person can help now: the driver runs the Keeper's recovery hook, or raises.
    step = flow.send(Reply(401, (INVALID,)))
    assert isinstance(step, Recover) and isinstance(step.error, ReauthenticationRequired)
    assert step.sent == "B"  # the token the recovery is about: a login since answers it
    assert step.error.requires_reauthentication
    assert "https://x.test/mcp" in str(step.error)
    # A new login's token gets one last try; a 401 for it too is final, never a loop.
    assert flow.send("C") == Send("C")
    with pytest.raises(ReauthenticationRequired):
        flow.send(Reply(401, (INVALID,)))


def test_no_newer_token_means_no_replay_of_the_rejected_one() -> None:
    flow = sent_a()
    flow.send(Reply(401))
    with pytest.raises(ReauthenticationRequired):
        flow.send("A")


def test_401_without_a_header_or_with_a_malformed_one_is_still_recovered() -> None:
    for challenges in [(), ('Bearer error="unterminated',), ('"not a scheme"',)]:
        flow = sent_a()
        assert flow.send(Reply(401, challenges)) == Acquire(rejected="A")


def test_401_offering_only_another_scheme_is_final_without_a_refresh() -> None:
    flow = sent_a()
    with pytest.raises(AuthenticationRequired, match="basic"):
        flow.send(Reply(401, ('Basic realm="proxy"',)))


def test_non_replayable_body_renews_then_asks_for_a_retry() -> None:
    flow = sent_a(replayable=False)
    assert flow.send(Reply(401)) == Acquire(rejected="A")
    with pytest.raises(RetryRequired) as raised:
        flow.send("B")
    assert raised.value.retryable


def test_403_insufficient_scope_carries_the_scope_even_from_a_later_header() -> None:
    flow = sent_a()
    headers = ('Basic realm="x"', 'Bearer error="insufficient_scope", scope="mcp:admin mcp"')
    step = flow.send(Reply(403, headers))
    assert isinstance(step, Recover) and isinstance(step.error, InsufficientScope)
    assert step.error.scope == "mcp:admin mcp"
    assert step.sent == "A"
    assert isinstance(step.error, AuthenticationRequired)


def test_403_after_a_recovered_401_is_a_scope_error_too() -> None:
    flow = sent_a()
    flow.send(Reply(401))
    flow.send("B")
    step = flow.send(Reply(403, ('Bearer error="insufficient_scope"',)))
    assert isinstance(step, Recover) and isinstance(step.error, InsufficientScope)
    assert step.error.scope is None
    assert step.sent == "B"  # the renewed token got the 403


def test_step_up_retries_once_with_the_new_login_and_never_loops() -> None:
    flow = sent_a()
    step = flow.send(Reply(403, ('Bearer error="insufficient_scope", scope="mcp:write"',)))
    assert isinstance(step, Recover)
    assert flow.send("A+write") == Send("A+write")
    finish(flow, Reply(200))
    again = sent_a()
    again.send(Reply(403, ('Bearer error="insufficient_scope", scope="mcp:write"',)))
    again.send("A+write")
    with pytest.raises(InsufficientScope):  # the new login did not satisfy it: final
        again.send(Reply(403, ('Bearer error="insufficient_scope", scope="mcp:write"',)))


def test_step_up_of_a_streamed_body_asks_to_send_it_again() -> None:
    flow = sent_a(replayable=False)
    flow.send(Reply(403, ('Bearer error="insufficient_scope", scope="mcp:write"',)))
    with pytest.raises(RetryRequired):
        flow.send("A+write")


def test_other_403s_and_other_statuses_pass_through() -> None:
    for reply in [
        Reply(403),
        Reply(403, ('Bearer error="invalid_token"',)),
        Reply(404),
        Reply(500),
    ]:
        flow = sent_a()
        finish(flow, reply)


def test_static_bearer_never_acquires_and_a_401_is_final() -> None:
    flow = static_flow(token="S")
    assert next(flow) == Send("S")
    with pytest.raises(AuthenticationRequired, match="static") as raised:
        flow.send(Reply(401, (INVALID,)))
    assert not isinstance(raised.value, ReauthenticationRequired)

    own_header = static_flow(token=None)
    assert next(own_header) == Send(None)
    finish(own_header, Reply(200))

    scoped = static_flow(token="S")
    next(scoped)
    with pytest.raises(InsufficientScope):
        scoped.send(Reply(403, ('Bearer error="insufficient_scope", scope="s"',)))


def test_anonymous_sends_the_request_as_it_is_and_a_401_needs_a_login() -> None:
    flow = anonymous_flow(key="https://x.test/mcp")
    assert next(flow) == Send(None)
    with pytest.raises(LoginRequired) as raised:
        flow.send(Reply(401, (INVALID,)))
    assert raised.value.requires_login

    healthy = anonymous_flow()
    next(healthy)
    finish(healthy, Reply(200))


def test_the_driver_must_answer_each_step_in_kind() -> None:
    flow = oauth()
    next(flow)
    with pytest.raises(TypeError):
        flow.send(Reply(200))


@given(
    status=st.sampled_from([200, 401, 403, 404]),
    headers=st.lists(st.text(max_size=80), max_size=3),
)
def test_any_challenge_header_ends_in_a_step_or_a_typed_error(
    status: int, headers: list[str]
) -> None:
    flow = sent_a()
    try:
        step = flow.send(Reply(status, tuple(headers)))
    except StopIteration:
        return
    except GrantkeeperError:
        return
    assert step == Acquire(rejected="A")


@given(
    status=st.integers(min_value=100, max_value=599).filter(lambda s: s not in ACTIONABLE),
    challenges=st.lists(st.sampled_from([INVALID, "Basic realm=x", 'Bearer error="x"', "!"])),
    replayable=st.booleans(),
)
def test_every_flow_ends_quietly_on_a_status_it_does_not_act_on(
    status: int, challenges: list[str], replayable: bool
) -> None:
    """The contract behind the driver's healthy path: it plays the opening from memory and
    runs the flow only for a status in ACTIONABLE, so any other must end every flow."""
    flow = oauth(replayable)
    assert (next(flow), flow.send("A")) == (Acquire(), Send("A"))
    finish(flow, Reply(status, tuple(challenges)))
    static = static_flow(token="S")
    assert next(static) == Send("S")
    finish(static, Reply(status, tuple(challenges)))
    anonymous = anonymous_flow()
    assert next(anonymous) == Send(None)
    finish(anonymous, Reply(status, tuple(challenges)))
