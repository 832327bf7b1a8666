"""The MCP conformance suite's client under test, built on grantkeeper's public API.

    python conformance/client.py [--via library|proxy] SERVER_URL

This is what an application would do with grantkeeper: find out whether the server wants
OAuth, log in the way its operator configured it, then list the tools and call them. Two
ways, as users run grantkeeper:

- ``--via library`` (the default): ``grantkeeper.mcp.connect`` with a Keeper, the way a
  Python application uses it;
- ``--via proxy``: ``grantkeeper proxy`` as a desktop host starts it, the server saved with
  ``grantkeeper.save_server`` as an operator would, and the ``mcp`` SDK's stdio client as the
  host. Every byte on the HTTP side is then grantkeeper's own.

What it does is decided by what the suite hands an application, never by the scenario's
name (``MCP_CONFORMANCE_SCENARIO`` is not read):

- ``MCP_CONFORMANCE_PROTOCOL_VERSION``: the protocol revision the host speaks (2026-07-28:
  stateless requests with ``_meta``; older: the ``initialize`` handshake);
- ``MCP_CONFORMANCE_CONTEXT``: what the operator was given. An enterprise ID token
  (``idp_id_token``) means enterprise-managed authorization; a workload identity token
  (``valid_jwt``) workload identity federation (the jwt-bearer grant); a private key
  (``private_key_pem``) a machine client (client credentials, ``private_key_jwt``); a client
  ID and secret a pre-registered client, which is a machine client when the authorization
  server offers client credentials and no authorization code; ``toolCalls`` the calls a user
  makes. Without credentials, the client identifies itself with its client ID metadata
  document (SEP-991), or registers where that is not supported;
- the tools' own schemas: each tool is called with arguments made from its ``inputSchema``
  (defaults, examples, enums, else a plain value of the declared type). An ``object``
  parameter whose description asks for another listed tool's ``inputSchema`` gets that
  schema as received, which shows the schema reached the application intact.

The "browser" fetches the authorization URL without following redirects, as a person's
browser would show the consent page, then goes to the redirect it was given, which is
grantkeeper's own listener. Logins are the library's recovery policy (``login_recovery``):
the first login when nothing is stored, one step-up for a 403 ``insufficient_scope``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

import grantkeeper
import grantkeeper.mcp
from grantkeeper import CredentialKey, FileStore, Keeper, ServerConfig, login_recovery

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CLIENT_METADATA_URL = "https://conformance-test.local/client-metadata.json"
"""This application's client ID metadata document (SEP-991), as its operator configured it."""

CALL_TIMEOUT = 60.0
"""Bounds each MCP call: a hang fails the scenario instead of waiting for the suite's kill."""

MODERN = frozenset({"2026-07-28"})
"""Revisions with the stateless per-request envelope; older ones use ``initialize``."""


def browser(url: str) -> None:
    """Play a person's browser: load the authorization URL, follow its redirect once."""
    with httpx.Client(follow_redirects=False, trust_env=False, timeout=30) as http:
        answer = http.get(url)
        location = answer.headers.get("location")
        if answer.status_code not in (301, 302, 303, 307, 308) or not location:
            raise SystemExit(f"the authorization endpoint answered HTTP {answer.status_code}")
        http.get(httpx.URL(url).join(location))


# -- what the operator configured -------------------------------------------------------


def configuration(
    url: str, context: Mapping[str, Any], found: grantkeeper.Discovery
) -> tuple[ServerConfig, dict[str, Any]]:
    """The saved server an operator would write for this deployment, and the login options
    only the library takes (an enterprise identity has no place in a saved server)."""
    client_id = context.get("client_id")
    secret = context.get("client_secret")
    if "idp_id_token" in context:
        # The user signed in at their enterprise IdP; this client is registered at the
        # MCP server's authorization server.
        identity = grantkeeper.EnterpriseIdentity(
            token_endpoint=context["idp_token_endpoint"],
            client_id=context["idp_client_id"],
            id_token=context["idp_id_token"],
        )
        config = ServerConfig(url, name="conformance", client_id=client_id, client_secret=secret)
        return config, {"enterprise": identity}
    if "valid_jwt" in context:
        # A workload's own identity token, as its platform hands it over: in the
        # environment (a file works the same way). The suite's other two tokens (for
        # another audience, expired) are for clients that pick the wrong one.
        os.environ["CONFORMANCE_WORKLOAD_TOKEN"] = context["valid_jwt"]
        config = ServerConfig(
            url,
            name="conformance",
            client_id=client_id,
            workload_identity_env="CONFORMANCE_WORKLOAD_TOKEN",
        )
        return config, {}
    if "private_key_pem" in context:
        # The operator hands the key over in the environment, never on a command line.
        os.environ["CONFORMANCE_CLIENT_KEY"] = context["private_key_pem"]
        config = ServerConfig(
            url,
            name="conformance",
            client_id=client_id,
            grant="client_credentials",
            client_auth_method="private_key_jwt",
            client_key_env="CONFORMANCE_CLIENT_KEY",
        )
        return config, {}
    if client_id and secret:
        grants = set(found.metadata.grant_types_supported)
        machine = "client_credentials" in grants and "authorization_code" not in grants
        config = ServerConfig(
            url,
            name="conformance",
            client_id=client_id,
            client_secret=secret,
            grant="client_credentials" if machine else None,
        )
        return config, {}
    return ServerConfig(url, name="conformance", client_metadata_url=CLIENT_METADATA_URL), {}


# -- what the user does -----------------------------------------------------------------


