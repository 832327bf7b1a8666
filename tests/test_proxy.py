"""``grantkeeper proxy`` as a desktop host runs it: ``mcp``'s stdio client spawns the command,
which bridges to a real ``mcp`` 2.3 server protected by the real oidc-provider.

Logins are played by a fake ``$BROWSER`` (``harness.fake_browser``), which also counts the
browser windows and prints to its stdout as real browsers do. Tests wait on what the servers
or the fake browser report, never on the clock.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.server.mcpserver.tools import Tool
from mcp.shared.exceptions import MCPError
from mcp_types import CLIENT_CAPABILITIES_META_KEY, PROTOCOL_VERSION_META_KEY
from pydantic import FileUrl

from grantkeeper import CredentialKey, FileStore
from harness.authserver import AuthServer
from harness.mcp_demo import login
from harness.mcp_server import INITIALIZE, PROMPT, McpServer, Seen
from harness.pipe_tools import MemoryEventStore
from tests.helpers import signal_own_child

pytestmark = pytest.mark.realserver

ROOT = Path(__file__).resolve().parent.parent
CALL_TIMEOUT = 60.0
"""Bounds each test's MCP calls: a hang fails the test instead of the suite."""


def fake_browser(directory: Path) -> Path:
    """An executable for ``$BROWSER``, which must name a program (``webbrowser`` appends
    the URL and splits nothing)."""
    path = directory / "fake-browser"
    path.write_text(f'#!/bin/sh\nexec {sys.executable} -m harness.fake_browser "$@"\n')
    path.chmod(0o700)
    return path


def environment(home: Path, **extra: str) -> dict[str, str]:
    env = {
        "GRANTKEEPER_HOME": str(home),
        "GRANTKEEPER_STORE": "file",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "BROWSER": str(fake_browser(home.parent)),
        "FAKE_BROWSER_LOG": str(home.parent / "browser.log"),
    }
    env.update(extra)
    return env


def browser_windows(home: Path) -> list[dict[str, Any]]:
    log = home.parent / "browser.log"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def proxy_args(url: str, *extra: str) -> list[str]:
    # No pings unless a test asks: their requests would muddle what the server saw.
    pings = [] if "--ping-interval" in extra else ["--ping-interval", "0"]
    return ["-m", "grantkeeper", "proxy", url, *pings, *extra]


@contextlib.asynccontextmanager
async def host(
    url: str,
    home: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    errlog: Path | None = None,
    **callbacks: Any,
) -> AsyncIterator[ClientSession]:
    """A desktop host: spawn the proxy over stdio and open an MCP session through it."""
    params = StdioServerParameters(
        command=sys.executable,
        args=proxy_args(url, *extra),
        env=env or environment(home),
        cwd=str(ROOT),
    )
    log_path = errlog or home.parent / f"proxy-{os.getpid()}-{id(params)}.err"
    with log_path.open("w") as stderr:  # noqa: ASYNC230 (a local file, opened once)
        async with (
            stdio_client(params, errlog=stderr) as (read, write),
            ClientSession(read, write, read_timeout_seconds=CALL_TIMEOUT, **callbacks) as session,
        ):
            yield session


def text_of(result: types.CallToolResult) -> str:
    content = result.content[0]
    assert isinstance(content, types.TextContent)
    return content.text


def methods(seen: list[Seen]) -> list[tuple[str, int]]:
    return [(s.method, s.status) for s in seen]


# -- 1 and 2: the command, a stored credential, no interactive step -------------------------


def test_tool_call_with_a_stored_credential_and_delete_on_exit(
    auth: AuthServer, server: McpServer, home: Path
) -> None:
    stored = login(auth, server.url, FileStore(home))
    auth.reset_stats()

    async def run() -> str:
        async with host(server.url, home) as session:
            await session.initialize()
            return text_of(await session.call_tool("echo", {"text": "through the proxy"}))

    assert asyncio.run(run()) == "through the proxy"
    seen = server.wait_for(lambda seen: any(s.method == "DELETE" for s in seen))
    assert {s.token for s in seen if s.method == "POST"} == {stored.access_token}
    assert ("DELETE", 200) in methods(seen)  # the session ended with the host
    assert browser_windows(home) == []  # no interactive step
    assert auth.stats()["code_success"] == 0


