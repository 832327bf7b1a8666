"""One login hint everywhere: the CLI, status and the proxy name the server as the user did
and keep the profile (a hint without it logs in to the default credential instead)."""

from __future__ import annotations

from pathlib import Path

import pytest

from grantkeeper import CredentialKey, ServerConfig, resolve_server, save_server
from grantkeeper._cli._policy import login_hint
from grantkeeper._proxy.login import login_hint as proxy_login_hint
from grantkeeper._status import AuthState, AuthStatus, login_command


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GRANTKEEPER_HOME", str(tmp_path))
    return tmp_path


def test_the_proxy_keeps_the_profile_of_a_named_server() -> None:
    save_server(ServerConfig("https://mcp.example.test/mcp", name="demo"))
    assert proxy_login_hint(resolve_server("demo", profile="work")) == (
        "grantkeeper login demo --profile work"
    )
    assert proxy_login_hint(resolve_server("demo")) == "grantkeeper login demo"
    by_url = resolve_server("https://other.example.test/mcp", profile="x")
    assert proxy_login_hint(by_url).endswith(" --profile x")


def test_every_hint_is_shell_quoted_and_the_same() -> None:
    name, profile = "my server", "a b"
    expected = "grantkeeper login 'my server' --profile 'a b'"
    assert login_command(name, profile) == expected
    assert login_hint(name, profile) == expected
    config = ServerConfig("https://mcp.example.test/mcp", name=name, profile=profile)
    assert proxy_login_hint(config) == expected
    key = CredentialKey.for_server("https://mcp.example.test/mcp", "a b")
    action = AuthStatus(key, AuthState.LOGIN_REQUIRED).action
    assert action == "grantkeeper login https://mcp.example.test/mcp --profile 'a b'"
    assert login_command("api", with_token=True) == "grantkeeper login api --with-token"
