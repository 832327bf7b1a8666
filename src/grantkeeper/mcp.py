"""grantkeeper for MCP clients: auth for httpx2 and sessions for ``mcp`` 2.x, fastmcp, ``mcp`` 1.x.

Needs the ``mcp`` extra (``pip install grantkeeper[mcp]``); fastmcp needs ``fastmcp-slim[client]``.

    keeper = Keeper(open_store(), CredentialKey.for_server(url))
    async with grantkeeper.mcp.connect(url, keeper=keeper) as session:
        result = await session.call_tool("echo", {"text": "hi"})
"""

from ._httpx2_auth import Httpx2Auth
from ._mcp import McpSession, connect, fastmcp_client, httpx2_auth, streamablehttp_client_v1

__all__ = [
    "Httpx2Auth",
    "McpSession",
    "connect",
    "fastmcp_client",
    "httpx2_auth",
    "streamablehttp_client_v1",
]
