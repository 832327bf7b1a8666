"""No secret in any token endpoint error: every error path, a confidential client, both
client authentication methods, and every form in which a server may echo the secret."""

from __future__ import annotations

import base64
import http.server
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from grantkeeper import (
    ClientRegistrationInvalid,
    FileStore,
    GrantkeeperError,
    MalformedResponse,
    ProviderError,
    ProviderUnavailable,
    ReauthenticationRequired,
    RefreshOutcomeUnknown,
)
from grantkeeper._cli import cli
from grantkeeper._oauth.token_endpoint import (
    MAX_DESCRIPTION_CHARS,
    MAX_RESPONSE_BYTES,
    TokenRequest,
    code_request,
    parse_token_response,
    refresh_request,
)
from grantkeeper._redact import scrub
from grantkeeper.testing import sample_record
from tests.fake_authserver import both_ways
from tests.fuzzing import FUZZ
from tests.helpers import KEY, RESOURCE, T0
from tests.loopback_endpoint import Received, loopback_endpoint, send

CLIENT_ID = "cid-public-1"
SECRET = "cs/SECRET+value=0123456789abcdef"  # '/', '+', '=' change under every encoding
RT = "rt-SECRET-refresh-0123456789abcdef"
CODE = "code-SECRET-0123456789abcdef"
VERIFIER = "verifier-SECRET-0123456789abcdefghijklmnopq"
REDIRECT_URI = "http://127.0.0.1:53682/callback"
ENDPOINT = "https://as.example.test/token"

METHODS = ["client_secret_basic", "client_secret_post"]


def refresh(method: str) -> TokenRequest:
    record = sample_record("a", RT, token_endpoint=ENDPOINT, now=T0).replace(
        client_id=CLIENT_ID, client_secret=SECRET, token_endpoint_auth_method=method
    )
    return refresh_request(record)


def code(method: str) -> TokenRequest:
    return code_request(
        token_endpoint=ENDPOINT,
        code=CODE,
        redirect_uri=REDIRECT_URI,
        code_verifier=VERIFIER,
        resource=RESOURCE,
        client_id=CLIENT_ID,
        client_secret=SECRET,
        auth_method=method,
    )


BASIC = base64.b64encode(f"{CLIENT_ID}:{quote(SECRET, safe='')}".encode()).decode()
PAIRS = [f"{CLIENT_ID}:{SECRET}", f"{CLIENT_ID}:{quote(SECRET, safe='')}"]
SECRETS = [SECRET, quote(SECRET, safe=""), quote_plus(SECRET), BASIC, RT, CODE, VERIFIER]
"""Values no error may show, nor any eight characters of them."""


def echoes(request: httpx.Request) -> list[str]:
    """Every form in which a server might repeat the client's credentials."""
    auth = request.headers.get("authorization", "")
    credential = auth.partition(" ")[2]
    return [
        auth,
        credential,
        credential.rstrip("="),
        credential[:12],  # a server that truncates what it echoes
        base64.b64decode(credential).decode() if credential else "",
        *PAIRS,
        quote(PAIRS[0], safe=""),
        SECRET,
        quote(SECRET, safe=""),
        quote_plus(SECRET),
        SECRET[:10],
        request.content.decode(),  # the whole form, url-encoded
        RT,
        CODE,
        VERIFIER,
    ]


def assert_clean(exc: BaseException) -> None:
    assert isinstance(exc, GrantkeeperError), repr(exc)
    for text in (str(exc), repr(exc), exc.message, str(getattr(exc, "error", ""))):
        for pair in PAIRS:
            assert pair not in text
        for secret in SECRETS:
            for i in range(len(secret) - 8 + 1):
                assert secret[i : i + 8] not in text, (secret[i : i + 8], text)


Answer = Callable[[httpx.Request, str], httpx.Response]


