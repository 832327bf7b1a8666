# OpenAI Agents SDK on mcp 1.x, which runs on httpx: grantkeeper.HttpxAuth and the httpx factory.
from agents.mcp import MCPServerStreamableHttp

import grantkeeper.mcp
from grantkeeper import HttpxAuth, Keeper


def mcp_server(url: str, keeper: Keeper) -> MCPServerStreamableHttp:
    return MCPServerStreamableHttp(
        {
            "url": url,
            "auth": HttpxAuth(keeper),
            "httpx_client_factory": grantkeeper.mcp.httpx_client_factory,
            "timeout": 30,
        },
        client_session_timeout_seconds=30,
    )
