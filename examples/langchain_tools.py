# LangChain and LangGraph (langchain-mcp-adapters, on mcp 1.x): a streamable_http connection
# takes an httpx.Auth and a client factory. tools = await mcp_client(url, keeper).get_tools()
from langchain_mcp_adapters.client import MultiServerMCPClient

import grantkeeper.mcp
from grantkeeper import HttpxAuth, Keeper


def mcp_client(url: str, keeper: Keeper) -> MultiServerMCPClient:
    return MultiServerMCPClient(
        {
            "server": {
                "transport": "streamable_http",
                "url": url,
                "auth": HttpxAuth(keeper),
                "httpx_client_factory": grantkeeper.mcp.httpx_client_factory,
            }
        }
    )
