# pydantic-ai: MCPToolset takes a fastmcp Client; grantkeeper's has its auth, proxies and
# trust store. Give it to an agent: Agent(model, toolsets=[mcp_toolset(url, keeper)]).
from pydantic_ai.mcp import MCPToolset

import grantkeeper.mcp
from grantkeeper import Keeper


def mcp_toolset(url: str, keeper: Keeper) -> MCPToolset[None]:
    return MCPToolset(grantkeeper.mcp.fastmcp_client(url, keeper=keeper))
