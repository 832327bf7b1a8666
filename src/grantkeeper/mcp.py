"""grantkeeper for MCP clients: auth for httpx2 and sessions for ``mcp`` 2.x, fastmcp, ``mcp`` 1.x.

Needs the ``mcp`` extra (``pip install grantkeeper[mcp]``); fastmcp needs ``fastmcp-slim[client]``.
``streamablehttp_client_v1`` and ``httpx_client_factory`` need only ``mcp`` 1.x: names are
imported when first used, so an environment without httpx2 can import this module. The
``*_client_factory`` functions and the auth serve agent frameworks' own MCP clients
(README, "Agent frameworks").

    keeper = Keeper(open_store(), CredentialKey.for_server(url))
    async with grantkeeper.mcp.connect(url, keeper=keeper) as session:
        result = await session.call_tool("echo", {"text": "hi"})
"""

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING

if _TYPE_CHECKING:
    from ._http_auth.httpx2_auth import Httpx2Auth
    from ._mcp.sessions import (
        McpSession,
        connect,
        fastmcp_client,
        httpx2_auth,
        httpx2_client_factory,
    )
    from ._mcp.sessions_v1 import httpx_client_factory, streamablehttp_client_v1

__all__ = [
    "Httpx2Auth",
    "McpSession",
    "connect",
    "fastmcp_client",
    "httpx2_auth",
    "httpx2_client_factory",
    "httpx_client_factory",
    "streamablehttp_client_v1",
]

_HOMES = {
    "Httpx2Auth": "._http_auth.httpx2_auth",
    "McpSession": "._mcp.sessions",
    "connect": "._mcp.sessions",
    "fastmcp_client": "._mcp.sessions",
    "httpx2_auth": "._mcp.sessions",
    "httpx2_client_factory": "._mcp.sessions",
    "httpx_client_factory": "._mcp.sessions_v1",
    "streamablehttp_client_v1": "._mcp.sessions_v1",
}


_EXTRA_MODULES = frozenset({"httpx2", "mcp", "mcp_types", "httpcore2"})
"""What ``pip install 'grantkeeper[mcp]'`` brings: missing, they name the extra."""


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = _importlib.import_module(home, __package__)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in _EXTRA_MODULES:
            raise
        from ._errors import MissingExtra

        raise MissingExtra(f"grantkeeper.mcp.{name}", "mcp", module=missing) from None
    value = getattr(module, name)
    from ._exports import claim

    claim(__name__, {name: value})
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
