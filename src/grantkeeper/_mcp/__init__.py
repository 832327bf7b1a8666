"""MCP client sessions that authenticate with grantkeeper; public as :mod:`grantkeeper.mcp`.

- ``sessions``: ``mcp`` 2.x and fastmcp, over httpx2 (session expiry handled here, OAuth
  recovery per request in ``_http_auth``);
- ``sessions_v1``: ``mcp`` 1.x's streamable HTTP client, over httpx.

Nothing is imported here: the ``mcp`` extra is needed only when a session is opened.
"""
