"""Named servers, logout without a reachable server, and the CLI's contract: exit codes,
clean one-line errors, JSON, secrets only from ``token``, and a light ``token`` start."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from grantkeeper import (
    FileStore,
    ServerConfig,
    ServerConfigError,
    load_servers,
    logout,
    remove_server,
    resolve_server,
    save_server,
)
from grantkeeper._cli import cli
from grantkeeper.testing import sample_record
from tests.helpers import KEY, RESOURCE, T0


def test_servers_round_trip_privately_and_resolve_by_name_or_url(home: Path) -> None:
    saved = save_server(ServerConfig("https://mcp.example.com/mcp", client_id="c", scope="mcp"))
    assert saved.name == "mcp.example.com"
    other = save_server(ServerConfig("https://mcp.example.com/other"))
    assert other.name == "mcp.example.com-2"
    again = save_server(ServerConfig("https://MCP.example.com:443/mcp"))
    assert again.name == "mcp.example.com"  # same server, same name
    assert stat.S_IMODE(os.stat(home / "servers.json").st_mode) == 0o600
    assert [s.name for s in load_servers()] == ["mcp.example.com", "mcp.example.com-2"]
    assert resolve_server("mcp.example.com-2").url == "https://mcp.example.com/other"
    assert resolve_server("https://mcp.example.com/other").name == "mcp.example.com-2"
    adhoc = resolve_server("https://elsewhere.example.com/mcp")
    assert adhoc.name is None and adhoc.key.server_url == "https://elsewhere.example.com/mcp"
    assert remove_server("mcp.example.com-2") and not remove_server("mcp.example.com-2")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("nosuch", "no server named 'nosuch'"),
        ("http://mcp.example.com/mcp", "HTTPS"),
        ("ftp://x/y", "not an absolute http"),
    ],
)
def test_resolving_bad_names_and_urls_is_typed(home: Path, text: str, match: str) -> None:
    with pytest.raises(ServerConfigError, match=match):
        resolve_server(text)


def test_a_malformed_servers_file_is_typed(home: Path) -> None:
    (home / "servers.json").write_text('{"format": "grantkeeper-servers", "servers": {"a": 1}}')
    with pytest.raises(ServerConfigError, match="not an object"):
        load_servers()
    (home / "servers.json").write_text("[]")
    with pytest.raises(ServerConfigError, match="malformed"):
        load_servers()


def test_server_repr_hides_secrets() -> None:
    config = ServerConfig(
        "https://x.example/mcp",
        client_secret="client-secret-123456",
        bearer_token="bearer-token-abcdef",
        headers={"X-Api-Key": "api-key-value-000"},
    )
    text = repr(config)
    for secret in ("client-secret-123456", "bearer-token-abcdef", "api-key-value-000"):
        assert secret not in text


def test_logout_deletes_even_when_revocation_fails(home: Path) -> None:
    store = FileStore(home)
    record = sample_record("access-secret-value-1", "refresh-secret-value-1", now=T0).replace(
        revocation_endpoint="http://127.0.0.1:9/revoke"
    )
    store.write(KEY, record, expected_version=None)

    def down(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    result = logout(store, KEY, http=httpx.Client(transport=httpx.MockTransport(down)))
    assert result.removed and result.revoked == () and len(result.problems) == 2
    assert all("secret" not in problem for problem in result.problems)
    assert store.read(KEY) is None
    assert logout(store, KEY).removed is False


def test_logout_sends_rfc7009_requests(home: Path) -> None:
    store = FileStore(home)
    record = sample_record("access-secret-value-2", "refresh-secret-value-2", now=T0).replace(
        revocation_endpoint="http://127.0.0.1:9/revoke"
    )
    store.write(KEY, record, expected_version=None)
    forms: list[str] = []

    def ok(request: httpx.Request) -> httpx.Response:
        forms.append(request.content.decode())
        return httpx.Response(200)

    result = logout(store, KEY, http=httpx.Client(transport=httpx.MockTransport(ok)))
    assert result.revoked == ("refresh_token", "access_token")
    assert "token_type_hint=refresh_token" in forms[0] and "client_id=client-1" in forms[0]


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_exit_codes_usage_error_and_auth(home: Path) -> None:
    assert invoke("token")[0] == 2
    assert invoke("status", "--store", "bogus")[0] == 2
    code, out, err = invoke("token", "nosuch")
    assert code == 1 and err.startswith("error: no server named") and out == ""
    code, out, err = invoke("token", RESOURCE)
    assert code == 3 and "grantkeeper login" in err and len(err.strip().splitlines()) == 1
    assert invoke("status")[:2] == (0, "No servers yet: run grantkeeper login URL\n")


def test_status_json_and_token_for_a_stored_credential(home: Path) -> None:
    from datetime import UTC, datetime

    FileStore(home).write(
        KEY,
        sample_record("cli-access-secret-1", "cli-refresh-secret", now=datetime.now(UTC)),
        expected_version=None,
    )
    code, out, _ = invoke("status", "--json")
    assert code == 0
    [entry] = json.loads(out)
    assert entry["state"] == "oauth" and entry["url"] == RESOURCE and entry["name"] is None
    assert "cli-access-secret-1" not in out
    code, human, _ = invoke("status")
    assert code == 0 and "oauth" in human and "cli-access-secret-1" not in human
    code, out, _ = invoke("token", RESOURCE)
    assert (code, out) == (0, "cli-access-secret-1\n")


def test_bearer_servers(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_server(ServerConfig("https://b.example/mcp", name="b", bearer_token_env="B_TOKEN"))
    code, _, err = invoke("token", "b")
    assert code == 1 and "$B_TOKEN" in err
    monkeypatch.setenv("B_TOKEN", "static-bearer-secret")
    assert invoke("token", "b")[:2] == (0, "static-bearer-secret\n")
    code, out, _ = invoke("status", "b", "--json")
    assert code == 0 and json.loads(out)[0]["state"] == "bearer"
    code, out, _ = invoke("list", "--json")
    assert json.loads(out)[0]["auth"] == "bearer" and "static-bearer-secret" not in out
    code, out, _ = invoke("list")  # piped: tab-separated; a static token has no client id
    assert out.splitlines()[0].split("\t")[3:5] == ["bearer", "-"]


def test_unexpected_errors_are_one_line_without_traceback(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret-in-message")

    monkeypatch.setattr("grantkeeper._servers.load_servers", boom)
    code, _, err = invoke("token", "x")
    assert code == 1 and "RuntimeError" in err and "secret-in-message" not in err


def test_help_lists_every_command_module(home: Path) -> None:
    code, out, _ = invoke("--help")
    assert code == 0
    for name in ("login", "logout", "status", "token", "list", "doctor", "store"):
        assert f"  {name}" in out


def test_token_starts_without_other_command_modules_or_the_sdk(home: Path) -> None:
    # (rich itself arrives with httpx, whose own CLI module imports it.)
    save_server(ServerConfig("https://b.example/mcp", name="b", bearer_token="tok-xyz"))
    probe = (
        "import sys\n"
        "from grantkeeper._cli import main\n"
        "try:\n    main(['token', 'b'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('grantkeeper._cli._stores', 'mcp', 'keyring') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "GRANTKEEPER_HOME": str(home)},
    ).stdout
    assert out.splitlines() == ["tok-xyz", "[]"]


def test_check_finds_servers_without_oauth(home: Path) -> None:
    from grantkeeper import AuthState, auth_status

    def open_server(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200 if request.method == "POST" else 404, json={})

    http = httpx.Client(transport=httpx.MockTransport(open_server))
    config = ServerConfig("https://open.example.com/mcp")
    store = FileStore(home)
    assert auth_status(config, store).state is AuthState.LOGIN_REQUIRED
    checked = auth_status(config, store, check=True, http=http)
    assert checked.state is AuthState.UNSUPPORTED and "offers no OAuth" in checked.detail


def test_a_taken_callback_port_is_a_clean_error(home: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = invoke("login", "https://mcp.example.com/mcp", "--port", str(port))
    assert code == 1 and f"port {port}" in err and "Traceback" not in err
    assert load_servers() == []