def test_unknown_server_name_exits_non_zero_with_one_line(home: Path) -> None:
    done = subprocess.run(
        [sys.executable, *proxy_args("no-such-server")],
        env=environment(home),
        cwd=ROOT,
        input=b"",
        capture_output=True,
        timeout=CALL_TIMEOUT,
    )
    assert done.returncode != 0
    assert done.stdout == b""
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no server named 'no-such-server'")


def test_no_browser_answers_with_an_error_naming_grantkeeper_login(
    server: McpServer, home: Path
) -> None:
    errlog = home.parent / "proxy.err"

    async def run() -> MCPError:
        async with host(server.url, home, "--no-browser", errlog=errlog) as session:
            with pytest.raises(MCPError) as caught:
                await session.initialize()
            return caught.value

    error = asyncio.run(run())
    assert f"grantkeeper login {server.url}" in str(error)
    assert f"run `grantkeeper login {server.url}`" in errlog.read_text()
    assert browser_windows(home) == []


# -- 3: one login for every instance ------------------------------------------------------


def test_eight_proxies_with_nothing_stored_open_one_browser(
    auth: AuthServer, server: McpServer, home: Path
) -> None:
    async def one(index: int) -> str:
        errlog = home.parent / f"proxy-{index}.err"
        async with host(server.url, home, errlog=errlog) as session:
            await session.initialize()
            return text_of(await session.call_tool("echo", {"text": f"proxy {index}"}))

    async def run() -> list[str]:
        return list(await asyncio.gather(*(one(i) for i in range(8))))

    assert asyncio.run(run()) == [f"proxy {i}" for i in range(8)]
    assert len(browser_windows(home)) == 1
    assert auth.stats()["code_success"] == 1
    # Whether any of them queued for the login lock depends on how fast eight processes
    # start: tests/test_recovery.py shows the wait itself, synchronised.