def described(status: int, error: str) -> Answer:
    def answer(request: httpx.Request, echo: str) -> httpx.Response:
        body = {"error": error, "error_description": f"bad {echo} here"}
        return httpx.Response(status, json=body, headers={"retry-after": "3"})

    return answer


def raw(status: int) -> Answer:
    return lambda request, echo: httpx.Response(status, content=f"bad {echo} here".encode())


def oversized(request: httpx.Request, echo: str) -> httpx.Response:
    return httpx.Response(200, content=echo.encode() * (MAX_RESPONSE_BYTES // len(echo) + 2))


def error_code(request: httpx.Request, echo: str) -> httpx.Response:
    return httpx.Response(400, json={"error": echo})


def raises(kind: type[httpx.HTTPError]) -> Answer:
    def answer(request: httpx.Request, echo: str) -> httpx.Response:
        raise kind(f"failed sending {echo}")

    return answer


PATHS: list[tuple[str, Answer, type[GrantkeeperError]]] = [
    ("invalid_grant-400", described(400, "invalid_grant"), ReauthenticationRequired),
    ("invalid_grant-401", described(401, "invalid_grant"), ReauthenticationRequired),
    ("invalid_client", described(401, "invalid_client"), ClientRegistrationInvalid),
    ("unauthorized_client", described(400, "unauthorized_client"), ClientRegistrationInvalid),
    ("429-retry-after", described(429, "slow_down"), ProviderUnavailable),
    ("503", described(503, "temporarily_unavailable"), ProviderUnavailable),
    ("500", described(500, "server_error"), RefreshOutcomeUnknown),
    ("502-html", raw(502), RefreshOutcomeUnknown),
    ("other-4xx", described(400, "invalid_scope"), ProviderError),
    ("200-not-json", raw(200), MalformedResponse),
    ("oversized", oversized, MalformedResponse),
    ("error-code-echo", error_code, ProviderError),
    ("refused", raises(httpx.ConnectError), ProviderUnavailable),
    ("read-timeout", raises(httpx.ReadTimeout), RefreshOutcomeUnknown),
    ("decoding", raises(httpx.DecodingError), RefreshOutcomeUnknown),
]
"""Every error path of a token request, each with the class its outcome must have."""


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("build", [refresh, code], ids=["refresh", "code"])
@pytest.mark.parametrize(("path", "answer", "expected"), PATHS, ids=[p[0] for p in PATHS])
def test_no_error_path_repeats_a_client_credential(
    method: str,
    build: Callable[[str], TokenRequest],
    path: str,
    answer: Answer,
    expected: type[GrantkeeperError],
) -> None:
    request = build(method)
    for index in range(len(echoes(request.to_httpx()))):

        def handler(sent: httpx.Request, index: int = index) -> httpx.Response:
            return answer(sent, echoes(sent)[index] or "nothing")

        for outcome in both_ways(handler, request):
            assert type(outcome) is expected, (index, outcome)
            assert isinstance(outcome, GrantkeeperError)
            assert_clean(outcome)


def test_the_secret_halves_of_a_basic_pair_are_hidden_and_the_client_id_kept() -> None:
    hidden = refresh("client_secret_basic").secret_values()
    assert {SECRET, quote(SECRET, safe=""), BASIC, "Basic " + BASIC, RT} <= set(hidden)
    assert not any(CLIENT_ID in value for value in hidden if not value.startswith("Basic"))
    description = f"client {CLIENT_ID} sent {PAIRS[1]}"
    body = json.dumps({"error": "invalid_client", "error_description": description}).encode()
    with pytest.raises(ClientRegistrationInvalid) as info:
        parse_token_response(401, {}, body, now=T0, secrets=hidden)
    assert f"client {CLIENT_ID} sent {CLIENT_ID}:…" in info.value.message
    assert_clean(info.value)


@pytest.mark.parametrize("method", METHODS)
def test_ordinary_words_in_a_description_stay_readable(method: str) -> None:
    # The grant type, redirect URI, resource and client id are not secrets: "got
    # authorization_code" once became "got …code".
    request = code(method)
    description = f"got authorization_code for {RESOURCE} via {REDIRECT_URI} as {CLIENT_ID}"
    body = json.dumps({"error": "invalid_request", "error_description": description})
    with pytest.raises(ProviderError) as info:
        parse_token_response(400, {}, body.encode(), now=T0, secrets=request.secret_values())
    assert description in info.value.message


def test_only_secret_fields_are_hidden() -> None:
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": "subject-SECRET-0123456789",
        "actor_token": "actor-SECRET-0123456789",
        "client_assertion": "eyJhbGciOi.assertion-SECRET.sig",
        "assertion": "eyJhbGciOi.jwt-bearer-SECRET.sig",
        "password": "pass-SECRET",
        "scope": "mcp offline_access",
        "resource": RESOURCE,
        "client_id": CLIENT_ID,
    }
    hidden = TokenRequest(ENDPOINT, form).secret_values()
    for name in ("subject_token", "actor_token", "client_assertion", "assertion", "password"):
        assert form[name] in hidden
    for name in ("grant_type", "scope", "resource", "client_id"):
        assert form[name] not in hidden


# -- the CLI, against a real loopback token endpoint -----------------------------------


def echo_credentials(received: Received, handler: http.server.BaseHTTPRequestHandler) -> None:
    auth = received.headers.get("authorization", "")
    echo = f"auth {auth} secret {received.form.get('client_secret', '')}"
    body = json.dumps({"error": "slow_down", "error_description": echo}).encode()
    send(handler, 429, body, {"Retry-After": "1"})


@pytest.mark.parametrize("method", METHODS)
def test_cli_token_never_prints_the_client_secret(home: Path, method: str) -> None:
    with loopback_endpoint(echo_credentials) as url:
        expired = sample_record(
            "cli-access-SECRET-0001",
            RT,
            now=datetime.now(UTC) - timedelta(hours=2),
            token_endpoint=url,
        ).replace(client_id=CLIENT_ID, client_secret=SECRET, token_endpoint_auth_method=method)
        FileStore(home).write(KEY, expired, expected_version=None)
        result = CliRunner().invoke(cli, ["token", RESOURCE])
    output = result.stdout + result.stderr
    assert result.exit_code != 0 and "HTTP 429" in result.stderr, output
    assert "auth " in result.stderr and " secret " in result.stderr  # the words stay
    for pair in PAIRS:
        assert pair not in output
    for secret in SECRETS:
        for i in range(len(secret) - 8 + 1):
            assert secret[i : i + 8] not in output, (secret[i : i + 8], output)


# -- the scrub itself, fuzzed ----------------------------------------------------------

WORD_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=%"
secret_strings = st.text(alphabet=WORD_CHARS, min_size=8, max_size=40)


@FUZZ
@given(
    secrets=st.lists(secret_strings, min_size=1, max_size=4, unique=True),
    data=st.data(),
    limit=st.sampled_from([40, MAX_DESCRIPTION_CHARS, 10_000]),
)
def test_no_secret_or_eight_characters_of_one_survive_a_scrub(
    secrets: list[str], data: st.DataObject, limit: int
) -> None:
    pieces = st.one_of(
        st.sampled_from(secrets),
        st.sampled_from(secrets).flatmap(  # a truncated or partial echo
            lambda s: st.integers(0, len(s) - 8).map(lambda i: s[i:])
        ),
        st.sampled_from(["got", "authorization_code", " ", ":", "\n", "…", "é"]),
        st.text(alphabet=WORD_CHARS + " :", max_size=6),
    )
    text = "".join(data.draw(st.lists(pieces, max_size=12)))
    shown = scrub(text, secrets, limit)
    assert len(shown) <= limit
    for secret in secrets:
        for i in range(len(secret) - 8 + 1):
            assert secret[i : i + 8] not in shown, (secret, text, shown)
