"""langchain-mcp-adapters with grantkeeper, run in its own environment (``.venv-langchain``).

langchain-mcp-adapters requires ``mcp`` 1.x, which cannot share ``.venv`` with ``mcp`` 2.x,
so tests/test_agent_frameworks.py runs this with ``.venv-langchain/bin/python`` against the
real ``mcp`` 2.3 server and oidc-provider of the main environment:

    python -m harness.langchain_client URL HOME ROTATIONS

It builds the client exactly as the README shows (``examples/langchain_tools.py``) over the
credential stored in ``HOME`` (a file store), lists the tools, then calls ``echo``
``ROTATIONS + 1`` times with the clock moved two hours on between calls, so that every call
after the first finds its access token expired. It prints one JSON object: what each call
answered, or the error that stopped it.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import sys
from datetime import datetime, timedelta
from typing import Any

from examples.langchain_tools import mcp_client
from grantkeeper import CredentialKey, FileStore, Keeper, authentication_required
from grantkeeper._freshness import utc_now

STEP = timedelta(hours=2)
"""Longer than any access token the test authorization server issues."""


class ShiftClock:
    """The real clock, moved forward on demand: expiry without waiting for it."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return utc_now() + self.offset


def _text(answer: Any) -> str | None:
    """A tool's text answer: a string, or the text of the first content block."""
    if isinstance(answer, str):
        return answer
    if isinstance(answer, list) and answer:
        first = answer[0]
        text = first.get("text") if isinstance(first, dict) else getattr(first, "text", None)
        return text if isinstance(text, str) else None
    return None


async def _run(url: str, keeper: Keeper, clock: ShiftClock, rotations: int) -> dict[str, Any]:
    client = mcp_client(url, keeper)
    tools = await client.get_tools()
    echo = next(tool for tool in tools if tool.name == "echo")
    answers = []
    for number in range(rotations + 1):
        if number:
            clock.offset += STEP
        answers.append(_text(await echo.ainvoke({"text": f"call {number}"})))
    return {"tools": sorted(tool.name for tool in tools), "echo": answers}


def main(url: str, home: str, rotations: int) -> dict[str, Any]:
    clock = ShiftClock()
    keeper = Keeper(FileStore(home), CredentialKey.for_server(url), clock=clock)
    out: dict[str, Any] = {
        name: importlib.metadata.version(name) for name in ("langchain-mcp-adapters", "mcp")
    }
    try:
        out.update(asyncio.run(_run(url, keeper, clock, rotations)))
    except Exception as exc:
        # The adapters run mcp 1.x's transport in task groups: our error may arrive wrapped.
        found = authentication_required(exc)
        if found is None:
            raise
        out["error"] = type(found).__name__
    finally:
        keeper.close()
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