class BrowserControl:
    """Where the fake browser reports (its opener's pid) and takes its orders."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(CALL_TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []

    def next_window(self) -> tuple[int, socket.socket]:
        conn, _ = self.listener.accept()
        conn.settimeout(CALL_TIMEOUT)
        self.connections.append(conn)
        opener = int(conn.makefile("r").readline())
        return opener, conn

    def close(self) -> None:
        for conn in self.connections:
            conn.close()
        self.listener.close()


def test_a_killed_login_instance_is_taken_over(
    auth: AuthServer, server: McpServer, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pids of the proxies this test starts (mcp's stdio client spawns each through
    # anyio.open_process, in a session of its own): only one of them is ever killed.
    proxies: list[int] = []
    open_process = anyio.open_process

    async def recording_open_process(*args: Any, **kwargs: Any) -> Any:
        process = await open_process(*args, **kwargs)
        proxies.append(process.pid)
        return process

    monkeypatch.setattr(anyio, "open_process", recording_open_process)
    control = BrowserControl()
    env = environment(home, FAKE_BROWSER_PORT=str(control.port))
    answers: dict[int, str] = {}

    async def one(index: int) -> None:
        errlog = home.parent / f"proxy-{index}.err"
        with contextlib.suppress(Exception):  # the killed one's host loses its server
            async with host(server.url, home, env=env, errlog=errlog) as session:
                await session.initialize()
                result = await session.call_tool("echo", {"text": f"proxy {index}"})
                answers[index] = text_of(result)

    def browser_side() -> tuple[int, int]:
        first_opener, first = control.next_window()
        # The browser reports its parent: were that proxy already dead, it would be whatever
        # adopted the browser. Kill only a proxy this test started, still ours.
        assert first_opener in proxies, f"opener {first_opener} is not a proxy we started"
        signal_own_child(first_opener, signal.SIGKILL)  # the login instance dies mid-login
        first.close()
        second_opener, second = control.next_window()
        second.sendall(b"approve\n")
        return first_opener, second_opener

    async def run() -> tuple[int, int]:
        browser = asyncio.create_task(asyncio.to_thread(browser_side))
        await asyncio.gather(*(one(i) for i in range(3)))
        return await browser

    try:
        first_opener, second_opener = asyncio.run(run())
    finally:
        control.close()
    assert first_opener != second_opener
    assert len(answers) == 2  # both survivors answered, through the second login
    assert [w["opener"] for w in browser_windows(home)] == [first_opener, second_opener]
    assert auth.stats()["code_success"] == 1
    assert list((home / "locks").iterdir())  # the lock file is there, and held by no one
    assert not any(
        p.name.endswith(".tmp") for p in home.rglob("*")
    )  # no half-written state left behind


# -- 4: a faithful pipe ---------------------------------------------------------------------


def login_with_fresh_pipe_events(auth: AuthServer, server: McpServer, home: Path) -> None:
    """Log in at ``auth`` for ``server`` into ``home``'s file store, and forget the ``hang``
    and cancellation events an earlier test may have left on the server."""
    login(auth, server.url, FileStore(home))
    server.pipe_events.hanging.clear()
    server.pipe_events.cancelled.clear()


def test_progress_logging_list_changed_sampling_elicitation_roots_and_cancellation_pass_through(
    auth: AuthServer, server: McpServer, home: Path
) -> None:
    login_with_fresh_pipe_events(auth, server, home)
    logs: list[Any] = []
    notifications: list[str] = []
    list_changed = anyio.Event()

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params.data)

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            notifications.append(message.method)
            list_changed.set()

    async def on_sampling(
        context: Any, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        prompt = params.messages[0].content
        assert isinstance(prompt, types.TextContent)
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=f"sampled: {prompt.text}"),
            model="fake",
        )

    async def on_roots(context: Any) -> types.ListRootsResult:
        root = types.Root(uri=FileUrl("file:///work/project"), name="project")
        return types.ListRootsResult(roots=[root])

    async def on_elicitation(context: Any, params: Any) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"answer": f"yes to {params.message}"})

    async def run() -> dict[str, Any]:
        seen_progress: list[tuple[float, float | None, str | None]] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen_progress.append((progress, total, message))

        async with host(
            server.url,
            home,
            logging_callback=on_log,
            message_handler=on_message,
            sampling_callback=on_sampling,
            elicitation_callback=on_elicitation,
            list_roots_callback=on_roots,
        ) as session:
            await session.initialize()
            chatty = await session.call_tool("chatty", {"steps": 3}, progress_callback=on_progress)
            with anyio.fail_after(CALL_TIMEOUT):
                await list_changed.wait()
            sampled = await session.call_tool("relay_sample", {"prompt": "hello"})
            asked = await session.call_tool("relay_ask", {"question": "proceed?"})
            roots = await session.call_tool("relay_roots", {})
            hanging = asyncio.create_task(session.call_tool("hang", {}))
            await asyncio.to_thread(server.pipe_events.hanging.wait, CALL_TIMEOUT)
            hanging.cancel()  # the client sends notifications/cancelled
            cancelled = await asyncio.to_thread(server.pipe_events.cancelled.wait, CALL_TIMEOUT)
            after = await session.call_tool("echo", {"text": "still fine"})
            return {
                "chatty": text_of(chatty),
                "progress": seen_progress,
                "sampled": text_of(sampled),
                "asked": text_of(asked),
                "roots": roots.structured_content,
                "cancelled": cancelled,
                "after": text_of(after),
            }

    outcome = asyncio.run(run())
    assert outcome["chatty"] == "chatted 3"
    assert outcome["progress"] == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]
    assert logs == ["log 1", "log 2", "log 3"]
    assert notifications == ["notifications/tools/list_changed"]
    assert outcome["sampled"] == "sampled: hello"
    assert outcome["asked"] == "yes to proceed?"
    assert outcome["roots"] == {"result": ["file:///work/project"]}
    assert outcome["cancelled"] is True
    assert outcome["after"] == "still fine"


def test_an_expired_session_is_renewed_without_the_host_noticing(
    auth: AuthServer, server: McpServer, home: Path
) -> None:
    login(auth, server.url, FileStore(home))

    async def run() -> tuple[str, str]:
        async with host(server.url, home) as session:
            await session.initialize()
            first = text_of(await session.call_tool("echo", {"text": "before"}))
            assert server.expire_sessions()
            second = text_of(await session.call_tool("echo", {"text": "after"}))
            return first, second

    assert asyncio.run(run()) == ("before", "after")
    seen = server.seen()
    assert ("POST", 404) in methods(seen)
    sessions = {s.session_id for s in seen if s.method == "POST" and s.status == 200}
    assert len(sessions - {None}) == 2  # a second session, opened by the proxy


# -- protocol hygiene ---------------------------------------------------------------------


def test_stdout_carries_json_rpc_only_even_with_verbose_logs_and_a_chatty_browser(
    auth: AuthServer, server: McpServer, home: Path
) -> None:
    secret_header = "X-Api-Key: hygiene-secret-value-1234"
    messages = [
        INITIALIZE,
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {
            "jsonrpc": "2.0",
            "id": "two",
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "clean"}},
        },
    ]
    process = subprocess.Popen(
        [sys.executable, *proxy_args(server.url, "-vv", "--header", secret_header)],
        env=environment(home),
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    # One at a time, as a host does: initialize first, the call once initialized.
    process.stdin.write((json.dumps(messages[0]) + "\n").encode())
    process.stdin.flush()
    lines = [process.stdout.readline()]
    for message in messages[1:]:
        process.stdin.write((json.dumps(message) + "\n").encode())
    process.stdin.flush()
    lines.append(process.stdout.readline())
    rest, stderr = process.communicate(timeout=CALL_TIMEOUT)
    assert process.returncode == 0
    out = b"".join(lines) + rest
    parsed = [json.loads(line) for line in out.splitlines()]
    assert all(p.get("jsonrpc") == "2.0" for p in parsed)
    assert [p.get("id") for p in parsed] == [1, "two"]
    assert parsed[1]["result"]["content"][0]["text"] == "clean"
    log = stderr.decode()
    assert "Opening in existing browser session." in log  # the browser's print went here
    assert "hygiene-secret-value-1234" not in log
    assert "X-Api-Key" in log  # the header's name may be shown, its value never
    assert len(browser_windows(home)) == 1


def test_a_grant_revoked_mid_session_costs_one_browser_login_across_all_proxies(
    auth: AuthServer, server: McpServer, home: Path
) -> None:
    login(auth, server.url, FileStore(home))
    auth.reset_stats()
    count = 4

    async def run() -> list[str]:
        ready = asyncio.Barrier(count + 1)
        revoked = asyncio.Event()

        async def one(index: int) -> str:
            errlog = home.parent / f"proxy-{index}.err"
            async with host(server.url, home, errlog=errlog) as session:
                await session.initialize()
                await session.call_tool("echo", {"text": "before"})
                await ready.wait()
                await revoked.wait()
                # Held while one of the proxies logs in again, then served.
                return text_of(await session.call_tool("echo", {"text": f"after {index}"}))

        calls = [asyncio.create_task(one(i)) for i in range(count)]
        await ready.wait()
        await asyncio.to_thread(auth.revoke_all)
        revoked.set()
        return list(await asyncio.gather(*calls))

    assert asyncio.run(run()) == [f"after {i}" for i in range(count)]
    assert len(browser_windows(home)) == 1
    stats = auth.stats()
    assert stats["code_success"] == 1
    assert stats["replays"] == 0


def test_a_step_up_through_two_proxies_is_one_login_for_the_union_and_spends_no_refresh(
    home: Path,
) -> None:
    """A credential with scope ``mcp``, a server whose tools need ``mcp:write`` too: the
    403 ``insufficient_scope`` is a person's job, not a refresh's. One browser login asks
    for the union, the other proxy adopts it, and every call goes through."""
    # Tokens that outlive the test: any refresh counted below was caused by a 403.
    with (
        AuthServer(access_ttl=3600) as auth,
        McpServer(auth_server=auth, required_scopes=("mcp:write",)) as server,
    ):
        held = login(auth, server.url, FileStore(home))
        assert held.scope is not None and "mcp:write" not in held.scope.split()
        auth.reset_stats()

        async def one(index: int) -> list[str]:
            errlog = home.parent / f"proxy-{index}.err"
            async with host(server.url, home, errlog=errlog) as session:
                await session.initialize()
                return [
                    text_of(await session.call_tool("echo", {"text": f"{index}.{call}"}))
                    for call in range(2)
                ]

        async def run() -> list[list[str]]:
            return list(await asyncio.gather(one(0), one(1)))

        assert asyncio.run(run()) == [["0.0", "0.1"], ["1.0", "1.1"]]
        stats = auth.stats()
        stored = FileStore(home).read(CredentialKey.for_server(server.url))
    assert len(browser_windows(home)) == 1
    assert stats["code_success"] == 1
    assert stats["refresh_success"] == 0 and stats["refresh_errors"] == []
    assert stats["replays"] == 0
    assert stored is not None and stored.record.scope is not None
    # The union: the new token may do all the old one could, and it is still renewable.
    assert {*held.scope.split(), "mcp:write"} <= set(stored.record.scope.split())
    assert stored.record.refresh_token is not None


def test_keep_alive_pings_renew_a_session_the_server_forgot_while_the_host_was_idle(
    auth: AuthServer, server: McpServer, home: Path
) -> None:
    login(auth, server.url, FileStore(home))

    def renewed(seen: list[Seen]) -> bool:
        statuses = methods(seen)
        if ("POST", 404) not in statuses:
            return False
        after = seen[statuses.index(("POST", 404)) :]
        return any(s.method == "POST" and s.status == 200 and s.session_id is None for s in after)

    async def run() -> str:
        async with host(server.url, home, "--ping-interval", "0.2") as session:
            await session.initialize()
            assert server.expire_sessions()
            await asyncio.to_thread(server.wait_for, renewed)  # no call from the host
            return text_of(await session.call_tool("echo", {"text": "renewed"}))

    assert asyncio.run(run()) == "renewed"
    assert methods(server.seen()).count(("POST", 404)) == 1  # the host's call found a live one


def test_a_2026_era_host_calls_and_cancels_through_the_proxy(
    auth: AuthServer, server: McpServer, home: Path
) -> None:
    from mcp.client.client import Client

    login_with_fresh_pipe_events(auth, server, home)
    params = StdioServerParameters(
        command=sys.executable, args=proxy_args(server.url), env=environment(home), cwd=str(ROOT)
    )

    async def run() -> tuple[str, bool, str]:
        with (home.parent / "proxy.err").open("w") as errlog:  # noqa: ASYNC230
            async with Client(stdio_client(params, errlog=errlog), mode="auto") as client:
                echoed = text_of(await client.call_tool("echo", {"text": "modern"}))
                hanging = asyncio.create_task(client.call_tool("hang", {}))
                await asyncio.to_thread(server.pipe_events.hanging.wait, CALL_TIMEOUT)
                hanging.cancel()  # at 2026 the proxy closes the request's stream
                events = server.pipe_events
                cancelled = await asyncio.to_thread(events.cancelled.wait, CALL_TIMEOUT)
                after = text_of(await client.call_tool("echo", {"text": "still fine"}))
                return echoed, cancelled, after

    assert asyncio.run(run()) == ("modern", True, "still fine")
    seen = server.seen()
    assert seen and all(s.session_id is None for s in seen)  # negotiated without a session
    assert "GET" not in {s.method for s in seen}


# -- the 2026-07-28 standard headers (SEP-2243) ---------------------------------------------


def sentinel(value: str) -> str:
    """The spec's header encoding of a value that is not plain printable ASCII."""
    return f"=?base64?{base64.b64encode(value.encode()).decode()}?="


