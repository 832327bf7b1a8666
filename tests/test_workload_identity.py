"""Workload identity federation (SEP-1933): a workload logs in with its own JWT (RFC 7523
jwt-bearer), read where its platform puts it at every renewal and never stored.

The pure pieces first (sources, errors, the renewal request, what a refusal means), then
against the real oidc-provider trusting a workload issuer's key, with a real MCP server:
the CLI login, a file rotated in place as the kubelet rotates a projected token, and
refusals. The conformance suite's ``auth/wif-jwt-bearer`` plays the same grant against
``conformance/client.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from grantkeeper import (
    CredentialKey,
    FileStore,
    Keeper,
    ProtocolError,
    ProviderError,
    ReauthenticationRequired,
    ServerConfig,
    ServerConfigError,
    WorkloadIdentity,
    WorkloadTokenRejected,
    WorkloadTokenUnavailable,
    load_servers,
    login,
    save_server,
)
from grantkeeper._cli import cli
from grantkeeper._oauth.discovery import Discovery
from grantkeeper._oauth.grants import JWT_BEARER, renewal_request
from grantkeeper._rules import Context, Note, after_provider_error, decide, note_verdict
from grantkeeper.mcp import connect
from grantkeeper.testing import sample_record
from harness import remember_secret
from harness.authserver import WIF_CLIENT, AuthServer
from harness.mcp_server import McpServer
from tests.fake_authserver import ISSUER, META, SERVER
from tests.login_helpers import introspect

WORKLOAD_ISSUER = "https://kubernetes.default.svc.cluster.local"
SUBJECT = "system:serviceaccount:agents:summarizer"
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def workload_jwt(
    key: RSAKey, audience: str, jti: str, *, expires_in: int = 600, issuer: str = WORKLOAD_ISSUER
) -> str:
    """A projected service-account token as a cluster issues it, remembered as a secret."""
    now = int(time.time())
    claims = {
        "iss": issuer,
        "sub": SUBJECT,
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": now + expires_in,
        "jti": jti,
    }
    token = jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key)
    remember_secret(token)
    return token


def rsa_key(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid})


@pytest.fixture(scope="module")
def cluster_key() -> RSAKey:
    return rsa_key("cluster-1")


def unverified_token(claims: dict[str, Any]) -> str:
    """A JWT-shaped token whose signature nobody checks here (the client reads only exp)."""
    token = jwt.encode({"alg": "HS256"}, claims, _HS_KEY)
    remember_secret(token)
    return token


_HS_KEY = OctKey.import_key("k" * 32)


# -- where the token comes from ----------------------------------------------------------


def test_a_file_is_read_again_at_every_call(tmp_path: Path) -> None:
    path = tmp_path / "token"
    first = unverified_token({"exp": int(time.time()) + 600, "jti": "one"})
    path.write_text(first + "\n")  # the kubelet writes no newline; an operator's editor does
    identity = WorkloadIdentity(file=path)
    assert identity.read() == first
    second = unverified_token({"exp": int(time.time()) + 600, "jti": "two"})
    path.write_text(second)
    assert identity.read() == second
    assert identity.source == f"file:{path}"


def test_an_environment_variable_and_a_function_are_sources_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = unverified_token({"exp": int(time.time()) + 600})
    monkeypatch.setenv("GK_WORKLOAD_TOKEN", token)
    assert WorkloadIdentity(env="GK_WORKLOAD_TOKEN").read() == token
    assert WorkloadIdentity(env="GK_WORKLOAD_TOKEN").source == "env:GK_WORKLOAD_TOKEN"
    calls: list[int] = []

    def fetch() -> str:
        calls.append(1)
        return token

    identity = WorkloadIdentity(token=fetch)
    assert identity.read() == token and identity.read() == token
    assert len(calls) == 2 and identity.source == "callable"


@pytest.mark.parametrize(
    ("kind", "where", "what"),
    [
        ("absent", "absent", "cannot read"),
        ("unset", "$GK_UNSET_WORKLOAD", "not set"),
        ("empty", "empty", "is empty"),
        ("pem", "pem", "not a JWT"),
    ],
)
def test_a_missing_or_unusable_token_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, where: str, what: str
) -> None:
    monkeypatch.delenv("GK_UNSET_WORKLOAD", raising=False)
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "pem").write_text("-----BEGIN PRIVATE KEY-----")
    identity = (
        WorkloadIdentity(env="GK_UNSET_WORKLOAD")
        if kind == "unset"
        else WorkloadIdentity(file=tmp_path / kind)
    )
    with pytest.raises(WorkloadTokenUnavailable, match=what) as caught:
        identity.read()
    assert where in str(caught.value)
    assert caught.value.retryable  # the platform may put it there yet


def test_an_expired_token_is_refused_before_it_is_sent(tmp_path: Path) -> None:
    path = tmp_path / "token"
    expired = unverified_token({"exp": int(time.time()) - 60})
    path.write_text(expired)
    with pytest.raises(WorkloadTokenUnavailable, match="expired at") as caught:
        WorkloadIdentity(file=path).read()
    assert str(path) in str(caught.value) and expired not in str(caught.value)


def test_no_message_or_repr_shows_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    token = unverified_token({"exp": int(time.time()) + 600})
    monkeypatch.setenv("GK_WORKLOAD_TOKEN", token)
    identity = WorkloadIdentity(env="GK_WORKLOAD_TOKEN")
    identity.read()

    def leaky() -> str:
        raise RuntimeError(f"could not refresh {token}")

    with pytest.raises(WorkloadTokenUnavailable) as caught:
        WorkloadIdentity(token=leaky).read()
    assert token not in f"{caught.value} {caught.value!r}"
    assert "RuntimeError" in str(caught.value)


def test_exactly_one_source_is_given() -> None:
    with pytest.raises(ServerConfigError, match="exactly one"):
        WorkloadIdentity()
    with pytest.raises(ServerConfigError, match="exactly one"):
        WorkloadIdentity(file="/t", env="T")


# -- renewal, and what a refusal means -----------------------------------------------------


def workload_record(source: str, **changes: Any) -> Any:
    return sample_record("wl-access-token-0123456789", None, now=NOW).replace(
        grant=JWT_BEARER,
        workload_source=source,
        client_id=WIF_CLIENT,
        token_endpoint=f"{ISSUER}/token",
        scope_requested="mcp",
        **changes,
    )


def test_each_renewal_sends_the_token_the_file_holds_then(tmp_path: Path) -> None:
    path = tmp_path / "token"
    old = unverified_token({"exp": int(time.time()) + 600, "jti": "old"})
    path.write_text(old)
    record = workload_record(f"file:{path}")
    assert record.renewable and record.asks_again
    first = renewal_request(record, NOW)
    assert first.form["grant_type"] == JWT_BEARER and first.form["assertion"] == old
    assert first.form["client_id"] == WIF_CLIENT and first.form["scope"] == "mcp"
    assert first.form["resource"] == record.resource
    new = unverified_token({"exp": int(time.time()) + 600, "jti": "new"})
    path.write_text(new)
    assert renewal_request(record, NOW).form["assertion"] == new


def test_a_function_source_is_handed_to_each_keeper(tmp_path: Path) -> None:
    record = workload_record("callable")
    with pytest.raises(WorkloadTokenUnavailable, match="Keeper"):
        renewal_request(record, NOW)
    token = unverified_token({"exp": int(time.time()) + 600})
    given = WorkloadIdentity(token=lambda: token)
    assert renewal_request(record, NOW, workload=given).form["assertion"] == token


def test_a_refused_workload_token_backs_off_and_never_ends_the_grant() -> None:
    record = workload_record("file:/var/run/secrets/tokens/mcp")
    ctx = Context(now=NOW, skew=timedelta(seconds=30), pid=1, host="h")
    decision = decide(record.replace(expires_at=NOW - timedelta(seconds=1)), ctx, key="k")
    assert decision.intent is not None
    noted = record.replace(intent=decision.intent)
    refusal = ReauthenticationRequired("the authorization server rejected the grant: expired")
    plan = after_provider_error(refusal, noted, ctx, key="k", was_unknown=False)
    assert plan.mark is None  # not dead: the next renewal reads the token again
    assert isinstance(plan.error, WorkloadTokenRejected) and not plan.error.needs_login
    assert "/var/run/secrets/tokens/mcp" in str(plan.error)
    assert plan.write is not None and plan.write.intent is not None
    assert plan.write.intent.refused and plan.write.intent.retry_at is not None
    assert note_verdict(plan.write) is Note.CLEAR


def test_a_workload_login_needs_a_server_taking_jwt_bearer_and_a_client_id(
    tmp_path: Path,
) -> None:
    path = tmp_path / "token"
    path.write_text(unverified_token({"exp": int(time.time()) + 600}))
    identity = WorkloadIdentity(file=path)
    http = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(500)))
    with pytest.raises(ServerConfigError, match="client id"):
        login(ServerConfig(SERVER), store=FileStore(tmp_path), workload=identity, http=http,
              discovery=Discovery(SERVER, SERVER, META))  # fmt: skip
    with pytest.raises(ProtocolError, match="jwt-bearer"):
        login(ServerConfig(SERVER, client_id=WIF_CLIENT), store=FileStore(tmp_path),
              workload=identity, http=http, discovery=Discovery(SERVER, SERVER, META))  # fmt: skip


# -- against the real oidc-provider and a real MCP server ---------------------------------


@pytest.fixture(scope="module")
def trust(tmp_path_factory: pytest.TempPathFactory, cluster_key: RSAKey) -> Path:
    """The JWKS file the authorization server trusts the cluster's tokens by."""
    path = tmp_path_factory.mktemp("wif") / "jwks.json"
    path.write_text(json.dumps({"keys": [cluster_key.as_dict(private=False)]}))
    return path


