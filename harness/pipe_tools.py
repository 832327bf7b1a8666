"""Tools that make the MCP server talk back: proof that a pipe (``grantkeeper proxy``)
carries every kind of message, in both directions.

- ``chatty(steps)``: ``steps`` progress notifications and as many log messages on the
  request's stream, then a ``tools/list_changed`` on the session's GET stream;
- ``relay_sample(prompt)``: a ``sampling/createMessage`` request the client answers;
- ``relay_ask(question)``: an ``elicitation/create`` request the client answers;
- ``relay_roots()``: a ``roots/list`` request the client answers;
- ``hang()``: waits until cancelled; :attr:`PipeEvents.cancelled` is set when it is;
- ``interrupted()``: reports progress, closes its own event stream, reports again and
  answers: the client sees it all only if it resumes the stream (``Last-Event-ID``). Needs
  a server with a :class:`MemoryEventStore`.

The typed server-to-client helpers of ``mcp`` 2.3 warn that sampling, roots and logging are
deprecated as of 2026-07-28, so these send the same messages through the session's
generic ``send_request`` / ``send_notification``: the wire is identical.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

import anyio
import mcp_types as types
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.shared.message import ServerMessageMetadata

HANG_TIMEOUT = 30.0
"""A ``hang`` call nobody cancels fails after this long instead of hanging the suite."""


RESUME_RETRY_MS = 50
"""The ``retry:`` a resumable server suggests: tests should not wait a second per resume."""


class MemoryEventStore(EventStore):
    """Every event of every stream, numbered in one sequence, kept in memory."""

    def __init__(self) -> None:
        self._events: list[tuple[str, str, types.JSONRPCMessage | None]] = []
        self._ids = itertools.count(1)

    async def store_event(self, stream_id: str, message: types.JSONRPCMessage | None) -> str:
        event_id = str(next(self._ids))
        self._events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(
        self, last_event_id: str, send_callback: EventCallback
    ) -> str | None:
        found = [i for i, (event_id, _, _) in enumerate(self._events) if event_id == last_event_id]
        if not found:
            return None
        stream_id = self._events[found[0]][1]
        for event_id, stream, message in self._events[found[0] + 1 :]:
            if stream == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id


class PipeEvents:
    """What the tools saw, for tests to wait on (threading events: the server has its own
    thread and event loop)."""

    def __init__(self) -> None:
        self.hanging = threading.Event()
        self.cancelled = threading.Event()


def add_pipe_tools(server: MCPServer[Any], events: PipeEvents) -> None:
    """Register the tools above on ``server``."""

    @server.tool()
    async def chatty(steps: int, ctx: Context) -> str:
        """Report progress and log ``steps`` times, then announce a changed tool list."""
        for step in range(1, steps + 1):
            await ctx.report_progress(step, steps, f"step {step}")
            await ctx.session.send_notification(
                types.LoggingMessageNotification(
                    params=types.LoggingMessageNotificationParams(
                        level="info", data=f"log {step}", logger="chatty"
                    )
                ),
                related_request_id=ctx.request_id,
            )
        # Not tied to this request: it travels on the session's own GET stream.
        await ctx.session.send_notification(types.ToolListChangedNotification())
        return f"chatted {steps}"

    @server.tool()
    async def relay_sample(prompt: str, ctx: Context) -> str:
        """Ask the client's model to complete ``prompt``; return its text."""
        request = types.CreateMessageRequest(
            params=types.CreateMessageRequestParams(
                messages=[
                    types.SamplingMessage(
                        role="user", content=types.TextContent(type="text", text=prompt)
                    )
                ],
                max_tokens=16,
            )
        )
        result = await ctx.session.send_request(
            request,
            types.CreateMessageResult,
            metadata=ServerMessageMetadata(related_request_id=ctx.request_id),
        )
        content = result.content
        return content.text if isinstance(content, types.TextContent) else repr(content)

    @server.tool()
    async def relay_ask(question: str, ctx: Context) -> str:
        """Ask the user ``question`` (form elicitation); return the answer or the action."""
        result = await ctx.session.elicit_form(
            message=question,
            requested_schema={
                "type": "object",
                "properties": {"answer": {"type": "string"}},
                "required": ["answer"],
            },
            related_request_id=ctx.request_id,
        )
        if result.action == "accept" and result.content:
            return str(result.content.get("answer"))
        return str(result.action)

    @server.tool()
    async def relay_roots(ctx: Context) -> list[str]:
        """The URIs of the client's roots."""
        result = await ctx.session.send_request(
            types.ListRootsRequest(),
            types.ListRootsResult,
            metadata=ServerMessageMetadata(related_request_id=ctx.request_id),
        )
        return [str(root.uri) for root in result.roots]

    @server.tool()
    async def interrupted(ctx: Context) -> str:
        """Progress, a broken stream, more progress, then the answer."""
        await ctx.report_progress(1, 2, "before the break")
        await ctx.close_sse_stream()
        await ctx.report_progress(2, 2, "after the break")
        return "resumed"

    @server.tool()
    async def hang() -> str:
        """Wait until the client cancels this call."""
        events.hanging.set()
        try:
            await anyio.sleep(HANG_TIMEOUT)
        except anyio.get_cancelled_exc_class():
            events.cancelled.set()
            raise
        return "nobody cancelled"
