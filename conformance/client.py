"""The MCP conformance suite's client under test, built on grantkeeper's public API.

    python conformance/client.py SERVER_URL

The suite sets ``MCP_CONFORMANCE_SCENARIO`` (and, where a scenario needs it,
``MCP_CONFORMANCE_CONTEXT``: pre-registered credentials or a private key). This is what an
application would do with grantkeeper: find out whether the server wants OAuth, log in the
way its configuration says (a browser login through grantkeeper's loopback listener, or
client credentials for a machine client), then list and call tools. Each scenario stands
for one deployment of that application: the scenario name picks only the configuration an
operator would have written (which credentials, which grant), never a protocol shortcut.

The "browser" fetches the authorization URL without following redirects, as a person's
browser would show the consent page, and then goes to the redirect it was given, which is
grantkeeper's own listener.

Logins are the library's recovery policy, not this file's: the Keeper's hook
(``login_recovery``) runs the first login when nothing is stored and one step-up, with the
union of the held and required scopes, when the server answers 403 ``insufficient_scope``.
A server that still refuses gets ``InsufficientScope`` and no further login.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from typing import Any

import httpx

import grantkeeper
import grantkeeper.mcp
from grantkeeper import CredentialKey, FileStore, Keeper, login_recovery

CLIENT_METADATA_URL = "https://conformance-test.local/client-metadata.json"
"""This application's client ID metadata document (SEP-991), as its operator configured it."""


def browser(url: str) -> None:
    """Play a person's browser: load the authorization URL, follow its redirect once."""
    with httpx.Client(follow_redirects=False, trust_env=False, timeout=30) as http:
        answer = http.get(url)
        location = answer.headers.get("location")
        if answer.status_code not in (301, 302, 303, 307, 308) or not location:
            raise SystemExit(f"the authorization endpoint answered HTTP {answer.status_code}")
        http.get(httpx.URL(url).join(location))


def configuration(scenario: str, context: dict[str, Any]) -> dict[str, Any]:
    """The login settings an operator would give this application for the deployment."""
    if scenario == "auth/pre-registration":
        return {"client_id": context["client_id"], "client_secret": context["client_secret"]}
    if scenario == "auth/client-credentials-basic":
        return {
            "client_credentials": True,
            "client_id": context["client_id"],
            "client_secret": context["client_secret"],
        }
    if scenario == "auth/client-credentials-jwt":
        # The operator hands the key over in the environment, never on a command line.
        os.environ["CONFORMANCE_CLIENT_KEY"] = context["private_key_pem"]
        return {
            "client_credentials": True,
            "client_id": context["client_id"],
            "client_key_env": "CONFORMANCE_CLIENT_KEY",
        }
    if scenario == "auth/cross-app-access-complete-flow":
        # The user signed in at their enterprise IdP; this client is registered at the
        # MCP server's authorization server.
        return {
            "client_id": context["client_id"],
            "client_secret": context["client_secret"],
            "enterprise": grantkeeper.EnterpriseIdentity(
                token_endpoint=context["idp_token_endpoint"],
                client_id=context["idp_client_id"],
                id_token=context["idp_id_token"],
            ),
        }
    return {"client_metadata_url": CLIENT_METADATA_URL}


async def use_server(url: str, keeper: Keeper | None) -> None:
    """List the tools and call the first one, as a user's first request would."""
    if keeper is None:
        await plain_session(url)
        return
    async with grantkeeper.mcp.connect(url, keeper=keeper) as session:
        tools = await session.list_tools()
        if tools.tools:
            await session.call_tool(tools.tools[0].name, {})


async def plain_session(url: str) -> None:
    """A server that wants no OAuth: the ``mcp`` SDK alone, with its handlers."""
    from mcp.client.client import Client
    from mcp.client.streamable_http import streamable_http_client

    async def elicit(context: Any, params: Any) -> Any:
        from mcp_types import ElicitResult

        # A form shows each field pre-filled with its default; the user accepts it as is.
        schema = getattr(params, "requested_schema", None) or {}
        fields = schema.get("properties", {}) if isinstance(schema, dict) else {}
        content = {
            name: spec["default"]
            for name, spec in fields.items()
            if isinstance(spec, dict) and "default" in spec
        }
        return ElicitResult(action="accept", content=content)

    async with Client(streamable_http_client(url), elicitation_callback=elicit) as client:
        tools = await client.list_tools()
        for tool in tools.tools:
            await client.call_tool(tool.name, {})


def main(url: str) -> int:
    scenario = os.environ.get("MCP_CONFORMANCE_SCENARIO", "")
    context = json.loads(os.environ.get("MCP_CONFORMANCE_CONTEXT") or "{}")
    settings = configuration(scenario, context)
    with tempfile.TemporaryDirectory(prefix="gk-conformance-") as home:
        # Each scenario is a new user: its store, and its login locks, are its own.
        os.environ["GRANTKEEPER_HOME"] = home
        store = FileStore(home)
        key = CredentialKey.for_server(url)
        try:
            found = grantkeeper.discover(url)
        except grantkeeper.OAuthUnsupported:
            asyncio.run(use_server(url, None))
            return 0
        recover = login_recovery(
            url,
            store=store,
            discovery=found,
            open_browser=browser,
            callback_timeout=30,
            **settings,
        )
        with Keeper(store, key, recover=recover) as keeper:
            asyncio.run(use_server(url, keeper))
        return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python conformance/client.py SERVER_URL")
    sys.exit(main(sys.argv[1]))