def misdeclared_tool() -> Tool:
    """A tool whose ``x-mcp-header`` sits on a number, which the spec forbids: the SDK will
    not declare it, so it is built valid and its schema replaced, as a careless server's."""

    def misdeclared(score: float) -> str:
        return f"score {score}"

    tool = Tool.from_function(misdeclared)
    schema = {
        **tool.parameters,
        "properties": {"score": {"type": "number", "x-mcp-header": "Score"}},
    }
    return tool.model_copy(update={"parameters": schema})


def modern_request(request_id: int, method: str, **params: Any) -> dict[str, Any]:
    """A 2026-era request as a host writes it: the envelope in ``params._meta``."""
    meta = {PROTOCOL_VERSION_META_KEY: "2026-07-28", CLIENT_CAPABILITIES_META_KEY: {}}
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": method,
        "params": {**params, "_meta": meta},
    }


def test_a_2026_era_hosts_names_and_designated_arguments_go_upstream_as_headers(
    auth: AuthServer, server: McpServer, home: Path
) -> None:
    """The real server refuses a 2026-era request whose ``Mcp-Name`` or ``Mcp-Param-Region``
    is missing or wrong: each answer proves its headers, and the server saw the encoding."""
    from mcp.client.client import Client

    login(auth, server.url, FileStore(home))
    params = StdioServerParameters(
        command=sys.executable, args=proxy_args(server.url), env=environment(home), cwd=str(ROOT)
    )

    async def run() -> tuple[list[str], str, str, str]:
        with (home.parent / "proxy.err").open("w") as errlog:  # noqa: ASYNC230
            async with Client(stdio_client(params, errlog=errlog), mode="auto") as client:
                listed = await client.list_tools()
                plain = await client.call_tool("routed", {"region": "us-west1", "note": "n"})
                accented = await client.call_tool("routed", {"region": "Zürich"})
                prompt = await client.get_prompt(PROMPT)
                content = prompt.messages[0].content
                assert isinstance(content, types.TextContent)
                names = [tool.name for tool in listed.tools]
                return names, text_of(plain), text_of(accented), content.text

    names, plain, accented, greeting = asyncio.run(run())
    assert "routed" in names
    assert (plain, accented, greeting) == ("us-west1", "Zürich", "hello")
    posts = [s for s in server.seen() if s.method == "POST"]
    calls = [s.mcp_headers for s in posts if s.mcp_headers.get("mcp-method") == "tools/call"]
    assert [(c.get("mcp-name"), c.get("mcp-param-region")) for c in calls] == [
        ("routed", "us-west1"),
        ("routed", sentinel("Zürich")),
    ]
    assert not any("mcp-param-note" in c for c in calls)  # not designated, not mirrored
    (prompt_get,) = [s for s in posts if s.mcp_headers.get("mcp-method") == "prompts/get"]
    assert prompt_get.mcp_headers.get("mcp-name") == sentinel(PROMPT)
    assert all(s.status == 200 for s in posts)


