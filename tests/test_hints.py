"""One login hint everywhere: the CLI, status and the proxy name the server as the user did
and keep the profile (a hint without it logs in to the default credential instead)."""

from __future__ import annotations

from typing import Any, cast

import pytest

from grantkeeper import (
    AccountChanged,
    ClientRegistrationInvalid,
    CredentialKey,
    GrantkeeperError,
    InsufficientScope,
    LockTimeout,
    LoginFailed,
    LoginRequired,
    PersistencePending,
    ProviderUnavailable,
    ReauthenticationRequired,
    ServerConfig,
    ServerRejectsToken,
    StaticTokenRejected,
    StoreCorrupt,
    UnsupportedTokenType,
    resolve_server,
    save_server,
)
from grantkeeper._proxy.streamable_http import Proxy
from grantkeeper._status import AuthState, AuthStatus, fix_command, login_command

pytestmark = pytest.mark.usefixtures("home")  # every test here has a GRANTKEEPER_HOME of its own


def proxy_login_hint(config: ServerConfig, error: GrantkeeperError | None = None) -> str | None:
    """What the proxy names as the fix of ``error`` (by default: nothing is stored)."""
    proxy = Proxy(config, http=cast(Any, None), out=cast(Any, None), keeper=None)
    return proxy.fix(error or LoginRequired("not logged in"))


def test_the_proxy_keeps_the_profile_of_a_named_server() -> None:
    save_server(ServerConfig("https://mcp.example.test/mcp", name="demo"))
    assert proxy_login_hint(resolve_server("demo", profile="work")) == (
        "grantkeeper login demo --profile work"
    )
    assert proxy_login_hint(resolve_server("demo")) == "grantkeeper login demo"
    by_url = resolve_server("https://other.example.test/mcp", profile="x")
    assert (proxy_login_hint(by_url) or "").endswith(" --profile x")


def test_every_hint_is_shell_quoted_and_the_same() -> None:
    name, profile = "my server", "a b"
    expected = "grantkeeper login 'my server' --profile 'a b'"
    assert login_command(name, profile) == expected
    assert fix_command(LoginRequired("not logged in"), name, profile) == expected
    config = ServerConfig("https://mcp.example.test/mcp", name=name, profile=profile)
    assert proxy_login_hint(config) == expected
    key = CredentialKey.for_server("https://mcp.example.test/mcp", "a b")
    action = AuthStatus(key, AuthState.LOGIN_REQUIRED).action
    assert action == "grantkeeper login https://mcp.example.test/mcp --profile 'a b'"
    assert login_command("api", with_token=True) == "grantkeeper login api --with-token"


def test_the_fix_follows_the_error() -> None:
    config = ServerConfig("https://mcp.example.test/mcp", name="api")
    stepped = InsufficientScope("403", scope="mcp mcp:write")
    assert proxy_login_hint(config, stepped) == "grantkeeper login api --scope 'mcp mcp:write'"
    rejected = StaticTokenRejected("401")
    assert proxy_login_hint(config, rejected) == "grantkeeper login api --with-token"
    assert proxy_login_hint(config, GrantkeeperError("an outage")) is None


def test_needs_login_answers_whether_a_person_must_act() -> None:
    person = [
        LoginRequired,
        ReauthenticationRequired,
        ClientRegistrationInvalid,
        InsufficientScope,
        StaticTokenRejected,  # a new static token, not a browser login
        StoreCorrupt,  # nothing but a new login replaces it
        UnsupportedTokenType,  # a login once the client is registered for Bearer tokens
    ]
    nobody = [
        GrantkeeperError,
        ProviderUnavailable,
        AccountChanged,
        ServerRejectsToken,
        LockTimeout,
        LoginFailed,
        PersistencePending,
    ]
    assert [kind("x").needs_login for kind in person] == [True] * len(person)
    assert [kind("x").needs_login for kind in nobody] == [False] * len(nobody)
    # Only where a browser login helps do the finer flags ask for one (a recovery hook).
    assert not StaticTokenRejected("x").requires_login
    assert not StaticTokenRejected("x").requires_reauthentication
