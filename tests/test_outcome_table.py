"""The provider outcome table, once: every row of ``_rules.OUTCOME_TABLE`` is produced by
real answers and transport failures sent through the token client, leaves the note its row
says, and reads the same in docs/refresh-transaction.md and docs/guarantees.md."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from grantkeeper import (
    ClientRegistrationInvalid,
    MalformedResponse,
    ProviderError,
    ProviderUnavailable,
    ReauthenticationRequired,
    RefreshIntent,
    RefreshOutcomeUnknown,
)
from grantkeeper._oauth.token_client import send_token_request
from grantkeeper._oauth.token_endpoint import TokenResponse, refresh_request
from grantkeeper._rules import (
    OUTCOME_TABLE,
    Action,
    Context,
    Outcome,
    after_provider_error,
    answer_outcome,
    backoff_error,
    decide,
    outcome_of,
    status_verdict,
)
from grantkeeper.testing import sample_record
from tests.helpers import ROOT, T0

pytestmark = pytest.mark.portable  # needs no Linux-only server

RT = "rt-outcome-0123456789abcdef"
A = sample_record(
    "at-outcome-0123456789abcdef", RT, token_endpoint="https://as.example.test/token", now=T0
)
IN_FLIGHT = RefreshIntent(A.refresh_fingerprint or "", 1, "h", T0, 1, "in_flight", "me")

Answer = tuple[int, object, dict[str, str]]
"""An HTTP answer of the token endpoint: status, JSON body (bytes as they are), headers."""

TOKENS = {"access_token": "at-B-0123456789abcdef", "refresh_token": "rt-B-0123456789abcdef"}


def answer(status: int, body: object = None, **headers: str) -> Answer:
    return status, body, headers


def failing(exc: Exception) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


def answering(
    status: int, content: bytes, headers: dict[str, str]
) -> Callable[..., httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=content, headers=headers)

    return handler


# Each row's cases: what the row's "produced by" names, sent through the real token client.
CASES: dict[Outcome, list[Answer | Exception]] = {
    Outcome.ANSWERED: [
        answer(200, {**TOKENS, "token_type": "Bearer", "expires_in": 3600}),
        answer(201, {**TOKENS, "token_type": "bearer"}),
        answer(203, {**TOKENS}),
        answer(200, {**TOKENS, "token_type": "DPoP", "expires_in": 60}),
        answer(200, {**TOKENS, "token_type": "N_A"}),
        answer(200, {**TOKENS, "error": "invalid_grant"}),  # a token came: it is the answer
        # No usable access token, but B's refresh token: kept, and spent for one next.
        answer(200, {**TOKENS, "access_token": "has spaces"}),
        answer(201, {"refresh_token": TOKENS["refresh_token"], "token_type": "Bearer"}),
    ],
    Outcome.NOT_SENT: [
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("slow connect"),
        httpx.PoolTimeout("no slot"),
        httpx.ProxyError("tunnel refused"),
    ],
    Outcome.NOT_PROCESSED: [
        answer(429, {"error": "slow_down"}, **{"retry-after": "7"}),
        answer(503, None),
        answer(429, {"error": "invalid_grant"}),
        answer(503, {"error": "invalid_client"}),
        answer(400, {"error": "temporarily_unavailable"}),
        answer(200, {"error": "temporarily_unavailable"}),
    ],
    Outcome.UNKNOWN: [
        answer(500, {"error": "server_error"}),
        answer(502, b"<html>bad gateway</html>"),
        answer(504, {"error": "invalid_grant"}),
        answer(500, {"error": "invalid_client"}),
        answer(500, {"error": "temporarily_unavailable"}),
        answer(502, {"error": "temporarily_unavailable"}),
        answer(103, None),
        answer(302, None, location="https://elsewhere.test/"),
        answer(400, None),
        answer(401, b"unauthorized"),
        answer(200, {"token_type": "Bearer"}),
        answer(204, None),
        answer(200, b"not json"),
        answer(200, {"access_token": "has spaces", "token_type": "Bearer"}),
        httpx.ReadTimeout("no answer"),
        httpx.WriteTimeout("stuck sending"),
        httpx.ReadError("reset"),
        httpx.RemoteProtocolError("half an answer"),
    ],
    Outcome.REFUSED: [
        answer(400, {"error": "invalid_request"}),
        answer(400, {"error": "invalid_scope", "error_description": "too much"}),
        answer(403, {"error": "access_denied"}),
        answer(400, {"error": "unsupported_grant_type"}),
        answer(200, {"error": "invalid_request"}),
        httpx.UnsupportedProtocol("ftp"),
        httpx.InvalidURL("the token endpoint URL"),
    ],
    Outcome.DEFINITIVE: [
        answer(400, {"error": "invalid_grant"}),
        answer(401, {"error": "invalid_grant"}),
        answer(401, {"error": "invalid_client"}),
        answer(400, {"error": "unauthorized_client"}),
        answer(200, {"error": "invalid_grant"}),
    ],
}

RAISES: dict[Outcome, tuple[type[Exception], ...]] = {
    Outcome.NOT_SENT: (ProviderUnavailable,),
    Outcome.NOT_PROCESSED: (ProviderUnavailable,),
    Outcome.UNKNOWN: (RefreshOutcomeUnknown, MalformedResponse),
    Outcome.REFUSED: (ProviderError,),
    Outcome.DEFINITIVE: (ReauthenticationRequired, ClientRegistrationInvalid),
}


def send(case: Answer | Exception) -> TokenResponse | Exception:
    """What the token client makes of ``case``: its tokens, or the typed error it raised."""
    request = refresh_request(A)
    if isinstance(case, httpx.InvalidURL):  # raised while the request is made, not sent
        request = refresh_request(A.replace(token_endpoint="http://[::1/token"))
        handler = failing(AssertionError("an invalid URL must not be sent"))
    elif isinstance(case, Exception):
        handler = failing(case)
    else:
        status, body, headers = case
        content = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body)
        handler = answering(
            status, content.encode() if isinstance(content, str) else content, headers
        )
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        try:
            return send_token_request(client, request, now=lambda: T0)
        except Exception as exc:  # noqa: BLE001 - the typed error is the result under test
            return exc


def test_every_outcome_has_one_row_and_cases() -> None:
    assert [row.outcome for row in OUTCOME_TABLE] == list(Outcome)
    assert set(CASES) == set(Outcome) and all(CASES.values())


@pytest.mark.parametrize(
    ("outcome", "case"),
    [(outcome, case) for outcome, cases in CASES.items() for case in cases],
    ids=lambda v: getattr(v, "value", None) or repr(v)[:60],
)
def test_every_case_lands_in_its_row_and_leaves_its_note(
    outcome: Outcome, case: Answer | Exception
) -> None:
    got = send(case)
    if not isinstance(case, Exception):
        status, body, _ = case
        fields = body if isinstance(body, dict) else {}
        code = fields.get("error") if isinstance(fields.get("error"), str) else None
        access, refresh = fields.get("access_token"), fields.get("refresh_token")
        usable = isinstance(access, str) and " " not in access or isinstance(refresh, str)
        assert answer_outcome(status, code, usable) is outcome
    if outcome is Outcome.ANSWERED:
        assert isinstance(got, TokenResponse), got
        assert got.refresh_token == TOKENS["refresh_token"]  # B is never thrown away
        return
    assert isinstance(got, RAISES[outcome]), got
    assert outcome_of(got) is outcome
    noted = A.replace(intent=IN_FLIGHT)
    plan = after_provider_error(got, noted, Context(now=T0), key="k", was_unknown=False)
    assert plan.outcome is outcome
    if outcome is Outcome.DEFINITIVE:
        assert plan.mark and plan.write is None
        assert plan.error.requires_reauthentication or plan.error.requires_login
        return
    assert plan.mark is None and plan.write is not None and plan.write.intent is not None
    note = plan.write.intent
    assert note.state == ("unknown" if outcome is Outcome.UNKNOWN else "unavailable")
    assert note.refused is (outcome is Outcome.REFUSED)
    assert note.retry_at is not None and note.retry_at > T0  # every failure backs off
    assert plan.write.replace(intent=None) == A  # nothing else changed: A is unspent
    # What a caller with an expired token gets until retry_at, and what status says.
    waiting = backoff_error(note, T0, "k")
    assert isinstance(waiting, RAISES[outcome]) and outcome_of(waiting) is (
        Outcome.NOT_PROCESSED if outcome is Outcome.NOT_SENT else outcome
    )
    needs_login, detail = status_verdict(plan.write, now=T0)
    assert not needs_login and "retrying" in detail
    assert ("refusing" in detail) is (outcome is Outcome.REFUSED)


def test_an_unknown_outcome_ends_the_grant_only_when_retrying_is_off() -> None:
    """The UNKNOWN row's "ends the grant": the next attempt asks for a login instead."""
    noted = A.replace(intent=IN_FLIGHT)
    plan = after_provider_error(
        httpx.ReadTimeout("x"), noted, Context(now=T0), key="k", was_unknown=False
    )
    assert plan.write is not None
    later = Context(now=T0 + timedelta(hours=2), pid=2, host="h2")
    assert decide(plan.write, later, key="k").action is Action.REFRESH
    strict = Context(now=T0 + timedelta(hours=2), pid=2, host="h2", retry_unknown_outcome=False)
    refused = decide(plan.write, strict, key="k")
    assert refused.action is Action.FAIL and refused.mark
    assert refused.error is not None and refused.error.requires_reauthentication


