"""``grantkeeper.mcp.connect`` for every server, against real MCP servers.

Three kinds of auth (OAuth through a Keeper, a static bearer, none), what "nothing
stored" means when discovery can tell, and the ``mcp`` client's handlers passed through:
each handler is called by a real server tool that calls back into the client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from mcp.client.session import ClientRequestContext, IncomingMessage
from mcp_types import (
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequestParams,
    ElicitResult,
    ListRootsResult,
    LoggingMessageNotification,
    LoggingMessageNotificationParams,
    Root,
    TextContent,
)
from pydantic import FileUrl

from grantkeeper import (
    CredentialKey,
    FileStore,
    Keeper,
    LoginRequired,
    OAuthUnsupported,
    StaticTokenRejected,
    authentication_required,
)
from grantkeeper.mcp import McpSession, connect, fastmcp_client, httpx2_auth
from harness.authserver import AuthServer
from harness.mcp_demo import login
from harness.mcp_server import McpServer

pytestmark = pytest.mark.realserver

CALLBACK_TIMEOUT = 60.0
"""A safety net for waiting on a handler the server should have called."""

# The SDK deprecates sampling, roots and logging from protocol 2026-07-28 on (SEP-2577);
# these tests use them on purpose, on legacy sessions, where they still work.
deprecated_features = pytest.mark.filterwarnings(
    "ignore::mcp.shared.exceptions.MCPDeprecationWarning"
)


@pytest.fixture(scope="module")
def open_server() -> Iterator[McpServer]:
    """An MCP server with no auth at all: no metadata, no 401."""
    with McpServer(auth_server=None) as server:
        yield server


@pytest.fixture
def empty_keeper(store: FileStore, open_server: McpServer) -> Iterator[Keeper]:
    keeper = Keeper(store, CredentialKey.for_server(open_server.url))
    yield keeper
    keeper.close()


async def result_of(session: McpSession, tool: str, arguments: dict[str, Any]) -> Any:
    result = await session.call_tool(tool, arguments)
    assert not result.is_error, result.content
    return (result.structured_content or {}).get("result")


# -- the three kinds of auth ---------------------------------------------------------------


def test_no_auth_connects_to_a_server_that_needs_none(open_server: McpServer) -> None:
    async def go() -> Any:
        async with connect(open_server.url) as session:
            return await result_of(session, "add", {"a": 2, "b": 2})

    assert asyncio.run(go()) == 4
    assert {s.token for s in open_server.seen()} == {None}


def test_fastmcp_client_without_auth(open_server: McpServer) -> None:
    async def go() -> Any:
        async with fastmcp_client(open_server.url) as client:
            result = await client.call_tool("add", {"a": 1, "b": 2})
            return result.structured_content

    assert asyncio.run(go()) == {"result": 3}
    assert not httpx2_auth(open_server.url).oauth


def test_no_auth_to_a_protected_server_is_login_required_not_an_http_error(
    server: McpServer,
) -> None:
    async def go() -> None:
        async with connect(server.url, mode="legacy"):
            pass

    with pytest.raises(LoginRequired, match="without any"):
        asyncio.run(go())
    assert [(s.status, s.token) for s in server.seen()] == [(401, None)]


def test_a_static_bearer_token_is_sent_and_never_refreshed(
    server: McpServer, auth: AuthServer, store: FileStore
) -> None:
    issued = login(auth, server.url, store)
    auth.reset_stats()

    async def go() -> Any:
        async with connect(server.url, token=issued.access_token, mode="legacy") as session:
            who = await session.call_tool("whoami", {})
            assert (who.structured_content or {})["subject"] == "alice"
            server.fail_next("POST")
            await result_of(session, "add", {"a": 1, "b": 1})

    with pytest.raises(StaticTokenRejected, match="static") as raised:
        asyncio.run(go())
    # No flag: an OAuth login (a recovery hook, the proxy's) would not help a static token.
    assert not raised.value.requires_reauthentication and not raised.value.requires_login
    assert {s.token for s in server.seen()} == {issued.access_token}
    assert int(auth.stats()["refresh_success"]) == 0


def test_an_authorization_header_is_a_static_bearer_too(
    server: McpServer, auth: AuthServer, store: FileStore
) -> None:
    issued = login(auth, server.url, store)
    headers = {"Authorization": f"Bearer {issued.access_token}"}

    async def go() -> Any:
        async with connect(server.url, headers=headers, mode="legacy") as session:
            return await result_of(session, "add", {"a": 3, "b": 4})

    assert asyncio.run(go()) == 7
    assert {s.token for s in server.seen()} == {issued.access_token}


def test_oauth_through_a_keeper(keeper: Keeper, server: McpServer) -> None:
    async def go() -> Any:
        async with connect(server.url, keeper=keeper) as session:
            return await result_of(session, "add", {"a": 5, "b": 6})

    assert asyncio.run(go()) == 11
    assert {s.token for s in server.seen()} == {keeper.access_token()}


# -- nothing stored: login required, or no OAuth at all -------------------------------------


def connect_with_nothing_stored(
    server: McpServer, store: FileStore, *, allow_unauthenticated: bool = False
) -> None:
    """Connect to ``server`` with a Keeper of ``store``, where nothing is stored for it: the
    connection must fail with LoginRequired."""

    async def go(keeper: Keeper) -> None:
        async with connect(server.url, keeper=keeper, allow_unauthenticated=allow_unauthenticated):
            pass

    with Keeper(store, CredentialKey.for_server(server.url)) as keeper:
        with pytest.raises(LoginRequired):
            asyncio.run(go(keeper))


def test_nothing_stored_for_a_server_that_offers_oauth_is_login_required(
    server: McpServer, store: FileStore
) -> None:
    connect_with_nothing_stored(server, store)
    # Only discovery's unauthenticated probe reached the endpoint, and it was refused.
    endpoint = [(s.method, s.status, s.token) for s in server.seen() if s.path == "/mcp"]
    assert endpoint == [("POST", 401, None)]


def test_nothing_stored_for_a_server_without_oauth_is_oauth_unsupported(
    open_server: McpServer, empty_keeper: Keeper
) -> None:
    async def go() -> None:
        async with connect(open_server.url, keeper=empty_keeper):
            pass

    with pytest.raises(OAuthUnsupported, match="offers no OAuth") as raised:
        asyncio.run(go())
    assert authentication_required(raised.value) is None  # logging in would not help


def test_nothing_stored_and_no_oauth_connects_without_auth_when_asked(
    open_server: McpServer, empty_keeper: Keeper
) -> None:
    open_server.reset()

    async def go() -> Any:
        async with connect(
            open_server.url, keeper=empty_keeper, allow_unauthenticated=True
        ) as session:
            return await result_of(session, "echo", {"text": "open"})

    assert asyncio.run(go()) == "open"
    assert {s.token for s in open_server.seen()} == {None}


def test_allow_unauthenticated_never_skips_a_login_a_server_asks_for(
    server: McpServer, store: FileStore
) -> None:
    connect_with_nothing_stored(server, store, allow_unauthenticated=True)


# -- the mcp client's handlers --------------------------------------------------------------


@deprecated_features
def test_the_sampling_callback_answers_the_servers_request(
    keeper: Keeper, server: McpServer
) -> None:
    prompts: list[str] = []

    async def sampling(
        context: ClientRequestContext, params: CreateMessageRequestParams
    ) -> CreateMessageResult:
        content = params.messages[0].content
        prompts.append(content.text if isinstance(content, TextContent) else "?")
        return CreateMessageResult(
            role="assistant",
            content=TextContent(type="text", text="sampled: 42"),
            model="test-model",
        )

    async def go() -> Any:
        async with connect(
            server.url, keeper=keeper, mode="legacy", sampling_callback=sampling
        ) as session:
            return await result_of(session, "sample", {"prompt": "the answer?"})

    assert asyncio.run(go()) == "sampled: 42"
    assert prompts == ["the answer?"]


def test_the_elicitation_callback_answers_the_servers_question(
    keeper: Keeper, server: McpServer
) -> None:
    questions: list[str] = []

    async def elicitation(
        context: ClientRequestContext, params: ElicitRequestParams
    ) -> ElicitResult:
        questions.append(params.message)
        return ElicitResult(action="accept", content={"answer": "blue"})

    async def go() -> Any:
        async with connect(
            server.url, keeper=keeper, mode="legacy", elicitation_callback=elicitation
        ) as session:
            result = await session.call_tool("ask", {"question": "favourite colour?"})
            return result.structured_content

    assert asyncio.run(go()) == {"action": "accept", "answer": "blue"}
    assert questions == ["favourite colour?"]


@deprecated_features
def test_the_list_roots_callback_names_the_clients_roots(keeper: Keeper, server: McpServer) -> None:
    async def list_roots(context: ClientRequestContext) -> ListRootsResult:
        return ListRootsResult(roots=[Root(uri=FileUrl("file:///work/project"), name="project")])

    async def go() -> Any:
        async with connect(
            server.url, keeper=keeper, mode="legacy", list_roots_callback=list_roots
        ) as session:
            return await result_of(session, "roots", {})

    assert asyncio.run(go()) == ["file:///work/project"]


@deprecated_features
def test_the_logging_callback_and_message_handler_get_the_servers_log_message(
    keeper: Keeper, server: McpServer
) -> None:
    logged: list[Any] = []
    handled: list[Any] = []

    async def go() -> Any:
        got_log, got_message = asyncio.Event(), asyncio.Event()

        async def logging(params: LoggingMessageNotificationParams) -> None:
            logged.append((params.level, params.logger, params.data))
            got_log.set()

        async def messages(message: IncomingMessage) -> None:
            if isinstance(message, LoggingMessageNotification):
                handled.append(message.params.data)
                got_message.set()

        async with connect(
            server.url,
            keeper=keeper,
            mode="legacy",
            logging_callback=logging,
            message_handler=messages,
        ) as session:
            answer = await result_of(session, "log", {"text": "hello from the server"})
            async with asyncio.timeout(CALLBACK_TIMEOUT):
                await got_log.wait()
                await got_message.wait()
            return answer

    assert asyncio.run(go()) == "logged"
    assert logged == [("info", "harness", "hello from the server")]
    assert handled == ["hello from the server"]


@deprecated_features
def test_handlers_survive_a_new_session_after_expiry(keeper: Keeper, server: McpServer) -> None:
    async def list_roots(context: ClientRequestContext) -> ListRootsResult:
        return ListRootsResult(roots=[Root(uri=FileUrl("file:///again"))])

    async def go() -> tuple[Any, int]:
        async with connect(
            server.url, keeper=keeper, mode="legacy", list_roots_callback=list_roots
        ) as session:
            await result_of(session, "roots", {})
            server.expire_sessions()
            return await result_of(session, "roots", {}), session.reconnects

    assert asyncio.run(go()) == (["file:///again"], 1)
