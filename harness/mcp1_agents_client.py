"""Agent frameworks on ``mcp`` 1.x with grantkeeper, run in ``.venv-agents-mcp1``.

langchain-mcp-adapters requires ``mcp`` 1.x, and the OpenAI Agents SDK runs on either major
version; ``mcp`` 1.x cannot share ``.venv`` with 2.x, so tests/test_agent_frameworks.py runs
this with ``.venv-agents-mcp1/bin/python`` against the real ``mcp`` 2.3 server and
oidc-provider of the main environment:

    python -m harness.mcp1_agents_client FRAMEWORK URL HOME ROTATIONS [REVOKE_URL]

``FRAMEWORK`` is ``langchain`` (``examples/langchain_tools.py``) or ``openai-agents``
(``examples/openai_agents_server_mcp1.py``): the client is built exactly as the README shows,
over the credential stored in ``HOME`` (a file store). It lists the tools, then calls
``echo`` ``ROTATIONS + 1`` times with the clock moved two hours on between calls, so that
every call after the first finds its access token expired. With ``REVOKE_URL`` (the test
authorization server's ``/__admin/revoke-all``), every grant is revoked after the first call.
It prints one JSON object: the versions and what each call answered, or what stopped it
(``raised``: the framework's exception; ``inside``: every exception type it holds;
``error``: the grantkeeper ``AuthenticationRequired`` in it, if any; ``keeper``: what
``keeper.credential()`` raised afterwards). Never a token.

The module imports only grantkeeper, ``harness.clocks`` and the standard library at the top,
so the main environment's tests share :func:`exception_types` with it.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import sys
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from grantkeeper import (
    AuthenticationRequired,
    CredentialKey,
    FileStore,
    Keeper,
    authentication_required,
)
from harness.clocks import ShiftClock

STEP = timedelta(hours=2)
"""Longer than any access token the test authorization server issues."""

Call = Callable[[str], Awaitable[str | None]]


def exception_types(exc: BaseException) -> list[str]:
    """The type names of ``exc`` and of everything it holds: groups, causes, contexts."""
    names: set[str] = set()
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending and len(seen) < 100:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        names.add(type(current).__name__)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return sorted(names)


def _text(answer: Any) -> str | None:
    """A tool's text answer: a string, or the text of the first content block."""
    if isinstance(answer, str):
        return answer
    if isinstance(answer, list) and answer:
        first = answer[0]
        text = first.get("text") if isinstance(first, dict) else getattr(first, "text", None)
        return text if isinstance(text, str) else None
    return None


@asynccontextmanager
async def langchain(url: str, keeper: Keeper) -> AsyncIterator[tuple[list[str], Call]]:
    from examples.langchain_tools import mcp_client

    # Without a session held open, each tool call opens (and closes) a session of its own.
    tools = await mcp_client(url, keeper).get_tools()
    echo = next(tool for tool in tools if tool.name == "echo")

    async def call(text: str) -> str | None:
        return _text(await echo.ainvoke({"text": text}))

    yield sorted(tool.name for tool in tools), call


@asynccontextmanager
async def openai_agents(url: str, keeper: Keeper) -> AsyncIterator[tuple[list[str], Call]]:
    from examples.openai_agents_server_mcp1 import mcp_server

    server = mcp_server(url, keeper)

    async def call(text: str) -> str | None:
        result = await server.call_tool("echo", {"text": text})
        return _text(result.content)

    async with server:
        yield sorted(tool.name for tool in await server.list_tools()), call


FRAMEWORKS = {"langchain": langchain, "openai-agents": openai_agents}
PACKAGES = {"langchain": "langchain-mcp-adapters", "openai-agents": "openai-agents"}


def _revoke_all(admin_url: str) -> None:
    request = urllib.request.Request(admin_url, data=b"{}", method="POST")
    request.add_header("content-type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as answer:  # loopback, test server only
        answer.read()


async def _run(
    framework: str,
    url: str,
    keeper: Keeper,
    clock: ShiftClock,
    rotations: int,
    revoke_url: str | None,
) -> dict[str, Any]:
    async with FRAMEWORKS[framework](url, keeper) as (tools, call):
        answers = []
        for number in range(rotations + 1):
            if number:
                if revoke_url is not None and number == 1:
                    await asyncio.to_thread(_revoke_all, revoke_url)
                clock.offset += STEP
            answers.append(await call(f"call {number}"))
    return {"tools": tools, "echo": answers}


def main(
    framework: str, url: str, home: str, rotations: int, revoke_url: str | None = None
) -> dict[str, Any]:
    clock = ShiftClock()
    keeper = Keeper(FileStore(home), CredentialKey.for_server(url), clock=clock)
    out: dict[str, Any] = {
        "framework": importlib.metadata.version(PACKAGES[framework]),
        "mcp": importlib.metadata.version("mcp"),
    }
    try:
        out.update(asyncio.run(_run(framework, url, keeper, clock, rotations, revoke_url)))
    except (Exception, asyncio.CancelledError) as exc:
        # The frameworks run mcp 1.x's transport in task groups: our error may arrive
        # wrapped, or not at all (the OpenAI Agents SDK ends in a bare CancelledError).
        out["raised"] = type(exc).__name__
        out["inside"] = exception_types(exc)
        found = authentication_required(exc)
        out["error"] = type(found).__name__ if found is not None else None
        try:
            keeper.credential()
        except AuthenticationRequired as needed:
            out["keeper"] = type(needed).__name__
    finally:
        keeper.close()
    return out


if __name__ == "__main__":
    framework, url, home, rotations, *revoke = sys.argv[1:]
    print(json.dumps(main(framework, url, home, int(rotations), *revoke)))