@pytest.mark.parametrize("json_response", [False, True], ids=["event-stream", "json"])
def test_a_tool_with_an_invalid_header_annotation_never_reaches_a_2026_era_host(
    auth: AuthServer, home: Path, json_response: bool
) -> None:
    """A raw host, so that what it reads is what the proxy relayed (the SDK's client would
    drop the tool itself). The listing also teaches the valid tools' headers, after a call
    made before it went without them."""
    errlog = home.parent / "proxy.err"
    served = McpServer(auth_server=auth, json_response=json_response, tools=[misdeclared_tool()])
    with served as server, errlog.open("w") as stderr:
        login(auth, server.url, FileStore(home))
        # Its log goes to a file: a pipe nobody reads while the test waits on stdout could fill.
        process = subprocess.Popen(
            [sys.executable, *proxy_args(server.url, "-vv")],
            env=environment(home),
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )

        def exchange(message: dict[str, Any]) -> dict[str, Any]:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write((json.dumps(message) + "\n").encode())
            process.stdin.flush()
            while True:
                line = process.stdout.readline()
                assert line, "the proxy ended without answering"
                answer: dict[str, Any] = json.loads(line)
                if answer.get("id") == message["id"]:
                    return answer

        call = {"name": "routed", "arguments": {"region": "Zürich"}}
        try:
            unlisted = exchange(modern_request(1, "tools/call", **call))
            listing = exchange(modern_request(2, "tools/list"))
            listed = exchange(modern_request(3, "tools/call", **call))
            process.communicate(timeout=CALL_TIMEOUT)  # stdin closed: the host quits
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        posts = [s for s in server.seen() if s.method == "POST"]
    assert process.returncode == 0
    names = {tool["name"] for tool in listing["result"]["tools"]}
    assert "misdeclared" not in names and {"routed", "echo"} <= names
    # A tool never listed has no schema known to the proxy: no header, so the server refuses.
    assert "Mcp-Param-Region header is missing" in unlisted["error"]["message"]
    assert listed["result"]["content"][0]["text"] == "Zürich"
    regions = [s.mcp_headers.get("mcp-param-region") for s in posts]
    assert regions == [None, None, sentinel("Zürich")]
    log = errlog.read_text()
    dropped = [line for line in log.splitlines() if "dropping tool" in line]
    assert len(dropped) == 1 and "'misdeclared'" in dropped[0] and "'score'" in dropped[0]
    assert "Zürich" not in log and sentinel("Zürich") not in log  # argument values stay out


