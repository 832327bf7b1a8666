"""WWW-Authenticate parsing: real-world shapes, malformed input, and a fuzzer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grantkeeper import ProtocolError
from grantkeeper._oauth.www_authenticate import bearer_challenge, parse_challenges
from tests.fuzzing import FUZZ

pytestmark = pytest.mark.portable  # needs no Linux-only server


def test_mcp_sdk_shape() -> None:
    header = (
        'Bearer error="invalid_token", error_description="Authentication required", '
        'resource_metadata="http://127.0.0.1:8000/.well-known/oauth-protected-resource/mcp"'
    )
    challenge = bearer_challenge(header)
    assert challenge is not None and challenge.error == "invalid_token"
    assert challenge.resource_metadata == (
        "http://127.0.0.1:8000/.well-known/oauth-protected-resource/mcp"
    )


def test_several_challenges_and_repeated_headers() -> None:
    challenges = parse_challenges(
        ['Basic realm="x", Bearer realm="api", scope="a b"', "Negotiate abc123=="]
    )
    assert [c.scheme for c in challenges] == ["basic", "bearer", "negotiate"]
    assert challenges[1].scope == "a b" and challenges[2].params == {}


def test_bare_tokens_escapes_and_case() -> None:
    challenge = bearer_challenge(r'BEARER Error=insufficient_scope, Scope="read \"all\""')
    assert challenge is not None
    assert (challenge.error, challenge.scope) == ("insufficient_scope", 'read "all"')


def test_bare_scheme_and_empty_elements() -> None:
    assert [c.scheme for c in parse_challenges("Bearer, , Basic")] == ["bearer", "basic"]
    assert bearer_challenge('Basic realm="x"') is None
    assert parse_challenges("") == []


@pytest.mark.parametrize(
    "header",
    [
        'Bearer error="unterminated',
        "Bearer a=1, b=",
        "=x",
        'Bearer a="1" b="2"',
        'Bearer a="1", a="2"',
        "Bearer a=1 ; b=2",
        "x" * 20000,
    ],
)
def test_malformed_headers_raise_protocol_error(header: str) -> None:
    with pytest.raises(ProtocolError):
        parse_challenges(header)


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_only_typed_errors(header: str) -> None:
    try:
        parse_challenges(header)
    except ProtocolError:
        pass
