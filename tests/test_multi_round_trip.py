"""Multi-round-trip requests (MCP 2026-07-28, SEP-2322) against the real ``mcp`` 2.3 server,
protected by the real oidc-provider, through both of grantkeeper's ways in:
``grantkeeper.mcp.connect`` and ``grantkeeper proxy`` under a desktop host.

The harness's ``confirm`` tool needs a name from the user. At 2026-07-28 the server answers
the call with an ``InputRequiredResult``; the client asks its user (the elicitation callback)
and sends the call again, under a new JSON-RPC id, with the answer (``inputResponses``) and
the server's sealed ``requestState``. The tool's text names who confirmed, so the user's
answer reached the tool only if the retry carried both: the server re-asks a retry without
the state and refuses one whose state it did not mint (the last test proves that of this
server). The server's record shows the two POSTs, neither naming a session, and the
authorization server's counters that no refresh or login came between them.

At the 2025 era the same tool asks with a standalone ``elicitation/create`` mid-call
instead, which the proxy passes to the host and whose answer it passes back.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client.client import Client
from mcp.client.session import ClientRequestContext
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    CallToolResult,
    ElicitRequestParams,
    ElicitResult,
    InputRequiredResult,
)

from grantkeeper import FileStore, Keeper
from grantkeeper.mcp import connect
from harness.authserver import AuthServer
from harness.mcp_demo import login
from harness.mcp_server import McpServer, Seen
from tests.test_proxy import CALL_TIMEOUT, ROOT, environment, proxy_args, text_of

pytestmark = pytest.mark.realserver

MODERN = "2026-07-28"
ITEM = "the budget"
NAME = "Ada Lovelace"
QUESTION = f"Who confirms {ITEM}?"
CONFIRMED = f"{ITEM} confirmed by {NAME}"


class User:
    """The elicitation callback: answers ``NAME`` and remembers every question."""

    def __init__(self) -> None:
        self.questions: list[str] = []

    async def __call__(
        self, context: ClientRequestContext, params: ElicitRequestParams
    ) -> ElicitResult:
        self.questions.append(params.message)
        return ElicitResult(action="accept", content={"name": NAME})


def calls(seen: list[Seen]) -> list[Seen]:
    """The POSTs that carried a ``tools/call``, oldest first."""
    return [
        s for s in seen if s.method == "POST" and (s.message or {}).get("method") == "tools/call"
    ]


def params_of(seen: Seen) -> dict[str, Any]:
    assert seen.message is not None
    params = seen.message.get("params")
    assert isinstance(params, dict)
    return params


def assert_one_retry(seen: list[Seen]) -> None:
    """Two ``tools/call`` POSTs of ``confirm``, under two ids and one token, and no session:
    the original with neither answer nor state, the retry with the user's answer and a
    state (the server verified it was its own, or the tool would not have answered)."""
    first, retry = calls(seen)
    assert first.message is not None and retry.message is not None
    assert first.message["id"] != retry.message["id"]
    assert (first.status, retry.status) == (200, 200)
    assert all(s.session_id is None for s in seen)
    assert first.token is not None and retry.token == first.token
    original, again = params_of(first), params_of(retry)
    assert original["name"] == again["name"] == "confirm"
    assert original["arguments"] == again["arguments"] == {"item": ITEM}
    assert "inputResponses" not in original and "requestState" not in original
    (answer,) = again["inputResponses"].values()
    assert answer == {"action": "accept", "content": {"name": NAME}}
    assert isinstance(again["requestState"], str) and again["requestState"]


def bounded(work: Callable[[], Coroutine[Any, Any, str]]) -> str:
    async def run() -> str:
        with anyio.fail_after(CALL_TIMEOUT):
            return await work()

    return asyncio.run(run())


def host(server: McpServer, home: Path, mode: str, user: User) -> str:
    """A desktop host at ``mode`` calls ``confirm`` through ``grantkeeper proxy``."""
    params = StdioServerParameters(
        command=sys.executable, args=proxy_args(server.url), env=environment(home), cwd=str(ROOT)
    )

    async def work() -> str:
        with (home.parent / "proxy.err").open("w") as errlog:  # noqa: ASYNC230 (local, once)
            async with Client(
                stdio_client(params, errlog=errlog), mode=mode, elicitation_callback=user
            ) as client:
                return text_of(await client.call_tool("confirm", {"item": ITEM}))

    return bounded(work)


# -- grantkeeper.mcp.connect ------------------------------------------------------------------


def test_connect_retries_with_the_answer_and_the_state_under_a_new_id(
    auth: AuthServer, server: McpServer, keeper: Keeper
) -> None:
    user = User()

    async def work() -> str:
        async with connect(
            server.url, keeper=keeper, mode=MODERN, elicitation_callback=user
        ) as session:
            return text_of(await session.call_tool("confirm", {"item": ITEM}))

    assert bounded(work) == CONFIRMED
    assert user.questions == [QUESTION]
    seen = server.seen()
    assert {s.method for s in seen} == {"POST"}  # no event stream, no session to delete
    assert_one_retry(seen)
    stats = auth.stats()
    assert (stats["refresh_success"], stats["code_success"]) == (0, 0)


# -- grantkeeper proxy ----------------------------------------------------------------------


def test_a_2026_era_host_gets_its_answer_through_the_proxy(
    auth: AuthServer, server: McpServer, home: Path
) -> None:
    stored = login(auth, server.url, FileStore(home))
    auth.reset_stats()
    user = User()

    assert host(server, home, MODERN, user) == CONFIRMED
    assert user.questions == [QUESTION]  # asked once: the retry was not asked again
    seen = server.seen()
    assert_one_retry(seen)
    assert {s.token for s in seen} == {stored.access_token}
    assert auth.stats()["code_success"] == 0


def test_a_2025_era_host_answers_the_servers_own_request_through_the_proxy(
    auth: AuthServer, server: McpServer, home: Path
) -> None:
    login(auth, server.url, FileStore(home))
    user = User()

    assert host(server, home, "legacy", user) == CONFIRMED
    assert user.questions == [QUESTION]
    seen = server.seen()
    (call,) = calls(seen)  # one call, no retry: the question came mid-call
    assert "requestState" not in params_of(call)
    answers = [s for s in seen if s.method == "POST" and "result" in (s.message or {})]
    (answer,) = answers  # the host's answer to elicitation/create, passed upstream
    assert answer.message is not None
    assert answer.message["result"] == {"action": "accept", "content": {"name": NAME}}
    assert answer.session_id is not None and answer.session_id == call.session_id


# -- what gives the 2026 tests their teeth ----------------------------------------------------


def test_the_server_accepts_the_answer_only_with_the_state_it_minted(
    server: McpServer, keeper: Keeper
) -> None:
    """Driving the rounds by hand: a retry without the state is asked again and one with a
    state the server did not mint is refused, so a client (or a pipe) that dropped or
    altered it could not have given the tests above the user's answer."""

    async def work() -> str:
        # The callback declares the elicitation capability; the rounds here never call it.
        user = User()
        async with connect(
            server.url, keeper=keeper, mode=MODERN, elicitation_callback=user
        ) as session:
            rpc = session.client.session
            first = await rpc.call_tool("confirm", {"item": ITEM}, allow_input_required=True)
            assert isinstance(first, InputRequiredResult) and first.request_state
            assert first.input_requests is not None
            (key,) = first.input_requests
            answers: dict[str, Any] = {key: ElicitResult(action="accept", content={"name": NAME})}

            stateless = await rpc.call_tool(
                "confirm", {"item": ITEM}, input_responses=answers, allow_input_required=True
            )
            assert isinstance(stateless, InputRequiredResult)  # the same question, again
            assert stateless.input_requests is not None and list(stateless.input_requests) == [key]

            state = first.request_state
            forged = state[:-4] + ("AAAA" if not state.endswith("AAAA") else "BBBB")
            with pytest.raises(MCPError) as refused:
                await rpc.call_tool(
                    "confirm",
                    {"item": ITEM},
                    input_responses=answers,
                    request_state=forged,
                    allow_input_required=True,
                )
            assert refused.value.code == INVALID_PARAMS
            assert "requestState" in refused.value.message

            done = await rpc.call_tool(
                "confirm",
                {"item": ITEM},
                input_responses=answers,
                request_state=state,
                allow_input_required=True,
            )
            assert isinstance(done, CallToolResult)
            return text_of(done)

    assert bounded(work) == CONFIRMED
    assert len(calls(server.seen())) == 4
