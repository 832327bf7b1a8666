"""Auth status from the store alone, and finding auth errors inside wrapped exceptions."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from grantkeeper import LoginRequired, ReauthenticationRequired, RefreshIntent
from grantkeeper._errors import authentication_required
from grantkeeper._status import AuthState, status_of
from grantkeeper.testing import sample_record
from tests.helpers import KEY, T0


def state(record: object, elapsed: float = 0, **kw: object) -> AuthState:
    return status_of(KEY, record, now=T0 + timedelta(seconds=elapsed), **kw).state  # type: ignore[arg-type]


def test_states_follow_codex_semantics_and_beyond() -> None:
    record = sample_record("a", "r", now=T0)
    assert state(None) is AuthState.LOGIN_REQUIRED
    assert state(record) is AuthState.OAUTH
    assert state(record, 10**6) is AuthState.OAUTH  # expired, but refreshable
    assert state(record.replace(refresh_token=None), 10**6) is AuthState.REAUTHENTICATION_REQUIRED
    assert (
        state(record.replace(reauth_reason="invalid_grant")) is AuthState.REAUTHENTICATION_REQUIRED
    )
    assert state(record, bearer=True) is AuthState.BEARER


def test_an_unknown_outcome_is_shown_and_retried_never_escalated() -> None:
    record = sample_record("a", "r", now=T0)
    retry_at = T0 + timedelta(seconds=3595)
    intent = RefreshIntent(
        record.refresh_fingerprint or "", 42, "host", T0, 5, "unknown", retry_at=retry_at
    )
    many = status_of(KEY, record.replace(intent=intent), now=T0 + timedelta(seconds=3590))
    assert many.state is AuthState.OAUTH
    assert "unknown" in many.detail and "retrying" in many.detail
    assert "next attempt after 2026" in many.detail


def test_an_outage_says_since_when_and_that_it_retries() -> None:
    record = sample_record("a", "r", now=T0)
    intent = RefreshIntent(
        record.refresh_fingerprint or "",
        42,
        "host",
        T0 + timedelta(seconds=3600),
        3,
        "unavailable",
        since=T0 + timedelta(seconds=3540),
        last_error="ProviderUnavailable, HTTP 503",
    )
    status = status_of(KEY, record.replace(intent=intent), now=T0 + timedelta(seconds=3700))
    assert status.state is AuthState.OAUTH and status.action is None
    assert status.detail.startswith("provider unavailable since ")
    assert "HTTP 503" in status.detail and "retrying" in status.detail


def test_an_answer_that_could_be_stored_nowhere_needs_a_login() -> None:
    record = sample_record("a", "r", now=T0)
    intent = RefreshIntent(record.refresh_fingerprint or "", 42, "host", T0, 1, "answered")
    status = status_of(KEY, record.replace(intent=intent), now=T0 + timedelta(seconds=3590))
    assert status.state is AuthState.REAUTHENTICATION_REQUIRED
    assert "spent" in status.detail
    # Until the access token expires it still works; status says what comes next.
    fresh = status_of(KEY, record.replace(intent=intent), now=T0)
    assert fresh.state is AuthState.OAUTH and "log in again when this token expires" in fresh.detail


def test_without_the_retry_policy_one_lost_outcome_needs_a_login_and_says_so() -> None:
    record = sample_record("a", "r", now=T0)
    intent = RefreshIntent(record.refresh_fingerprint or "", 42, "host", T0, 1, "unknown")
    lost = record.replace(intent=intent)
    fresh = status_of(KEY, lost, now=T0, retry_unknown_outcome=False)
    assert fresh.state is AuthState.OAUTH
    assert "not retried" in fresh.detail and "retrying" not in fresh.detail
    stale = status_of(KEY, lost, now=T0 + timedelta(seconds=3590), retry_unknown_outcome=False)
    assert stale.state is AuthState.REAUTHENTICATION_REQUIRED
    assert stale.detail.startswith("the outcome of a refresh started") and "unknown" in stale.detail
    assert "retrying" in status_of(KEY, lost, now=T0).detail


def test_action_names_the_login_command() -> None:
    status = status_of(KEY, None, now=T0)
    assert status.action == f"grantkeeper login {KEY.server_url}"
    assert status_of(KEY, sample_record("a", "r", now=T0), now=T0).action is None


def test_found_through_groups_causes_and_contexts() -> None:
    inner = ReauthenticationRequired("dead grant")
    try:
        try:
            raise inner
        except ReauthenticationRequired:
            raise RuntimeError("transport failed") from None  # context only
    except RuntimeError as wrapped:
        group = ExceptionGroup("task group", [ValueError("other"), wrapped])
    found = authentication_required(BaseExceptionGroup("outer", [group]))
    assert found is inner and found.requires_reauthentication


def test_login_required_is_distinguished() -> None:
    error = RuntimeError("x")
    error.__cause__ = LoginRequired("nothing stored")
    found = authentication_required(error)
    assert found is not None and found.requires_login and not found.requires_reauthentication


def test_plain_http_401_counts_and_other_errors_do_not() -> None:
    request = httpx.Request("GET", "http://127.0.0.1/")
    unauthorized = httpx.HTTPStatusError(
        "401", request=request, response=httpx.Response(401, request=request)
    )
    forbidden = httpx.HTTPStatusError(
        "500", request=request, response=httpx.Response(500, request=request)
    )
    assert authentication_required(unauthorized) is not None
    assert authentication_required(forbidden) is None
    assert authentication_required(ValueError("x")) is None


def test_cycles_terminate() -> None:
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__context__, b.__context__ = b, a
    assert authentication_required(a) is None


@pytest.mark.parametrize("depth", [1, 10])
def test_depth(depth: int) -> None:
    error: BaseException = LoginRequired("x")
    for _ in range(depth):
        error = ExceptionGroup("g", [error])  # type: ignore[type-var]
    assert authentication_required(error) is not None
