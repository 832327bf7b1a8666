"""The CLI's contract: exit codes, clean one-line errors, JSON, secrets only from ``token``
and ``headers``, and a light ``token`` start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from grantkeeper import (
    FileStore,
    ServerConfig,
    load_servers,
    save_server,
)
from grantkeeper._cli import cli
from grantkeeper.testing import sample_record
from tests.helpers import KEY, RESOURCE


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
    for name in ("login", "logout", "status", "token", "headers", "list", "doctor", "store"):
        assert f"  {name}" in out


@pytest.mark.parametrize(
    ("command", "printed"),
    [("token", "light-access"), ("headers", '{"Authorization": "Bearer light-access"}')],
)
def test_token_and_headers_start_without_other_command_modules_the_sdk_or_cryptography(
    home: Path, command: str, printed: str
) -> None:
    """A script runs ``token`` per request and a host runs ``headers`` per connection: both
    load only what serving a stored OAuth credential needs. (rich itself arrives with
    httpx, whose own CLI module imports it.)"""
    from datetime import UTC, datetime

    save_server(ServerConfig(RESOURCE, name="b"))
    FileStore(home).write(
        KEY, sample_record("light-access", now=datetime.now(UTC)), expected_version=None
    )
    probe = (
        "import sys\n"
        "from grantkeeper._cli import main\n"
        f"try:\n    main([{command!r}, 'b'])\nexcept SystemExit:\n    pass\n"
        "heavy = ('grantkeeper._cli._stores', 'grantkeeper._cli._tools', 'mcp', 'keyring',\n"
        "         'cryptography')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "GRANTKEEPER_HOME": str(home), "GRANTKEEPER_STORE": "file"},
        timeout=60,
    ).stdout
    assert out.splitlines() == [printed, "[]"]


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