def test_a_2025_era_host_gets_its_listing_as_served_and_no_2026_headers(
    auth: AuthServer, home: Path
) -> None:
    with McpServer(auth_server=auth, tools=[misdeclared_tool()]) as server:
        login(auth, server.url, FileStore(home))

        async def run() -> tuple[set[str], str]:
            async with host(server.url, home) as session:
                await session.initialize()
                listed = await session.list_tools()
                routed = await session.call_tool("routed", {"region": "Zürich"})
                return {tool.name for tool in listed.tools}, text_of(routed)

        names, routed = asyncio.run(run())
        posts = [s for s in server.seen() if s.method == "POST"]
    assert {"misdeclared", "routed"} <= names  # the 2026 rule is not theirs
    assert routed == "Zürich"
    assert posts and all(
        set(s.mcp_headers) <= {"mcp-session-id", "mcp-protocol-version"} for s in posts
    )


def test_eight_proxies_through_rotations_spend_each_refresh_token_once(home: Path) -> None:
    """Short access tokens, eight proxies calling all along: every rotation is one refresh,
    nobody is sent to a browser, no refresh token is replayed, no call fails."""
    count, rotations = 8, 3
    with AuthServer(access_ttl=2) as auth, McpServer(auth_server=auth) as server:
        logged_in = login(auth, server.url, FileStore(home))
        auth.reset_stats()

        def rotated() -> bool:
            return int(auth.stats()["refresh_success"]) >= rotations

        async def one(index: int, done: asyncio.Event) -> int:
            calls = 0
            errlog = home.parent / f"proxy-{index}.err"
            async with host(server.url, home, errlog=errlog) as session:
                await session.initialize()
                while not done.is_set():
                    result = await session.call_tool("echo", {"text": f"{index}"})
                    assert text_of(result) == f"{index}"
                    calls += 1
                    if index == 0 and await asyncio.to_thread(rotated):
                        done.set()
                    # Pacing, not synchronisation: a call every 0.3 s is a busy host
                    # without making the 2-core machine the bottleneck.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(done.wait(), 0.3)
            return calls

        async def run() -> list[int]:
            done = asyncio.Event()
            return list(await asyncio.gather(*(one(i, done) for i in range(count))))

        calls = asyncio.run(run())
        stats = auth.stats()
        sent = {s.token for s in server.seen() if s.method == "POST"}
    store = FileStore(home)
    (key,) = store.keys()
    final = store.read(key)
    assert final is not None
    assert all(c > 0 for c in calls)
    assert stats["refresh_success"] >= rotations
    # Every refresh spent a refresh token no other had: a rotated one presented again is a
    # replay, and the provider would have refused it.
    assert stats["replays"] == 0 and not stats["refresh_errors"]
    assert stats["code_success"] == 0  # no forced login
    assert browser_windows(home) == []
    # One refresh per rotation, none wasted: every refresh gave an access token that a call
    # then sent, but the last. Counting only the tokens the calls sent is off both ways,
    # legitimately: the login's token lives 2 s, about as long as eight proxies take to
    # start, so it may have expired (and been refreshed) before any call sent it; and the
    # last refresh runs ahead in the background while the due token still serves the final
    # round of calls, so it may finish just before index 0 sees the count and stops them,
    # leaving its token only in the store (and in the DELETEs that end the sessions).
    # So the refreshed tokens are exactly those the calls sent, less the login's, plus the
    # one stored at the end: one each per refresh.
    assert final.record.access_token != logged_in.access_token
    refreshed = (sent - {logged_in.access_token}) | {final.record.access_token}
    assert stats["refresh_success"] == len(refreshed)
    # And each was due: a token is refreshed ahead 1.5 s after it came, or once the provider
    # rejects it, 1 to 2 s after its issue (oidc-provider counts from the whole second), so
    # refreshes come about 1 s apart at least. One right after another (a refresh ahead
    # firing twice, a peer's refresh not adopted) would have replaced a brand-new token.
    issued = stats["issued_at"]  # refreshes only: no login since the reset
    assert all(later - earlier >= 500 for earlier, later in zip(issued, issued[1:], strict=False))


