"""``tools`` / ``call`` argument handling, and the ``grantkeeper.mcp`` public surface."""

from __future__ import annotations

import types
from pathlib import Path

import click
import pytest

import grantkeeper.mcp
from grantkeeper import ServerConfigError, resolve_server
from grantkeeper._cli._tools import COMMANDS, parse_arguments


def test_arguments_json_first_then_each_arg_parsed_as_json_when_it_is() -> None:
    parsed = parse_arguments(("n=3", "flag=true", "text=hello", "b=x=y"), '{"n": 1, "keep": [1]}')
    assert parsed == {"n": 3, "flag": True, "text": "hello", "b": "x=y", "keep": [1]}


@pytest.mark.parametrize(
    ("pairs", "json_args"), [(("novalue",), None), (("=v",), None), ((), "[1]"), ((), "{")]
)
def test_bad_arguments_are_usage_errors(pairs: tuple[str, ...], json_args: str | None) -> None:
    with pytest.raises(click.UsageError):
        parse_arguments(pairs, json_args)


def test_servers_are_urls_or_configured_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRANTKEEPER_HOME", str(tmp_path))
    key = resolve_server("HTTPS://Example.test:443/mcp", profile="work").key
    assert key.server_url == "https://example.test/mcp" and key.profile == "work"
    with pytest.raises(ServerConfigError):
        resolve_server("github")  # no such name configured
    with pytest.raises(ServerConfigError):
        resolve_server("http://example.test/mcp")  # plain HTTP off loopback


def test_commands_for_the_main_group() -> None:
    assert [c.name for c in COMMANDS] == ["tools", "call"]


def test_mcp_module_exports_exactly_its_public_names() -> None:
    # Names load on first use; once all are loaded, nothing else public is there.
    assert sorted(grantkeeper.mcp.__all__) == dir(grantkeeper.mcp)
    for name in grantkeeper.mcp.__all__:
        assert getattr(grantkeeper.mcp, name) is not None
    public = {
        name
        for name, value in vars(grantkeeper.mcp).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(grantkeeper.mcp.__all__) == public
    with pytest.raises(AttributeError):
        grantkeeper.mcp.no_such_name  # noqa: B018
