"""An ``mcp`` 1.x client using grantkeeper, run in the second environment (``.venv-mcp1``).

``mcp`` 1.x (httpx) and 2.x (httpx2) cannot share one environment, so the test suite runs
this script with ``.venv-mcp1/bin/python`` against the real ``mcp`` 2.3 server of the main
environment, and checks what it prints (one JSON object) and what the servers saw.

    python harness/mcp1_client.py URL HOME

It lists the tools and calls ``echo`` through ``grantkeeper.mcp.streamablehttp_client_v1``
over the credential stored in ``HOME`` (a file store), and prints what happened.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import sys
from typing import Any

from grantkeeper import CredentialKey, FileStore, Keeper, authentication_required
from grantkeeper.mcp import streamablehttp_client_v1


async def _session(url: str, keeper: Keeper) -> dict[str, Any]:
    from mcp import ClientSession

    async with (
        streamablehttp_client_v1(url, keeper=keeper) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        listed = await session.list_tools()
        echoed = await session.call_tool("echo", {"text": "from mcp 1.x"})
        return {
            "tools": sorted(tool.name for tool in listed.tools),
            "echo": [getattr(part, "text", None) for part in echoed.content],
        }


def main(url: str, home: str) -> dict[str, Any]:
    keeper = Keeper(FileStore(home), CredentialKey.for_server(url))
    out: dict[str, Any] = {"mcp": importlib.metadata.version("mcp")}
    try:
        out.update(asyncio.run(_session(url, keeper)))
    except Exception as exc:
        # mcp 1.x runs its transport in task groups: our error may arrive wrapped.
        found = authentication_required(exc)
        if found is None:
            raise
        out["error"] = type(found).__name__
    finally:
        keeper.close()
    current = keeper.current
    out["token_suffix"] = current.access_token[-6:] if current else None
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
