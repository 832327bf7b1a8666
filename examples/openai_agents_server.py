# OpenAI Agents SDK (on mcp 2.x): MCPServerStreamableHttp takes an httpx2.Auth and a client
# factory. async with mcp_server(url, keeper) as server: Agent(..., mcp_servers=[server])
from agents.mcp import MCPServerStreamableHttp

import grantkeeper.mcp
from grantkeeper import Keeper


def mcp_server(url: str, keeper: Keeper) -> MCPServerStreamableHttp:
    return MCPServerStreamableHttp(
        {
            "url": url,
            "auth": grantkeeper.mcp.httpx2_auth(url, keeper=keeper),
            "httpx_client_factory": grantkeeper.mcp.httpx2_client_factory,
            # A request that finds its token expired waits for the refresh: allow more than
            # the SDK's 5 s for it.
            "timeout": 30,
        },
        client_session_timeout_seconds=30,
    )
