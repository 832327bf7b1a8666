"""Named servers: saved privately, named once per server however its URL is spelled,
resolved by name or URL, and typed errors for bad names, URLs and files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from grantkeeper import (
    ServerConfig,
    ServerConfigError,
    load_servers,
    remove_server,
    resolve_server,
    save_server,
)


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