def test_an_authorization_header_turns_oauth_off(
    auth: AuthServer, server: McpServer, home: Path
) -> None:
    token = login(auth, server.url, FileStore(home / "elsewhere")).access_token

    async def run() -> str:
        header = f"Authorization: Bearer {token}"
        async with host(server.url, home, "--header", header) as session:
            await session.initialize()
            return text_of(await session.call_tool("echo", {"text": "static"}))

    assert asyncio.run(run()) == "static"
    assert {s.token for s in server.seen() if s.method == "POST"} == {token}
    assert browser_windows(home) == []
    assert not (home / "locks").exists()  # no login was even considered


def test_an_unreachable_server_gets_an_error_that_says_so(home: Path) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}/mcp"  # bound, never listening

        async def run() -> MCPError:
            async with host(url, home, "--header", "Authorization: Bearer static") as session:
                with pytest.raises(MCPError) as caught:
                    await session.initialize()
                return caught.value

        error = asyncio.run(run())
    assert f"cannot reach the MCP server at {url}" in str(error)


def test_a_broken_request_stream_is_resumed_with_last_event_id(
    auth: AuthServer, home: Path
) -> None:
    with McpServer(auth_server=auth, event_store=MemoryEventStore()) as server:
        login(auth, server.url, FileStore(home))
        reports: list[str | None] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            reports.append(message)

        async def run() -> str:
            async with host(server.url, home) as session:
                await session.initialize()
                result = await session.call_tool("interrupted", {}, progress_callback=on_progress)
                return text_of(result)

        assert asyncio.run(run()) == "resumed"
        resumed = [s for s in server.seen() if s.method == "GET" and s.status == 200]
    assert reports == ["before the break", "after the break"]
    assert len(resumed) >= 2  # the session's own stream, and the resumed request stream


