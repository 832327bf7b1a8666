"""conformance/client.py decides from what an application is given, never from a scenario's
name; conformance/run.py reads the suite's verdicts without claiming what was not checked.

The suite runs both in full from scripts/test; these pin the decisions themselves.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from conformance import client, run
from grantkeeper import Discovery
from grantkeeper._oauth.auth_server_metadata import AuthServerMetadata

URL = "http://127.0.0.1:9/mcp"
ISSUER = "http://127.0.0.1:9"


def found(*grants: str) -> Discovery:
    metadata = AuthServerMetadata(
        issuer=ISSUER,
        authorization_endpoint=f"{ISSUER}/authorize",
        token_endpoint=f"{ISSUER}/token",
        grant_types_supported=grants,
    )
    return Discovery(URL, URL, metadata)


def test_the_scenario_name_is_never_read() -> None:
    tree = ast.parse((run.HERE / "client.py").read_text())
    docstring = ast.get_docstring(tree, clean=False)
    strings = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]
    assert not [s for s in strings if "MCP_CONFORMANCE_SCENARIO" in s and s != docstring]
    # Nor its copy in the context, which the suite adds and the client drops.
    source = (run.HERE / "client.py").read_text()
    assert 'context.pop("name", None)' in source
    assert 'context["name"]' not in source and 'context.get("name"' not in source


def test_arguments_come_from_the_schema_defaults_examples_enums_then_types() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "number"},
            "b": {"type": "integer"},
            "unit": {"type": "string", "enum": ["cm", "in"]},
            "mode": {"type": "string", "default": "fast"},
            "tag": {"type": "string", "examples": ["red"]},
            "on": {"type": ["null", "boolean"]},
            "nested": {"type": "object", "properties": {"x": {"const": 3}}, "required": ["x"]},
            "optional": {"type": "string"},
        },
        "required": ["a", "b", "unit", "mode", "tag", "on", "nested", "missing"],
    }
    assert client.arguments(schema, {}) == {
        "a": 1,
        "b": 1,
        "unit": "cm",
        "mode": "fast",
        "tag": "red",
        "on": True,
        "nested": {"x": 3},
    }


def test_a_ref_is_never_followed() -> None:
    schema = {
        "type": "object",
        "properties": {"thing": {"$ref": "https://example.com/schemas/thing.json"}},
        "required": ["thing"],
    }
    assert client.arguments(schema, {}) == {}


def test_a_parameter_asking_for_another_tools_input_schema_gets_it_as_received() -> None:
    focal = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": {"a": {}}}
    echo = {
        "type": "object",
        "properties": {
            "schema": {"type": "object", "description": "The inputSchema seen for focal_tool."}
        },
        "required": ["schema"],
    }
    made = client.arguments(echo, {"focal_tool": focal, "echo": echo})
    assert made == {"schema": focal} and made["schema"] is focal


class Tool:
    def __init__(self, name: str, input_schema: dict[str, Any]) -> None:
        self.name, self.input_schema = name, input_schema


def test_calls_are_the_contexts_when_it_gives_them_else_each_tool_once() -> None:
    add = Tool(
        "add", {"type": "object", "properties": {"a": {"type": "number"}}, "required": ["a"]}
    )
    given = {"toolCalls": [{"name": "other", "arguments": {"region": "us"}}]}
    assert client.planned_calls([add], given) == [("other", {"region": "us"})]
    assert client.planned_calls([add], {}) == [("add", {"a": 1})]


def test_the_protocol_version_picks_the_lifecycle() -> None:
    assert client.mode_for("2026-07-28") == "2026-07-28"
    assert client.mode_for("2025-11-25") == "legacy"
    assert client.mode_for(None) == "auto"


def test_the_context_picks_the_operators_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONFORMANCE_CLIENT_KEY", raising=False)
    secret = {"client_id": "c", "client_secret": "s"}
    config, options = client.configuration(URL, secret, found("authorization_code"))
    assert (config.client_id, config.grant, options) == ("c", None, {})
    config, _ = client.configuration(URL, secret, found("client_credentials"))
    assert config.grant == "client_credentials"
    config, _ = client.configuration(URL, {}, found("authorization_code"))
    assert config.client_metadata_url == client.CLIENT_METADATA_URL and config.client_id is None
    key = {"client_id": "c", "private_key_pem": "-----BEGIN PRIVATE KEY-----"}
    config, _ = client.configuration(URL, key, found("client_credentials"))
    assert (config.grant, config.client_auth_method) == ("client_credentials", "private_key_jwt")
    assert config.client_key_env == "CONFORMANCE_CLIENT_KEY"
    enterprise = {
        **secret,
        "idp_token_endpoint": f"{ISSUER}/idp/token",
        "idp_client_id": "idp",
        "idp_id_token": "header.payload.signature",
    }
    config, options = client.configuration(URL, enterprise, found("authorization_code"))
    assert config.client_id == "c" and options["enterprise"].client_id == "idp"


def test_the_suites_exit_code_decides_and_an_empty_pass_is_not_a_pass() -> None:
    clean = "Passed: 2/2, 0 failed, 0 warnings"
    assert run.summarise(0, clean)["result"] == "pass"
    # Every check passed, but the client crashed or hung: the suite exits non-zero.
    assert run.summarise(1, clean + "\nCLIENT EXITED WITH ERROR (code 1)")["result"] == "fail"
    warned = run.summarise(1, "Passed: 21/21, 0 failed, 2 warnings")
    assert (warned["result"], warned["warnings"]) == ("fail", 2)
    assert run.summarise(0, "Passed: 0/0, 0 failed, 0 warnings")["result"] == "no checks"
    # No summary at all: the scenario did not run as it should, whatever the exit code.
    assert run.summarise(0, "")["result"] == "fail"
    assert run.summarise(0, "")["summary"] is False


def test_a_run_with_problems_never_rewrites_a_table(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(run, "EXPECTED", tmp_path)
    monkeypatch.setattr(run, "NODE", tmp_path / "node")
    monkeypatch.setattr(run, "SUITE", tmp_path / "suite")
    (tmp_path / "node").touch()
    (tmp_path / "suite").touch()
    table = tmp_path / "other.proxy.json"
    table.write_text('{"tools_call": "pass"}\n')
    crashed = {"scenario": "tools_call", "text": "", **run.summarise(0, "")}
    monkeypatch.setattr(run, "run_set", lambda *args: {"tools_call": crashed})
    assert run.main(["--set", "other", "--via", "proxy", "--write"]) == 1
    assert table.read_text() == '{"tools_call": "pass"}\n'
    monkeypatch.setattr(run, "run_set", lambda *args: {})
    assert run.main(["--set", "other", "--via", "proxy", "--write"]) == 1
    assert table.read_text() == '{"tools_call": "pass"}\n'


def test_a_scenario_past_its_bound_is_killed_with_everything_it_started(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A hung scenario fails the run, and takes the client and proxy it started with it."""
    import time

    pidfile = tmp_path / "child.pid"
    script = tmp_path / "suite.sh"
    script.write_text(f"sleep 300 &\necho $! > {pidfile}\nwait\n")
    monkeypatch.setattr(run, "NODE", Path("/bin/sh"))
    monkeypatch.setattr(run, "SUITE", script)
    code, text = run._suite("client", timeout=5)
    assert code == -9 and "killed after 5 s" in text
    assert run.summarise(code, text)["result"] == "fail"
    child = Path(f"/proc/{int(pidfile.read_text())}/stat")

    def alive() -> bool:
        try:
            return child.read_text().split(") ", 1)[1][0] != "Z"  # a zombie is dead
        except FileNotFoundError:
            return False

    # SIGKILL is sent before _suite returns; the kernel may take a moment to carry it out.
    deadline = time.monotonic() + 30
    while alive():
        assert time.monotonic() < deadline, "the scenario's child outlived the kill"
        time.sleep(0.05)