@pytest.fixture(scope="module")
def wif_as(trust: Path) -> Iterator[AuthServer]:
    with AuthServer(trust_workload=(WORKLOAD_ISSUER, trust)) as server:
        yield server


@pytest.fixture(scope="module")
def wif_mcp(wif_as: AuthServer) -> Iterator[McpServer]:
    with McpServer(auth_server=wif_as) as server:
        yield server


def received(server: AuthServer) -> list[str | None]:
    """The jti of every workload token the authorization server was sent, in order."""
    return list(server.stats()["workload_assertions"])


def whoami(mcp: McpServer, keeper: Keeper) -> dict[str, Any]:
    async def call() -> Any:
        async with connect(mcp.url, keeper=keeper) as session:
            return (await session.call_tool("whoami", {})).structured_content

    who = asyncio.run(call())
    assert isinstance(who, dict)
    return who


class Clock:
    """A Keeper's clock that stands still until a test moves it (past an expiry, past a
    backoff); the servers keep real time."""

    def __init__(self) -> None:
        self.base = datetime.now(UTC)
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return self.base + self.offset


@pytest.mark.realserver
def test_cli_login_by_workload_identity_then_a_real_tool_call(
    wif_as: AuthServer, wif_mcp: McpServer, cluster_key: RSAKey, tmp_path: Path, home: Path
) -> None:
    token_file = tmp_path / "token"
    token = workload_jwt(cluster_key, wif_as.issuer, "cli-1")
    token_file.write_text(token)
    result = CliRunner().invoke(
        cli,
        ["login", wif_mcp.url, "--name", "agents", "--client-id", WIF_CLIENT, "--json",
         "--workload-identity-file", str(token_file)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["refreshable"] is True and shown["issuer"] == wif_as.issuer
    assert token not in result.output
    [saved] = [c for c in load_servers(home) if c.name == "agents"]
    assert saved.workload_identity_file == str(token_file) and saved.client_id == WIF_CLIENT
    stored = FileStore(home).read(saved.key)
    assert stored is not None
    assert stored.record.workload_source == f"file:{token_file}"
    assert all(token not in p.read_text() for p in (home / "credentials").iterdir())
    remember_secret(stored.record.access_token)
    with Keeper(FileStore(home), saved.key) as keeper:
        who = whoami(wif_mcp, keeper)
    # The MCP server sees the workload, through the client it presents its token as.
    assert who["subject"] == SUBJECT and who["client_id"] == WIF_CLIENT
    assert received(wif_as)[-1] == "cli-1"


@pytest.mark.realserver
def test_a_rotated_file_is_picked_up_at_the_next_renewal_and_the_old_token_never_sent_again(
    wif_as: AuthServer, wif_mcp: McpServer, cluster_key: RSAKey, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(workload_jwt(cluster_key, wif_as.issuer, "rot-1"))
    store = FileStore(tmp_path / "store")
    record = login(wif_mcp.url, store=store, client_id=WIF_CLIENT,
                   workload=WorkloadIdentity(file=token_file))  # fmt: skip
    remember_secret(record.access_token)
    start = len(received(wif_as))
    clock = Clock()
    with Keeper(store, CredentialKey.for_server(wif_mcp.url), clock=clock) as keeper:
        assert whoami(wif_mcp, keeper)["subject"] == SUBJECT
        # The kubelet replaces the projected token in place.
        token_file.write_text(workload_jwt(cluster_key, wif_as.issuer, "rot-2"))
        tokens = [record.access_token]
        for renewal in range(1, 4):
            clock.offset = timedelta(hours=renewal)  # past each token's expiry
            tokens.append(keeper.credential(timeout=60).access_token)
            remember_secret(tokens[-1])
            assert introspect(wif_as, tokens[-1])["active"] is True
        assert whoami(wif_mcp, keeper)["subject"] == SUBJECT
    assert len(set(tokens)) == 4  # one renewal per expiry, each a new access token
    sent = received(wif_as)
    assert sent[:start][-1] == "rot-1"  # the login sent the first token
    assert sent[start:] == ["rot-2", "rot-2", "rot-2"]  # every renewal the one there then


@pytest.mark.realserver
def test_a_token_the_server_does_not_trust_is_refused_once_and_nothing_is_stored(
    wif_as: AuthServer, wif_mcp: McpServer, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    stranger = workload_jwt(rsa_key("elsewhere"), wif_as.issuer, "stranger-1")
    token_file.write_text(stranger)
    store = FileStore(tmp_path / "store")
    start = len(received(wif_as))
    with pytest.raises(WorkloadTokenRejected) as caught:
        login(wif_mcp.url, store=store, client_id=WIF_CLIENT,
              workload=WorkloadIdentity(file=token_file))  # fmt: skip
    assert received(wif_as)[start:] == ["stranger-1"]  # sent once: no retry, no other grant
    assert store.read(CredentialKey.for_server(wif_mcp.url)) is None
    assert str(token_file) in str(caught.value) and stranger not in repr(caught.value)
    assert not caught.value.needs_login


@pytest.mark.realserver
def test_an_expired_token_is_reported_and_never_sent(
    wif_as: AuthServer, wif_mcp: McpServer, cluster_key: RSAKey, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(workload_jwt(cluster_key, wif_as.issuer, "late-1", expires_in=-120))
    start = len(received(wif_as))
    with pytest.raises(WorkloadTokenUnavailable, match="expired"):
        login(wif_mcp.url, store=FileStore(tmp_path / "store"), client_id=WIF_CLIENT,
              workload=WorkloadIdentity(file=token_file))  # fmt: skip
    assert received(wif_as)[start:] == []


@pytest.mark.realserver
def test_a_refused_renewal_backs_off_keeps_the_grant_and_takes_the_next_token(
    wif_as: AuthServer, wif_mcp: McpServer, cluster_key: RSAKey, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(workload_jwt(cluster_key, wif_as.issuer, "back-1"))
    store = FileStore(tmp_path / "store")
    key = CredentialKey.for_server(wif_mcp.url)
    remember_secret(login(wif_mcp.url, store=store, client_id=WIF_CLIENT,
                          workload=WorkloadIdentity(file=token_file)).access_token)  # fmt: skip
    clock = Clock()
    with Keeper(store, key, clock=clock) as keeper:
        # A token from a key the server does not trust lands in the file.
        token_file.write_text(workload_jwt(rsa_key("rogue"), wif_as.issuer, "back-bad"))
        start = len(received(wif_as))
        clock.offset = timedelta(hours=1)
        with pytest.raises(WorkloadTokenRejected):
            keeper.credential(timeout=60)
        with pytest.raises(ProviderError):
            keeper.credential(timeout=60)  # within the record's backoff: nothing is sent
        clock.offset = timedelta(hours=1, minutes=5)  # past it, the same token in the file:
        with pytest.raises(WorkloadTokenRejected, match="not sent again"):
            keeper.credential(timeout=60)  # this process does not send it again
        assert received(wif_as)[start:] == ["back-bad"]
        stored = store.read(key)
        assert stored is not None and stored.record.reauth_reason is None
        token_file.write_text(workload_jwt(cluster_key, wif_as.issuer, "back-2"))
        renewed = keeper.credential(timeout=60).access_token  # a new token goes at once
        remember_secret(renewed)
    assert received(wif_as)[start:] == ["back-bad", "back-2"]
    assert introspect(wif_as, renewed)["active"] is True


@pytest.mark.realserver
def test_a_refused_token_is_not_sent_again_by_the_next_login(
    wif_as: AuthServer, wif_mcp: McpServer, cluster_key: RSAKey, tmp_path: Path
) -> None:
    """What a login hook does on every request while nothing is stored."""
    token_file = tmp_path / "token"
    token_file.write_text(workload_jwt(rsa_key("elsewhere"), wif_as.issuer, "again-bad"))
    store = FileStore(tmp_path / "store")
    identity = WorkloadIdentity(file=token_file)
    start = len(received(wif_as))
    with pytest.raises(WorkloadTokenRejected, match="refused"):
        login(wif_mcp.url, store=store, client_id=WIF_CLIENT, workload=identity)
    for _ in range(3):
        with pytest.raises(WorkloadTokenRejected, match="not sent again"):
            login(wif_mcp.url, store=store, client_id=WIF_CLIENT, workload=identity)
    assert received(wif_as)[start:] == ["again-bad"]
    token_file.write_text(workload_jwt(cluster_key, wif_as.issuer, "again-good"))
    remember_secret(login(wif_mcp.url, store=store, client_id=WIF_CLIENT,
                          workload=identity).access_token)  # fmt: skip
    assert received(wif_as)[start:] == ["again-bad", "again-good"]


def test_servers_json_keeps_the_workload_source(home: Path) -> None:
    save_server(ServerConfig(SERVER, name="wl", client_id=WIF_CLIENT,
                             workload_identity_env="GK_WL_TOKEN"))  # fmt: skip
    [saved] = [c for c in load_servers(home) if c.name == "wl"]
    assert saved.workload_identity_env == "GK_WL_TOKEN" and saved.workload_identity_file is None


def test_a_token_given_where_its_variable_s_name_belongs_is_refused_unrepeated() -> None:
    token = unverified_token({"exp": int(time.time()) + 600})
    with pytest.raises(ServerConfigError, match="by its name") as caught:
        WorkloadIdentity(env=token)
    assert token not in str(caught.value)


def test_a_workload_with_another_machine_login_is_refused_before_any_request(
    tmp_path: Path,
) -> None:
    identity = WorkloadIdentity(env="GK_WL_TOKEN")
    http = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(500)))
    for config, client_credentials in (
        (ServerConfig(SERVER, client_id=WIF_CLIENT), True),
        (ServerConfig(SERVER, client_id=WIF_CLIENT, grant="client_credentials"), None),
    ):
        with pytest.raises(ServerConfigError, match="alone"):
            login(config, store=FileStore(tmp_path), workload=identity, http=http,
                  client_credentials=client_credentials)  # fmt: skip


def test_a_proxy_without_a_browser_still_logs_a_workload_in() -> None:
    from grantkeeper._cli._proxy import _logs_in_alone

    assert _logs_in_alone(ServerConfig(SERVER, workload_identity_file="/t"))
    assert _logs_in_alone(ServerConfig(SERVER, grant="client_credentials"))
    assert not _logs_in_alone(ServerConfig(SERVER))


def test_status_says_when_the_next_renewal_will_find_no_token(tmp_path: Path) -> None:
    from grantkeeper._status import AuthState, status_of

    path = tmp_path / "token"
    record = workload_record(f"file:{path}", expires_at=NOW + timedelta(hours=1))
    key = CredentialKey.for_server(SERVER)
    missing = status_of(key, record, now=NOW)
    assert missing.state is AuthState.OAUTH and missing.action is None  # no login helps
    assert str(path) in missing.detail and "next renewal" in missing.detail
    path.write_text(unverified_token({"exp": int(time.time()) + 600}))
    assert status_of(key, record, now=NOW).detail == ""
    ctx = Context(now=NOW, skew=timedelta(seconds=30), pid=1, host="h")
    decision = decide(record.replace(expires_at=NOW), ctx, key="k")
    assert decision.intent is not None
    refusal = ReauthenticationRequired("the authorization server rejected the grant")
    plan = after_provider_error(
        refusal, record.replace(intent=decision.intent), ctx, key="k", was_unknown=False
    )
    assert plan.write is not None
    refused = status_of(key, plan.write, now=NOW)
    assert refused.state is AuthState.OAUTH and "refuses the workload identity token" in (
        refused.detail
    )


@pytest.mark.parametrize(
    "flags",
    [
        ["--workload-identity-file", "/t", "--workload-identity-env", "T"],
        ["--workload-identity-env", "T", "--client-credentials"],
        ["--workload-identity-env", "T", "--client-key-file", "/k"],
    ],
)
def test_cli_refuses_two_ways_to_log_in_a_machine(home: Path, flags: list[str]) -> None:
    result = CliRunner().invoke(cli, ["login", SERVER, "--client-id", WIF_CLIENT, *flags])
    assert result.exit_code == 2 and ("not both" in result.output or "alone" in result.output)
    assert load_servers(home) == []  # nothing saved, nothing sent