def test_a_malformed_header_is_a_usage_error_that_never_echoes_its_value(home: Path) -> None:
    done = subprocess.run(
        [sys.executable, *proxy_args("https://mcp.example.com/mcp", "--header", "X-Key secret-x")],
        env=environment(home),
        cwd=ROOT,
        input=b"",
        capture_output=True,
        timeout=CALL_TIMEOUT,
    )
    assert done.returncode == 2 and done.stdout == b""
    assert b"Name: value" in done.stderr and b"secret-x" not in done.stderr


def test_the_log_file_keeps_the_log_private(
    auth: AuthServer, server: McpServer, home: Path
) -> None:
    login(auth, server.url, FileStore(home))
    log_file = home.parent / "proxy.log"

    async def run() -> None:
        async with host(server.url, home, "-v", "--log-file", str(log_file)) as session:
            await session.initialize()

    asyncio.run(run())
    assert "proxy.start" in log_file.read_text() and "session ended" in log_file.read_text()
    assert log_file.stat().st_mode & 0o777 == 0o600


def test_an_older_server_over_http_and_sse(auth: AuthServer, home: Path) -> None:
    with McpServer(auth_server=auth, transport="sse") as server:
        login(auth, server.url, FileStore(home))
        reports: list[str | None] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            reports.append(message)

        async def run() -> tuple[str, str]:
            async with host(server.url, home, "--transport", "sse") as session:
                await session.initialize()
                echoed = await session.call_tool("echo", {"text": "over sse"})
                chatty = await session.call_tool(
                    "chatty", {"steps": 2}, progress_callback=on_progress
                )
                return text_of(echoed), text_of(chatty)

        assert asyncio.run(run()) == ("over sse", "chatted 2")
        seen = server.seen()
    assert reports == ["step 1", "step 2"]
    assert {(s.method, s.path) for s in seen} >= {("GET", "/sse"), ("POST", "/messages/")}
    assert all(s.token for s in seen if s.path in ("/sse", "/messages/"))