def example(schema: Any, tools: Mapping[str, dict[str, Any]], depth: int = 0) -> Any:
    """A value the schema accepts, or ``None`` when it names none (a ``$ref`` is never
    fetched: it may point anywhere)."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    for key in ("examples", "enum"):
        values = schema.get(key)
        if isinstance(values, list) and values:
            return values[0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind == "object":
        described = str(schema.get("description", ""))
        echoed = [name for name in tools if name in described and "inputSchema" in described]
        if echoed and not schema.get("properties"):
            return tools[echoed[0]]
        return arguments(schema, tools, depth + 1)
    return {"number": 1, "integer": 1, "boolean": True, "string": "example", "array": []}.get(
        str(kind)
    )


def arguments(schema: Any, tools: Mapping[str, dict[str, Any]], depth: int = 0) -> dict[str, Any]:
    """Arguments for a tool: every required property, each with an example value."""
    if not isinstance(schema, dict):
        return {}
    properties = schema.get("properties") or {}
    required = [name for name in schema.get("required") or () if name in properties]
    made = {name: example(properties[name], tools, depth) for name in required}
    return {name: value for name, value in made.items() if value is not None}


def planned_calls(
    listed: list[Any], context: Mapping[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    """The calls the user makes: those the context gives, else each tool once."""
    given = context.get("toolCalls")
    if isinstance(given, list):
        return [(str(call["name"]), dict(call.get("arguments") or {})) for call in given]
    schemas = {tool.name: tool.input_schema for tool in listed}
    return [(tool.name, arguments(tool.input_schema, schemas)) for tool in listed]


async def use_tools(client: Any, context: Mapping[str, Any]) -> None:
    """List the tools and make the user's calls. A tool's own error is the tool's answer;
    a refused call is reported and the next one made, as an application would."""
    from mcp.shared.exceptions import MCPError

    listed = (await asyncio.wait_for(client.list_tools(), CALL_TIMEOUT)).tools
    for name, args in planned_calls(listed, context):
        try:
            await asyncio.wait_for(client.call_tool(name, args), CALL_TIMEOUT)
        except MCPError as exc:
            print(f"tools/call {name}: {exc}", file=sys.stderr)


async def elicit(context: Any, params: Any) -> Any:
    """A form shows each field pre-filled with its default; the user accepts it as is."""
    from mcp_types import ElicitResult

    schema = getattr(params, "requested_schema", None) or {}
    fields = schema.get("properties", {}) if isinstance(schema, dict) else {}
    content = {
        name: spec["default"]
        for name, spec in fields.items()
        if isinstance(spec, dict) and "default" in spec
    }
    return ElicitResult(action="accept", content=content)


def mode_for(version: str | None) -> str:
    """``mcp.Client``'s mode for the revision the host speaks."""
    if version is None:
        return "auto"
    return version if version in MODERN else "legacy"


# -- the two ways -----------------------------------------------------------------------


async def via_library(
    url: str, keeper: Keeper | None, mode: str, context: Mapping[str, Any]
) -> None:
    async with grantkeeper.mcp.connect(
        url, keeper=keeper, mode=mode, elicitation_callback=elicit
    ) as session:
        await use_tools(session.client, context)


async def via_proxy(server: str, home: str, mode: str, context: Mapping[str, Any]) -> None:
    from mcp.client.client import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client

    env = {
        **os.environ,
        "GRANTKEEPER_HOME": home,
        "GRANTKEEPER_STORE": "file",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        # webbrowser runs $BROWSER with the URL: this file's own browser.
        "BROWSER": str(browser_command(Path(home))),
    }
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "grantkeeper", "proxy", server, "--ping-interval", "0", "-v"],
        env=env,
        cwd=str(ROOT),
    )
    async with Client(stdio_client(params), mode=mode, elicitation_callback=elicit) as client:
        await use_tools(client, context)


def browser_command(home: Path) -> Path:
    path = home / "browser"
    path.write_text(f'#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} --browser "$@"\n')
    path.chmod(0o700)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--via", choices=("library", "proxy"), default="library")
    parser.add_argument("--browser", action="store_true", help="act as the browser for URL")
    parser.add_argument("url")
    args = parser.parse_args(argv)
    if args.browser:
        browser(args.url)
        return 0
    url = args.url
    mode = mode_for(os.environ.get("MCP_CONFORMANCE_PROTOCOL_VERSION"))
    context = json.loads(os.environ.get("MCP_CONFORMANCE_CONTEXT") or "{}")
    # The suite adds the scenario's name to the context; no operator hands it over.
    context.pop("name", None)
    with tempfile.TemporaryDirectory(prefix="gk-conformance-") as home:
        # Each scenario is a new user: its store, servers and login locks are its own.
        os.environ["GRANTKEEPER_HOME"] = home
        if args.via == "proxy":
            # The operator's discovery only picks what to save; what the server offers is
            # the proxy's to find out, and its refusals are the proxy's to make.
            server = url
            try:
                found: grantkeeper.Discovery | None = grantkeeper.discover(url)
            except grantkeeper.GrantkeeperError:
                found = None
            if found is not None:
                config, _library_only = configuration(url, context, found)
                server = grantkeeper.save_server(config, home).name or url
            asyncio.run(via_proxy(server, home, mode, context))
            return 0
        try:
            found = grantkeeper.discover(url)
        except grantkeeper.OAuthUnsupported:
            found = None
        keeper = None
        if found is not None:
            config, options = configuration(url, context, found)
            store = FileStore(home)
            recover = login_recovery(
                config,
                store=store,
                discovery=found,
                open_browser=browser,
                callback_timeout=30,
                **options,
            )
            keeper = Keeper(store, CredentialKey.for_server(url), recover=recover)
        try:
            asyncio.run(via_library(url, keeper, mode, context))
        finally:
            if keeper is not None:
                keeper.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