# -- the docs say the same, row by row -------------------------------------------------------


def _table(path: Path, header: str) -> list[list[str]]:
    """The rows of the markdown table under ``header`` (its first line) in ``path``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = lines.index(header)
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def _name(outcome: Outcome) -> str:
    return outcome.value.replace("_", " ")


def _line(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def test_the_refresh_transaction_docs_show_the_table_row_by_row() -> None:
    header = "| outcome | produced by | the note left | what callers get | ends the grant |"
    expected = [
        [_name(r.outcome), r.produced_by, r.note, r.callers_get, r.ends_grant]
        for r in OUTCOME_TABLE
    ]
    shown = _table(ROOT / "docs" / "refresh-transaction.md", header)
    assert shown == expected, "docs/refresh-transaction.md should read:\n" + "\n".join(
        [header, "|---|---|---|---|---|", *(_line(*row) for row in expected)]
    )


def test_the_guarantees_show_what_ends_a_grant_row_by_row() -> None:
    header = "| outcome | produced by | ends the grant |"
    expected = [[_name(r.outcome), r.produced_by, r.ends_grant] for r in OUTCOME_TABLE]
    shown = _table(ROOT / "docs" / "guarantees.md", header)
    assert shown == expected, "docs/guarantees.md should read:\n" + "\n".join(
        [header, "|---|---|---|", *(_line(*row) for row in expected)]
    )


STALE_CLAIMS = (
    re.compile(r"400 or 401"),  # invalid_grant ends a grant in any 4xx but 429, and 2xx
    re.compile(r"non-JSON 200|200 whose `access_token`|a 200 (whose|that|with)"),  # any 2xx
    re.compile(r"token_type` case"),  # any token_type is kept now
)


def test_no_doc_claims_a_status_or_a_failure_the_table_does_not() -> None:
    """The wording before the table: invalid_grant "as 400 or 401", only a 200 counting,
    a token_type other than Bearer thrown away, and timeouts that never end a grant
    whatever the policy."""
    for name in ("refresh-transaction.md", "guarantees.md"):
        text = (ROOT / "docs" / name).read_text(encoding="utf-8")
        for claim in STALE_CLAIMS:
            assert not claim.search(text), (name, claim.pattern)
    promise = (ROOT / "docs" / "guarantees.md").read_text(encoding="utf-8")
    promise = promise[promise.index("3. **Only a definitive answer ends a grant.**") :]
    promise = promise[: promise.index("\n4. ")]
    assert "timeouts" in promise and "retry_unknown_outcome=False" in promise, promise
